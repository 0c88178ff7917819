"""DVC stage `extract`: validated raw CSVs -> sequence table, LightGBM and Torch features.

Reads data/raw (train and test files are both validated; only train gets features), then
writes data/features/{sequences,sequence_features,frame_features}.parquet. Everything is
computed before anything is written, so a bad input leaves earlier outputs untouched.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl

from cmi.features import compute_features, prepare_sensor_frame
from cmi.io import write_parquet
from cmi.params import load_params
from cmi.paths import ProjectPaths
from cmi.schema import GESTURE_INDEX, SchemaError, read_raw_dir

log = logging.getLogger("cmi.stages.extract")

SEQUENCES_COLUMNS = (
    "sequence_id",
    "subject",
    "gesture",
    "label",
    # Training-only context, kept as possible targets (post-processing's protocol slots,
    # auxiliary heads); never features.
    "orientation",
    "initial_behavior",
    "sensor_group",
    "length",
    "handedness",
)


@contextmanager
def _timed(step: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    log.info("%s: %.1f s", step, time.perf_counter() - start)


def _gesture_labels(train: pl.DataFrame) -> pl.DataFrame:
    """sequence_id -> gesture, label (class index), orientation and the initial behaviour
    (that of the first frame); the raw validation made gesture and orientation unique."""
    return (
        train.sort("sequence_id", "sequence_counter")
        .group_by("sequence_id")
        .agg(
            pl.col("gesture").first(),
            pl.col("orientation").first(),
            pl.col("behavior").first().alias("initial_behavior"),
        )
        .with_columns(
            pl.col("gesture").replace_strict(GESTURE_INDEX, return_dtype=pl.Int32).alias("label")
        )
    )


def main(root: Path = Path(".")) -> None:
    paths = ProjectPaths(root)
    params = load_params(paths.params).extract

    with _timed("read + validate raw CSVs"):
        raw = read_raw_dir(paths.raw_dir)
    train, demographics = raw.train, raw.train_demographics
    del raw  # the test files were only validated; free them
    log.info("train: %d rows, %d sequences", train.height, train["sequence_id"].n_unique())

    labels = _gesture_labels(train)
    with _timed("prepare sensor frame"):
        sensor = prepare_sensor_frame(train)
    del train  # the prepared frame holds everything features need; halve peak memory
    with _timed("compute features"):
        features = compute_features(sensor, demographics, params)
    del sensor

    sequences = features.sequences.join(labels, on="sequence_id", how="left").select(
        SEQUENCES_COLUMNS
    )
    with _timed("write parquet"):
        write_parquet(sequences, paths.sequences)
        write_parquet(features.sequence_features, paths.sequence_features)
        write_parquet(features.frame_features, paths.frame_features)
    groups = dict(sequences.group_by("sensor_group").len().iter_rows())
    log.info(
        "%d sequences %s, %d sequence features, %d frame channels",
        sequences.height,
        groups,
        features.sequence_features.width - 1,
        features.frame_features.width - 2,
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        main()
    except SchemaError as err:
        log.error("%s", err)
        sys.exit(1)
