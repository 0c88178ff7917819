"""Per-frame channels from raw sensor values, channel-major: (channels, rows).

The input is one block of rows of whole sequences (``SensorBlock``): IMU and thermopile
values row-major in float64, ToF pixels as one (5 * 64, rows) float32 array, the layout that
makes per-frame reductions over a sensor's 64 pixels fast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from cmi import rotation
from cmi.features.groups import Groups, fill_within_groups, hold_edge
from cmi.features.names import N_TOF_REGIONS, TOF_PER_FRAME
from cmi.schema import (
    ACC_COLUMNS,
    N_TOF_PIXELS,
    N_TOF_SENSORS,
    ROT_COLUMNS,
    SENSOR_COLUMNS,
    THM_COLUMNS,
    TOF_COLUMNS,
)

# ToF valid distances are 0..249; a frame whose pixels are all -1 ("no reflection") saw
# nothing within range, so its nearest/mean valid distance is set just beyond the range.
TOF_NO_REFLECTION = 255.0
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _columns(names: tuple[str, ...]) -> slice:
    """Where a run of SENSOR_COLUMNS sits in a block's value array."""
    first = SENSOR_COLUMNS.index(names[0])
    assert SENSOR_COLUMNS[first : first + len(names)] == names
    return slice(first, first + len(names))


_ACC, _ROT, _THM = _columns(ACC_COLUMNS), _columns(ROT_COLUMNS), _columns(THM_COLUMNS)
_TOF = _columns(TOF_COLUMNS)
_TOF_CALL_VALUES = 1 << 20  # pixels per tof_channels call: 4 MB of float32
# Sensor i of a mirrored device is sensor MIRRORED_SENSORS[i] of the unmirrored one.
MIRRORED_SENSORS = np.array([0, 1, 4, 3, 2])
# ToF pixel row i of a mirrored block is pixel row _MIRRORED_PIXELS[i] of the unmirrored one:
# the sensors swapped, each 8x8 image (row p // 8, column p % 8) flipped left to right.
_MIRRORED_PIXELS = (
    np.arange(N_TOF_SENSORS * N_TOF_PIXELS)
    .reshape(N_TOF_SENSORS, 8, 8)[MIRRORED_SENSORS][:, :, ::-1]
    .reshape(-1)
)


@dataclass(frozen=True)
class SensorBlock:
    """Raw sensor values of a block of rows (NaN = null)."""

    acc: np.ndarray  # (R, 3) float64
    rot: np.ndarray  # (R, 4) float64
    thm: np.ndarray  # (R, 5) float64
    tof: np.ndarray  # (5 * 64, R) float32: sensor 1's 64 pixels, then sensor 2's, ...

    @classmethod
    def from_frame(cls, sensor: pl.DataFrame) -> SensorBlock:
        """From a table of exactly SENSOR_COLUMNS, all Float64: one copy out of polars
        (column-major, so a sensor's pixels are contiguous per pixel), then the pixels to
        float32 (faster than per-column conversions or a polars cast, measured).

        Nulls become NaN, and so do +-inf (before the float32 cast, which only overflows):
        ``prepare_sensor_frame`` nulls them too, unless told not to, which saves the extract
        stage a pass over the whole table; this block is in cache. The pixels are looked at
        as float32 (half the bytes); an inf there is an inf or a value that overflowed, and
        only then do the float64 values say which."""
        values = sensor.to_numpy(order="fortran")
        tof = values[:, _TOF].T.astype(np.float32)
        if np.isinf(values[:, : _TOF.start]).any() or np.isinf(tof).any():
            infinite = np.isinf(values)
            if infinite.any():
                values = values if values.flags.writeable else values.copy()
                values[infinite] = np.nan
                tof = values[:, _TOF].T.astype(np.float32)
        return cls(values[:, _ACC], values[:, _ROT], values[:, _THM], tof)

    def mirrored(self, rows: np.ndarray, *, in_place: bool = False) -> SensorBlock:
        """The block with ``rows`` (a mask) as seen by the same device on the other wrist.

        The mirror image through the device's y-z plane, as the synthetic data makes
        left-handed subjects (cmi.synth): acc_x and the quaternion's y and z change sign,
        thermopiles and ToF sensors 3 and 5 trade places, and each 8x8 ToF image is flipped
        left to right. Its own inverse: mirroring twice gives the input back exactly.

        Only the mirrored rows are touched; ``in_place`` changes this block's (writable)
        arrays instead of copies: ``from_frame`` made them, and copying every block cost more
        than mirroring it.
        """
        acc, rot, thm, tof = (
            part if in_place and part.flags.writeable else part.copy()
            for part in (self.acc, self.rot, self.thm, self.tof)
        )
        which = np.flatnonzero(rows)
        acc[which, 0] *= -1
        rot[which, 2:] *= -1
        thm[which] = thm[which][:, MIRRORED_SENSORS]
        tof[:, which] = tof[:, which][_MIRRORED_PIXELS]
        return SensorBlock(acc, rot, thm, tof)


def imu_channels(
    acc_raw: np.ndarray,
    rot_raw: np.ndarray,
    groups: Groups,
    sampling_rate_hz: float,
    out: np.ndarray,
) -> None:
    """Writes the IMU channels into ``out`` (len(IMU_CHANNELS), R); never NaN.

    acc: gaps filled from the nearest frame of the sequence, a sequence without acc -> 0.
    rot: a row whose quaternion is incomplete or zero is filled from the nearest good frame of
    the sequence; a sequence with no quaternion at all gets the identity and its linear
    acceleration is acc minus the sequence's mean acc (gravity is the only acceleration that
    does not average out over a gesture, so the mean is the best gravity estimate we have).
    """
    acc = fill_within_groups(acc_raw, np.isfinite(acc_raw), groups)
    acc = np.nan_to_num(acc, nan=0.0)

    rot_ok = np.isfinite(rot_raw).all(axis=1) & (np.abs(rot_raw).sum(axis=1) > 1e-8)
    rot = fill_within_groups(rot_raw, np.repeat(rot_ok[:, None], 4, axis=1), groups)
    no_rot = ~np.isfinite(rot).all(axis=1)
    rot[no_rot] = (1.0, 0.0, 0.0, 0.0)
    rot = rotation.canonical(rot)

    linear = acc - rotation.gravity_in_device_frame(rot)
    seq_has_rot = np.logical_or.reduceat(rot_ok, groups.starts)
    without = ~groups.per_row(seq_has_rot)
    if without.any():
        mean_acc = np.add.reduceat(acc, groups.starts, axis=0) / groups.counts[:, None]
        linear[without] = (acc - groups.per_row(mean_acc))[without]

    omega = _angular_velocity(rot, groups, sampling_rate_hz)
    distance = np.linalg.norm(omega, axis=1, keepdims=True) / sampling_rate_hz
    acc_mag = np.linalg.norm(acc, axis=1, keepdims=True)
    linear_mag = np.linalg.norm(linear, axis=1, keepdims=True)
    jerk = np.zeros_like(acc_mag)
    jerk[1:] = np.diff(acc_mag, axis=0) * sampling_rate_hz
    hold_edge(jerk, groups.starts, 1, groups.counts)  # first frame: no previous one
    row = 0
    for block in (acc, rot, linear, omega, distance, acc_mag, linear_mag, jerk):
        out[row : row + block.shape[1]] = block.T
        row += block.shape[1]
    # Only absurd magnitudes (inf - inf) can make NaN here; IMU channels are never null.
    np.nan_to_num(out, copy=False, nan=0.0, posinf=FLOAT32_MAX, neginf=-FLOAT32_MAX)


def _angular_velocity(quat: np.ndarray, groups: Groups, sampling_rate_hz: float) -> np.ndarray:
    """(R, 3) rad/s from each frame to the next of the same sequence.

    A sequence's last frame has no next one: it repeats the previous frame's value (0 for a
    one-frame sequence), so no constant 0 ends every sequence.
    """
    omega = np.zeros((quat.shape[0], 3))
    if quat.shape[0] > 1:
        omega[:-1] = rotation.relative_rotation_vectors(quat[:-1], quat[1:]) * sampling_rate_hz
    hold_edge(omega, groups.ends - 1, -1, groups.counts)
    return omega


def n_tof_channels(tof_regions: bool) -> int:
    return len(TOF_PER_FRAME) + (N_TOF_REGIONS if tof_regions else 0)


def tof_channels(pixels: np.ndarray, tof_regions: bool) -> np.ndarray:
    """(S * 64, R) float32 pixels of S consecutive ToF sensors -> their (S * k, R) channels,
    sensor-major (NaN where a sensor reported nothing in that frame).

    Pixels >= 0 are valid distances; negative values (-1) mean no reflection; null means the
    sensor was absent. A frame with no valid pixel gets TOF_NO_REFLECTION as mean/min. Works
    in float32: the pixels are small integers, so the sums are exact and it runs ~5x faster.
    Pixel v{p} is row p // 8, column p % 8 of the 8x8 image; its regions are the 4x4
    quadrants r0 (top left), r1 (top right), r2 (bottom left), r3 (bottom right).
    """
    n_sensors, n_rows = pixels.shape[0] // N_TOF_PIXELS, pixels.shape[1]
    pixels = pixels.reshape(n_sensors, N_TOF_PIXELS, n_rows)
    # (sensor, row half, row in half, column half, column in half, frame) -> per quadrant
    quadrants = (n_sensors, 2, 4, 2, 4, n_rows)
    valid = pixels >= 0  # False for NaN (absent) and negative (no reflection)
    # fmax(NaN or -1, 0) is 0: the valid pixels' sum without a masked copy
    region_total = np.fmax(pixels, np.float32(0)).reshape(quadrants).sum(axis=(2, 4))
    if not np.isfinite(region_total).all():  # absurd values overflowed float32: not valid
        valid &= pixels < np.inf
        region_total = np.where(valid, pixels, np.float32(0)).reshape(quadrants).sum(axis=(2, 4))
    region_total = region_total.reshape(n_sensors, 4, n_rows)
    region_valid = _count(valid.reshape(quadrants), axis=(2, 4)).reshape(n_sensors, 4, n_rows)
    n_valid = region_valid.sum(axis=1)
    n_reported = N_TOF_PIXELS - _count(np.isnan(pixels), axis=1)
    far = np.float32(TOF_NO_REFLECTION)
    out = np.empty((n_sensors, n_tof_channels(tof_regions), n_rows), dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[:, 0] = np.where(n_valid > 0, region_total.sum(axis=1) / n_valid, far)
        minimum = _valid_minimum(pixels, valid)
        out[:, 1] = np.where(n_valid > 0, minimum, far)
        out[:, 2] = (n_reported - n_valid) / n_reported
        if tof_regions:
            out[:, 3:] = np.where(region_valid > 0, region_total / region_valid, far)
    out[np.broadcast_to((n_reported == 0)[:, None, :], out.shape)] = np.nan
    return out.reshape(-1, n_rows)


_NEGATIVE_ZERO_BITS = np.float32(-0.0).view(np.uint32)


def _valid_minimum(pixels: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(S, 64, R) -> (S, R): each frame's smallest valid pixel (anything where none is valid).

    Taken on the bits as uint32, without a masked copy (~10x faster): float32 values with
    the sign bit clear order as their bits do, and NaN (absent), +inf (overflowed) and every
    negative value (no reflection) come after all finite ones. -0.0 is valid but its bits
    come after the positives: a call that has one takes the masked way.
    """
    bits = pixels.view(np.uint32)
    if (bits == _NEGATIVE_ZERO_BITS).any():
        return np.where(valid, pixels, np.float32(np.inf)).min(axis=1)
    return bits.min(axis=1).view(np.float32)


def _count(mask: np.ndarray, axis: int | tuple[int, ...]) -> np.ndarray:
    """How many are set along ``axis``, as int64; summed as bytes (at most 64 per frame
    here), several times faster than numpy's bool sum, which widens every value."""
    return np.add.reduce(mask.view(np.uint8), axis=axis, dtype=np.uint8).astype(np.int64)


def modality_channels(
    thm: np.ndarray, pixels: np.ndarray, groups: Groups, tof_regions: bool, out: np.ndarray
) -> np.ndarray:
    """Writes thm/tof channels into ``out`` (5 + 5 * k, R); returns per row whether any
    thm/tof value was reported (for sensor_group).

    Gaps inside a sequence are filled, a sensor silent for a whole sequence stays NaN.
    """
    n_thm, k = len(THM_COLUMNS), n_tof_channels(tof_regions)
    out[:n_thm] = thm.T
    # Several sensors per call for short blocks (fewer numpy calls: one sequence at
    # inference), one per call for long ones (temporaries stay in cache).
    per_call = max(1, min(N_TOF_SENSORS, _TOF_CALL_VALUES // (N_TOF_PIXELS * pixels.shape[1])))
    for first in range(0, N_TOF_SENSORS, per_call):
        stop = min(first + per_call, N_TOF_SENSORS)
        channels = tof_channels(pixels[first * N_TOF_PIXELS : stop * N_TOF_PIXELS], tof_regions)
        out[n_thm + first * k : n_thm + stop * k] = channels
    reported = ~np.isnan(out).all(axis=0)
    fill_within_groups(out.T, None, groups)
    return reported
