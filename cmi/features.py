"""The one feature code path: per-frame channels (Torch) and per-sequence statistics (LightGBM).

Training (``stages/extract.py``, the whole train table at once) and inference (one sequence
per call) run exactly the same two functions: ``prepare_sensor_frame`` then
``compute_features``. After ``prepare_sensor_frame`` everything is numpy over the rows sorted
by (sequence_id, sequence_counter), where each sequence is a contiguous run of rows; the
batch is vectorized over blocks of ~16k rows of whole sequences (no Python loop per
sequence) and a single sequence is simply a batch of one, so both give the same numbers.

Frame channels (``frame_channels``), all Float32:
- IMU, never null: raw ``acc_x/y/z``; the unit quaternion ``rot_w/x/y/z`` with w >= 0;
  ``linear_acc_x/y/z`` (gravity removed); ``angular_vel_x/y/z`` (rad/s, device frame) and
  ``angular_distance`` (rad to the next frame; the last frame repeats the previous value);
  ``acc_mag``, ``linear_acc_mag``; ``acc_mag_jerk`` (d|acc|/dt; the first frame repeats the
  second's).
- modality (names start with "thm"/"tof"): ``thm_1..5``; per ToF sensor s ``tof_s_mean`` and
  ``tof_s_min`` of the valid pixels, ``tof_s_invalid`` (share of -1 pixels) and, with
  ``tof_regions``, ``tof_s_r0..r3`` (mean of valid pixels of the four 4x4 quadrants). They are
  null when the sensor reported nothing in the whole sequence (all of them for IMU-only
  sequences); gaps inside a sequence are forward/backward filled.

Sequence features (``sequence_feature_names``): for every frame channel the statistics in
``WHOLE_STATS`` over the whole sequence and ``SEGMENT_STATS`` over each of ``n_segments``
consecutive segments (``<channel>__<stat>``, ``<channel>__seg<k>_<stat>``), then ``length``
and the demographics (``DEMOGRAPHIC_FEATURES``; null for an unknown subject).

Handedness: left-handed subjects are NOT mirrored here. ``handedness`` is a feature (and a
column of the sequence table) so the models can learn the difference, and there is one simple
code path with no subject-dependent geometry that could silently disagree between training
and inference. Mirroring, if wanted, belongs in a model's own augmentation.

The five train-only columns never reach this module's outputs: ``prepare_sensor_frame``
keeps only ids and sensor columns.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import polars as pl

from cmi import rotation
from cmi.params import ExtractParams
from cmi.schema import (
    ACC_COLUMNS,
    DEMOGRAPHICS_COLUMNS,
    N_TOF_PIXELS,
    N_TOF_SENSORS,
    ROT_COLUMNS,
    SENSOR_COLUMNS,
    THM_COLUMNS,
)

# ToF valid distances are 0..249; a frame whose pixels are all -1 ("no reflection") saw
# nothing within range, so its nearest/mean valid distance is set just beyond the range.
TOF_NO_REFLECTION = 255.0
MISSING_SEQUENCE_ID = "unknown"
_FLOAT32_MAX = float(np.finfo(np.float32).max)

SEQUENCE_KEYS: tuple[str, ...] = ("sequence_id", "sequence_counter")
PREPARED_ID_COLUMNS: tuple[str, ...] = ("sequence_id", "sequence_counter", "subject")
PREPARED_SCHEMA: dict[str, pl.DataType] = {
    "sequence_id": pl.String(),
    "sequence_counter": pl.Int64(),
    "subject": pl.String(),
    **{c: pl.Float64() for c in SENSOR_COLUMNS},
}

IMU_CHANNELS: tuple[str, ...] = (
    *ACC_COLUMNS,
    *ROT_COLUMNS,
    "linear_acc_x",
    "linear_acc_y",
    "linear_acc_z",
    "angular_vel_x",
    "angular_vel_y",
    "angular_vel_z",
    "angular_distance",
    "acc_mag",
    "linear_acc_mag",
    "acc_mag_jerk",
)
QUANTILES: dict[str, float] = {"q10": 0.1, "q50": 0.5, "q90": 0.9}
WHOLE_STATS: tuple[str, ...] = (
    "mean",
    "std",
    "min",
    "max",
    *QUANTILES,
    "range",
    "first",
    "last",
    "slope",
    "energy",
)
SEGMENT_STATS: tuple[str, ...] = ("mean", "std", "min", "max", "slope")
DEMOGRAPHIC_FEATURES: tuple[str, ...] = tuple(c for c in DEMOGRAPHICS_COLUMNS if c != "subject")
SEQUENCE_TABLE_COLUMNS: tuple[str, ...] = (
    "sequence_id",
    "subject",
    "sensor_group",
    "length",
    "handedness",
)
_SENSOR_INDEX: dict[str, int] = {c: i for i, c in enumerate(SENSOR_COLUMNS)}
_TOF_SENSOR_COLUMNS: dict[int, tuple[str, ...]] = {
    s: tuple(f"tof_{s}_v{p}" for p in range(N_TOF_PIXELS)) for s in range(1, N_TOF_SENSORS + 1)
}
# Pixel v{p} is row p // 8, column p % 8 of the 8x8 image; regions are its 4x4 quadrants
# r0 (top left), r1 (top right), r2 (bottom left), r3 (bottom right).
_N_TOF_REGIONS = 4
_TOF_REGION_PIXELS: tuple[np.ndarray, ...] = tuple(
    np.array([r * 8 + c for r in rows for c in cols])
    for rows in (range(0, 4), range(4, 8))
    for cols in (range(0, 4), range(4, 8))
)


def is_modality_channel(name: str) -> bool:
    """thm/tof channels and the sequence features built from them: null for IMU-only data."""
    return name.startswith(("thm", "tof"))


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


# ----------------------------------------------------------------------------- names


def _tof_channel_names(tof_regions: bool) -> tuple[str, ...]:
    per_sensor = ["mean", "min", "invalid"]
    if tof_regions:
        per_sensor += [f"r{k}" for k in range(_N_TOF_REGIONS)]
    return tuple(f"tof_{s}_{n}" for s in range(1, N_TOF_SENSORS + 1) for n in per_sensor)


@lru_cache(maxsize=8)
def _frame_channels(tof_regions: bool) -> tuple[str, ...]:
    return (*IMU_CHANNELS, *THM_COLUMNS, *_tof_channel_names(tof_regions))


def frame_channels(params: ExtractParams) -> list[str]:
    """Torch input channels, in frame_features column order."""
    return list(_frame_channels(params.tof_regions))


def _segments(params: ExtractParams) -> int:
    # One segment would repeat the whole-sequence statistics.
    return params.n_segments if params.n_segments > 1 else 0


@lru_cache(maxsize=8)
def _sequence_feature_names(tof_regions: bool, n_segments: int) -> tuple[str, ...]:
    names: list[str] = []
    for channel in _frame_channels(tof_regions):
        names += [f"{channel}__{stat}" for stat in WHOLE_STATS]
        for k in range(n_segments):
            names += [f"{channel}__seg{k}_{stat}" for stat in SEGMENT_STATS]
    return (*names, "length", *DEMOGRAPHIC_FEATURES)


def sequence_feature_names(params: ExtractParams) -> list[str]:
    """LightGBM features, in sequence_features column order (without sequence_id)."""
    return list(_sequence_feature_names(params.tof_regions, _segments(params)))


# ----------------------------------------------------------------------------- input coercion


def _as_float(names: Sequence[str], present: set[str]) -> list[pl.Expr]:
    """Float64 expressions for ``names``: cast (numbers in strings parsed, else null).

    Consecutive present columns share one multi-column expression: polars' cost is mostly per
    expression, and this keeps the preparation of one sequence fast. NaN/inf are handled by
    ``_non_finite_to_null``.
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


def _as_string(name: str, present: set[str]) -> pl.Expr:
    if name not in present:
        return pl.lit(None, dtype=pl.String).alias(name)
    return pl.col(name).cast(pl.String, strict=False).alias(name)


# Tables with more values than this are "large": checked/converted without one big numpy copy.
_CHECK_VALUES = 20_000_000


def _non_finite_to_null(frame: pl.DataFrame, names: Sequence[str]) -> pl.DataFrame:
    """NaN and +-inf -> null in the Float64 columns ``names``.

    Only columns that have one are rewritten: they are rare, and rewriting every column costs
    ~10 ms on one sequence. A small table is checked in numpy (a column with more non-finite
    values than nulls; polars' per-expression overhead dominates there), a large one with one
    polars expression (no numpy copy of the table).
    """
    if not names or frame.height == 0:
        return frame
    if frame.height * len(names) > _CHECK_VALUES:
        flags = frame.select((~pl.col(names).is_finite()).any()).row(0)  # null-skipping any
    else:
        chunk = frame.select(pl.col(names))
        non_finite = (~np.isfinite(chunk.to_numpy())).sum(axis=0)
        flags = [n != k for n, k in zip(non_finite, chunk.null_count().row(0), strict=True)]
    bad = [name for name, flag in zip(names, flags, strict=True) if flag]
    if not bad:
        return frame
    return frame.with_columns(pl.when(pl.col(bad).is_finite()).then(pl.col(bad)).name.keep())


def prepare_sensor_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """Coerce any sensor table (train, Kaggle test, odd inference input) to ``PREPARED_SCHEMA``.

    Keeps sequence_id (String; missing -> "unknown"), sequence_counter (Int64; missing ->
    row position), subject (String) and every sensor column as Float64, in that order. Extra
    columns (train-only labels included) are dropped, missing sensor columns are added as
    null, numbers in strings are parsed (unparsable -> null), NaN/inf -> null.
    """
    present = set(frame.columns)
    position = pl.int_range(pl.len(), dtype=pl.Int64)
    if "sequence_counter" in present:
        counter = pl.col("sequence_counter").cast(pl.Float64, strict=False)
        counter = (
            pl.when(counter.is_finite())
            .then(counter)
            .cast(pl.Int64, strict=False)
            .fill_null(position)
        )
    else:
        counter = position
    prepared = frame.select(
        _as_string("sequence_id", present).fill_null(MISSING_SEQUENCE_ID),
        counter.alias("sequence_counter"),
        _as_string("subject", present),
        *_as_float(SENSOR_COLUMNS, present),
    )
    return _non_finite_to_null(prepared, [c for c in SENSOR_COLUMNS if c in present])


def _is_prepared(frame: pl.DataFrame) -> bool:
    return frame.columns == list(PREPARED_SCHEMA) and frame.dtypes == list(PREPARED_SCHEMA.values())


def _demographics_lookup(demographics: pl.DataFrame | None) -> dict[str, np.ndarray]:
    """subject -> demographic features (Float64, NaN where missing); the first row wins."""
    if demographics is None or "subject" not in demographics.columns:
        return {}
    present = set(demographics.columns)
    prepared = demographics.select(
        _as_string("subject", present), *_as_float(DEMOGRAPHIC_FEATURES, present)
    )
    values = np.column_stack(
        [prepared.get_column(c).to_numpy().astype(np.float64) for c in DEMOGRAPHIC_FEATURES]
    )
    values[~np.isfinite(values)] = np.nan
    lookup: dict[str, np.ndarray] = {}
    for subject, row in zip(prepared.get_column("subject").to_list(), values, strict=True):
        if subject is not None and subject not in lookup:
            lookup[subject] = row
    return lookup


# ----------------------------------------------------------------------------- row groups


@dataclass(frozen=True)
class _Groups:
    """Contiguous row blocks: block g is rows starts[g] .. starts[g] + counts[g] - 1."""

    starts: np.ndarray  # (G,) int64
    counts: np.ndarray  # (G,) int64
    n_rows: int

    @property
    def ends(self) -> np.ndarray:
        return self.starts + self.counts

    def per_row(self, values: np.ndarray) -> np.ndarray:
        """Broadcast one value per group (G, ...) to its rows (R, ...)."""
        return np.repeat(values, self.counts, axis=0)

    def index_in_group(self) -> np.ndarray:
        return np.arange(self.n_rows, dtype=np.int64) - self.per_row(self.starts)

    def subset(self, keep: np.ndarray) -> tuple[np.ndarray, _Groups]:
        """Row indices of the kept groups, and those groups renumbered over just these rows."""
        counts = self.counts[keep]
        new_starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        total = int(counts.sum())
        rows = np.arange(total, dtype=np.int64) + np.repeat(self.starts[keep] - new_starts, counts)
        return rows, _Groups(new_starts, counts, total)

    def blocks(self, max_rows: int) -> Iterator[tuple[slice, slice, _Groups]]:
        """Consecutive blocks of whole groups of about ``max_rows`` rows: (group slice, row
        slice, the block's groups renumbered from row 0)."""
        block_of = self.starts // max_rows
        bounds = [0, *(np.flatnonzero(np.diff(block_of)) + 1).tolist(), len(self.counts)]
        for first, stop in itertools.pairwise(bounds):
            row0, row1 = int(self.starts[first]), int(self.ends[stop - 1])
            block = _Groups(self.starts[first:stop] - row0, self.counts[first:stop], row1 - row0)
            yield slice(first, stop), slice(row0, row1), block

    def segments(self, n_segments: int) -> _Groups:
        """Split every group into ``n_segments`` consecutive parts (some empty if short)."""
        k = np.arange(n_segments + 1, dtype=np.int64)
        bounds = self.starts[:, None] + (k[None, :] * self.counts[:, None]) // n_segments
        return _Groups(bounds[:, :-1].reshape(-1), np.diff(bounds, axis=1).reshape(-1), self.n_rows)


def _groups_from_ids(sequence_ids: np.ndarray) -> _Groups:
    change = np.ones(len(sequence_ids), dtype=bool)
    change[1:] = sequence_ids[1:] != sequence_ids[:-1]
    starts = np.flatnonzero(change).astype(np.int64)
    counts = np.diff(np.append(starts, len(sequence_ids))).astype(np.int64)
    return _Groups(starts, counts, len(sequence_ids))


def _fill_within_groups(
    values: np.ndarray, valid: np.ndarray | None, groups: _Groups
) -> np.ndarray:
    """Forward-fill, then backward-fill, each column inside each group; (R, C) -> (R, C).

    ``valid=None`` means NaN marks the gaps, and ``values`` is filled in place. Invalid
    entries of a group with no valid value in that column become NaN. Only the groups that
    have a gap and something to fill it with are processed (usually few).
    """
    if valid is None:
        valid = ~np.isnan(values)
        out = values
    else:
        out = np.where(valid, values, np.nan)
    gap_rows = ~valid.all(axis=1)
    if not gap_rows.any():
        return out
    has_gap = np.logical_or.reduceat(gap_rows, groups.starts)
    has_value = np.logical_or.reduceat(valid.any(axis=1), groups.starts)
    todo = has_gap & has_value
    if todo.any():
        rows, subset = groups.subset(todo)
        out[rows] = _fill_gaps(values[rows], valid[rows], subset)
    return out


def _fill_gaps(values: np.ndarray, valid: np.ndarray, groups: _Groups) -> np.ndarray:
    rows = np.arange(groups.n_rows, dtype=np.int64)[:, None]
    cols = np.arange(values.shape[1])[None, :]
    prev = np.maximum.accumulate(np.where(valid, rows, -1), axis=0)
    nxt = np.minimum.accumulate(np.where(valid, rows, groups.n_rows)[::-1], axis=0)[::-1]
    has_prev = prev >= groups.per_row(groups.starts)[:, None]
    has_next = nxt < groups.per_row(groups.ends)[:, None]
    source = np.where(has_prev, prev, np.where(has_next, nxt, 0))
    filled = values[source, cols]
    filled[~(has_prev | has_next)] = np.nan
    return filled


def angular_velocity(quat: np.ndarray, groups: _Groups, sampling_rate_hz: float) -> np.ndarray:
    """(R, 3) rad/s from each frame to the next of the same sequence.

    A sequence's last frame has no next one: it repeats the previous frame's value (0 for a
    one-frame sequence), so no constant 0 ends every sequence.
    """
    omega = np.zeros((quat.shape[0], 3))
    if quat.shape[0] > 1:
        omega[:-1] = rotation.relative_rotation_vectors(quat[:-1], quat[1:]) * sampling_rate_hz
    _hold_edge(omega, groups.ends - 1, -1, groups.counts)
    return omega


def _hold_edge(values: np.ndarray, edge: np.ndarray, step: int, counts: np.ndarray) -> None:
    """Rows ``edge`` (one per group) take the value of row ``edge + step`` of the same group,
    or 0 for one-row groups (in place)."""
    longer = counts > 1
    values[edge[longer]] = values[edge[longer] + step]
    values[edge[~longer]] = 0.0


# ----------------------------------------------------------------------------- frame channels


def _imu_channels(
    acc_raw: np.ndarray,
    rot_raw: np.ndarray,
    groups: _Groups,
    sampling_rate_hz: float,
    out: np.ndarray,
) -> None:
    """Writes the IMU channels, channel-major, into ``out`` (len(IMU_CHANNELS), R); never NaN.

    acc: gaps filled from the nearest frame of the sequence, a sequence without acc -> 0.
    rot: a row whose quaternion is incomplete or zero is filled from the nearest good frame of
    the sequence; a sequence with no quaternion at all gets the identity and its linear
    acceleration is acc minus the sequence's mean acc (gravity is the only acceleration that
    does not average out over a gesture, so the mean is the best gravity estimate we have).
    """
    acc = _fill_within_groups(acc_raw, np.isfinite(acc_raw), groups)
    acc = np.nan_to_num(acc, nan=0.0)

    rot_ok = np.isfinite(rot_raw).all(axis=1) & (np.abs(rot_raw).sum(axis=1) > 1e-8)
    rot = _fill_within_groups(rot_raw, np.repeat(rot_ok[:, None], 4, axis=1), groups)
    no_rot = ~np.isfinite(rot).all(axis=1)
    rot[no_rot] = (1.0, 0.0, 0.0, 0.0)
    rot = rotation.canonical(rot)

    linear = acc - rotation.gravity_in_device_frame(rot)
    seq_has_rot = np.logical_or.reduceat(rot_ok, groups.starts)
    without = ~groups.per_row(seq_has_rot)
    if without.any():
        mean_acc = np.add.reduceat(acc, groups.starts, axis=0) / groups.counts[:, None]
        linear[without] = (acc - groups.per_row(mean_acc))[without]

    omega = angular_velocity(rot, groups, sampling_rate_hz)
    distance = np.linalg.norm(omega, axis=1, keepdims=True) / sampling_rate_hz
    acc_mag = np.linalg.norm(acc, axis=1, keepdims=True)
    linear_mag = np.linalg.norm(linear, axis=1, keepdims=True)
    jerk = np.zeros_like(acc_mag)
    jerk[1:] = np.diff(acc_mag, axis=0) * sampling_rate_hz
    _hold_edge(jerk, groups.starts, 1, groups.counts)  # first frame: no previous one
    row = 0
    for block in (acc, rot, linear, omega, distance, acc_mag, linear_mag, jerk):
        out[row : row + block.shape[1]] = block.T
        row += block.shape[1]
    # Only absurd magnitudes (inf - inf) can make NaN here; IMU channels are never null.
    np.nan_to_num(out, copy=False, nan=0.0, posinf=_FLOAT32_MAX, neginf=-_FLOAT32_MAX)


def _tof_sensor_channels(pixels: np.ndarray, tof_regions: bool) -> tuple[np.ndarray, np.ndarray]:
    """One sensor's (R, 64) pixels -> (R, k) float32 channels and (R,) "reported anything".

    Pixels >= 0 are valid distances; negative values (-1) mean no reflection; null means the
    sensor was absent. A frame with no valid pixel gets TOF_NO_REFLECTION as mean/min. Works
    in float32: the pixels are small integers, so the sums are exact and it runs ~5x faster.
    """
    pixels = pixels.astype(np.float32, copy=False)
    valid = (pixels >= 0) & (pixels < np.inf)  # False for NaN and for absurd values
    n_reported = N_TOF_PIXELS - np.isnan(pixels).sum(axis=1)
    masked = np.where(valid, pixels, np.float32(0.0))
    # The blocks come column-major from polars, so picking a region's 16 columns is cheap.
    region_total = np.stack([masked[:, r].sum(axis=1) for r in _TOF_REGION_PIXELS], axis=1)
    region_valid = np.stack([valid[:, r].sum(axis=1) for r in _TOF_REGION_PIXELS], axis=1)
    n_valid = region_valid.sum(axis=1)
    far = np.float32(TOF_NO_REFLECTION)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n_valid > 0, region_total.sum(axis=1) / n_valid, far)
        minimum = np.where(valid, pixels, np.float32(np.inf)).min(axis=1)
        minimum = np.where(n_valid > 0, minimum, far)
        invalid_share = (n_reported - n_valid) / n_reported
        columns = [mean, minimum, invalid_share]
        if tof_regions:
            regions = np.where(region_valid > 0, region_total / region_valid, far)  # (R, 4)
            columns += list(regions.T)
    out = np.stack(columns, axis=1).astype(np.float32)
    any_reported = n_reported > 0
    out[~any_reported] = np.nan
    return out, any_reported


def _modality_channels(
    blocks: _SensorBlocks, groups: _Groups, tof_regions: bool, out: np.ndarray
) -> np.ndarray:
    """Writes thm/tof channels, channel-major, into ``out`` (5 + tof channels, R).

    Gaps inside a sequence are filled, a sensor silent for a whole sequence stays NaN.
    Returns per row whether any thm/tof value was reported (for sensor_group).
    """
    thm = _fill_within_groups(blocks.get(THM_COLUMNS).copy(), None, groups)
    reported = ~np.isnan(thm).all(axis=1)
    out[: thm.shape[1]] = thm.T
    row = thm.shape[1]
    for sensor in range(1, N_TOF_SENSORS + 1):
        pixels = blocks.get(_TOF_SENSOR_COLUMNS[sensor], np.float32)
        tof, tof_reported = _tof_sensor_channels(pixels, tof_regions)
        tof = _fill_within_groups(tof, None, groups)
        reported |= tof_reported
        out[row : row + tof.shape[1]] = tof.T
        row += tof.shape[1]
    return reported


# ----------------------------------------------------------------------------- statistics


_QUANTILE_SLOTS = 16_384  # padded (sequence, frame) slots sorted at once (bounds memory)


def _length_chunks(counts: np.ndarray) -> Iterator[np.ndarray]:
    """Group indices in order of length, in chunks whose padded size (number of groups times
    the longest) stays within ``_QUANTILE_SLOTS`` (a single long group may exceed it)."""
    order = np.argsort(counts, kind="stable")
    order = order[counts[order] > 0]
    lengths = counts[order]
    first = 0
    while first < len(order):
        padded = np.arange(1, len(order) - first + 1) * lengths[first:]
        stop = first + max(1, int(np.searchsorted(padded, _QUANTILE_SLOTS, side="right")))
        yield order[first:stop]
        first = stop


def _group_quantiles(
    channels: np.ndarray, groups: _Groups, quantiles: Sequence[float]
) -> list[np.ndarray]:
    """Per-group linear-interpolated quantiles (numpy's default); (C, R) -> [(C, G)].

    Groups of similar length are NaN-padded to a common length and sorted along time: many
    short sorts are far cheaper than one sort of the whole table, and one sequence is simply
    a chunk of one. A channel that is NaN in a group is NaN in all of that group's rows
    (callers fill gaps first), so the NaN padding, sorted to the end, never mixes with real
    values.
    """
    n_channels, n_groups = channels.shape[0], len(groups.counts)
    out = [np.full((n_channels, n_groups), np.nan) for _ in quantiles]
    for chunk in _length_chunks(groups.counts):
        counts = groups.counts[chunk]
        steps = np.arange(counts.max())
        inside = steps[None, :] < counts[:, None]
        padded = np.full((n_channels, len(chunk), len(steps)), np.nan)
        padded[:, inside] = channels[:, (groups.starts[chunk][:, None] + steps[None, :])[inside]]
        padded.sort(axis=2)
        which = np.arange(len(chunk))
        for result, q in zip(out, quantiles, strict=True):
            position = q * (counts - 1)
            below = np.floor(position).astype(np.int64)
            above = np.minimum(below + 1, counts - 1)
            low, high = padded[:, which, below], padded[:, which, above]
            result[:, chunk] = low + (position - below) * (high - low)
    return out


def _group_stats(
    channels: np.ndarray, groups: _Groups, time_s: np.ndarray, stats: Sequence[str]
) -> dict[str, np.ndarray]:
    """Statistics of every channel over every group: (C, R) -> {stat: (C, G)}.

    Channel-major layout: numpy's reduceat over contiguous rows is ~6x faster than over
    columns. Empty groups give NaN. std is the population std (ddof=0, defined for one
    frame); slope is the least-squares slope against time in seconds (NaN for one frame);
    energy is the mean of squares (as variance + mean^2, which saves a pass).
    """
    wanted = set(stats)
    n = groups.counts.astype(np.float64)
    empty = groups.counts == 0
    # reduceat needs in-range indices; an empty group's result is discarded below.
    starts = np.minimum(groups.starts, groups.n_rows - 1)
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        out["mean"] = np.add.reduceat(channels, starts, axis=1) / n
        if wanted & {"std", "energy", "slope"}:
            centered = channels - np.repeat(out["mean"], groups.counts, axis=1)
            scratch = np.empty_like(centered)  # one buffer for the products below
            variance = np.add.reduceat(np.square(centered, out=scratch), starts, axis=1) / n
            out["std"] = np.sqrt(variance)
            out["energy"] = variance + np.square(out["mean"])
        if wanted & {"min", "max", "range"}:
            out["min"] = np.minimum.reduceat(channels, starts, axis=1)
            out["max"] = np.maximum.reduceat(channels, starts, axis=1)
            out["range"] = out["max"] - out["min"]
        if "first" in wanted:
            out["first"] = channels[:, starts]
        if "last" in wanted:
            out["last"] = channels[:, np.maximum(groups.ends - 1, 0)]
        if "slope" in wanted:
            t_mean = np.add.reduceat(time_s, starts) / n
            t_centered = time_s - groups.per_row(t_mean)
            s_tt = np.add.reduceat(t_centered * t_centered, starts)
            products = np.multiply(centered, t_centered, out=scratch)
            s_tx = np.add.reduceat(products, starts, axis=1)
            out["slope"] = s_tx / np.where(s_tt > 0, s_tt, np.nan)
    wanted_quantiles = [name for name in QUANTILES if name in wanted]
    if wanted_quantiles:
        found = _group_quantiles(channels, groups, [QUANTILES[q] for q in wanted_quantiles])
        out.update(zip(wanted_quantiles, found, strict=True))
    result = {stat: out[stat] for stat in stats}
    for array in result.values():
        array[:, empty] = np.nan
    return result


def _sequence_block(
    channels: np.ndarray, groups: _Groups, sampling_rate_hz: float, n_segments: int
) -> np.ndarray:
    """(C, R) frame channels of a block of whole sequences -> its (G, C * (len(WHOLE_STATS)
    + n_segments * len(SEGMENT_STATS))) sequence features, in feature-name order."""
    n_groups, n_channels = len(groups.counts), channels.shape[0]
    time_s = groups.index_in_group() / sampling_rate_hz
    whole = _group_stats(channels, groups, time_s, WHOLE_STATS)
    parts = [np.stack([whole[s] for s in WHOLE_STATS], axis=2).transpose(1, 0, 2)]  # (G, C, S)
    if n_segments:
        seg = _group_stats(channels, groups.segments(n_segments), time_s, SEGMENT_STATS)
        stacked = np.stack([seg[s] for s in SEGMENT_STATS], axis=2)  # (C, G * K, S_seg)
        stacked = stacked.reshape(n_channels, n_groups, n_segments * len(SEGMENT_STATS))
        parts.append(stacked.transpose(1, 0, 2))  # (G, C, K * S_seg), segment-major
    return np.concatenate(parts, axis=2).reshape(n_groups, -1)


# ----------------------------------------------------------------------------- assembly


def _finite_float32(values: np.ndarray) -> np.ndarray:
    """C-contiguous float32 copy; absurd values that overflow float32 are clipped, not inf."""
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(values, dtype=np.float32)
    if np.isinf(out).any():  # rare: one cheap check instead of clipping every value
        np.clip(out, -_FLOAT32_MAX, _FLOAT32_MAX, out=out)
    return out


def _float32_frame(values: np.ndarray, names: Sequence[str]) -> pl.DataFrame:
    """(N, C) -> Float32 DataFrame with NaN as null (the contract's "missing").

    Built from one flat Series: polars' per-column constructors cost ~20 us a column, which
    for one sequence's 1,500 features would alone blow the inference budget.
    """
    n_rows, n_columns = values.shape
    flat = pl.Series("v", _finite_float32(values).reshape(-1), nan_to_null=True)
    if n_rows == 1:
        return flat.to_frame().transpose(column_names=list(names))
    return flat.reshape((n_rows, n_columns)).arr.to_struct(list(names)).struct.unnest()


def _channel_major_frame(channels: np.ndarray, names: Sequence[str]) -> pl.DataFrame:
    """(C, R) -> Float32 DataFrame of C columns, NaN as null: each column is a zero-copy
    slice of one flat Series, so no row-major copy of the table is ever made."""
    n_rows = channels.shape[1]
    flat = pl.Series("v", _finite_float32(channels).reshape(-1), nan_to_null=True)
    return pl.DataFrame([flat.slice(i * n_rows, n_rows).alias(n) for i, n in enumerate(names)])


class _SensorBlocks:
    """numpy arrays of runs of SENSOR_COLUMNS (acc, rot, thm, one ToF sensor) of a table.

    A table of normal size (a block of the batch, one sequence at inference) is converted with
    one polars call, since each call costs a fixed overhead; a huge one run by run.
    """

    def __init__(self, sensor: pl.DataFrame) -> None:
        self._sensor = sensor
        self._all = (
            sensor.select(pl.col(SENSOR_COLUMNS)).to_numpy()
            if sensor.height * len(SENSOR_COLUMNS) <= _CHECK_VALUES
            else None
        )

    def get(self, names: Sequence[str], dtype: type = np.float64) -> np.ndarray:
        if self._all is None:
            polars_dtype = pl.Float32 if dtype == np.float32 else pl.Float64
            return self._sensor.select(pl.col(names).cast(polars_dtype)).to_numpy()
        first = _SENSOR_INDEX[names[0]]
        return self._all[:, first : first + len(names)].astype(dtype, copy=False)


def _sorted_by_sequence(sensor: pl.DataFrame) -> pl.DataFrame:
    """Rows in (sequence_id, sequence_counter) order; a no-op when they already are."""
    ids = sensor.get_column("sequence_id").to_numpy()
    counter = sensor.get_column("sequence_counter").to_numpy()
    same = ids[1:] == ids[:-1]
    if np.all((ids[1:] > ids[:-1]) | (same & (counter[1:] >= counter[:-1]))):
        return sensor
    return sensor.sort(SEQUENCE_KEYS, maintain_order=True)


def compute_features(
    sensor: pl.DataFrame, demographics: pl.DataFrame | None, params: ExtractParams
) -> FeatureSet:
    """Frame channels and sequence features of every sequence in ``sensor``.

    ``sensor`` should come from ``prepare_sensor_frame`` (anything else is prepared first);
    ``demographics`` may be empty or lack columns (features then null). Works the same for
    the whole train table and for one sequence at inference.
    """
    if not _is_prepared(sensor):
        sensor = prepare_sensor_frame(sensor)
    if sensor.height == 0:
        return _empty_feature_set(params)
    sensor = _sorted_by_sequence(sensor)
    # Absurd inputs (1e300) may overflow; the results are clipped or nulled, so stay quiet.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _compute_sorted(sensor, demographics, params)


# Rows per block of whole sequences: the batch is computed block by block, so temporaries
# stay in cache and below malloc's mmap threshold (no page faults for each one), ~2x faster
# than whole-table arrays. Every result is per row or per sequence, so blocks change nothing.
_BLOCK_ROWS = 16_384


def _compute_sorted(
    sensor: pl.DataFrame, demographics: pl.DataFrame | None, params: ExtractParams
) -> FeatureSet:
    sequence_ids = sensor.get_column("sequence_id")
    groups = _groups_from_ids(sequence_ids.to_numpy())
    names = _frame_channels(params.tof_regions)
    n_imu, n_segments = len(IMU_CHANNELS), _segments(params)

    channels = np.empty((len(names), groups.n_rows))  # channel-major: fast group reductions
    reported = np.empty(groups.n_rows, dtype=bool)
    per_channel = []
    for _, rows, block in groups.blocks(_BLOCK_ROWS):
        sensor_block = _SensorBlocks(sensor.slice(rows.start, rows.stop - rows.start))
        values = channels[:, rows]
        _imu_channels(
            sensor_block.get(ACC_COLUMNS),
            sensor_block.get(ROT_COLUMNS),
            block,
            params.sampling_rate_hz,
            out=values[:n_imu],
        )
        reported[rows] = _modality_channels(
            sensor_block, block, params.tof_regions, out=values[n_imu:]
        )
        per_channel.append(_sequence_block(values, block, params.sampling_rate_hz, n_segments))

    frame_features = _channel_major_frame(channels, names)
    frame_features.insert_column(0, sequence_ids)
    frame_features.insert_column(
        1, sensor.get_column("sequence_counter").cast(pl.Int32, strict=False)
    )
    sequences, demo_values = _sequence_table(sensor, groups, reported, demographics)
    matrix = np.hstack(
        [np.concatenate(per_channel), groups.counts[:, None].astype(np.float64), demo_values]
    )
    sequence_features = _float32_frame(
        matrix, _sequence_feature_names(params.tof_regions, n_segments)
    )
    sequence_features.insert_column(0, sequences.get_column("sequence_id"))
    return FeatureSet(sequences, sequence_features, frame_features)


def _sequence_table(
    sensor: pl.DataFrame,
    groups: _Groups,
    reported: np.ndarray,
    demographics: pl.DataFrame | None,
) -> tuple[pl.DataFrame, np.ndarray]:
    """The sequences table and the (G, 7) demographic feature values (NaN if unknown)."""
    sequence_ids = sensor.get_column("sequence_id").gather(groups.starts)
    subjects = sensor.get_column("subject").gather(groups.starts)
    lookup = _demographics_lookup(demographics)
    unknown = np.full(len(DEMOGRAPHIC_FEATURES), np.nan)
    demo_values = np.array(
        [lookup.get(s, unknown) for s in subjects.to_list()], dtype=np.float64
    ).reshape(len(groups.starts), len(DEMOGRAPHIC_FEATURES))
    handedness = demo_values[:, DEMOGRAPHIC_FEATURES.index("handedness")]
    has_modality = np.logical_or.reduceat(reported, groups.starts)
    sequences = pl.DataFrame(
        [
            sequence_ids,
            subjects,
            pl.Series("sensor_group", np.where(has_modality, "full", "imu_only"), pl.String),
            pl.Series("length", groups.counts, pl.Int32),
            pl.Series("handedness", handedness, nan_to_null=True).cast(pl.Int32, strict=False),
        ]
    )
    return sequences, demo_values


def _empty_feature_set(params: ExtractParams) -> FeatureSet:
    float_columns = dict.fromkeys(sequence_feature_names(params), pl.Float32)
    return FeatureSet(
        sequences=pl.DataFrame(
            schema={
                "sequence_id": pl.String,
                "subject": pl.String,
                "sensor_group": pl.String,
                "length": pl.Int32,
                "handedness": pl.Int32,
            }
        ),
        sequence_features=pl.DataFrame(schema={"sequence_id": pl.String, **float_columns}),
        frame_features=pl.DataFrame(
            schema={
                "sequence_id": pl.String,
                "sequence_counter": pl.Int32,
                **dict.fromkeys(frame_channels(params), pl.Float32),
            }
        ),
    )
