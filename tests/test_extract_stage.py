"""stages/extract.py on tiny synthetic data: the contract's three files, and bad input;
cmi.extract's features-while-parsing give the whole table's features."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import polars as pl
import pytest
from pipeline_helpers import copy_project, run_stage

import cmi.extract
from cmi.extract import extract, extract_to
from cmi.features import (
    FeatureSet,
    compute_features,
    frame_channels,
    is_modality_channel,
    prepare_sensor_frame,
    sequence_feature_names,
)
from cmi.io import sha256_file
from cmi.params import ExtractParams, load_params
from cmi.paths import ProjectPaths
from cmi.schema import (
    DEMOGRAPHICS_SCHEMA,
    GESTURE_INDEX,
    GESTURES,
    TRAIN_ONLY_COLUMNS,
    TRAIN_SCHEMA,
    SchemaError,
)
from cmi.sequences import SEQUENCES_SCHEMA as SEQUENCES_CONTRACT

SEQUENCES_SCHEMA = {
    "sequence_id": pl.String,
    "subject": pl.String,
    "gesture": pl.String,
    "label": pl.Int32,
    "orientation": pl.String,
    "initial_behavior": pl.String,
    "sensor_group": pl.String,
    "length": pl.Int32,
    "handedness": pl.Int32,
}


def test_extract_writes_the_contract(tiny_features_project: Path) -> None:
    paths = ProjectPaths(tiny_features_project)
    params = load_params(paths.params).extract
    raw = pl.read_csv(paths.raw_dir / "train.csv", schema=TRAIN_SCHEMA)

    sequences = pl.read_parquet(paths.sequences)
    assert dict(sequences.schema) == SEQUENCES_SCHEMA == SEQUENCES_CONTRACT
    assert sequences.height == raw["sequence_id"].n_unique()
    assert sequences["sequence_id"].is_unique().all()
    assert set(sequences["gesture"]) <= set(GESTURES)
    assert sequences["label"].to_list() == [GESTURE_INDEX[g] for g in sequences["gesture"]]
    assert set(sequences["sensor_group"]) == {"full", "imu_only"}
    first_rows = raw.sort("sequence_id", "sequence_counter").group_by("sequence_id").first()
    context = sequences.join(first_rows, on="sequence_id")
    assert (context["orientation"] == context["orientation_right"]).all()
    assert (context["initial_behavior"] == context["behavior"]).all()
    truth = raw.group_by("sequence_id").agg(pl.len().cast(pl.Int32).alias("n"))
    joined = sequences.join(truth, on="sequence_id")
    assert (joined["length"] == joined["n"]).all()

    seq_features = pl.read_parquet(paths.sequence_features)
    assert seq_features.columns == ["sequence_id", *sequence_feature_names(params)]
    assert set(seq_features.dtypes[1:]) == {pl.Float32}
    assert seq_features["sequence_id"].to_list() == sequences["sequence_id"].to_list()

    frames = pl.read_parquet(paths.frame_features)
    channels = frame_channels(params)
    assert frames.columns == ["sequence_id", "sequence_counter", *channels]
    assert frames["sequence_counter"].dtype == pl.Int32
    assert set(frames.dtypes[2:]) == {pl.Float32}
    assert frames.height == raw.height
    assert frames.equals(frames.sort("sequence_id", "sequence_counter"))
    imu = [c for c in channels if not is_modality_channel(c)]
    assert frames.select(pl.col(imu).null_count().sum()).row(0) == (0,) * len(imu)

    imu_only = sequences.filter(pl.col("sensor_group") == "imu_only")["sequence_id"]
    modality = [c for c in seq_features.columns if is_modality_channel(c)]
    only = seq_features.filter(pl.col("sequence_id").is_in(imu_only.implode()))
    assert only.select(pl.col(modality).is_null().all()).row(0) == (True,) * len(modality)

    # The label table may carry training-only targets; the feature tables never do.
    assert set(sequences.columns) & set(TRAIN_ONLY_COLUMNS) == {"gesture", "orientation"}
    for frame in (seq_features, frames):
        assert not set(frame.columns) & {*TRAIN_ONLY_COLUMNS, "initial_behavior"}


def test_bad_raw_file_fails_and_keeps_outputs(tiny_features_project: Path, tmp_path: Path) -> None:
    root = copy_project(tiny_features_project, tmp_path / "p")
    paths = ProjectPaths(root)
    outputs = [paths.sequences, paths.sequence_features, paths.frame_features, paths.wear_model]
    before = {p: sha256_file(p) for p in outputs}

    train_csv = paths.raw_dir / "train.csv"
    text = train_csv.read_text()
    gesture = next(g for g in GESTURES if f",{g}," in text)
    train_csv.write_text(text.replace(f",{gesture},", ",Juggle chainsaws,", 1))

    result = run_stage("extract.py", root, check=False)
    assert result.returncode != 0
    assert "train.csv" in result.stderr and "Juggle chainsaws" in result.stderr
    assert "Traceback" not in result.stderr
    assert {p: sha256_file(p) for p in outputs} == before
    assert not list(paths.features_dir.glob(".*.tmp"))


@pytest.mark.parametrize("broken", ["test.csv", "test_demographics.csv"])
def test_test_files_are_validated_too(
    tiny_features_project: Path, tmp_path: Path, broken: str
) -> None:
    root = copy_project(tiny_features_project, tmp_path / "p")
    target = ProjectPaths(root).raw_dir / broken
    lines = target.read_text().splitlines()
    target.write_text("\n".join([lines[0].replace("subject", "subjekt"), *lines[1:]]) + "\n")
    result = run_stage("extract.py", root, check=False)
    assert result.returncode != 0
    assert broken in result.stderr


# ----------------------------------------------------------------------------- cmi.extract


def whole_table_features(raw_dir: Path, params: ExtractParams) -> FeatureSet:
    train = pl.read_csv(raw_dir / "train.csv", schema=TRAIN_SCHEMA)
    demographics = pl.read_csv(raw_dir / "train_demographics.csv", schema=DEMOGRAPHICS_SCHEMA)
    return compute_features(prepare_sensor_frame(train), demographics, params)


def assert_same_features(got: FeatureSet, expected: FeatureSet) -> None:
    assert got.sequences.equals(expected.sequences)
    assert got.sequence_features.equals(expected.sequence_features)
    assert got.frame_features.equals(expected.frame_features)


def test_features_while_parsing_are_the_whole_tables(
    tiny_raw_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small batches, so sequences are cut at batch boundaries and carried to the next."""
    monkeypatch.setattr(cmi.extract, "BATCH_ROWS", 997)
    params = ExtractParams()
    n_rows = pl.read_csv(tiny_raw_dir / "train.csv", columns=["row_id"]).height
    assert n_rows > 5 * 997
    outputs = extract(tiny_raw_dir, params)
    assert_same_features(outputs.features, whole_table_features(tiny_raw_dir, params))
    assert outputs.sequences["sequence_id"].equals(outputs.features.sequences["sequence_id"])


def test_batch_features_are_joined_in_sequence_id_order(tiny_raw_dir: Path) -> None:
    """cmi.extract._concat: parts in id order are only concatenated, parts in any other
    order are sorted; either way the whole table's features (empty parts ignored)."""
    whole = whole_table_features(tiny_raw_dir, ExtractParams())
    ids = whole.sequences["sequence_id"]
    assert ids.is_sorted() and ids.len() >= 6

    def part(first: int, stop: int) -> FeatureSet:
        keep = pl.col("sequence_id").is_in(ids.slice(first, stop - first).implode())
        return FeatureSet(*(getattr(whole, t).filter(keep) for t in TABLES))

    n = ids.len()
    parts = [part(0, 2), part(2, 2), part(2, n // 2), part(n // 2, n)]
    assert cmi.extract._in_id_order([parts[0], parts[2], parts[3]])
    assert not cmi.extract._in_id_order(parts[::-1])
    for order in (parts, parts[::-1], [parts[3], parts[0], parts[2]]):
        assert_same_features(cmi.extract._concat(order), whole)


TABLES = ("sequences", "sequence_features", "frame_features")


def test_a_long_and_a_short_row_in_train_csv_name_the_first(
    tiny_raw_dir: Path, tmp_path: Path
) -> None:
    """The commas of train.csv add up (one extra field, one missing): the parse thread's
    error is not reported as a bad value, the first ragged row is."""
    raw_dir = tmp_path / "raw"
    shutil.copytree(tiny_raw_dir, raw_dir)
    lines = (raw_dir / "train.csv").read_bytes().splitlines(keepends=True)
    n_fields = lines[0].count(b",") + 1
    lines[100] = lines[100].rstrip(b"\n") + b",1\n"
    lines[200] = lines[200].rstrip(b"\n").rsplit(b",", 1)[0] + b"\n"
    (raw_dir / "train.csv").write_bytes(b"".join(lines))
    with pytest.raises(
        SchemaError, match=rf"train\.csv: data row 100 \(line 101\) has {n_fields + 1} field"
    ):
        extract(raw_dir, ExtractParams())


def test_a_sequence_split_in_the_file_falls_back_to_the_whole_table(
    tiny_raw_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counters still increase in file order, so the file validates; the batches see the
    sequence twice, and the features come from the whole validated table instead."""
    monkeypatch.setattr(cmi.extract, "BATCH_ROWS", 997)
    raw_dir = tmp_path / "raw"
    shutil.copytree(tiny_raw_dir, raw_dir)
    train = pl.read_csv(raw_dir / "train.csv", schema=TRAIN_SCHEMA)
    first = train["sequence_id"][0]
    one = train.filter(pl.col("sequence_id") == first)
    rest = train.filter(pl.col("sequence_id") != first)
    pl.concat([one.head(5), rest, one.slice(5)]).write_csv(raw_dir / "train.csv")
    params = ExtractParams()
    outputs = extract(raw_dir, params)
    assert_same_features(outputs.features, whole_table_features(raw_dir, params))
    assert outputs.features.sequences["sequence_id"].is_unique().all()


def test_a_bad_sensor_value_names_column_and_row(tiny_raw_dir: Path, tmp_path: Path) -> None:
    raw_dir = tmp_path / "raw"
    shutil.copytree(tiny_raw_dir, raw_dir)
    train = pl.read_csv(raw_dir / "train.csv", schema=TRAIN_SCHEMA)
    bad = train.with_columns(pl.col("thm_3").cast(pl.String))
    row = pl.int_range(pl.len()) == 4321
    bad = bad.with_columns(pl.when(row).then(pl.lit("warm")).otherwise("thm_3").alias("thm_3"))
    bad.write_csv(raw_dir / "train.csv")
    with pytest.raises(SchemaError, match=r"train\.csv: column 'thm_3', data row 4322.*'warm'"):
        extract(raw_dir, ExtractParams())


def test_a_truncated_train_file_fails_before_its_parse_is_used(
    tiny_raw_dir: Path, tmp_path: Path
) -> None:
    """train.csv parses from the start, but read_raw_dir's checks come first: a file cut
    short fails on its ragged last row, and the parse and features threads are stopped."""
    raw_dir = tmp_path / "raw"
    shutil.copytree(tiny_raw_dir, raw_dir)
    text = (raw_dir / "train.csv").read_text()
    (raw_dir / "train.csv").write_text(text[: len(text) // 2])
    threads_before = threading.active_count()
    with pytest.raises(SchemaError, match=r"train\.csv: data row \d+ .*(truncated|ragged)"):
        extract(raw_dir, ExtractParams())
    assert threading.active_count() == threads_before


def test_feature_tables_written_early_are_discarded_when_a_later_file_fails(
    tiny_features_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """extract_to writes the feature tables while the other files still validate; a failure
    after that (here: read_raw_dir failing once they are written) leaves the earlier outputs
    as they were, no temp file, no thread."""
    root = copy_project(tiny_features_project, tmp_path / "p")
    paths = ProjectPaths(root)
    outputs = [paths.sequences, paths.sequence_features, paths.frame_features, paths.wear_model]
    for path in outputs:  # outputs of an earlier run, unlike what this run would write
        pl.DataFrame({"earlier": [path.name]}).write_parquet(path)
    before = {p: sha256_file(p) for p in outputs}
    staged = threading.Event()
    real_staged_write, real_read_raw_dir = cmi.extract._StagedWrite, cmi.extract.read_raw_dir

    class SpiedStagedWrite(real_staged_write):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object) -> None:
            super().__init__(*args)
            staged.set()

    def read_then_fail(*args: object, **kwargs: object) -> None:
        real_read_raw_dir(*args, **kwargs)
        assert staged.wait(timeout=60)
        raise SchemaError("test_demographics.csv: a late failure")

    monkeypatch.setattr(cmi.extract, "_StagedWrite", SpiedStagedWrite)
    monkeypatch.setattr(cmi.extract, "read_raw_dir", read_then_fail)
    threads_before = threading.active_count()
    with pytest.raises(SchemaError, match="late failure"):
        extract_to(paths, load_params(paths.params).extract)
    assert {p: sha256_file(p) for p in outputs} == before
    assert not list(paths.features_dir.glob(".*.tmp"))
    assert threading.active_count() == threads_before
