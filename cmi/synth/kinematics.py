"""Kinematics: the wrist's trajectory and the hand's orientation, from rest to target and back.

Per sequence (arrays over sequences, in a dict ``seq``) the functions here draw the timing, the
target and rest poses, the gesture's oscillation and the body's pose in the world. Per frame
(arrays over all frames of all sequences at once, in a dict ``f`` of per-frame copies) they
evaluate the wrist position, the hand orientation and the true specific force, in the frame
of a device worn the normal way on a right wrist. How a subject actually wears the device
(mirrored, upside down) and what its sensors report is ``cmi.synth.sensors``.
"""

from __future__ import annotations

import numpy as np

from cmi import rotation as rot
from cmi.schema import GESTURES
from cmi.synth.gestures import (
    PARTNERS,
    POSE_ROTVEC,
    POSTURE_ROTVEC,
    REST,
    STYLES,
    TEMPLATES,
    Style,
)

FS_HZ = 10.0  # sampling rate of the simulated device; the real one is undocumented
MIN_LEN, MAX_LEN = 29, 700
_FORWARD_STEP_S = 0.02  # finite-difference step for the true, not frame-sampled, acceleration


def quat_from_axes(forearm: tuple, face: tuple) -> np.ndarray:
    """Device orientation whose x is the forearm and whose z is (close to) ``face``."""
    x = np.asarray(forearm, float)
    x /= np.linalg.norm(x)
    z = np.asarray(face, float) - np.dot(face, x) * x
    z /= np.linalg.norm(z)
    return rot.from_matrix(np.column_stack([x, np.cross(z, x), z]))


def surface_basis(normal: tuple) -> np.ndarray:
    """Columns: two tangents and the unit normal (tangent 1 horizontal where possible)."""
    n = np.asarray(normal, float)
    n /= np.linalg.norm(n)
    hint = np.array([0.0, 0.0, 1.0]) if abs(n[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    t1 = np.cross(hint, n)
    t1 /= np.linalg.norm(t1)
    return np.column_stack([t1, np.cross(n, t1), n])


_TEMPLATE_Q = np.array([quat_from_axes(TEMPLATES[g].forearm, TEMPLATES[g].face) for g in GESTURES])
_SURFACE_BASES = np.array([surface_basis(TEMPLATES[g].normal) for g in GESTURES])
_REST_Q = np.array([quat_from_axes(REST[o][1], REST[o][2]) for o in range(len(REST))])


def template_arrays(gestures: np.ndarray, attr: str) -> np.ndarray:
    """One template attribute per sequence, from gesture indices."""
    return np.array([np.asarray(getattr(TEMPLATES[GESTURES[g]], attr), float) for g in gestures])


def _style_arrays(styles: list[Style], attr: str) -> np.ndarray:
    return np.array([np.asarray(getattr(s, attr), float) for s in styles])


# ---------------------------------------------------------------------------------------------
# Per sequence
# ---------------------------------------------------------------------------------------------


def lengths(gestures: np.ndarray, tempo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Frames per sequence: 29 + a log-normal body (median ~59, p95 ~127) scaled by the
    gesture and the subject's tempo, and a rare long tail up to 700."""
    n = len(gestures)
    scale = template_arrays(gestures, "length_scale") / np.sqrt(tempo)
    body = rng.lognormal(np.log(30.0), 0.62, n) * scale
    tail = rng.random(n) < 0.01
    body = np.where(tail, rng.uniform(150, MAX_LEN - MIN_LEN, n), body)
    return np.clip(np.round(MIN_LEN + body), MIN_LEN, MAX_LEN).astype(np.int64)


def timeline(seq: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    """Frames per behaviour and the reach timing (seconds) of every sequence."""
    n, length = len(seq["length"]), seq["length"]
    n_trans = np.clip(np.round(length * rng.uniform(0.33, 0.55, n)), 10, length - 12)
    n_move = np.clip(np.round(n_trans * rng.uniform(0.6, 0.82, n)), 5, n_trans - 3)
    relaxed = seq["relaxed"]
    pause = np.where(relaxed, rng.uniform(0.15, 0.5, n), rng.uniform(0.0, 0.2, n))
    t0 = n_move * pause / FS_HZ
    t1 = np.maximum(n_move / FS_HZ + rng.normal(0, 0.15, n), t0 + 0.6)
    seq.update(n_trans=n_trans.astype(np.int64), n_move=n_move.astype(np.int64))
    seq.update(t0=t0, t1=t1, tg=n_trans / FS_HZ)


def motion_styles(seq: dict, traits: dict, rng: np.random.Generator) -> list[Style]:
    """The style each sequence is performed in: its own, or sloppily its partner's."""
    gestures, subjects = seq["gesture"], seq["subject"]
    sloppy = rng.random(len(gestures)) < traits["sloppy"][subjects]
    source = [
        PARTNERS.get(GESTURES[g], GESTURES[g]) if s else GESTURES[g]
        for g, s in zip(gestures, sloppy, strict=True)
    ]
    seq["amp_scale"] = np.array([TEMPLATES[g].amp_scale for g in source])
    seq["freq_scale"] = np.array([TEMPLATES[g].freq_scale for g in source])
    return [STYLES[TEMPLATES[g].style] for g in source]


def targets(seq: dict, traits: dict, rng: np.random.Generator) -> None:
    """Wrist position and hand orientation at the target, per sequence (body frame)."""
    g, s, n = seq["gesture"], seq["subject"], len(seq["gesture"])
    size = traits["size"][s][:, None]
    touch = template_arrays(g, "touch") * size + traits["loc"][s]
    touch = touch + traits["gesture_loc"][s, g] + rng.normal(0, 0.008, (n, 3))
    jitter = traits["aim"][s] + traits["gesture_aim"][s, g] + rng.normal(0, 0.06, (n, 3))
    posture = np.array([POSTURE_ROTVEC[o] for o in seq["orientation"]], dtype=float)
    q_target = rot.multiply(
        rot.from_rotation_vector(jitter),
        rot.multiply(rot.from_rotation_vector(posture), _TEMPLATE_Q[g]),
    )
    forearm = rot.rotate(q_target, np.tile([1.0, 0.0, 0.0], (n, 1)))
    seq["r_target"] = touch - 0.16 * size * forearm  # the device sits ~16 cm from the fingers
    seq["q_target"] = q_target
    seq["basis"] = _SURFACE_BASES[g]


def rest_and_start(seq: dict, traits: dict, rng: np.random.Generator) -> None:
    """Rest pose for the body orientation; 'Moves hand' sequences start part of the way."""
    o, s, n = seq["orientation"], seq["subject"], len(seq["orientation"])
    size = traits["size"][s][:, None]
    rest_pos = np.array([REST[i][0] for i in o]) * size + rng.normal(0, 0.03, (n, 3))
    rest_q = rot.multiply(rot.from_rotation_vector(rng.normal(0, 0.3, (n, 3))), _REST_Q[o])
    head_start = np.where(seq["relaxed"], 0.0, rng.uniform(0.15, 0.35, n))[:, None]
    seq["r_rest"] = rest_pos
    seq["r_start"] = rest_pos + head_start * (seq["r_target"] - rest_pos)
    seq["q_start"] = rot.slerp(rest_q, seq["q_target"], head_start[:, 0])
    lift = np.array([0.4, 0.0, 1.0]) / np.linalg.norm([0.4, 0.0, 1.0])
    seq["arc"] = rng.uniform(0.02, 0.10, (n, 1)) * (1 - head_start) * lift


def oscillation(seq: dict, traits: dict, styles: list[Style], rng: np.random.Generator) -> None:
    """Per-sequence frequencies, amplitudes and phases of the gesture and of body sway."""
    s, n = seq["subject"], len(seq["subject"])
    tempo = traits["tempo"][s] * rng.lognormal(0, 0.12, n)
    tempo = tempo * np.where(traits["child"][s], rng.lognormal(0.1, 0.15, n), 1.0)
    tempo = np.clip(tempo, 0.6, 1.6) * seq["freq_scale"]  # nobody scratches at 5 Hz
    seq["freq"] = _style_arrays(styles, "freq")[:, None] * tempo[:, None]
    seq["freq"] = seq["freq"] * _style_arrays(styles, "fmul")
    amp = np.clip(traits["amp"][s] * rng.lognormal(0, 0.2, n), 0.5, 2.0)
    amp = amp * traits["size"][s] * seq["amp_scale"]
    seq["amp"] = _style_arrays(styles, "amp") * amp[:, None]
    seq["harm"] = _style_arrays(styles, "harm") * rng.lognormal(0, 0.15, (n, 3, 3))
    seq["phase"] = rng.uniform(0, 2 * np.pi, (n, 3, 3))
    seq["dc"] = _style_arrays(styles, "dc")
    rot_scale = np.sqrt(traits["amp"][s]) * rng.lognormal(0, 0.2, n)
    seq["rot_amp"] = _style_arrays(styles, "rot_amp") * rot_scale[:, None]
    seq["rot_dc"] = _style_arrays(styles, "rot_dc")
    seq["rot_phase"] = rng.uniform(0, 2 * np.pi, (n, 3))
    for name, amp_m in (("sway", 0.004), ("rot_sway", 0.03)):
        seq[f"{name}_amp"] = amp_m * rng.uniform(0.5, 1.5, (n, 3))
        seq[f"{name}_freq"] = rng.uniform(0.15, 1.0, (n, 3))
        seq[f"{name}_phase"] = rng.uniform(0, 2 * np.pi, (n, 3))


def pose(seq: dict, traits: dict, rng: np.random.Generator) -> None:
    """Body orientation in the world, a heading that differs per subject, and the mounting."""
    o, s, n = seq["orientation"], seq["subject"], len(seq["orientation"])
    base = rot.from_rotation_vector(np.array([POSE_ROTVEC[i] for i in o], dtype=float))
    q_pose = rot.multiply(
        rot.from_rotation_vector(traits["pose"][s, o] + rng.normal(0, 0.05, (n, 3))), base
    )
    yaw = traits["yaw"][s, o] + rng.normal(0, 0.25, n)
    seq["q_pose"] = q_pose
    seq["q_yaw"] = rot.from_rotation_vector(np.column_stack([np.zeros(n), np.zeros(n), yaw]))
    seq["g_body"] = rot.GRAVITY * rot.rotate_inverse(q_pose, np.tile([0.0, 0.0, 1.0], (n, 1)))
    seq["q_mount"] = rot.from_rotation_vector(traits["mount"][s])


def sequence_motion(seq: dict, traits: dict, rng: np.random.Generator) -> None:
    """Every motion parameter of every sequence, added to ``seq`` in place."""
    styles = motion_styles(seq, traits, rng)
    timeline(seq, rng)
    targets(seq, traits, rng)
    rest_and_start(seq, traits, rng)
    oscillation(seq, traits, styles, rng)
    pose(seq, traits, rng)


# ---------------------------------------------------------------------------------------------
# Per frame (all frames of all sequences at once)
# ---------------------------------------------------------------------------------------------


def _minjerk(u: np.ndarray) -> np.ndarray:
    u = np.clip(u, 0.0, 1.0)
    return u**3 * (10 - 15 * u + 6 * u**2)


def _sines(t: np.ndarray, f: dict, name: str) -> np.ndarray:
    return f[f"{name}_amp"] * np.sin(
        2 * np.pi * f[f"{name}_freq"] * t[:, None] + f[f"{name}_phase"]
    )


def _envelope(t: np.ndarray, f: dict) -> np.ndarray:
    """The gesture's motion fades in around the start of the Gesture phase."""
    return _minjerk((t - f["tg"] + 0.3) / 0.8)[:, None]


def position(t: np.ndarray, f: dict) -> np.ndarray:
    """Wrist position in the body frame (metres) at times ``t`` (seconds into the sequence)."""
    s = _minjerk((t - f["t0"]) / (f["t1"] - f["t0"]))[:, None]
    base = f["r_start"] + (f["r_target"] - f["r_start"]) * s + f["arc"] * np.sin(np.pi * s)
    k = np.arange(1, 4)
    arg = 2 * np.pi * f["freq"][:, :, None] * t[:, None, None] * k + f["phase"]
    local = f["amp"] * (f["dc"] + np.sum(f["harm"] * np.sin(arg), axis=-1))
    osc = np.einsum("nij,nj->ni", f["basis"], local) * _envelope(t, f)
    return base + osc + _sines(t, f, "sway")


def hand_rotation(t: np.ndarray, f: dict) -> tuple[np.ndarray, np.ndarray]:
    """Device orientation in the body frame, and the gesture's rotation vector (device axes)."""
    s = _minjerk((t - f["t0"]) / (f["t1"] - f["t0"]))
    reach = rot.slerp(f["q_start"], f["q_target"], s)
    wave = np.sin(2 * np.pi * f["freq"][:, :1] * t[:, None] + f["rot_phase"])
    rot_osc = _envelope(t, f) * f["rot_amp"] * (f["rot_dc"] + wave)
    q_dev = rot.multiply(
        rot.multiply(reach, rot.from_rotation_vector(rot_osc + _sines(t, f, "rot_sway"))),
        f["q_mount"],
    )
    return q_dev, rot_osc


def true_motion(t: np.ndarray, f: dict) -> dict[str, np.ndarray]:
    """Noise-free motion of a device worn the normal way on a right wrist, per frame:
    ``force`` (specific force in the device frame, m/s^2, gravity included), ``quat``
    (device -> world), ``pos`` (wrist, body frame) and ``rot_osc`` (gesture rotation)."""
    h = _FORWARD_STEP_S
    pos = position(t, f)
    lin = (position(t + h, f) - 2 * pos + position(t - h, f)) / h**2
    q_dev, rot_osc = hand_rotation(t, f)
    force = rot.rotate_inverse(q_dev, lin + f["g_body"])
    quat = rot.multiply(rot.multiply(f["q_yaw"], f["q_pose"]), q_dev)
    return {"force": force, "quat": quat, "pos": pos, "rot_osc": rot_osc}
