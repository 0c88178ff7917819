"""The output tables of ``compute_features``, built from numpy with as few polars calls as
possible: one sequence at inference pays polars' fixed cost per call, not per value."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from cmi.features.channels import FLOAT32_MAX
from cmi.features.groups import Groups
from cmi.features.names import (
    DEMOGRAPHIC_FEATURES,
    SEQUENCE_TABLE_COLUMNS,
    channel_names,
    feature_names,
    n_segments,
)
from cmi.features.prepare import demographics_lookup
from cmi.params import ExtractParams
from cmi.sequences import SENSOR_GROUPS

SEQUENCE_TABLE_SCHEMA: dict[str, type[pl.DataType]] = dict(
    zip(SEQUENCE_TABLE_COLUMNS, (pl.String, pl.String, pl.String, pl.Int32, pl.Int32), strict=True)
)
# Below this many values a Float32 table is built through one Array column (few polars
# calls: what one sequence costs); above it column by column from zero-copy slices.
_SMALL_TABLE_VALUES = 1_000_000


def demographic_values(subjects: list[str | None], demographics: pl.DataFrame | None) -> np.ndarray:
    """(len(subjects), 7) demographic feature values of each subject, NaN if unknown."""
    lookup = demographics_lookup(demographics)
    unknown = np.full(len(DEMOGRAPHIC_FEATURES), np.nan)
    values = np.array([lookup.get(s, unknown) for s in subjects], dtype=np.float64)
    return values.reshape(len(subjects), len(DEMOGRAPHIC_FEATURES))


def sequence_table(
    sensor: pl.DataFrame, groups: Groups, has_modality: np.ndarray, demo_values: np.ndarray
) -> pl.DataFrame:
    """The sequences table of ``groups`` (in that order), with per group whether any thm/ToF
    value was reported and the (G, 7) demographic values (``demographic_values``).

    Built from Python lists: Series methods such as gather and cast run through polars'
    expression engine, a fixed cost per call that one sequence at inference feels.
    """
    sequence_ids = sensor.get_column("sequence_id").to_numpy()[groups.starts].tolist()
    subjects = sensor.get_column("subject").to_numpy()[groups.starts].tolist()
    full, imu_only = SENSOR_GROUPS
    handedness = demo_values[:, DEMOGRAPHIC_FEATURES.index("handedness")]
    columns = {
        "sequence_id": sequence_ids,
        "subject": subjects,
        "sensor_group": [full if m else imu_only for m in has_modality.tolist()],
        "length": groups.counts.tolist(),
        "handedness": [_as_int32(h) for h in handedness.tolist()],
    }
    return pl.DataFrame(columns, schema=SEQUENCE_TABLE_SCHEMA)


def _as_int32(value: float) -> int | None:
    """As polars' non-strict Float64 -> Int32 cast: truncated, null if NaN or out of range."""
    return int(value) if abs(value) < 2**31 else None  # NaN fails the comparison


def finite_float32(values: np.ndarray) -> np.ndarray:
    """float32 copy; absurd values that overflow float32 are clipped, not inf."""
    with np.errstate(over="ignore"):
        out = values.astype(np.float32)
    if np.isinf(out).any():  # rare: one cheap check instead of clipping every value
        np.clip(out, -FLOAT32_MAX, FLOAT32_MAX, out=out)
    return out


def frame_table(channels: np.ndarray, names: Sequence[str]) -> pl.DataFrame:
    """(columns, rows) float32 channel-major values -> a DataFrame, NaN as null (the
    contract's "missing"); never column by column from numpy (polars' per-column
    constructors cost ~20 us a column)."""
    n_rows = channels.shape[1]
    if n_rows * len(names) > _SMALL_TABLE_VALUES:
        # each column is a zero-copy slice of one flat Series: no row-major copy of the table
        flat = pl.Series("v", channels.reshape(-1), nan_to_null=True)
        return pl.DataFrame([flat.slice(i * n_rows, n_rows).alias(n) for i, n in enumerate(names)])
    return _row_major_table(np.ascontiguousarray(channels.T), names)


def _row_major_table(values: np.ndarray, names: Sequence[str]) -> pl.DataFrame:
    """(rows, columns) float32 -> DataFrame through one Array column: a few polars calls."""
    flat = pl.Series("v", values.reshape(-1), nan_to_null=True)
    return flat.reshape(values.shape).arr.to_struct(list(names)).struct.unnest()


def sequence_feature_table(
    values: np.ndarray, names: Sequence[str], sequence_ids: pl.Series
) -> pl.DataFrame:
    """(sequences, features) float32 -> sequence_id + feature columns, NaN as null.

    One sequence (inference) is one transpose of a single column named after the sequence,
    whose header becomes the sequence_id column: ~1,500 one-value columns in one call.
    """
    if values.shape[0] == 1 and sequence_ids[0] is not None:
        column = pl.Series(sequence_ids[0], values.reshape(-1), nan_to_null=True)
        return column.to_frame().transpose(
            include_header=True, header_name="sequence_id", column_names=list(names)
        )
    table = _row_major_table(values, names)
    table.insert_column(0, sequence_ids)
    return table


def empty_tables(params: ExtractParams) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """The sequences, sequence features and frame features tables of no sequence."""
    float_columns = dict.fromkeys(feature_names(params.tof_regions, n_segments(params)), pl.Float32)
    return (
        pl.DataFrame(schema=SEQUENCE_TABLE_SCHEMA),
        pl.DataFrame(schema={"sequence_id": pl.String, **float_columns}),
        pl.DataFrame(
            schema={
                "sequence_id": pl.String,
                "sequence_counter": pl.Int32,
                **dict.fromkeys(channel_names(params.tof_regions), pl.Float32),
            }
        ),
    )
