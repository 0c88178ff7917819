"""``compute_features``: prepared sensor rows -> the sequences table, sequence features and
frame features, for the whole train table and for one sequence at inference alike."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
import polars as pl

from cmi.features.channels import SensorBlock, imu_channels, modality_channels
from cmi.features.groups import Groups
from cmi.features.names import (
    DEMOGRAPHIC_FEATURES,
    IMU_CHANNELS,
    channel_names,
    feature_names,
    n_segments,
)
from cmi.features.prepare import is_prepared, prepare_sensor_frame
from cmi.features.stats import sequence_statistics
from cmi.features.tables import (
    demographic_values,
    empty_tables,
    finite_float32,
    frame_table,
    sequence_feature_table,
    sequence_table,
)
from cmi.params import ExtractParams
from cmi.schema import SENSOR_COLUMNS

SEQUENCE_KEYS: tuple[str, ...] = ("sequence_id", "sequence_counter")
_SENSOR_LIST = list(SENSOR_COLUMNS)
# Rows per block of whole sequences: the batch is computed block by block, so temporaries
# stay in cache and small (~11 MB for a block's raw values): big ones are fresh pages from
# the kernel every time, and zeroing them cost more system time than the arithmetic (full
# data: 1.7 s -> 0.65 s of system time going from 16,384 to 4,096 rows). Every result is per
# row or per sequence, so blocks change nothing.
_BLOCK_ROWS = 4_096
_MAX_WORKERS = 4  # threads computing blocks of a large table


@dataclass(frozen=True)
class FeatureSet:
    """Outputs of ``compute_features``; no labels.

    sequences: sequence_id, subject, sensor_group ("full" | "imu_only"), length (Int32),
      handedness (Int32, null for an unknown subject); sorted by sequence_id.
    sequence_features: sequence_id + Float32 columns in ``sequence_feature_names`` order.
    frame_features: sequence_id, sequence_counter (Int32) + Float32 columns in
      ``frame_channels`` order; rows sorted by (sequence_id, sequence_counter).
    """

    sequences: pl.DataFrame
    sequence_features: pl.DataFrame
    frame_features: pl.DataFrame


def compute_features(
    sensor: pl.DataFrame, demographics: pl.DataFrame | None, params: ExtractParams
) -> FeatureSet:
    """Frame channels and sequence features of every sequence in ``sensor``.

    ``sensor`` should come from ``prepare_sensor_frame`` (anything else is prepared first);
    ``demographics`` may be empty or lack columns (features then null). Works the same for
    the whole train table and for one sequence at inference.
    """
    if not is_prepared(sensor):
        sensor = prepare_sensor_frame(sensor)
    if sensor.height == 0:
        return FeatureSet(*empty_tables(params))
    sensor, groups, order = _layout(sensor)
    # Absurd inputs (1e300) may overflow; the results are clipped or nulled, so stay quiet.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _compute(sensor, groups, order, demographics, params)


def _layout(sensor: pl.DataFrame) -> tuple[pl.DataFrame, Groups, np.ndarray]:
    """The table, its sequences as groups of rows in table order, and the groups' order by
    sequence_id (the output order).

    Each sequence must be one contiguous run of rows in counter order: validated train.csv
    files are (rows of a sequence together, counters increasing), in whatever order of
    sequences, and are used as they are. Anything else is sorted first: sorting all 335
    columns of the train table cost more than computing every feature.
    """
    sequence_ids = sensor.get_column("sequence_id").to_numpy()
    counter = sensor.get_column("sequence_counter").to_numpy()
    groups = Groups.from_ids(sequence_ids)
    group_ids = sequence_ids[groups.starts]
    in_order = np.all((counter[1:] >= counter[:-1]) | (sequence_ids[1:] != sequence_ids[:-1]))
    if in_order and len(set(group_ids.tolist())) == len(group_ids):
        return sensor, groups, np.argsort(group_ids, kind="stable")
    sensor = sensor.sort(SEQUENCE_KEYS, maintain_order=True)
    groups = Groups.from_ids(sensor.get_column("sequence_id").to_numpy())
    return sensor, groups, np.arange(len(groups.counts))


def _compute(
    sensor: pl.DataFrame,
    groups: Groups,
    order: np.ndarray,
    demographics: pl.DataFrame | None,
    params: ExtractParams,
) -> FeatureSet:
    """Every feature, computed block by block in table order and written straight into
    float32 arrays in output order (no float64 copy of the whole table, no reordering
    copy: at full size each one cost more in page faults than in arithmetic)."""
    names = channel_names(params.tof_regions)
    feature_columns = feature_names(params.tof_regions, n_segments(params))
    out = _Outputs.allocate(groups, order, len(names), len(feature_columns))
    subjects = sensor.get_column("subject").to_numpy()[groups.starts].tolist()
    demo_values = demographic_values(subjects, demographics)  # table order
    left_handed = None
    if params.mirror_left_handed:
        left_handed = demo_values[:, DEMOGRAPHIC_FEATURES.index("handedness")] == 0
    blocks = list(groups.blocks(_BLOCK_ROWS))
    work = partial(_block_features, sensor[_SENSOR_LIST], params, out, left_handed)
    workers = min(len(blocks), _workers())
    if workers == 1:  # e.g. one sequence at inference: no thread hand-off
        for item in blocks:
            work(item)
    else:
        # numpy releases the GIL inside its loops, so blocks overlap on several cores.
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, blocks))

    frame_features = frame_table(out.frames, names)
    ids, counter = sensor.get_column("sequence_id"), sensor.get_column("sequence_counter")
    if not out.in_table_order:
        rows = groups.take(order)[0]
        ids, counter = ids.gather(rows), counter.gather(rows)
    frame_features.insert_column(0, ids)
    frame_features.insert_column(1, counter.cast(pl.Int32, strict=False))
    # the groups in output order, their rows still numbered in table order
    groups = Groups(groups.starts[order], groups.counts[order], groups.n_rows)
    demo_values = demo_values[order]
    sequences = sequence_table(sensor, groups, out.has_modality, demo_values)
    n_statistics = len(feature_columns) - 1 - len(DEMOGRAPHIC_FEATURES)
    out.statistics[:, n_statistics] = groups.counts  # "length"
    out.statistics[:, n_statistics + 1 :] = finite_float32(demo_values)
    sequence_features = sequence_feature_table(
        out.statistics, feature_columns, sequences.get_column("sequence_id")
    )
    return FeatureSet(sequences, sequence_features, frame_features)


@dataclass(frozen=True)
class _Outputs:
    """The result arrays, in output order (sequence_id, then counter), and where each group
    of the table (in table order) goes in them. Blocks write disjoint parts, so threads can
    fill them side by side."""

    frames: np.ndarray  # (channels, rows) float32
    statistics: np.ndarray  # (sequences, sequence features) float32
    has_modality: np.ndarray  # (sequences,) any thm/ToF value reported
    position: np.ndarray  # table group -> its output index
    first_row: np.ndarray  # table group -> its first output row
    in_table_order: bool

    @classmethod
    def allocate(
        cls, groups: Groups, order: np.ndarray, n_channels: int, n_features: int
    ) -> _Outputs:
        n_groups = len(order)
        position = np.empty(n_groups, dtype=np.int64)
        position[order] = np.arange(n_groups)
        output_starts = np.cumsum(groups.counts[order]) - groups.counts[order]
        return cls(
            frames=np.empty((n_channels, groups.n_rows), dtype=np.float32),
            statistics=np.empty((n_groups, n_features), dtype=np.float32),
            has_modality=np.empty(n_groups, dtype=bool),
            position=position,
            first_row=output_starts[position],
            in_table_order=bool(np.all(order[1:] > order[:-1])),
        )

    def write(
        self,
        which: slice,
        rows: slice,
        block: Groups,
        channels: np.ndarray,
        statistics: np.ndarray,
        reported: np.ndarray,
    ) -> None:
        """Results of the table's groups ``which`` (rows ``rows``), computed as ``block``."""
        sequences = self.position[which]
        self.statistics[sequences, : statistics.shape[1]] = finite_float32(statistics)
        self.has_modality[sequences] = np.logical_or.reduceat(reported, block.starts)
        if not self.in_table_order:
            rows = block.per_row(self.first_row[which]) + block.index_in_group()
        self.frames[:, rows] = finite_float32(channels)


def _workers() -> int:
    try:
        return max(1, min(_MAX_WORKERS, len(os.sched_getaffinity(0))))
    except AttributeError:  # not on Linux
        return max(1, min(_MAX_WORKERS, os.cpu_count() or 1))


def _block_features(
    sensor: pl.DataFrame,
    params: ExtractParams,
    out: _Outputs,
    left_handed: np.ndarray | None,
    item: tuple[slice, slice, Groups],
) -> None:
    """Frame channels and sequence statistics of one block of whole sequences, into ``out``;
    the sequences flagged in ``left_handed`` (per table group) are mirrored first."""
    which, rows, block = item
    n_imu = len(IMU_CHANNELS)
    values = SensorBlock.from_frame(sensor.slice(rows.start, block.n_rows))
    if left_handed is not None and left_handed[which].any():
        values = values.mirrored(block.per_row(left_handed[which]), in_place=True)
    channels = np.empty((out.frames.shape[0], block.n_rows))  # channel-major, float64
    # numpy's error state is per thread: absurd inputs (1e300) may overflow, and the
    # results are clipped or nulled, so stay quiet here too.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        imu_channels(values.acc, values.rot, block, params.sampling_rate_hz, channels[:n_imu])
        reported = modality_channels(
            values.thm, values.tof, block, params.tof_regions, channels[n_imu:]
        )
        statistics = sequence_statistics(
            channels, block, params.sampling_rate_hz, n_segments(params)
        )
        out.write(which, rows, block, channels, statistics, reported)
