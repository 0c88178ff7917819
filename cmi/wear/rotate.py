"""Undo a device worn upside down: a 180-degree turn about the device x (forearm) axis.

Frame conventions (those of ``cmi.synth.sensors``): device x along the forearm towards the
hand, z away from the surface the hand works on, y = z cross x. The quaternion maps
device -> world and the files keep ``w >= 0``.

What the half turn R = R_x(180 deg) = diag(1, -1, -1) does, and how each part is undone:

- **Accelerometer**: a device-frame vector v reads R^T v, so ``acc_y`` and ``acc_z`` change
  sign; negating them again undoes it (R is its own inverse).
- **Quaternion**: the worn orientation is q * q_x(pi); multiplying by q_x(pi) again gives
  q * q_x(2 pi) = -q, the same rotation. In components, (w, x, y, z) * (0, 1, 0, 0) =
  (-x, w, z, -y): a signed permutation, exact in floating point. The sign is then chosen so
  that ``w >= 0`` as in the real files.
- **Which sensor sees what**: sensors 2 and 4 look along +y and -y, which the half turn
  exchanges, so their thermopile and ToF channels swap back. Sensors 3 and 5 look along +x
  and -x, on the turning axis: they keep their views. Sensor 1 looks along -z towards the
  worked surface; upside down it looks along the normal wearer's +z, into open space, where
  no sensor of a normal wearer looks. Nothing can restore what it would have seen: it is
  kept as recorded, or nulled with ``null_away_sensor=True`` (the caller's choice; nulls
  say "no information" but make a sensor pattern the models rarely see).
- **ToF image orientation**: the device's geometry file is not public, so this assumes the
  usual rim mounting: each side sensor (2..5) has its image "up" along device +z and its
  columns across. The half turn reverses z, and for the sensors looking across the wrist
  (2, 4) it also turns the view round, so that the other sensor of the pair, whose columns
  run the other way along x, takes the view: in every case both image axes reverse, i.e.
  the 8x8 image turns by 180 degrees. Reversing both axes is reversing the flat pixel
  order (``v{p} -> v{63 - p}``), whatever the raster order (row- or column-major), so the
  correction does not depend on it either. The same convention makes the handedness mirror
  (x -> -x) flip every image left to right, as issue 11 states, so the two corrections
  agree. Sensor 1's image is left as it is (its content is unrelated either way).

Applying the map twice gives back the frame (sensor 1 aside): the half turn is an
involution, so ``rotate_back`` applied to an upright frame makes the readings an upside-down
wearer would record (up to the device's own biases and noise, which stay with the device).
Nulls stay null; columns other than the sensor columns, and the row order, are untouched.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from cmi.schema import ACC_COLUMNS, N_TOF_PIXELS, ROT_COLUMNS

# Sensor (1-based) whose view each sensor takes back; 1, 3 and 5 keep their own.
SWAPPED_SENSOR: dict[int, int] = {1: 1, 2: 4, 3: 3, 4: 2, 5: 5}
AWAY_SENSOR = 1  # looks into open space when the device is upside down
# Sensors whose 8x8 image turns by 180 degrees (pixel order reversed) under the half turn.
TURNED_IMAGES: frozenset[int] = frozenset({2, 3, 4, 5})


def _tof(sensor: int, pixel: int) -> str:
    return f"tof_{sensor}_v{pixel}"


def _column_sources() -> dict[str, str]:
    """Destination thermopile/ToF column -> the source column it takes its value from."""
    sources = {}
    for sensor, source in SWAPPED_SENSOR.items():
        sources[f"thm_{sensor}"] = f"thm_{source}"
        for pixel in range(N_TOF_PIXELS):
            src_pixel = N_TOF_PIXELS - 1 - pixel if sensor in TURNED_IMAGES else pixel
            sources[_tof(sensor, pixel)] = _tof(source, src_pixel)
    return sources


COLUMN_SOURCES: dict[str, str] = _column_sources()
AWAY_COLUMNS: frozenset[str] = frozenset(
    [f"thm_{AWAY_SENSOR}"] + [_tof(AWAY_SENSOR, p) for p in range(N_TOF_PIXELS)]
)


def _rotated_imu(frame: pl.DataFrame) -> dict[str, pl.Series]:
    acc_x, acc_y, acc_z = (frame[c].cast(pl.Float64) for c in ACC_COLUMNS)
    w, x, y, z = (frame[c].cast(pl.Float64) for c in ROT_COLUMNS)
    # q * q_x(pi) = (-x, w, z, -y); its w is -x, so the sign that keeps w >= 0 is -sign(x).
    sign = pl.Series(np.where((x > 0).fill_null(False).to_numpy(), -1.0, 1.0))
    return {
        ACC_COLUMNS[0]: acc_x,
        ACC_COLUMNS[1]: -acc_y,
        ACC_COLUMNS[2]: -acc_z,
        ROT_COLUMNS[0]: -x * sign,
        ROT_COLUMNS[1]: w * sign,
        ROT_COLUMNS[2]: z * sign,
        ROT_COLUMNS[3]: -y * sign,
    }


def _check_columns(frame: pl.DataFrame, needed: dict[str, str]) -> None:
    present = set(frame.columns)
    for column in ACC_COLUMNS + ROT_COLUMNS:
        if column not in present:
            raise ValueError(
                f"rotate_back: the frame has no column {column!r} (IMU columns are required)"
            )
    for destination, source in needed.items():
        if (destination in present) != (source in present):
            missing = source if destination in present else destination
            raise ValueError(
                f"rotate_back: column {missing!r} is missing but its partner is present "
                f"({destination!r} takes its value from {source!r}); thermopile and ToF "
                "columns must be present or absent as whole sensors"
            )


def rotate_back(
    frame: pl.DataFrame, *, where: pl.Expr | None = None, null_away_sensor: bool = False
) -> pl.DataFrame:
    """The frame as a device worn the normal way would have recorded it (see the module doc).

    ``frame`` holds raw sensor columns (``cmi.schema``): the IMU columns are required;
    thermopile and ToF columns are handled where present (absent as a whole sensor is fine).
    ``where`` (a boolean expression, e.g. ``pl.col("subject").is_in(flagged)``) limits the
    change to the rows where it is true; other rows are returned unchanged. With
    ``null_away_sensor`` the thermopile and ToF columns of sensor 1, which faced away from
    the worked surface, become null.
    """
    _check_columns(frame, COLUMN_SOURCES)
    # Built from Series, not expressions: a with_columns over ~330 columns costs
    # milliseconds per call even for a 60-row sequence.
    old = {series.name: series for series in frame.get_columns()}
    new = _rotated_imu(frame)
    for destination, source in COLUMN_SOURCES.items():
        if destination in old:
            new[destination] = old[source]
            if null_away_sensor and source in AWAY_COLUMNS:
                new[destination] = old[source].clear(n=frame.height)  # all null, same dtype
    if where is not None:
        mask = frame.select(where).to_series().fill_null(False)
        new = {
            name: value.zip_with(mask, old[name].cast(value.dtype)) for name, value in new.items()
        }
    return pl.DataFrame([new.get(name, series).alias(name) for name, series in old.items()])
