"""extract.fix_upside_down end to end on tiny synthetic data: the extract stage fits the
detector, flags the generator's upside-down subject, rotates its rows back before the shared
feature path and records the decision; inference (cmi.wear.online) decides per subject from
the sequences seen so far and rotates a flagged subject's sequences back the same way."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from pipeline_helpers import make_project, run_stage

import cmi.extract
from cmi.extract import extract
from cmi.features import compute_features, is_modality_channel, prepare_sensor_frame
from cmi.io import read_json, write_with
from cmi.params import ExtractParams
from cmi.paths import ProjectPaths
from cmi.schema import DEMOGRAPHICS_SCHEMA, TRAIN_SCHEMA
from cmi.synth import subject_table
from cmi.synth.dataset import FILE_NAMES, generate
from cmi.wear import rotate_back
from cmi.wear.pipeline import model_from_record, rotate_subjects, wear_record

FIX = ExtractParams(fix_upside_down=True)


@pytest.fixture(scope="module")
def generator_upside_down() -> str:
    table = subject_table("tiny", 0).filter(pl.col("split") == "train", pl.col("upside_down"))
    assert table.height == 1
    return table["subject"][0]


@pytest.fixture(scope="module")
def fixed_project(tmp_path_factory: pytest.TempPathFactory, tiny_raw_dir: Path) -> Path:
    """The extract stage run on tiny data with the correction on."""
    root = make_project(
        tmp_path_factory.mktemp("wear"), tiny_raw_dir, {"extract": {"fix_upside_down": True}}
    )
    run_stage("extract.py", root)
    return root


@pytest.fixture(scope="module")
def upright_raw_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny's twin in which every subject wears the device the normal way."""
    out = tmp_path_factory.mktemp("upright_raw")
    frames = generate("tiny", 0, upside_down=False)
    for name in FILE_NAMES:
        write_with(out / name, frames[name].write_csv)
    return out


def _rows_of(table: pl.DataFrame, ids: pl.Series) -> pl.DataFrame:
    return table.filter(pl.col("sequence_id").is_in(ids.implode())).sort(
        "sequence_id", maintain_order=True
    )


def test_extract_flags_and_records_the_generators_subject(
    fixed_project: Path, tiny_features_project: Path, generator_upside_down: str
) -> None:
    fixed, plain = ProjectPaths(fixed_project), ProjectPaths(tiny_features_project)
    sequences = pl.read_parquet(fixed.sequences)
    assert sequences.schema["upside_down"] == pl.Boolean
    flagged = sequences.filter(pl.col("upside_down"))["subject"].unique().to_list()
    assert flagged == [generator_upside_down]
    # The other columns are the contract's, as with the correction off.
    assert sequences.drop("upside_down").equals(pl.read_parquet(plain.sequences))

    record = read_json(fixed.wear_model)
    assert record["enabled"] and record["upside_down_subjects"] == [generator_upside_down]
    model = model_from_record(record)
    assert model is not None and model.to_dict() == record["model"]
    assert read_json(plain.wear_model) == {"version": 1, "enabled": False}
    assert model_from_record(read_json(plain.wear_model)) is None

    # Everyone else's features are exactly those of the run without the correction.
    others = sequences.filter(~pl.col("upside_down"))["sequence_id"]
    for path in ("sequence_features", "frame_features"):
        got = _rows_of(pl.read_parquet(getattr(fixed, path)), others)
        assert got.equals(_rows_of(pl.read_parquet(getattr(plain, path)), others)), path


def _imu_sequence_features(raw_dir: Path, params: ExtractParams, ids: pl.Series) -> np.ndarray:
    table = _rows_of(extract(raw_dir, params).features.sequence_features, ids)
    imu = [c for c in table.columns[1:] if not is_modality_channel(c)]
    return table.select(imu).to_numpy().astype(float)


def test_rotated_back_subject_looks_like_its_upright_twin(
    tiny_raw_dir: Path, upright_raw_dir: Path, generator_upside_down: str
) -> None:
    """The generator's twin data set differs only in how that subject wears the device (its
    accelerometer bias stays with the device, so the match is close, not exact)."""
    train = pl.read_csv(tiny_raw_dir / "train.csv", columns=["sequence_id", "subject"])
    ids = train.filter(pl.col("subject") == generator_upside_down)["sequence_id"].unique()
    upright = _imu_sequence_features(upright_raw_dir, ExtractParams(), ids)
    fixed = _imu_sequence_features(tiny_raw_dir, FIX, ids)
    as_recorded = _imu_sequence_features(tiny_raw_dir, ExtractParams(), ids)
    scale = np.nanmax(np.abs(upright), axis=0) + 1e-6
    fixed_gap = np.nanmedian(np.nanmax(np.abs(fixed - upright), axis=0) / scale)
    recorded_gap = np.nanmedian(np.nanmax(np.abs(as_recorded - upright), axis=0) / scale)
    assert fixed_gap < 0.25 * recorded_gap, (fixed_gap, recorded_gap)
    assert fixed_gap < 0.1


def test_whole_table_fallback_applies_the_same_correction(
    tiny_raw_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sequence split in the file: the features come from the validated table, corrected
    the same way as the streamed ones."""
    monkeypatch.setattr(cmi.extract, "BATCH_ROWS", 997)
    raw_dir = tmp_path / "raw"
    shutil.copytree(tiny_raw_dir, raw_dir)
    train = pl.read_csv(raw_dir / "train.csv", schema=TRAIN_SCHEMA)
    first = train["sequence_id"][0]
    one = train.filter(pl.col("sequence_id") == first)
    rest = train.filter(pl.col("sequence_id") != first)
    pl.concat([one.head(5), rest, one.slice(5)]).write_csv(raw_dir / "train.csv")
    outputs = extract(raw_dir, FIX)
    assert outputs.wear is not None and len(outputs.wear.upside_down_subjects) == 1
    demographics = pl.read_csv(raw_dir / "train_demographics.csv", schema=DEMOGRAPHICS_SCHEMA)
    sensor = prepare_sensor_frame(rotate_subjects(train, outputs.wear.upside_down_subjects))
    expected = compute_features(sensor, demographics, FIX)
    assert outputs.features.sequence_features.equals(expected.sequence_features)
    assert outputs.features.frame_features.equals(expected.frame_features)
    streamed = extract(tiny_raw_dir, FIX)
    assert streamed.wear is not None
    assert streamed.wear.upside_down_subjects == outputs.wear.upside_down_subjects


def test_known_subjects_are_taken_and_unknown_ones_named(
    tiny_raw_dir: Path, generator_upside_down: str
) -> None:
    params = ExtractParams(fix_upside_down=True, upside_down_subjects=[generator_upside_down])
    assert params.upside_down_subjects == (generator_upside_down,)
    outputs = extract(tiny_raw_dir, params)
    assert outputs.wear is not None
    assert outputs.wear.upside_down_subjects == (generator_upside_down,)
    bad = ExtractParams(fix_upside_down=True, upside_down_subjects=("SUBJ_NOBODY",))
    with pytest.raises(ValueError, match=r"extract\.upside_down_subjects.*SUBJ_NOBODY"):
        extract(tiny_raw_dir, bad)


def test_rotate_subjects_touches_only_their_rows(tiny_raw_dir: Path) -> None:
    train = pl.read_csv(tiny_raw_dir / "train.csv", schema=TRAIN_SCHEMA)
    subject = train["subject"][0]
    out = rotate_subjects(train, [subject])
    mine = pl.col("subject") == subject
    assert out.filter(~mine).equals(train.filter(~mine))
    assert out.filter(mine).equals(rotate_back(train.filter(mine)))
    assert rotate_subjects(train, []) is train


def test_wear_record_rejects_a_malformed_file() -> None:
    assert wear_record(None) == {"version": 1, "enabled": False}
    with pytest.raises(ValueError, match=r"wear_model\.json"):
        model_from_record({"version": 1, "enabled": True, "model": {"coef": [1.0]}})
    with pytest.raises(ValueError, match="version"):
        model_from_record({"enabled": False})
