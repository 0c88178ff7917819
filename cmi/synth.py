"""Synthetic competition files with the exact real schema, for tests, demos and benchmarks.

The generator simulates a wrist device on a person who reaches from a rest pose to a target
location and performs a gesture there. Everything is computed from one body-frame trajectory
per sequence, so the sensors agree with each other the way real ones do:

- wrist position and hand orientation follow a minimum-jerk reach, then a per-gesture
  oscillation (scratch = fast and small, pinch = slow and small, pull = one-sided pull-away, ...);
- the accelerometer is the specific force in the device frame, ``R(q)^T (a + g)``, so it
  includes gravity for the body orientation (seated, lying on back or side, leaning face down);
- the quaternion is device -> world (unit norm, ``w >= 0`` like the real files);
- thermopiles and the five 8x8 time-of-flight images depend on the distance from the wrist
  to the surface it points at (face, neck, leg, tray, or nothing in mid-air).

Subject effects (device mounting, aim, tempo, amplitude, skin temperature) and confusable
gesture pairs that share a location keep a good model well below a perfect score. Left-handed
subjects are the mirror image of right-handed ones (``acc_x``, ``rot_y``, ``rot_z`` flip sign,
ToF/thermopile sensors 3 and 5 swap). Everything is vectorised over all frames at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from cmi import rotation as rot
from cmi.io import write_with
from cmi.schema import (
    ACC_COLUMNS,
    BEHAVIORS,
    DEMOGRAPHICS_COLUMNS,
    DEMOGRAPHICS_SCHEMA,
    GESTURES,
    ORIENTATIONS,
    PHASES,
    ROT_COLUMNS,
    SEQUENCE_TYPES,
    TARGET_GESTURES,
    TEST_COLUMNS,
    TEST_SCHEMA,
    THM_COLUMNS,
    TOF_COLUMNS,
    TRAIN_COLUMNS,
    TRAIN_SCHEMA,
)

FS_HZ = 10.0  # sampling rate of the simulated device; the real one is undocumented
GRAVITY = rot.GRAVITY
FILE_NAMES = ("train.csv", "train_demographics.csv", "test.csv", "test_demographics.csv")
_ID_SPACE = 65536  # real sequence and subject numbers look drawn from 0..65535
_MIN_LEN, _MAX_LEN = 29, 700
_INFER_ROWS = 100  # polars infers dtypes from the first 100 rows: they must be full-sensor


@dataclass(frozen=True)
class SynthPreset:
    """Sizes of one synthetic data set; ``full`` mirrors the real train.csv."""

    n_train_subjects: int
    n_train_sequences: int
    n_test_subjects: int
    n_test_sequences: int
    n_imu_only_train_subjects: int
    imu_only_test_share: float = 0.5
    missing_rot_share: float = 0.015


PRESETS: dict[str, SynthPreset] = {
    "tiny": SynthPreset(11, 150, 2, 20, 1),
    "demo": SynthPreset(24, 1600, 6, 500, 1),
    "full": SynthPreset(81, 8151, 10, 1000, 3),
}


# ---------------------------------------------------------------------------------------------
# Gesture templates
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Style:
    """A gesture's oscillation in the local surface frame (tangent 1, tangent 2, normal)."""

    freq: float  # Hz of the main oscillation
    amp: tuple[float, float, float]  # metres per local axis
    fmul: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-axis frequency multipliers
    harm: tuple[tuple[float, float, float], ...] = ((1, 0, 0), (1, 0, 0), (1, 0, 0))
    dc: tuple[float, float, float] = (0.0, 0.0, 0.0)  # one-sided motion, e.g. pulling away
    rot_amp: tuple[float, float, float] = (0.05, 0.05, 0.05)  # radians about device x, y, z
    rot_dc: tuple[float, float, float] = (0.0, 0.0, 0.0)


_STYLES: dict[str, _Style] = {
    "scratch": _Style(2.2, (0.008, 0.003, 0.002), (1, 1, 2), ((1, 0.1, 0), (1, 0, 0), (1, 0, 0)),
                      rot_amp=(0.06, 0.10, 0.04)),
    "pinch": _Style(0.9, (0.004, 0.003, 0.006), harm=((1, 0.3, 0), (1, 0, 0), (1, 0.3, 0)),
                    dc=(0, 0, 0.5), rot_amp=(0.15, 0.05, 0.05), rot_dc=(0.5, 0, 0)),
    "pull": _Style(0.55, (0.004, 0.004, 0.02), harm=((1, 0, 0), (1, 0, 0), (1, 0.3, 0.08)),
                   dc=(0, 0, 1.0), rot_amp=(0.2, 0.08, 0.05), rot_dc=(0.6, 0, 0)),
    "wave": _Style(1.3, (0.06, 0.015, 0.008), (1, 2, 2), ((1, 0.05, 0), (1, 0, 0), (1, 0, 0)),
                   rot_amp=(0.1, 0.1, 0.45)),
    "write": _Style(0.8, (0.03, 0.022, 0.004), (1, 1.43, 1.7),
                    ((1, 0.3, 0.1), (1, 0.25, 0.08), (1, 0, 0)), rot_amp=(0.06, 0.1, 0.12)),
    "text": _Style(2.0, (0.002, 0.002, 0.003), rot_amp=(0.02, 0.03, 0.02)),
    "tray": _Style(0.4, (0.05, 0.04, 0.02), (1, 1.37, 0.73),
                   ((1, 0.3, 0.1), (1, 0.25, 0.1), (1, 0.2, 0)), dc=(0, 0, 0.5),
                   rot_amp=(0.2, 0.15, 0.1)),
    "pull_air": _Style(0.6, (0.01, 0.02, 0.10), harm=((1, 0, 0), (1, 0, 0), (1, 0.25, 0.05)),
                       rot_amp=(0.15, 0.3, 0.05)),
    "drink": _Style(0.22, (0.01, 0.01, 0.02), rot_amp=(0.2, 0.5, 0.1), rot_dc=(0, 1.0, 0)),
    "glasses": _Style(0.3, (0.01, 0.01, 0.06), dc=(0, 0, 1.0), rot_amp=(0.15, 0.2, 0.1),
                      rot_dc=(0, 0.5, 0)),
}  # fmt: skip


@dataclass(frozen=True)
class _Template:
    """Where and how one gesture is done by a right-handed adult of 170 cm (body frame)."""

    touch: tuple[float, float, float]  # fingertip target, metres from the sternum (x fwd, y left)
    forearm: tuple[float, float, float]  # elbow -> hand direction = device x
    face: tuple[float, float, float]  # watch-face normal = device z (orthogonalised)
    normal: tuple[float, float, float]  # outward surface normal at the target
    style: str
    tof_mm: tuple[float, float, float, float, float]  # per-sensor distance at the target
    warmth: float  # how warm the seen surface is: skin 1, clothing ~0.5, objects ~0.1
    amp_scale: float = 1.0
    freq_scale: float = 1.0
    length_scale: float = 1.0


_FACE_N = (1.0, -0.2, 0.1)
_LEG = dict(touch=(0.38, -0.13, -0.34), forearm=(0.9, 0.25, -0.35), face=(0.1, 0, 1),
            normal=(0, 0, 1), tof_mm=(22, 60, 228, 180, 336), warmth=0.6)  # fmt: skip
_TEMPLATES: dict[str, _Template] = {
    "Above ear - pull hair": _Template((-0.01, -0.08, 0.43), (0.0, 0.3, 0.95), (0, -1, 0.3),
                                       (-0.1, -1, 0.2), "pull", (30, 204, 22, 312, 240), 1.0),
    "Cheek - pinch skin": _Template((0.07, -0.05, 0.33), (0.25, 0.45, 0.86), (0.6, -0.8, 0),
                                    _FACE_N, "pinch", (20, 70, 45, 252, 324), 1.0),
    "Eyebrow - pull hair": _Template((0.09, -0.03, 0.40), (0.3, 0.35, 0.89), (0.9, -0.3, 0.2),
                                     _FACE_N, "pull", (28, 45, 65, 264, 336), 1.0),
    "Eyelash - pull hair": _Template((0.095, -0.03, 0.38), (0.36, 0.35, 0.86), (0.9, -0.3, 0.1),
                                     _FACE_N, "pull", (24, 42, 62, 270, 342), 1.0,
                                     amp_scale=0.8, freq_scale=1.1),
    "Forehead - pull hairline": _Template((0.08, -0.01, 0.45), (0.3, 0.3, 0.9),
                                          (0.9, -0.2, 0.35), _FACE_N, "pull",
                                          (30, 48, 180, 228, 324), 1.0, amp_scale=1.2),
    "Forehead - scratch": _Template((0.08, -0.01, 0.45), (0.3, 0.3, 0.9), (0.9, -0.2, 0.35),
                                    _FACE_N, "scratch", (30, 48, 180, 228, 324), 1.0),
    "Neck - pinch skin": _Template((0.05, -0.02, 0.20), (0.35, 0.75, 0.55), (0.8, -0.4, -0.2),
                                   (1, -0.3, -0.1), "pinch", (18, 180, 50, 300, 264), 1.0),
    "Neck - scratch": _Template((0.05, -0.02, 0.20), (0.35, 0.75, 0.55), (0.8, -0.4, -0.2),
                                (1, -0.3, -0.1), "scratch", (18, 180, 50, 300, 264), 1.0),
    "Write name on leg": _Template(**_LEG, style="write", length_scale=1.2),
    "Wave hello": _Template((0.15, -0.38, 0.40), (0.05, -0.25, 0.97), (-1, 0, 0), (1, 0, 0),
                            "wave", (480, 504, 456, 540, 396), 0.0),
    "Glasses on/off": _Template((0.12, -0.05, 0.38), (0.3, 0.45, 0.84), (0.8, -0.6, 0),
                                _FACE_N, "glasses", (30, 50, 180, 264, 336), 0.9,
                                length_scale=1.1),
    "Text on phone": _Template((0.35, 0.0, -0.05), (0.75, 0.6, 0.2), (0.1, -0.3, 0.95),
                               (0, 0, 1), "text", (55, 276, 336, 384, 240), 0.3,
                               length_scale=1.2),
    "Write name in air": _Template((0.45, -0.15, 0.25), (0.85, 0.05, 0.5), (-0.45, 0, 0.9),
                                   (1, 0, 0), "write", (456, 420, 504, 360, 540), 0.0,
                                   amp_scale=1.8, freq_scale=0.8, length_scale=1.2),
    "Feel around in tray and pull out an object": _Template(
        (0.45, -0.05, -0.25), (0.85, 0.2, -0.45), (0.3, 0, 0.95), (0, 0, 1), "tray",
        (45, 240, 288, 336, 360), 0.1, length_scale=1.5),
    "Scratch knee/leg skin": _Template(**_LEG, style="scratch"),
    "Pull air toward your face": _Template((0.35, -0.10, 0.33), (0.9, 0.1, 0.4), (0, -1, 0),
                                           (1, 0, 0), "pull_air", (276, 312, 360, 408, 384),
                                           0.3),
    "Drink from bottle/cup": _Template((0.10, -0.02, 0.30), (0.3, 0.7, 0.65), (0.6, -0.5, -0.2),
                                       _FACE_N, "drink", (35, 192, 70, 288, 264), 0.5,
                                       length_scale=1.1),
    "Pinch knee/leg skin": _Template(**_LEG, style="pinch"),
}  # fmt: skip

# A subject sometimes does a gesture the way its partner is done: same place, other motion.
_PARTNERS: dict[str, str] = {
    "Neck - pinch skin": "Neck - scratch",
    "Neck - scratch": "Neck - pinch skin",
    "Forehead - scratch": "Forehead - pull hairline",
    "Forehead - pull hairline": "Forehead - scratch",
    "Eyebrow - pull hair": "Eyelash - pull hair",
    "Eyelash - pull hair": "Eyebrow - pull hair",
    "Cheek - pinch skin": "Neck - pinch skin",
    "Scratch knee/leg skin": "Pinch knee/leg skin",
    "Pinch knee/leg skin": "Scratch knee/leg skin",
    "Write name on leg": "Scratch knee/leg skin",
    "Glasses on/off": "Eyebrow - pull hair",
    "Pull air toward your face": "Glasses on/off",
}

# Recording protocol per subject: (orientations, repeats). Real counts: 9 gestures ~640
# sequences, 3 ~478, 6 ~161 (8,151 in all over 81 subjects).
_ALL_ORIENTATIONS = (0, 1, 2, 3)
_PROTOCOL: dict[str, tuple[tuple[int, ...], int]] = {
    **{g: (_ALL_ORIENTATIONS, 2) for g in TARGET_GESTURES},
    "Text on phone": (_ALL_ORIENTATIONS, 2),
    "Wave hello": ((0, 1, 2), 2),
    "Write name in air": ((0, 1, 2), 2),
    "Pull air toward your face": ((0, 1, 2), 2),
    "Write name on leg": ((0,), 2),
    "Glasses on/off": ((0,), 2),
    "Feel around in tray and pull out an object": ((0,), 2),
    "Scratch knee/leg skin": ((0,), 2),
    "Drink from bottle/cup": ((0,), 2),
    "Pinch knee/leg skin": ((0,), 2),
}

# Body pose per orientation as a rotation vector (body -> world), and the resting hand:
# (wrist position, forearm direction, watch-face normal) in the body frame.
_POSE_ROTVEC = {
    0: (0.0, 0.0, 0.0),  # Seated Straight
    1: (-0.45, 0.95, 0.0),  # Seated Lean Non Dom - FACE DOWN: forward and to the left
    2: (0.0, -np.pi / 2, 0.0),  # Lie on Back: chest faces up
    3: (-np.pi / 2, 0.0, 0.0),  # Lie on Side - Non Dominant: left side down
}
# Arm posture at the target changes with the body orientation (lying on the back, the elbow
# is raised and the forearm points down at the face): a body-frame rotation of the hand.
_POSTURE_ROTVEC = {
    0: (0.0, 0.0, 0.0),
    1: (0.3, -0.6, 0.0),
    2: (0.0, -0.95, 0.0),
    3: (-0.9, 0.0, 0.0),
}
_REST = {
    0: ((0.30, -0.15, -0.32), (1.0, 0.25, -0.2), (0, 0, 1)),
    1: ((0.30, -0.10, -0.20), (0.9, 0.4, 0.0), (0, 0, 1)),
    2: ((0.00, -0.25, -0.35), (0.2, 0.0, -1.0), (1, 0, 0)),
    3: ((0.05, -0.15, -0.30), (0.3, 0.0, -1.0), (0, -1, 0)),
}
_REST_TOF_MM = (120.0, 176.0, 216.0, 200.0, 240.0)
_REST_WARMTH = 0.45
_HEAT_MM = 110.0  # distance over which a thermopile's view of warm skin fades
# Direction each ToF sensor's distance moves with the hand's rotation (device frame).
_TOF_ROT_DIRS = np.array(
    [[0, 1, 0], [0, -1, 0.3], [1, 0, 0.2], [-0.5, 0.5, 0.5], [-1, 0, 0.2]], dtype=float
)
_LEFT_SENSOR_ORDER = np.array([0, 1, 4, 3, 2])  # the mirrored device swaps sensors 3 and 5


# ---------------------------------------------------------------------------------------------
# Quaternions (w, x, y, z), vectorised over leading axes
# ---------------------------------------------------------------------------------------------


def _quat_from_axes(forearm: tuple, face: tuple) -> np.ndarray:
    """Device orientation whose x is the forearm and whose z is (close to) the watch face."""
    x = np.asarray(forearm, float)
    x /= np.linalg.norm(x)
    z = np.asarray(face, float) - np.dot(face, x) * x
    z /= np.linalg.norm(z)
    return rot.from_matrix(np.column_stack([x, np.cross(z, x), z]))


def _surface_basis(normal: tuple) -> np.ndarray:
    """Columns: two tangents and the unit normal (tangent 1 horizontal where possible)."""
    n = np.asarray(normal, float)
    n /= np.linalg.norm(n)
    hint = np.array([0.0, 0.0, 1.0]) if abs(n[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    t1 = np.cross(hint, n)
    t1 /= np.linalg.norm(t1)
    return np.column_stack([t1, np.cross(n, t1), n])


# ---------------------------------------------------------------------------------------------
# Subjects and the sequence plan
# ---------------------------------------------------------------------------------------------


def _demographics(ids: np.ndarray, rng: np.random.Generator) -> pl.DataFrame:
    """Plausible, age-correlated body measures (heights in cm like the real file)."""
    n = len(ids)
    adult = (rng.random(n) < 0.52).astype(np.int64)
    age = np.where(
        adult == 1,
        np.minimum(18 + rng.gamma(1.6, 5.5, n), 55),
        rng.integers(10, 18, n),
    ).astype(np.int64)
    sex = (rng.random(n) < 0.62).astype(np.int64)
    handedness = np.ones(n, dtype=np.int64)  # exactly ~12% left-handed, at least one
    handedness[rng.choice(n, size=max(1, round(0.12 * n)), replace=False)] = 0
    grown = np.where(adult == 1, 1.0, np.clip((age - 9) / 9, 0, 1))
    adult_height = np.where(sex == 1, 176.0, 163.0) + rng.normal(0, 7, n)
    height = np.clip(adult_height - (1 - grown) * 22 + rng.normal(0, 3, n), 130, 200)
    height = np.round(height * 2) / 2  # whole or half centimetres
    height = np.where(rng.random(n) < 0.85, np.round(height), height)
    shoulder = np.round(0.307 * height + rng.normal(0, 2.2, n)).astype(np.int64)
    elbow = np.round(0.151 * height + rng.normal(0, 1.3, n))
    return pl.DataFrame(
        {
            "subject": [f"SUBJ_{i:06d}" for i in ids],
            "adult_child": adult,
            "age": age,
            "sex": sex,
            "handedness": handedness,
            "height_cm": height,
            "shoulder_to_wrist_cm": shoulder,
            "elbow_to_wrist_cm": elbow.astype(np.float64),
        },
        schema=DEMOGRAPHICS_SCHEMA,
    ).select(DEMOGRAPHICS_COLUMNS)


def _quotas(weights: np.ndarray, total: int, minimum: int) -> np.ndarray:
    """Integer counts proportional to ``weights`` summing to ``total`` (largest remainder)."""
    exact = weights / weights.sum() * total
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    while counts.min() < minimum and counts.sum() >= minimum * len(counts):
        counts[np.argmin(counts)] += 1
        counts[np.argmax(counts)] -= 1
    return counts


def _plan(n_subjects: int, n_sequences: int, rng: np.random.Generator, minimum: int) -> dict:
    """Which (subject, gesture, orientation) each sequence is: a subsample of the protocol."""
    cells = [
        (s, GESTURES.index(g), o)
        for s in range(n_subjects)
        for g, (orients, reps) in _PROTOCOL.items()
        for o in orients
        for _ in range(reps)
    ]
    cells_arr = np.array(cells, dtype=np.int64)
    per_gesture = np.bincount(cells_arr[:, 1], minlength=len(GESTURES)).astype(float)
    quota = _quotas(per_gesture, n_sequences, minimum)
    chosen = [
        rng.choice(np.flatnonzero(cells_arr[:, 1] == g), size=quota[g], replace=False)
        for g in range(len(GESTURES))
    ]
    picked = cells_arr[rng.permutation(np.concatenate(chosen))]
    return {"subject": picked[:, 0], "gesture": picked[:, 1], "orientation": picked[:, 2]}


def _subject_traits(demo: pl.DataFrame, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-subject habits: the source of the subject effect that grouped CV has to beat."""
    n = demo.height
    n_g = len(GESTURES)
    return {
        "left": demo.get_column("handedness").to_numpy() == 0,
        "size": demo.get_column("height_cm").to_numpy() / 170.0,
        "child": demo.get_column("adult_child").to_numpy() == 0,
        "tempo": rng.lognormal(0.0, 0.22, n),
        "amp": rng.lognormal(0.0, 0.25, n),
        "mount": rng.normal(0, 0.22, (n, 3)),  # how the device sits on the wrist
        "aim": rng.normal(0, 0.12, (n, 3)),  # habitual hand orientation at targets
        "loc": rng.normal(0, 0.015, (n, 3)),
        "gesture_loc": rng.normal(0, 0.012, (n, n_g, 3)),
        "gesture_aim": rng.normal(0, 0.10, (n, n_g, 3)),
        "sloppy": rng.beta(2.0, 10.0, n),
        "yaw": rng.uniform(0, 2 * np.pi, (n, 1)) + rng.normal(0, 0.5, (n, 4)),
        "pose": rng.normal(0, 0.10, (n, 4, 3)),
        "skin": rng.normal(34.0, 0.7, n),
        "ambient": rng.normal(25.4, 0.8, n),
        "thm_off": rng.normal(0, 0.4, (n, 5)),
        "tof_off": rng.normal(0, 22.0, (n, 5)),
        "acc_bias": rng.normal(0, 0.08, (n, 3)),
    }


def _lengths(scale: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """29 + a log-normal body (median ~59, p95 ~127) and a rare long tail up to 700."""
    n = len(scale)
    body = rng.lognormal(np.log(30.0), 0.62, n) * scale
    tail = rng.random(n) < 0.01
    body = np.where(tail, rng.uniform(150, _MAX_LEN - _MIN_LEN, n), body)
    return np.clip(np.round(_MIN_LEN + body), _MIN_LEN, _MAX_LEN).astype(np.int64)


def _timeline(seq: dict[str, np.ndarray], rng: np.random.Generator) -> None:
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


def _template_arrays(gestures: np.ndarray, attr: str) -> np.ndarray:
    return np.array([np.asarray(getattr(_TEMPLATES[GESTURES[g]], attr), float) for g in gestures])


def _style_arrays(styles: list[_Style], attr: str) -> np.ndarray:
    return np.array([np.asarray(getattr(s, attr), float) for s in styles])


def _motion_styles(seq: dict, traits: dict, rng: np.random.Generator) -> list[_Style]:
    """The style each sequence is performed in: its own, or sloppily its partner's."""
    gestures, subjects = seq["gesture"], seq["subject"]
    sloppy = rng.random(len(gestures)) < traits["sloppy"][subjects]
    source = [
        _PARTNERS.get(GESTURES[g], GESTURES[g]) if s else GESTURES[g]
        for g, s in zip(gestures, sloppy, strict=True)
    ]
    seq["amp_scale"] = np.array([_TEMPLATES[g].amp_scale for g in source])
    seq["freq_scale"] = np.array([_TEMPLATES[g].freq_scale for g in source])
    return [_STYLES[_TEMPLATES[g].style] for g in source]


def _targets(seq: dict, traits: dict, rng: np.random.Generator) -> None:
    """Wrist position and device orientation at the target, per sequence (body frame)."""
    g, s, n = seq["gesture"], seq["subject"], len(seq["gesture"])
    size = traits["size"][s][:, None]
    touch = _template_arrays(g, "touch") * size + traits["loc"][s]
    touch = touch + traits["gesture_loc"][s, g] + rng.normal(0, 0.008, (n, 3))
    base_q = np.array([_quat_from_axes(t.forearm, t.face) for t in _TEMPLATES.values()])
    index = np.array([list(_TEMPLATES).index(GESTURES[i]) for i in g])
    jitter = traits["aim"][s] + traits["gesture_aim"][s, g] + rng.normal(0, 0.06, (n, 3))
    posture = np.array([_POSTURE_ROTVEC[o] for o in seq["orientation"]], dtype=float)
    q_target = rot.multiply(
        rot.from_rotation_vector(jitter),
        rot.multiply(rot.from_rotation_vector(posture), base_q[index]),
    )
    forearm = rot.rotate(q_target, np.tile([1.0, 0.0, 0.0], (n, 1)))
    seq["r_target"] = touch - 0.16 * size * forearm  # the device sits ~16 cm from the fingers
    seq["q_target"] = q_target
    seq["basis"] = np.array([_surface_basis(_TEMPLATES[name].normal) for name in GESTURES])[g]


def _rest_and_start(seq: dict, traits: dict, rng: np.random.Generator) -> None:
    """Rest pose for the body orientation; 'Moves hand' sequences start part of the way."""
    o, s, n = seq["orientation"], seq["subject"], len(seq["orientation"])
    size = traits["size"][s][:, None]
    rest_pos = np.array([_REST[i][0] for i in o]) * size + rng.normal(0, 0.03, (n, 3))
    rest_q = np.array([_quat_from_axes(_REST[i][1], _REST[i][2]) for i in range(4)])[o]
    rest_q = rot.multiply(rot.from_rotation_vector(rng.normal(0, 0.3, (n, 3))), rest_q)
    head_start = np.where(seq["relaxed"], 0.0, rng.uniform(0.15, 0.35, n))[:, None]
    seq["r_rest"] = rest_pos
    seq["r_start"] = rest_pos + head_start * (seq["r_target"] - rest_pos)
    seq["q_start"] = rot.slerp(rest_q, seq["q_target"], head_start[:, 0])
    lift = np.array([0.4, 0.0, 1.0]) / np.linalg.norm([0.4, 0.0, 1.0])
    seq["arc"] = rng.uniform(0.02, 0.10, (n, 1)) * (1 - head_start) * lift


def _oscillation(seq: dict, traits: dict, styles: list[_Style], rng: np.random.Generator) -> None:
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


def _pose(seq: dict, traits: dict, rng: np.random.Generator) -> None:
    """Body orientation in the world, a heading that differs per subject, and the mounting."""
    o, s, n = seq["orientation"], seq["subject"], len(seq["orientation"])
    base = rot.from_rotation_vector(np.array([_POSE_ROTVEC[i] for i in o], dtype=float))
    q_pose = rot.multiply(
        rot.from_rotation_vector(traits["pose"][s, o] + rng.normal(0, 0.05, (n, 3))), base
    )
    yaw = traits["yaw"][s, o] + rng.normal(0, 0.25, n)
    seq["q_pose"] = q_pose
    seq["q_yaw"] = rot.from_rotation_vector(np.column_stack([np.zeros(n), np.zeros(n), yaw]))
    seq["g_body"] = GRAVITY * rot.rotate_inverse(q_pose, np.tile([0.0, 0.0, 1.0], (n, 1)))
    seq["q_mount"] = rot.from_rotation_vector(traits["mount"][s])
    seq["acc_bias"] = traits["acc_bias"][s]
    seq["left"] = traits["left"][s]


def _surfaces(seq: dict, traits: dict, rng: np.random.Generator) -> None:
    """What the ToF sensors and thermopiles see at the target and at rest."""
    g, s, n = seq["gesture"], seq["subject"], len(seq["gesture"])
    offset = traits["tof_off"][s]
    tof_target = _template_arrays(g, "tof_mm") + offset + rng.normal(0, 40, (n, 5))
    seq["tof_target"] = np.maximum(tof_target, rng.uniform(5, 30, (n, 5)))  # skin is not at 0
    seq["tof_rest"] = np.array(_REST_TOF_MM) + offset + rng.normal(0, 25, (n, 5))
    seq["warm_target"] = _template_arrays(g, "warmth")
    direction = rng.uniform(0, 2 * np.pi, (n, 5))
    magnitude = rng.uniform(4, 22, (n, 5))
    seq["slope"] = np.stack([np.cos(direction), np.sin(direction)], axis=-1) * magnitude[..., None]
    seq["curv"] = rng.uniform(1.5, 4.0, (n, 5))
    seq["skin"] = traits["skin"][s]
    seq["ambient"] = traits["ambient"][s] + rng.normal(0, 0.4, n)
    seq["thm_off"] = traits["thm_off"][s]


# ---------------------------------------------------------------------------------------------
# Frame-level simulation (all frames of all sequences at once)
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


def _position(t: np.ndarray, f: dict) -> np.ndarray:
    """Wrist position in the body frame (metres) at times ``t`` (seconds into the sequence)."""
    s = _minjerk((t - f["t0"]) / (f["t1"] - f["t0"]))[:, None]
    base = f["r_start"] + (f["r_target"] - f["r_start"]) * s + f["arc"] * np.sin(np.pi * s)
    k = np.arange(1, 4)
    arg = 2 * np.pi * f["freq"][:, :, None] * t[:, None, None] * k + f["phase"]
    local = f["amp"] * (f["dc"] + np.sum(f["harm"] * np.sin(arg), axis=-1))
    osc = np.einsum("nij,nj->ni", f["basis"], local) * _envelope(t, f)
    return base + osc + _sines(t, f, "sway")


def _hand_rotation(t: np.ndarray, f: dict) -> tuple[np.ndarray, np.ndarray]:
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


def _imu(t: np.ndarray, f: dict, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Accelerometer (specific force, device frame), device -> world quaternion, and the
    wrist position and gesture rotation that the other sensors need."""
    h = 0.02  # finite-difference step for the true, not frame-sampled, acceleration
    pos = _position(t, f)
    lin = (_position(t + h, f) - 2 * pos + _position(t - h, f)) / h**2
    q_dev, rot_osc = _hand_rotation(t, f)
    acc = rot.rotate_inverse(q_dev, lin + f["g_body"]) + f["acc_bias"]
    acc += rng.normal(0, 0.12, acc.shape)
    quat = rot.multiply(rot.multiply(f["q_yaw"], f["q_pose"]), q_dev)
    quat = rot.multiply(quat, rot.from_rotation_vector(rng.normal(0, 0.004, (len(t), 3))))
    quat = np.where(quat[:, :1] < 0, -quat, quat)  # the real files keep w >= 0
    left = f["left"]
    acc[left, 0] *= -1  # mirror image of a right-handed wearer
    quat[left, 2:] *= -1
    acc = np.round(np.round(acc * 256) / 256, 6)  # 1/256 m/s^2 steps like the real device
    quat = np.round(np.round(quat * 16384) / 16384, 6)
    return acc, quat, pos, rot_osc


def _distances(pos: np.ndarray, rot_osc: np.ndarray, f: dict) -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm) each sensor sees to the target surface and to the resting surface."""
    to_target = 1000 * np.linalg.norm(pos - f["r_target"], axis=1, keepdims=True)
    to_rest = 1000 * np.linalg.norm(pos - f["r_rest"], axis=1, keepdims=True)
    d_target = f["tof_target"] + to_target + 120 * rot_osc @ _TOF_ROT_DIRS.T
    d_rest = f["tof_rest"] + to_rest
    return d_target, d_rest


def _thermopiles(d_target: np.ndarray, d_rest: np.ndarray, f: dict, rng) -> np.ndarray:
    """Skin close by warms a thermopile towards skin temperature, else it reads ambient."""
    heat = np.maximum(
        f["warm_target"][:, None] * np.exp(-np.maximum(d_target, 0) / _HEAT_MM),
        _REST_WARMTH * np.exp(-np.maximum(d_rest, 0) / _HEAT_MM),
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


def _sensors(t: np.ndarray, f: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """All sensor values of all frames; nulls (NaN) where a sensor is absent."""
    acc, quat, pos, rot_osc = _imu(t, f, rng)
    d_target, d_rest = _distances(pos, rot_osc, f)
    left = f["left"]
    d_target[left] = d_target[left][:, _LEFT_SENSOR_ORDER]
    d_rest[left] = d_rest[left][:, _LEFT_SENSOR_ORDER]
    thm = _thermopiles(d_target, d_rest, f, rng)
    tof = _tof_images(np.minimum(d_target, d_rest), f, rng)
    quat[f["no_rot"]] = np.nan
    thm[f["imu_only"]] = np.nan
    tof[:, f["imu_only"]] = np.nan
    return {"acc": acc, "rot": quat, "thm": thm, "tof": tof}


# ---------------------------------------------------------------------------------------------
# Sequences -> files
# ---------------------------------------------------------------------------------------------


def _sequences(plan: dict, traits: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every per-sequence parameter the frame simulation needs, as arrays over sequences."""
    seq = dict(plan)
    n = len(seq["subject"])
    seq["relaxed"] = rng.random(n) < 0.45
    styles = _motion_styles(seq, traits, rng)
    slowness = 1.0 / np.sqrt(traits["tempo"][seq["subject"]])
    seq["length"] = _lengths(_template_arrays(seq["gesture"], "length_scale") * slowness, rng)
    _timeline(seq, rng)
    _targets(seq, traits, rng)
    _rest_and_start(seq, traits, rng)
    _oscillation(seq, traits, styles, rng)
    _pose(seq, traits, rng)
    _surfaces(seq, traits, rng)
    return seq


def _mark_missing(seq: dict, imu_only: np.ndarray, missing_rot_share: float, rng) -> None:
    """IMU-only sequences and a few without a quaternion (at least one)."""
    n = len(imu_only)
    no_rot = np.zeros(n, dtype=bool)
    no_rot[rng.choice(n, size=max(1, round(missing_rot_share * n)), replace=False)] = True
    seq["imu_only"], seq["no_rot"] = imu_only, no_rot


def _file_order(seq: dict, rng: np.random.Generator) -> np.ndarray:
    """Random order, except that full-sensor sequences with a quaternion come first for at
    least 100 rows, so that plain ``pl.read_csv`` infers every sensor column as Float64."""
    perm = rng.permutation(len(seq["length"]))
    complete = perm[~seq["imu_only"][perm] & ~seq["no_rot"][perm]]
    n_lead = int(np.searchsorted(np.cumsum(seq["length"][complete]), _INFER_ROWS)) + 1
    lead = complete[:n_lead]
    return np.concatenate([lead, perm[~np.isin(perm, lead)]])


def _frame_index(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sequence index and sequence_counter of every frame."""
    idx = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.cumsum(lengths) - lengths
    return idx, np.arange(len(idx)) - starts[idx]


def _labels(seq: dict, idx: np.ndarray, counter: np.ndarray) -> dict[str, pl.Series]:
    """The five train-only columns."""
    gesture = seq["gesture"][idx]
    move = np.where(seq["relaxed"][idx], 0, 1)
    behavior = np.where(
        counter < seq["n_move"][idx], move, np.where(counter < seq["n_trans"][idx], 2, 3)
    )
    phase = (counter >= seq["n_trans"][idx]).astype(np.int64)
    return {
        "sequence_type": _lookup(SEQUENCE_TYPES, (gesture >= len(TARGET_GESTURES))),
        "orientation": _lookup(ORIENTATIONS, seq["orientation"][idx]),
        # "Hand at target location" rows are still Transition rows, as in the real data
        "behavior": _lookup(BEHAVIORS, behavior),
        "phase": _lookup(PHASES, phase),
        "gesture": _lookup(GESTURES, gesture),
    }


def _lookup(values: tuple[str, ...] | list[str], codes: np.ndarray) -> pl.Series:
    return pl.Series(values, dtype=pl.String).gather(np.asarray(codes, dtype=np.int64))


def _sensor_frame(seq: dict, names: dict, labelled: bool, rng) -> pl.DataFrame:
    """One sensor file (train.csv or test.csv) built column-wise from numpy arrays."""
    idx, counter = _frame_index(seq["length"])
    frame_keys = [k for k, v in seq.items() if isinstance(v, np.ndarray) and v.ndim >= 1]
    f = {k: seq[k][idx] for k in frame_keys}
    sensors = _sensors(counter / FS_HZ, f, rng)
    columns: dict[str, pl.Series | np.ndarray] = {
        "sequence_id": _lookup(names["sequence_id"], idx),
        "sequence_counter": counter.astype(np.int64),
        "subject": _lookup(names["subject"], seq["subject"][idx]),
    }
    if labelled:
        columns.update(_labels(seq, idx, counter))
    for group, cols in (("acc", ACC_COLUMNS), ("rot", ROT_COLUMNS), ("thm", THM_COLUMNS)):
        columns.update({c: sensors[group][:, j] for j, c in enumerate(cols)})
    columns.update({c: sensors["tof"][j] for j, c in enumerate(TOF_COLUMNS)})
    del sensors, f
    frame = pl.DataFrame(columns, nan_to_null=True)
    row_id = pl.format(
        "{}_{}", "sequence_id", pl.col("sequence_counter").cast(pl.String).str.zfill(6)
    )
    frame = frame.with_columns(row_id.alias("row_id"))
    schema = TRAIN_SCHEMA if labelled else TEST_SCHEMA
    return frame.select(TRAIN_COLUMNS if labelled else TEST_COLUMNS).cast(schema)


def _dataset(
    preset: SynthPreset, subject_ids: np.ndarray, sequence_ids: np.ndarray, labelled: bool, rng
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A sensor file and its demographics for one group of subjects."""
    demo = _demographics(subject_ids, rng)
    traits = _subject_traits(demo, rng)
    n_subjects, n_sequences = len(subject_ids), len(sequence_ids)
    plan = _plan(n_subjects, n_sequences, rng, minimum=2 if labelled else 0)
    seq = _sequences(plan, traits, rng)
    if labelled:
        present = np.unique(seq["subject"])
        k = min(preset.n_imu_only_train_subjects, len(present) - 1)
        imu_only = np.isin(seq["subject"], rng.choice(present, size=k, replace=False))
    else:
        imu_only = np.zeros(n_sequences, dtype=bool)
        share = round(preset.imu_only_test_share * n_sequences)
        imu_only[rng.choice(n_sequences, size=share, replace=False)] = True
    _mark_missing(seq, imu_only, preset.missing_rot_share, rng)
    order = _file_order(seq, rng)
    seq = {k: v[order] for k, v in seq.items()}
    names = {
        "sequence_id": [f"SEQ_{i:06d}" for i in np.sort(sequence_ids)],
        "subject": demo.get_column("subject").to_list(),
    }
    frame = _sensor_frame(seq, names, labelled, rng)
    present_subjects = frame.get_column("subject").unique()
    return frame, demo.filter(pl.col("subject").is_in(present_subjects.implode()))


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def generate(preset: str, seed: int = 0) -> dict[str, pl.DataFrame]:
    """The four competition files as frames with the exact real schema, for ``preset``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    p = PRESETS[preset]
    id_rng, train_rng, test_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    subjects = id_rng.choice(_ID_SPACE, p.n_train_subjects + p.n_test_subjects, replace=False)
    sequences = id_rng.choice(_ID_SPACE, p.n_train_sequences + p.n_test_sequences, replace=False)
    train, train_demo = _dataset(
        p, np.sort(subjects[: p.n_train_subjects]), sequences[: p.n_train_sequences], True,
        train_rng,
    )  # fmt: skip
    test, test_demo = _dataset(
        p, np.sort(subjects[p.n_train_subjects :]), sequences[p.n_train_sequences :], False,
        test_rng,
    )  # fmt: skip
    return {
        "train.csv": train,
        "train_demographics.csv": train_demo,
        "test.csv": test,
        "test_demographics.csv": test_demo,
    }


def write_synthetic(preset: str, out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Generate ``preset`` and write the four CSVs into ``out_dir`` (each atomically)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = generate(preset, seed)
    written = {}
    for name in FILE_NAMES:
        # Atomic: readers (and a killed `make repro`) never see half a file.
        written[name] = write_with(out_dir / name, frames.pop(name).write_csv)
    return written
