"""cmi validate: the real sample and synthetic data pass; each kind of bad input is rejected by
name: file, column and 1-based data row (the header is line 1, data row 1 is line 2)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

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

RAW_NAMES = ("train.csv", "train_demographics.csv", "test.csv", "test_demographics.csv")


@pytest.fixture(scope="module")
def small_raw(tmp_path_factory: pytest.TempPathFactory, tiny_raw_dir: Path) -> Path:
    """Synthetic raw files cut to 6 train sequences (quick to rewrite in every test)."""
    out = tmp_path_factory.mktemp("small_raw")
    train = pl.read_csv(tiny_raw_dir / "train.csv", infer_schema=False)
    keep = train["sequence_id"].unique(maintain_order=True).head(6)
    train = train.filter(pl.col("sequence_id").is_in(keep.to_list()))
    train.write_csv(out / "train.csv")
    demographics = pl.read_csv(tiny_raw_dir / "train_demographics.csv", infer_schema=False)
    demographics.filter(pl.col("subject").is_in(train["subject"].unique().to_list())).write_csv(
        out / "train_demographics.csv"
    )
    for name in ("test.csv", "test_demographics.csv"):
        shutil.copy(tiny_raw_dir / name, out / name)
    return out


@pytest.fixture
def raw_dir(tmp_path: Path, small_raw: Path) -> Path:
    return Path(shutil.copytree(small_raw, tmp_path / "raw"))


@pytest.fixture
def real_raw_dir(tmp_path: Path, real_sample: Path) -> Path:
    """The real sample laid out as data/raw (train_sample.csv becomes train.csv)."""
    out = tmp_path / "raw"
    out.mkdir()
    shutil.copy(real_sample / "train_sample.csv", out / "train.csv")
    for name in RAW_NAMES[1:]:
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


def test_real_sample_validates(real_raw_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(real_raw_dir)]) == 0
    assert "OK" in capsys.readouterr().out
    raw = read_raw_dir(real_raw_dir)
    assert raw.train["sequence_id"].n_unique() == 15
    assert raw.test["sequence_id"].n_unique() == 2


def test_synthetic_data_validates(raw_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(raw_dir)]) == 0
    assert "6 train sequences" in capsys.readouterr().out


def _rewrite(path: Path, change: Callable[[pl.DataFrame], pl.DataFrame]) -> None:
    frame = pl.read_csv(path, infer_schema=False)
    change(frame).write_csv(path)


def _at_row(row: int, column: str, value: Callable[[pl.DataFrame], pl.Expr | str]):
    """A change setting ``column`` of 1-based data row ``row`` (value may use the frame)."""

    def change(frame: pl.DataFrame) -> pl.DataFrame:
        new = value(frame)
        new = pl.lit(new) if isinstance(new, str) else new
        return frame.with_columns(
            pl.when(pl.int_range(pl.len()) == row - 1).then(new).otherwise(column).alias(column)
        )

    return change


def _counter_from(row: int, value: str):
    """The sequence_counter of data row ``row`` set to ``value``, as text."""
    return _at_row(row, "sequence_counter", lambda f: value)


# case -> (file, change, expected message parts)
BAD_INPUTS: dict[str, tuple[str, Callable[[pl.DataFrame], pl.DataFrame] | None, tuple]] = {
    "missing column": ("train.csv", lambda f: f.drop("acc_y"), ("missing column", "acc_y")),
    "extra column": (
        "test.csv",
        lambda f: f.with_columns(pl.lit("1").alias("x")),
        ("unexpected", "'x'"),
    ),
    "wrong type": (
        "train.csv",
        _at_row(4, "acc_x", lambda f: "abc"),
        ("column 'acc_x', data row 4 (line 5)", "'abc' is not Float64"),
    ),
    "unknown gesture": (
        "train.csv",
        _at_row(3, "gesture", lambda f: "Juggle"),
        ("column 'gesture', data row 3", "unknown gesture 'Juggle'"),
    ),
    "two gestures": (
        "train.csv",
        _at_row(
            5,
            "gesture",
            lambda f: "Wave hello" if f["gesture"][4] != "Wave hello" else "Text on phone",
        ),
        ("column 'gesture', data row 5", "more than one gesture"),
    ),
    "two subjects": (
        "train.csv",
        _at_row(2, "subject", lambda f: "SUBJ_000206"),
        ("column 'subject', data row 2", "more than one subject", "'SUBJ_000206'"),
    ),
    "duplicate row_id": (
        "test.csv",
        _at_row(2, "row_id", lambda f: f["row_id"][0]),
        ("column 'row_id', data row 2", "duplicate row_id", "also data row 1"),
    ),
    "null row_id": (
        "train.csv",
        _at_row(7, "row_id", lambda f: pl.lit(None, dtype=pl.String)),
        ("column 'row_id', data row 7", "null"),
    ),
    "null sequence_id": (
        "test.csv",
        _at_row(9, "sequence_id", lambda f: pl.lit(None, dtype=pl.String)),
        ("column 'sequence_id', data row 9", "null"),
    ),
    "null sequence_counter": (
        "train.csv",
        _at_row(6, "sequence_counter", lambda f: pl.lit(None, dtype=pl.String)),
        ("column 'sequence_counter', data row 6 (line 7)", "null"),
    ),
    "repeated sequence_counter": (
        "train.csv",
        _counter_from(8, "6"),  # rows 7 and 8 of the first sequence both say 6
        ("column 'sequence_counter', data row 8", "6 does not increase", "previous row has 6"),
    ),
    "decreasing sequence_counter": (
        "test.csv",
        _counter_from(3, "0"),
        ("column 'sequence_counter', data row 3", "0 does not increase"),
    ),
    "subject without demographics": (
        "test_demographics.csv",
        lambda f: f.head(1),
        ("column 'subject'", "no demographics row", "test.csv: column 'subject', data row"),
    ),
    "duplicate demographics subject": (
        "train_demographics.csv",
        lambda f: pl.concat([f, f.head(1)]),
        ("column 'subject', data row", "duplicate subject"),
    ),
    "empty file": ("train_demographics.csv", None, ("empty",)),
    "header only": ("test.csv", lambda f: f.head(0), ("no rows",)),
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
    assert f"{target}:" in err, err
    for part in expected:
        assert part in err, err


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_files_out_of_sequence_order_validate_the_exact_way(raw_dir: Path) -> None:
    """validate_sensor_frame checks a file sorted by sequence_id (row_ids increasing) from
    neighbouring rows; valid files in any other order take the exact checks and pass too,
    and a file that fails (every case of BAD_INPUTS) is named by the exact checks."""
    from cmi.schema import _passes_by_neighbours

    train = pl.read_csv(raw_dir / "train.csv", schema=TRAIN_SCHEMA)
    assert _passes_by_neighbours(train, labelled=True)
    ids = train["sequence_id"].unique(maintain_order=True)
    shuffled = pl.concat(
        [train.filter(pl.col("sequence_id") == i) for i in ids.to_list()[::-1]]
    ).with_columns(pl.col("row_id").str.replace("^", "r").alias("row_id"))
    reversed_ids = shuffled.with_columns(pl.col("row_id").reverse())  # unique, decreasing
    for frame in (shuffled, reversed_ids):
        assert not _passes_by_neighbours(frame, labelled=True)
        frame.write_csv(raw_dir / "train.csv")
        read_raw_dir(raw_dir)


def test_truncated_last_row_is_refused(raw_dir: Path) -> None:
    """An interrupted download: the last row stops half-way, at a field boundary, so every
    value it has parses (polars alone fills the missing fields with nulls, silently)."""
    train = raw_dir / "train.csv"
    lines = _lines(train)
    n_rows = len(lines) - 1
    cut = lines[-1].rfind(b",", 0, len(lines[-1]) // 2)
    train.write_bytes(b"".join(lines[:-1]) + lines[-1][:cut])
    with pytest.raises(SchemaError, match=rf"train\.csv: data row {n_rows} \(line {n_rows + 1}\)"):
        read_raw_dir(raw_dir)


def test_row_cut_inside_its_last_value_is_refused(raw_dir: Path) -> None:
    """Cut inside the last field: the field count is right, but the line end is missing."""
    test = raw_dir / "test.csv"
    lines = _lines(test)
    test.write_bytes(b"".join(lines[:-1]) + lines[-1].rstrip(b"\n")[:-2])
    with pytest.raises(SchemaError, match=rf"data row {len(lines) - 1} .*no line end.*truncated"):
        read_raw_dir(raw_dir)


def test_a_quoted_header_does_not_hide_a_missing_line_end(raw_dir: Path) -> None:
    """Quotes anywhere send the check line by line (as before the byte counts): a quoted
    column name still leaves the last row's missing line end found."""
    test = raw_dir / "test.csv"
    lines = _lines(test)
    header = b'"row_id"' + lines[0][len(b"row_id") :]
    test.write_bytes(header + b"".join(lines[1:-1]) + lines[-1].rstrip(b"\n")[:-2])
    with pytest.raises(SchemaError, match=rf"data row {len(lines) - 1} .*no line end"):
        read_raw_dir(raw_dir)


@pytest.mark.parametrize("fields_delta", [-1, +1])
def test_ragged_row_in_the_middle_is_refused(raw_dir: Path, fields_delta: int) -> None:
    train = raw_dir / "train.csv"
    lines = _lines(train)
    n_fields = lines[0].count(b",") + 1
    row = 5  # data row 5 is line 6, lines[5]
    line = lines[row].rstrip(b"\n")
    lines[row] = (line.rsplit(b",", 1)[0] if fields_delta < 0 else line + b",0") + b"\n"
    train.write_bytes(b"".join(lines))
    with pytest.raises(
        SchemaError,
        match=rf"train\.csv: data row 5 \(line 6\) has {n_fields + fields_delta} field\(s\), "
        rf"the header {n_fields}",
    ):
        read_raw_dir(raw_dir)


def test_a_long_and_a_short_row_whose_commas_add_up_are_refused(raw_dir: Path) -> None:
    """The fast check counts the file's commas, and one extra field in an early row makes up
    for one missing later: the first ragged row is still named (polars refuses the long
    row, and the rows are then checked one by one)."""
    train = raw_dir / "train.csv"
    lines = _lines(train)
    n_fields = lines[0].count(b",") + 1
    lines[3] = lines[3].rstrip(b"\n") + b",0\n"  # data row 3: one field too many
    lines[8] = lines[8].rstrip(b"\n").rsplit(b",", 1)[0] + b"\n"  # data row 8: one too few
    train.write_bytes(b"".join(lines))
    assert train.read_bytes().count(b",") == (n_fields - 1) * len(lines)
    with pytest.raises(
        SchemaError, match=rf"train\.csv: data row 3 \(line 4\) has {n_fields + 1} field\(s\)"
    ):
        read_raw_dir(raw_dir)


def test_a_blank_line_is_a_ragged_row(raw_dir: Path) -> None:
    """polars skips a blank line silently; the row check names it."""
    test = raw_dir / "test.csv"
    lines = _lines(test)
    test.write_bytes(b"".join([*lines[:4], b"\n", *lines[4:]]))
    with pytest.raises(SchemaError, match=r"test\.csv: data row 4 \(line 5\) has 1 field\(s\)"):
        read_raw_dir(raw_dir)


def test_quoted_fields_with_commas_are_counted_right(raw_dir: Path) -> None:
    """A quoted value holding a comma is one field (the slow, exact parser handles it)."""
    demographics = raw_dir / "test_demographics.csv"
    lines = _lines(demographics)
    header = lines[0]
    # A harmless quoted subject would not parse as a known subject; quote a number instead.
    lines[1] = b'"' + lines[1].split(b",", 1)[0] + b'",' + lines[1].split(b",", 1)[1]
    demographics.write_bytes(header + b"".join(lines[1:]))
    read_raw_dir(raw_dir)  # still valid
    lines[2] = lines[2].rstrip(b"\n") + b',"a,b"\n'
    demographics.write_bytes(header + b"".join(lines[1:]))
    with pytest.raises(SchemaError, match=r"test_demographics\.csv: data row 2 \(line 3\) has 9"):
        read_raw_dir(raw_dir)


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
    with pytest.raises(SchemaError, match=r"column 'height_cm', data row 1 \(line 2\): wrong type"):
        read_raw_dir(raw_dir)
    assert DEMOGRAPHICS_SCHEMA["height_cm"] is pl.Float64


def test_importing_the_schema_leaves_numpy_out() -> None:
    """bench/extract.py's floor (a plain polars read of train.csv) imports cmi.schema for
    TRAIN_SCHEMA: numpy's import would be charged to the floor, not to the stage."""
    code = "import sys, cmi.schema; print('numpy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
