"""cmi validate: the real sample passes; each kind of bad input is rejected by name."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from pipeline_helpers import REAL_SAMPLE

from cmi.cli import main
from cmi.schema import (
    DEMOGRAPHICS_SCHEMA,
    GESTURES,
    TEST_COLUMNS,
    TRAIN_COLUMNS,
    TRAIN_SCHEMA,
    SchemaError,
    read_raw_dir,
)


@pytest.fixture(scope="module")
def real_sample() -> Path:
    if not REAL_SAMPLE.exists():
        pytest.skip(f"{REAL_SAMPLE} not present")
    return REAL_SAMPLE


@pytest.fixture
def raw_dir(tmp_path: Path, real_sample: Path) -> Path:
    """The real sample laid out as data/raw (train_sample.csv becomes train.csv)."""
    out = tmp_path / "raw"
    out.mkdir()
    shutil.copy(real_sample / "train_sample.csv", out / "train.csv")
    for name in ("train_demographics.csv", "test.csv", "test_demographics.csv"):
        shutil.copy(real_sample / name, out / name)
    return out


def test_schema_constants_match_real_files(real_sample: Path) -> None:
    train = pl.read_csv(real_sample / "train_sample.csv")
    test = pl.read_csv(real_sample / "test.csv")
    demographics = pl.read_csv(real_sample / "train_demographics.csv")
    assert tuple(train.columns) == TRAIN_COLUMNS
    assert tuple(test.columns) == TEST_COLUMNS
    assert dict(train.schema) == {c: TRAIN_SCHEMA[c] for c in train.columns}
    assert dict(demographics.schema) == DEMOGRAPHICS_SCHEMA
    assert set(train["gesture"].unique()) <= set(GESTURES)
    assert len(GESTURES) == len(set(GESTURES)) == 18


def test_real_sample_validates(raw_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(raw_dir)]) == 0
    assert "OK" in capsys.readouterr().out
    raw = read_raw_dir(raw_dir)
    assert raw.train["sequence_id"].n_unique() == 15
    assert raw.test["sequence_id"].n_unique() == 2


def _rewrite(path: Path, change: Callable[[pl.DataFrame], pl.DataFrame]) -> None:
    frame = pl.read_csv(path, infer_schema=False)
    change(frame).write_csv(path)


BAD_INPUTS: dict[str, tuple[str, Callable[[pl.DataFrame], pl.DataFrame] | None, str]] = {
    "missing column": ("train.csv", lambda f: f.drop("acc_y"), "missing column"),
    "extra column": ("test.csv", lambda f: f.with_columns(pl.lit("1").alias("x")), "unexpected"),
    "wrong type": (
        "train.csv",
        lambda f: f.with_columns(
            pl.when(pl.int_range(pl.len()) == 3)
            .then(pl.lit("abc"))
            .otherwise("acc_x")
            .alias("acc_x")
        ),
        "'acc_x'",
    ),
    "unknown gesture": (
        "train.csv",
        lambda f: f.with_columns(pl.lit("Juggle").alias("gesture")),
        "unknown gesture 'Juggle'",
    ),
    "two subjects": (
        "train.csv",
        lambda f: f.with_columns(
            pl.when(pl.int_range(pl.len()) == 0)
            .then(pl.lit("SUBJ_000206"))
            .otherwise("subject")
            .alias("subject")
        ),
        "more than one subject",
    ),
    "duplicate row_id": (
        "test.csv",
        lambda f: f.with_columns(
            pl.when(pl.int_range(pl.len()) == 1)
            .then(pl.lit(f["row_id"][0]))
            .otherwise("row_id")
            .alias("row_id")
        ),
        "duplicate row_id",
    ),
    "subject without demographics": (
        "test_demographics.csv",
        lambda f: f.head(1),
        "no demographics row",
    ),
    "empty file": ("train_demographics.csv", None, "empty"),
    "header only": ("test.csv", lambda f: f.head(0), "no rows"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_validate_rejects_bad_input(
    case: str, raw_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    filename, change, expected = BAD_INPUTS[case]
    target = raw_dir / filename
    if change is None:
        target.write_text("")
    else:
        _rewrite(target, change)
    assert main(["validate", str(raw_dir)]) != 0
    err = capsys.readouterr().err
    assert filename in err, err
    assert expected in err, err


def test_missing_file_says_where_to_get_it(raw_dir: Path) -> None:
    (raw_dir / "train.csv").unlink()
    with pytest.raises(SchemaError, match="kaggle competitions download"):
        read_raw_dir(raw_dir)


def test_validate_exit_code_from_console_script(raw_dir: Path) -> None:
    (raw_dir / "train_demographics.csv").write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "cmi", "validate", str(raw_dir)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "train_demographics.csv" in result.stderr


def test_demographics_dtypes_enforced(raw_dir: Path) -> None:
    _rewrite(
        raw_dir / "train_demographics.csv",
        lambda f: f.with_columns(pl.lit("tall").alias("height_cm")),
    )
    with pytest.raises(SchemaError, match="height_cm"):
        read_raw_dir(raw_dir)
    assert DEMOGRAPHICS_SCHEMA["height_cm"] is pl.Float64
