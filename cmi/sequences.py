"""The sequences table (``data/features/sequences.parquet``): one row per training sequence.

It joins what the feature path knows of a sequence (``cmi.features.FeatureSet.sequences``:
subject, sensor group, length, handedness) with its labels from train.csv. Labels and the
training-only context (orientation, the initial behaviour) are possible targets, for
post-processing's protocol slots or auxiliary heads; they are never features.

Every stage that reads it with the folds table (and a features table) checks them here, so a
bad or stale table gives the same message whichever stage reads it: ``labeled_folds`` (labels,
sensor groups and folds of every sequence), ``require_*`` (columns, unique and matching
sequence ids) and ``read_tables``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from cmi.schema import GESTURE_INDEX, N_CLASSES

# How a sequence arrives: all sensors, or IMU only (thm/ToF null, as half the hidden test).
SENSOR_GROUPS: tuple[str, ...] = ("full", "imu_only")
SEQUENCES_SCHEMA: dict[str, type[pl.DataType]] = {
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
SEQUENCES_COLUMNS: tuple[str, ...] = tuple(SEQUENCES_SCHEMA)
SEQUENCES_FILE = "sequences.parquet"
FOLDS_FILE = "folds.parquet"


def sequence_labels(train: pl.DataFrame) -> pl.DataFrame:
    """sequence_id -> gesture, label (class index), orientation and the initial behaviour
    (that of the frame with the lowest sequence_counter); raw validation made gesture and
    orientation unique per sequence.

    Reads only the five columns it needs, with no sort of the table: sorting all of
    train.csv's 341 columns to find first frames cost seconds on the full data.
    """
    first_frame = pl.col("sequence_counter").arg_min()
    return (
        train.lazy()
        .select("sequence_id", "sequence_counter", "gesture", "orientation", "behavior")
        .group_by("sequence_id")
        .agg(
            pl.col("gesture").first(),
            pl.col("orientation").first(),
            pl.col("behavior").get(first_frame).alias("initial_behavior"),
        )
        .with_columns(
            pl.col("gesture").replace_strict(GESTURE_INDEX, return_dtype=pl.Int32).alias("label")
        )
        .collect()
    )


def sequences_table(feature_sequences: pl.DataFrame, labels: pl.DataFrame) -> pl.DataFrame:
    """The sequences table: the feature path's per-sequence facts plus their labels, in
    ``SEQUENCES_COLUMNS`` order and sorted by sequence_id as the feature tables are."""
    table = feature_sequences.join(labels, on="sequence_id", how="left", maintain_order="left")
    return table.select(SEQUENCES_COLUMNS)


# ---------------------------------------------------------------- checks of tables keyed by id
# Shared by every reader of the stage tables (sequences, features, folds), so a bad table gives
# the same message whichever stage reads it.


def read_tables(files: Sequence[Path]) -> list[pl.DataFrame]:
    """The parquet tables a training stage reads, in order; FileNotFoundError naming the first
    that is not there."""
    for path in files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: missing; run the extract and folds stages first")
    return [pl.read_parquet(path) for path in files]


def require_columns(frame: pl.DataFrame, columns: Sequence[str], file_name: str) -> None:
    """ValueError naming ``file_name`` and the absent columns, unless ``frame`` has them all."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{file_name}: missing column(s) {missing}")


def require_unique_ids(frame: pl.DataFrame, file_name: str) -> None:
    """ValueError naming up to three repeated sequence_ids, unless each appears once."""
    duplicated = frame.filter(pl.col("sequence_id").is_duplicated())["sequence_id"]
    if duplicated.len():
        raise ValueError(
            f"{file_name}: duplicate sequence_id {duplicated.unique().head(3).to_list()}"
        )


def require_ids_in(ids: pl.Series, other: pl.Series, file_name: str, other_name: str) -> None:
    """ValueError unless every sequence_id of ``file_name`` (``ids``) has a row in
    ``other_name`` (``other``); names how many lack one and up to three of them."""
    missing = ids.filter(~ids.is_in(other.implode()))
    if missing.len():
        raise ValueError(
            f"{other_name}: no row for {missing.len()} sequence(s) of {file_name}, "
            f"e.g. {missing.head(3).to_list()}"
        )


def labeled_folds(
    sequences: pl.DataFrame, folds: pl.DataFrame, extra: Sequence[str] = ()
) -> pl.DataFrame:
    """``sequence_id, fold, label, sensor_group`` (then the ``extra`` columns of ``sequences``)
    of every sequence, sorted by sequence_id; what each model stage trains and scores on.

    ValueError naming the file, column and sequences unless: both tables have their columns
    and one row per sequence_id, they hold the same sequences (a folds table made from another
    sequences table is stale), every label is a class index in 0..17, every sensor_group one
    of ``SENSOR_GROUPS``, and the folds are exactly 0..K-1.
    """
    require_columns(sequences, ["sequence_id", "label", "sensor_group", *extra], SEQUENCES_FILE)
    require_columns(folds, ["sequence_id", "fold"], FOLDS_FILE)
    require_unique_ids(sequences, SEQUENCES_FILE)
    require_unique_ids(folds, FOLDS_FILE)
    require_ids_in(sequences["sequence_id"], folds["sequence_id"], SEQUENCES_FILE, FOLDS_FILE)
    require_ids_in(folds["sequence_id"], sequences["sequence_id"], FOLDS_FILE, SEQUENCES_FILE)
    table = (
        folds.select("sequence_id", "fold")
        .join(
            sequences.select("sequence_id", "label", "sensor_group", *extra),
            on="sequence_id",
            how="left",
        )
        .sort("sequence_id")
    )
    if table.height == 0:
        raise ValueError(f"{FOLDS_FILE}: no sequences")
    _check_values(table)
    return table


def _check_values(table: pl.DataFrame) -> None:
    def first_bad(condition: pl.Expr) -> list[str]:
        return table.filter(condition)["sequence_id"].head(3).to_list()

    bad = first_bad(pl.col("label").is_null() | ~pl.col("label").is_between(0, N_CLASSES - 1))
    if bad:
        raise ValueError(
            f"{SEQUENCES_FILE}: column label null or outside 0..{N_CLASSES - 1} for {bad}"
        )
    bad = first_bad(~pl.col("sensor_group").is_in(SENSOR_GROUPS) | pl.col("sensor_group").is_null())
    if bad:
        raise ValueError(f"{SEQUENCES_FILE}: column sensor_group not in {SENSOR_GROUPS} for {bad}")
    bad = first_bad(pl.col("fold").is_null() | (pl.col("fold") < 0))
    if bad:
        raise ValueError(f"{FOLDS_FILE}: column fold null or negative for {bad}")
    present = set(table["fold"].unique().to_list())
    expected = set(range(max(present) + 1))
    if present != expected:
        raise ValueError(f"{FOLDS_FILE}: folds {sorted(present)} are not 0..{max(present)}")
