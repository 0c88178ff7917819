"""Coercion of any sensor or demographics table to the types the feature path computes on.

Training hands the whole validated train table, inference one Kaggle test sequence at a time
(and tests anything odd). The common case (Float64 sensor columns, string ids) takes a fast
path with a handful of polars calls: per-call overhead, not data, is what one sequence costs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import polars as pl

from cmi.features.names import DEMOGRAPHIC_FEATURES
from cmi.schema import SENSOR_COLUMNS

MISSING_SEQUENCE_ID = "unknown"
PREPARED_SCHEMA: dict[str, pl.DataType] = {
    "sequence_id": pl.String(),
    "sequence_counter": pl.Int64(),
    "subject": pl.String(),
    **{c: pl.Float64() for c in SENSOR_COLUMNS},
}
_PREPARED_COLUMNS = list(PREPARED_SCHEMA)
_PREPARED_TYPES = tuple(type(d) for d in PREPARED_SCHEMA.values())
_SENSOR_LIST = list(SENSOR_COLUMNS)
# Tables with more values than this are "large": checked without a numpy copy of the table.
LARGE_TABLE_VALUES = 20_000_000


def _as_float(names: Sequence[str], present: set[str]) -> list[pl.Expr]:
    """Float64 expressions for ``names``: cast (numbers in strings parsed, else null).

    Consecutive present columns share one multi-column expression: polars' cost is mostly
    per expression. NaN/inf are handled by ``_non_finite_to_null``.
    """
    exprs: list[pl.Expr] = []
    run: list[str] = []
    for name in [*names, None]:
        if name is not None and name in present:
            run.append(name)
            continue
        if run:
            exprs.append(pl.col(run).cast(pl.Float64, strict=False))
            run = []
        if name is not None:
            exprs.append(pl.lit(None, dtype=pl.Float64).alias(name))
    return exprs


def _as_string(frame: pl.DataFrame, name: str) -> pl.Series:
    """Column ``name`` as String (numbers formatted), or all null if absent."""
    if name not in frame.columns:
        return pl.Series(name, [None] * frame.height, dtype=pl.String)
    column = frame.get_column(name)
    return column if column.dtype == pl.String else column.cast(pl.String, strict=False)


def _sequence_counter(frame: pl.DataFrame) -> pl.Series:
    """Int64 counter; missing, non-numeric or non-finite values -> the row position."""
    if "sequence_counter" in frame.columns:
        column = frame.get_column("sequence_counter")
        if column.dtype == pl.Int64 and column.null_count() == 0:
            return column  # the usual case, as read from a CSV
    position = pl.int_range(pl.len(), dtype=pl.Int64)
    if "sequence_counter" not in frame.columns:
        return frame.select(position.alias("sequence_counter")).to_series()
    counter = pl.col("sequence_counter").cast(pl.Float64, strict=False)
    counter = pl.when(counter.is_finite()).then(counter).cast(pl.Int64, strict=False)
    return frame.select(counter.fill_null(position).alias("sequence_counter")).to_series()


def _sensor_columns(frame: pl.DataFrame) -> pl.DataFrame:
    """SENSOR_COLUMNS as Float64, in order: only columns of another type (or missing) cost an
    expression; the rest is a plain projection."""
    columns, dtypes = frame.columns, frame.dtypes
    if "acc_x" in columns:  # the usual layout: all sensor columns in order, all Float64
        first = columns.index("acc_x")
        stop = first + len(_SENSOR_LIST)
        if columns[first:stop] == _SENSOR_LIST and all(
            type(d) is pl.Float64 for d in dtypes[first:stop]
        ):
            return frame[_SENSOR_LIST]
    is_float = {c: type(d) is pl.Float64 for c, d in zip(columns, dtypes, strict=True)}
    odd = [c for c in SENSOR_COLUMNS if not is_float.get(c, False)]
    if odd:
        frame = frame.with_columns(_as_float(odd, set(columns)))
    return frame[_SENSOR_LIST]


def _non_finite_to_null(sensor: pl.DataFrame) -> pl.DataFrame:
    """NaN and +-inf -> null in the (all Float64) columns of ``sensor``.

    Only columns that have one are rewritten: they are rare. A small table is checked in
    numpy (a column with more non-finite values than nulls), a large one by its column sums
    (a sum skips nulls and is finite unless the column has NaN/inf, or overflows), with an
    exact check of just the suspects.
    """
    if sensor.height == 0:
        return sensor
    names = sensor.columns
    if sensor.height * sensor.width <= LARGE_TABLE_VALUES:
        non_finite = np.count_nonzero(~np.isfinite(sensor.to_numpy()), axis=0)
        if not non_finite.any():  # no null, NaN or inf anywhere: the usual full sequence
            return sensor
        nulls = sensor.null_count().row(0)
        bad = [n for n, k, z in zip(names, non_finite.tolist(), nulls, strict=True) if k != z]
    else:
        sums = sensor.sum().row(0)
        suspects = [n for n, s in zip(names, sums, strict=True) if not _finite_number(s)]
        flags = sensor.select((~pl.col(suspects).is_finite()).any()).row(0) if suspects else ()
        bad = [n for n, flag in zip(suspects, flags, strict=True) if flag]
    if not bad:
        return sensor
    return sensor.with_columns(pl.when(pl.col(bad).is_finite()).then(pl.col(bad)).name.keep())


def _finite_number(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def prepare_sensor_frame(frame: pl.DataFrame, *, non_finite_to_null: bool = True) -> pl.DataFrame:
    """Coerce any sensor table (train, Kaggle test, odd inference input) to ``PREPARED_SCHEMA``.

    Keeps sequence_id (String; missing -> "unknown"), sequence_counter (Int64; missing ->
    row position), subject (String) and every sensor column as Float64, in that order. Extra
    columns (train-only labels included) are dropped, missing sensor columns are added as
    null, numbers in strings are parsed (unparsable -> null), NaN/inf -> null.

    ``non_finite_to_null=False`` leaves NaN/inf as they are: ``compute_features`` reads NaN
    as missing and turns +-inf into NaN itself (``channels.SensorBlock.from_frame``), so its
    results are the same; the extract stage saves a pass over the whole train table.
    """
    prepared = _sensor_columns(frame)
    if non_finite_to_null:
        prepared = _non_finite_to_null(prepared)
    sequence_id = _as_string(frame, "sequence_id")
    if sequence_id.null_count():
        sequence_id = sequence_id.fill_null(MISSING_SEQUENCE_ID)
    prepared.insert_column(0, sequence_id)
    prepared.insert_column(1, _sequence_counter(frame))
    prepared.insert_column(2, _as_string(frame, "subject"))
    return prepared


def is_prepared(frame: pl.DataFrame) -> bool:
    """Whether ``frame`` has exactly ``PREPARED_SCHEMA`` (checked by type: comparing polars
    dtypes one by one costs ~0.2 ms per call for 335 columns)."""
    return frame.columns == _PREPARED_COLUMNS and all(
        type(d) is t for d, t in zip(frame.dtypes, _PREPARED_TYPES, strict=True)
    )


def demographics_lookup(demographics: pl.DataFrame | None) -> dict[str, np.ndarray]:
    """subject -> demographic features (Float64, NaN where missing); the first row wins."""
    if demographics is None or "subject" not in demographics.columns:
        return {}
    dtype_of = dict(zip(demographics.columns, demographics.dtypes, strict=True))
    numeric = [
        c in dtype_of and (dtype_of[c].is_integer() or dtype_of[c].is_float())
        for c in DEMOGRAPHIC_FEATURES
    ]
    if all(numeric):
        values = demographics[list(DEMOGRAPHIC_FEATURES)].to_numpy().astype(np.float64)
    else:
        present = set(demographics.columns)
        values = demographics.select(_as_float(DEMOGRAPHIC_FEATURES, present)).to_numpy()
        values = values.astype(np.float64)
    values[~np.isfinite(values)] = np.nan
    lookup: dict[str, np.ndarray] = {}
    subjects = _as_string(demographics, "subject").to_list()
    for subject, row in zip(subjects, values, strict=True):
        if subject is not None and subject not in lookup:
            lookup[subject] = row
    return lookup
