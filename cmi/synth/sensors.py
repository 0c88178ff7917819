"""What the device reports: IMU readings, thermopiles and ToF images, for how it is worn.

The generator's device frame: x along the forearm (towards the hand), z away from the surface
the hand works on, y = z cross x. Its five thermopile/ToF pairs look along fixed device
directions; ``tof_mm`` in the gesture templates is what each sees when the device is worn the
normal way on a right wrist:

| sensor | looks along | the normal wearer sees |
|---|---|---|
| 1 | -z | the surface the hand works on (face, neck, leg, ...), closest |
| 2, 4 | +y, -y | the two sides across the wrist |
| 3, 5 | +x, -x | towards the hand, towards the elbow |

Two ways of wearing it change the readings, each a fixed map of the normal wearer's:

- **Left-handed** subjects are the mirror image of right-handed ones: the mirror reverses the
  device x axis, so ``acc_x`` flips sign, the quaternion (w, x, y, z) becomes (w, x, -y, -z),
  and sensors 3 and 5 (along x) swap views.
- **Upside-down** wearers have the device rotated 180 degrees about the forearm (device x)
  axis. In the rotated frame y -> -y and z -> -z, so ``acc_y`` and ``acc_z`` flip sign and the
  device -> world quaternion becomes q * q_x(180 deg) (the world frame does not move; R(q) acc
  is unchanged, so acc and quaternion stay consistent). Views follow the sensors' directions:
  sensors 2 and 4 (along +-y) swap views, sensors 3 and 5 (along x) keep theirs, and sensor 1
  now looks along the normal wearer's +z, away from the worked surface, where no normal sensor
  looks: it sees open space (far or no reflections) and ambient temperature. The device's own
  sensor biases stay with the device.
"""

from __future__ import annotations

import numpy as np

from cmi import rotation as rot
from cmi.schema import TOF_COLUMNS
from cmi.synth.gestures import REST_TOF_MM, REST_WARMTH
from cmi.synth.kinematics import template_arrays

_HEAT_MM = 110.0  # distance over which a thermopile's view of warm skin fades
# Direction each view's distance moves with the hand's rotation (device frame).
_TOF_ROT_DIRS = np.array(
    [[0, 1, 0], [0, -1, 0.3], [1, 0, 0.2], [-0.5, 0.5, 0.5], [-1, 0, 0.2]], dtype=float
)
# Views: 0..4 are the five sensors' views on a normal wearer, 5 is "away" (normal +z).
AWAY_VIEW = 5
# View seen by each of the 5 sensors (sensor i -> view), per way of wearing the device.
MIRRORED_VIEWS = np.array([0, 1, 4, 3, 2])  # left-handed: sensors 3 and 5 swap
UPSIDE_DOWN_VIEWS = np.array([AWAY_VIEW, 3, 2, 1, 4])  # 1 looks away; 2 and 4 swap
HALF_TURN_ABOUT_X = np.array([0.0, 1.0, 0.0, 0.0])  # q_x(180 deg), (w, x, y, z)
_UPSIDE_DOWN_AXES = np.array([1.0, -1.0, -1.0])  # R_x(180 deg)^T applied to a device vector


def surfaces(seq: dict, traits: dict, rng: np.random.Generator) -> None:
    """What each view sees at the target and at rest, and the subject's thermal setting."""
    g, s, n = seq["gesture"], seq["subject"], len(seq["gesture"])
    offset = traits["tof_off"][s]
    tof_target = template_arrays(g, "tof_mm") + offset + rng.normal(0, 40, (n, 5))
    tof_target = np.maximum(tof_target, rng.uniform(5, 30, (n, 5)))  # skin is not at 0
    tof_rest = np.array(REST_TOF_MM) + offset + rng.normal(0, 25, (n, 5))
    away = rng.uniform(350, 650, (n, 1))  # behind the wrist: a wall, a ceiling, nothing
    seq["tof_target"] = np.concatenate([tof_target, away], axis=1)
    seq["tof_rest"] = np.concatenate([tof_rest, away], axis=1)
    seq["warm_target"] = template_arrays(g, "warmth")
    direction = rng.uniform(0, 2 * np.pi, (n, 5))
    magnitude = rng.uniform(4, 22, (n, 5))
    seq["slope"] = np.stack([np.cos(direction), np.sin(direction)], axis=-1) * magnitude[..., None]
    seq["curv"] = rng.uniform(1.5, 4.0, (n, 5))
    seq["skin"] = traits["skin"][s]
    seq["ambient"] = traits["ambient"][s] + rng.normal(0, 0.4, n)
    seq["thm_off"] = traits["thm_off"][s]


def sensor_views(left: np.ndarray, upside_down: np.ndarray) -> np.ndarray:
    """(frames, 5) view index seen by each sensor, for each frame's way of wearing."""
    views = np.tile(np.arange(5), (len(left), 1))
    views[upside_down] = UPSIDE_DOWN_VIEWS
    views[left] = views[left][:, MIRRORED_VIEWS]  # commutes with the upside-down map
    return views


def imu_readings(
    motion: dict[str, np.ndarray], f: dict, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Accelerometer and device -> world quaternion as the worn device reports them."""
    force, quat = motion["force"].copy(), motion["quat"].copy()
    flip = f["upside_down"]
    force[flip] *= _UPSIDE_DOWN_AXES
    quat[flip] = rot.multiply(quat[flip], HALF_TURN_ABOUT_X)
    acc = force + f["acc_bias"] + rng.normal(0, 0.12, force.shape)
    quat = rot.multiply(quat, rot.from_rotation_vector(rng.normal(0, 0.004, (len(quat), 3))))
    quat = rot.canonical(quat)  # the real files keep w >= 0
    left = f["left"]
    acc[left, 0] *= -1  # mirror image of a right-handed wearer
    quat[left, 2:] *= -1
    acc = np.round(np.round(acc * 256) / 256, 6)  # 1/256 m/s^2 steps like the real device
    quat = np.round(np.round(quat * 16384) / 16384, 6)
    return acc, quat


def _distances(motion: dict, f: dict) -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm) each of the six views sees to the target surface and the resting one."""
    to_target = 1000 * np.linalg.norm(motion["pos"] - f["r_target"], axis=1, keepdims=True)
    to_rest = 1000 * np.linalg.norm(motion["pos"] - f["r_rest"], axis=1, keepdims=True)
    d_target = f["tof_target"].copy()
    d_target[:, :AWAY_VIEW] += to_target + 120 * motion["rot_osc"] @ _TOF_ROT_DIRS.T
    d_rest = f["tof_rest"].copy()
    d_rest[:, :AWAY_VIEW] += to_rest
    return d_target, d_rest


def _thermopiles(d_target: np.ndarray, d_rest: np.ndarray, f: dict, rng) -> np.ndarray:
    """Skin close by warms a thermopile towards skin temperature, else it reads ambient."""
    heat = np.maximum(
        f["warm_target"][:, None] * np.exp(-np.maximum(d_target, 0) / _HEAT_MM),
        REST_WARMTH * np.exp(-np.maximum(d_rest, 0) / _HEAT_MM),
    )
    ambient = f["ambient"][:, None]
    thm = ambient + (f["skin"][:, None] - ambient) * heat + f["thm_off"]
    return np.round(thm + rng.normal(0, 0.05, thm.shape), 6)


_PIX_U, _PIX_V = (np.meshgrid(np.arange(8) - 3.5, np.arange(8) - 3.5)[i].ravel() for i in (0, 1))
_PIX_R2 = _PIX_U**2 + _PIX_V**2
_PIX_MAX = (252.0 - 2.2 * _PIX_R2).astype(np.float32)  # vignetting: corners lose range first


def _tof_images(distance: np.ndarray, f: dict, rng: np.random.Generator) -> np.ndarray:
    """Five 8x8 distance images per frame as one (320 pixels, frames) float64 array.

    Each image is an oblique, curved surface at the sensor's distance; pixels past the range
    (corners first) or with a weak, noisy return read -1. Pixel-major layout keeps every
    output column contiguous for polars.
    """
    n = len(distance)
    out = np.empty((len(TOF_COLUMNS), n), dtype=np.float64)
    u, v, r2 = (a.astype(np.float32)[:, None] for a in (_PIX_U, _PIX_V, _PIX_R2))
    for s in range(5):
        d = distance[:, s].astype(np.float32)
        pix = u * f["slope"][:, s, 0].astype(np.float32)
        pix += v * f["slope"][:, s, 1].astype(np.float32)
        pix += r2 * f["curv"][:, s].astype(np.float32)
        pix += d
        noise = rng.standard_normal((64, n), dtype=np.float32)
        invalid = noise > 2.05  # ~2% of returns are too weak to report
        noise *= 3 + 0.03 * np.abs(d)
        pix += noise
        invalid |= pix > _PIX_MAX[:, None]
        np.clip(np.rint(pix, out=pix), 0, 252, out=pix)
        pix[invalid] = -1.0
        out[s * 64 : (s + 1) * 64] = pix
    return out


def sensor_readings(
    motion: dict[str, np.ndarray], f: dict, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """All sensor values of all frames; nulls (NaN) where a sensor is absent."""
    acc, quat = imu_readings(motion, f, rng)
    d_target, d_rest = _distances(motion, f)
    views = sensor_views(f["left"], f["upside_down"])
    d_target = np.take_along_axis(d_target, views, axis=1)
    d_rest = np.take_along_axis(d_rest, views, axis=1)
    thm = _thermopiles(d_target, d_rest, f, rng)
    tof = _tof_images(np.minimum(d_target, d_rest), f, rng)
    quat[f["no_rot"]] = np.nan
    thm[f["imu_only"]] = np.nan
    tof[:, f["imu_only"]] = np.nan
    return {"acc": acc, "rot": quat, "thm": thm, "tof": tof}
