"""Quaternion maths, in one place: (w, x, y, z) unit quaternions mapping device -> world,
vectorised over leading axes. Used by the feature path and the synthetic generator alike."""

from __future__ import annotations

import numpy as np

GRAVITY = 9.81  # m/s^2, world frame z axis
_CONJUGATE_SIGNS = np.array([1.0, -1.0, -1.0, -1.0])


def multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of (..., 4) arrays in (w, x, y, z) order."""
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def conjugate(q: np.ndarray) -> np.ndarray:
    """The inverse rotation of a unit quaternion."""
    return q * _CONJUGATE_SIGNS


def from_rotation_vector(rotvec: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle, rad) -> unit quaternion."""
    angle = np.linalg.norm(rotvec, axis=-1, keepdims=True)
    # sin(a/2)/a without a division by zero: 0.5 * sinc(a / 2pi)
    scale = 0.5 * np.sinc(angle / (2 * np.pi))
    return np.concatenate([np.cos(angle / 2), rotvec * scale], axis=-1)


def to_rotation_vector(q: np.ndarray) -> np.ndarray:
    """Unit quaternion -> rotation vector of the shorter rotation."""
    q = np.where(q[..., :1] < 0, -q, q)
    vec_norm = np.linalg.norm(q[..., 1:], axis=-1, keepdims=True)
    angle = 2 * np.arctan2(vec_norm, q[..., :1])
    return q[..., 1:] * np.where(vec_norm > 1e-12, angle / np.maximum(vec_norm, 1e-12), 2.0)


def rotate_inverse(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """R(q)^T v: a world (or parent-frame) vector expressed in the rotated frame."""
    u = -q[..., 1:]
    t = 2 * np.cross(u, v)
    return v + q[..., :1] * t + np.cross(u, t)


def rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """R(q) v: a device-frame vector expressed in the parent frame."""
    return rotate_inverse(conjugate(q), v)


def slerp(q0: np.ndarray, q1: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Spherical interpolation from q0 (s = 0) to q1 (s = 1), one s per row."""
    step = to_rotation_vector(multiply(conjugate(q0), q1))
    return multiply(q0, from_rotation_vector(s[:, None] * step))


def from_matrix(m: np.ndarray) -> np.ndarray:
    """A 3x3 rotation matrix -> unit quaternion with w >= 0 (Shepperd's method: divide by
    the largest of the four candidate components)."""
    w2, x2, y2, z2 = (
        1 + m[0, 0] + m[1, 1] + m[2, 2],
        1 + m[0, 0] - m[1, 1] - m[2, 2],
        1 - m[0, 0] + m[1, 1] - m[2, 2],
        1 - m[0, 0] - m[1, 1] + m[2, 2],
    )
    big = int(np.argmax([w2, x2, y2, z2]))
    r = np.sqrt(max([w2, x2, y2, z2][big], 1e-12)) / 2
    d = 4 * r
    if big == 0:
        q = [r, (m[2, 1] - m[1, 2]) / d, (m[0, 2] - m[2, 0]) / d, (m[1, 0] - m[0, 1]) / d]
    elif big == 1:
        q = [(m[2, 1] - m[1, 2]) / d, r, (m[0, 1] + m[1, 0]) / d, (m[0, 2] + m[2, 0]) / d]
    elif big == 2:
        q = [(m[0, 2] - m[2, 0]) / d, (m[0, 1] + m[1, 0]) / d, r, (m[1, 2] + m[2, 1]) / d]
    else:
        q = [(m[1, 0] - m[0, 1]) / d, (m[0, 2] + m[2, 0]) / d, (m[1, 2] + m[2, 1]) / d, r]
    q = np.array(q)
    return q if q[0] >= 0 else -q


def canonical(quat: np.ndarray) -> np.ndarray:
    """Unit quaternions with w >= 0.

    q and -q are the same orientation and the device may report either; without a canonical
    sign the rot_* channels jump between two values for one pose, which a tree split or a
    convolution would read as motion. Forcing w >= 0 picks one representative per pose.
    """
    norm = np.linalg.norm(quat, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = quat / norm
    return np.where(unit[..., :1] < 0, -unit, unit)


def gravity_in_device_frame(quat: np.ndarray) -> np.ndarray:
    """R(q)^T [0, 0, g] for unit (w, x, y, z) quaternions mapping device -> world; (..., 3)."""
    w, x, y, z = np.moveaxis(quat, -1, 0)
    # Third row of the rotation matrix of q, i.e. the world z axis seen from the device.
    return GRAVITY * np.stack(
        [2.0 * (x * z - w * y), 2.0 * (y * z + w * x), 1.0 - 2.0 * (x * x + y * y)], axis=-1
    )


def relative_rotation_vectors(q_from: np.ndarray, q_to: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle, rad, device frame of q_from) taking q_from to q_to.

    dq = q_from^-1 * q_to; dq and -dq are the same rotation, so dq is flipped to w >= 0,
    which picks the short way round and makes the result independent of the signs of the
    two inputs.
    """
    dq = multiply(conjugate(q_from), q_to)
    dq = np.where(dq[..., :1] < 0, -dq, dq)
    vec = dq[..., 1:]
    sin_half = np.linalg.norm(vec, axis=-1, keepdims=True)
    cos_half = np.clip(dq[..., :1], 0.0, None)
    angle = 2.0 * np.arctan2(sin_half, cos_half)
    # angle / sin_half -> 2 / cos_half as the rotation vanishes (no 0/0).
    tiny = sin_half < 1e-12
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(tiny, 2.0 / np.maximum(cos_half, 1e-12), angle / sin_half)
    return vec * ratio
