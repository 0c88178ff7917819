"""``compute_features``: prepared sensor rows -> the sequences table, sequence features and
frame features, for the whole train table and for one sequence at inference alike."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from cmi.features.channels import FLOAT32_MAX, imu_channels, modality_channels
from cmi.features.groups import Groups
from cmi.features.names import (
    DEMOGRAPHIC_FEATURES,
    IMU_CHANNELS,
    SEQUENCE_TABLE_COLUMNS,
    channel_names,
    feature_names,
    n_segments,
)
from cmi.features.prepare import demographics_lookup, is_prepared, prepare_sensor_frame
from cmi.features.stats import sequence_statistics
from cmi.params import ExtractParams
from cmi.schema import SENSOR_COLUMNS

SEQUENCE_KEYS: tuple[str, ...] = ("sequence_id", "sequence_counter")
SEQUENCE_TABLE_SCHEMA: dict[str, type[pl.DataType]] = dict(
    zip(SEQUENCE_TABLE_COLUMNS, (pl.String, pl.String, pl.String, pl.Int32, pl.Int32), strict=True)
)
_SENSOR_LIST = list(SENSOR_COLUMNS)
# Rows per block of whole sequences: the batch is computed block by block, so temporaries
# stay in cache and below malloc's mmap threshold (no page faults for each one), ~2x faster
# than whole-table arrays. Every result is per row or per sequence, so blocks change nothing.
_BLOCK_ROWS = 16_384
# Below this many values a Float32 table is built through one Array column (few polars
# calls: what one sequence costs); above it column by column from zero-copy slices.
_SMALL_TABLE_VALUES = 1_000_000


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
        return _empty_feature_set(params)
    sequence_ids = sensor.get_column("sequence_id").to_numpy()
    if not _is_sorted(sequence_ids, sensor.get_column("sequence_counter").to_numpy()):
        sensor = sensor.sort(SEQUENCE_KEYS, maintain_order=True)
        sequence_ids = sensor.get_column("sequence_id").to_numpy()
    # Absurd inputs (1e300) may overflow; the results are clipped or nulled, so stay quiet.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _compute_sorted(sensor, Groups.from_ids(sequence_ids), demographics, params)


def _is_sorted(sequence_ids: np.ndarray, counter: np.ndarray) -> bool:
    """Whether rows are in (sequence_id, sequence_counter) order."""
    same = sequence_ids[1:] == sequence_ids[:-1]
    return bool(
        np.all((sequence_ids[1:] > sequence_ids[:-1]) | (same & (counter[1:] >= counter[:-1])))
    )


def _compute_sorted(
    sensor: pl.DataFrame, groups: Groups, demographics: pl.DataFrame | None, params: ExtractParams
) -> FeatureSet:
    names = channel_names(params.tof_regions)
    n_imu, segments = len(IMU_CHANNELS), n_segments(params)
    channels = np.empty((len(names), groups.n_rows))  # channel-major: fast group reductions
    reported = np.empty(groups.n_rows, dtype=bool)
    per_sequence = []
    sensor_columns = sensor[_SENSOR_LIST]  # by name: polars' column-slice getitem is slow
    for rows, block in groups.blocks(_BLOCK_ROWS):
        part = sensor_columns.slice(rows.start, block.n_rows)
        # (rows, sensor columns), column-major: each column one contiguous copy from polars
        values = part.to_numpy(order="fortran")
        out = channels[:, rows]
        imu_channels(values, block, params.sampling_rate_hz, out=out[:n_imu])
        reported[rows] = modality_channels(values, block, params.tof_regions, out=out[n_imu:])
        per_sequence.append(sequence_statistics(out, block, params.sampling_rate_hz, segments))

    frame_features = _frame_table(channels, names)
    frame_features.insert_column(0, sensor.get_column("sequence_id"))
    counter = sensor.get_column("sequence_counter").cast(pl.Int32, strict=False)
    frame_features.insert_column(1, counter)
    sequences, demo_values = _sequence_table(sensor, groups, reported, demographics)
    matrix = np.hstack(
        [np.concatenate(per_sequence), groups.counts[:, None].astype(np.float64), demo_values]
    )
    sequence_features = _sequence_feature_table(
        matrix, feature_names(params.tof_regions, segments), sequences.get_column("sequence_id")
    )
    return FeatureSet(sequences, sequence_features, frame_features)


def _sequence_table(
    sensor: pl.DataFrame,
    groups: Groups,
    reported: np.ndarray,
    demographics: pl.DataFrame | None,
) -> tuple[pl.DataFrame, np.ndarray]:
    """The sequences table and the (G, 7) demographic feature values (NaN if unknown).

    Built from Python lists: Series methods such as gather and cast run through polars'
    expression engine, a fixed cost per call that one sequence at inference feels.
    """
    sequence_ids = sensor.get_column("sequence_id").to_numpy()[groups.starts].tolist()
    subjects = sensor.get_column("subject").to_numpy()[groups.starts].tolist()
    lookup = demographics_lookup(demographics)
    unknown = np.full(len(DEMOGRAPHIC_FEATURES), np.nan)
    demo_values = np.array([lookup.get(s, unknown) for s in subjects], dtype=np.float64)
    demo_values = demo_values.reshape(len(subjects), len(DEMOGRAPHIC_FEATURES))
    has_modality = np.logical_or.reduceat(reported, groups.starts)
    handedness = demo_values[:, DEMOGRAPHIC_FEATURES.index("handedness")]
    columns = {
        "sequence_id": sequence_ids,
        "subject": subjects,
        "sensor_group": ["full" if m else "imu_only" for m in has_modality.tolist()],
        "length": groups.counts.tolist(),
        "handedness": [_as_int32(h) for h in handedness.tolist()],
    }
    return pl.DataFrame(columns, schema=SEQUENCE_TABLE_SCHEMA), demo_values


def _as_int32(value: float) -> int | None:
    """As polars' non-strict Float64 -> Int32 cast: truncated, null if NaN or out of range."""
    return int(value) if abs(value) < 2**31 else None  # NaN fails the comparison


def _finite_float32(values: np.ndarray) -> np.ndarray:
    """C-contiguous float32 copy; absurd values that overflow float32 are clipped, not inf."""
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(values, dtype=np.float32)
    if np.isinf(out).any():  # rare: one cheap check instead of clipping every value
        np.clip(out, -FLOAT32_MAX, FLOAT32_MAX, out=out)
    return out


def _frame_table(channels: np.ndarray, names: Sequence[str]) -> pl.DataFrame:
    """(columns, rows) channel-major values -> a Float32 DataFrame, NaN as null (the
    contract's "missing"); never column by column from numpy (polars' per-column
    constructors cost ~20 us a column)."""
    n_rows = channels.shape[1]
    if n_rows * len(names) > _SMALL_TABLE_VALUES:
        # each column is a zero-copy slice of one flat Series: no row-major copy of the table
        flat = pl.Series("v", _finite_float32(channels).reshape(-1), nan_to_null=True)
        return pl.DataFrame([flat.slice(i * n_rows, n_rows).alias(n) for i, n in enumerate(names)])
    return _row_major_table(_finite_float32(channels.T), names)


def _row_major_table(values: np.ndarray, names: Sequence[str]) -> pl.DataFrame:
    """(rows, columns) float32 -> DataFrame through one Array column: a few polars calls."""
    flat = pl.Series("v", values.reshape(-1), nan_to_null=True)
    return flat.reshape(values.shape).arr.to_struct(list(names)).struct.unnest()


def _sequence_feature_table(
    matrix: np.ndarray, names: Sequence[str], sequence_ids: pl.Series
) -> pl.DataFrame:
    """(sequences, features) -> sequence_id + Float32 feature columns, NaN as null.

    One sequence (inference) is one transpose of a single column named after the sequence,
    whose header becomes the sequence_id column: ~1,500 one-value columns in one call.
    """
    values = _finite_float32(matrix)
    if values.shape[0] == 1 and sequence_ids[0] is not None:
        column = pl.Series(sequence_ids[0], values.reshape(-1), nan_to_null=True)
        return column.to_frame().transpose(
            include_header=True, header_name="sequence_id", column_names=list(names)
        )
    table = _row_major_table(values, names)
    table.insert_column(0, sequence_ids)
    return table


def _empty_feature_set(params: ExtractParams) -> FeatureSet:
    float_columns = dict.fromkeys(feature_names(params.tof_regions, n_segments(params)), pl.Float32)
    return FeatureSet(
        sequences=pl.DataFrame(schema=SEQUENCE_TABLE_SCHEMA),
        sequence_features=pl.DataFrame(schema={"sequence_id": pl.String, **float_columns}),
        frame_features=pl.DataFrame(
            schema={
                "sequence_id": pl.String,
                "sequence_counter": pl.Int32,
                **dict.fromkeys(channel_names(params.tof_regions), pl.Float32),
            }
        ),
    )
