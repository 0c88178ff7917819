"""Gesture and body tables: how and where each gesture is done, and the poses around it.

All positions are in the body frame of a right-handed adult of 170 cm: metres from the
sternum, x forward, y to the body's left, z up. Which gestures are recorded in which body
orientation is the study's protocol (``cmi.protocol``), not a table here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmi.schema import GESTURES


@dataclass(frozen=True)
class Style:
    """A gesture's oscillation in the local surface frame (tangent 1, tangent 2, normal)."""

    freq: float  # Hz of the main oscillation
    amp: tuple[float, float, float]  # metres per local axis
    fmul: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-axis frequency multipliers
    harm: tuple[tuple[float, float, float], ...] = ((1, 0, 0), (1, 0, 0), (1, 0, 0))
    dc: tuple[float, float, float] = (0.0, 0.0, 0.0)  # one-sided motion, e.g. pulling away
    rot_amp: tuple[float, float, float] = (0.05, 0.05, 0.05)  # radians about device x, y, z
    rot_dc: tuple[float, float, float] = (0.0, 0.0, 0.0)


STYLES: dict[str, Style] = {
    "scratch": Style(2.2, (0.008, 0.003, 0.002), (1, 1, 2), ((1, 0.1, 0), (1, 0, 0), (1, 0, 0)),
                     rot_amp=(0.06, 0.10, 0.04)),
    "pinch": Style(0.9, (0.004, 0.003, 0.006), harm=((1, 0.3, 0), (1, 0, 0), (1, 0.3, 0)),
                   dc=(0, 0, 0.5), rot_amp=(0.15, 0.05, 0.05), rot_dc=(0.5, 0, 0)),
    "pull": Style(0.55, (0.004, 0.004, 0.02), harm=((1, 0, 0), (1, 0, 0), (1, 0.3, 0.08)),
                  dc=(0, 0, 1.0), rot_amp=(0.2, 0.08, 0.05), rot_dc=(0.6, 0, 0)),
    "wave": Style(1.3, (0.06, 0.015, 0.008), (1, 2, 2), ((1, 0.05, 0), (1, 0, 0), (1, 0, 0)),
                  rot_amp=(0.1, 0.1, 0.45)),
    "write": Style(0.8, (0.03, 0.022, 0.004), (1, 1.43, 1.7),
                   ((1, 0.3, 0.1), (1, 0.25, 0.08), (1, 0, 0)), rot_amp=(0.06, 0.1, 0.12)),
    "text": Style(2.0, (0.002, 0.002, 0.003), rot_amp=(0.02, 0.03, 0.02)),
    "tray": Style(0.4, (0.05, 0.04, 0.02), (1, 1.37, 0.73),
                  ((1, 0.3, 0.1), (1, 0.25, 0.1), (1, 0.2, 0)), dc=(0, 0, 0.5),
                  rot_amp=(0.2, 0.15, 0.1)),
    "pull_air": Style(0.6, (0.01, 0.02, 0.10), harm=((1, 0, 0), (1, 0, 0), (1, 0.25, 0.05)),
                      rot_amp=(0.15, 0.3, 0.05)),
    "drink": Style(0.22, (0.01, 0.01, 0.02), rot_amp=(0.2, 0.5, 0.1), rot_dc=(0, 1.0, 0)),
    "glasses": Style(0.3, (0.01, 0.01, 0.06), dc=(0, 0, 1.0), rot_amp=(0.15, 0.2, 0.1),
                     rot_dc=(0, 0.5, 0)),
}  # fmt: skip


@dataclass(frozen=True)
class Template:
    """Where and how one gesture is done by a right-handed adult of 170 cm (body frame)."""

    touch: tuple[float, float, float]  # fingertip target, metres from the sternum (x fwd, y left)
    forearm: tuple[float, float, float]  # elbow -> hand direction = device x
    face: tuple[float, float, float]  # device z (orthogonalised), away from the worked surface
    normal: tuple[float, float, float]  # outward surface normal at the target
    style: str
    tof_mm: tuple[float, float, float, float, float]  # per-sensor view distance at the target
    warmth: float  # how warm the seen surface is: skin 1, clothing ~0.5, objects ~0.1
    amp_scale: float = 1.0
    freq_scale: float = 1.0
    length_scale: float = 1.0


_FACE_N = (1.0, -0.2, 0.1)
_LEG = dict(touch=(0.38, -0.13, -0.34), forearm=(0.9, 0.25, -0.35), face=(0.1, 0, 1),
            normal=(0, 0, 1), tof_mm=(22, 60, 228, 180, 336), warmth=0.6)  # fmt: skip
TEMPLATES: dict[str, Template] = {
    "Above ear - pull hair": Template((-0.01, -0.08, 0.43), (0.0, 0.3, 0.95), (0, -1, 0.3),
                                      (-0.1, -1, 0.2), "pull", (30, 204, 22, 312, 240), 1.0),
    "Cheek - pinch skin": Template((0.07, -0.05, 0.33), (0.25, 0.45, 0.86), (0.6, -0.8, 0),
                                   _FACE_N, "pinch", (20, 70, 45, 252, 324), 1.0),
    "Eyebrow - pull hair": Template((0.09, -0.03, 0.40), (0.3, 0.35, 0.89), (0.9, -0.3, 0.2),
                                    _FACE_N, "pull", (28, 45, 65, 264, 336), 1.0),
    "Eyelash - pull hair": Template((0.095, -0.03, 0.38), (0.36, 0.35, 0.86), (0.9, -0.3, 0.1),
                                    _FACE_N, "pull", (24, 42, 62, 270, 342), 1.0,
                                    amp_scale=0.8, freq_scale=1.1),
    "Forehead - pull hairline": Template((0.08, -0.01, 0.45), (0.3, 0.3, 0.9),
                                         (0.9, -0.2, 0.35), _FACE_N, "pull",
                                         (30, 48, 180, 228, 324), 1.0, amp_scale=1.2),
    "Forehead - scratch": Template((0.08, -0.01, 0.45), (0.3, 0.3, 0.9), (0.9, -0.2, 0.35),
                                   _FACE_N, "scratch", (30, 48, 180, 228, 324), 1.0),
    "Neck - pinch skin": Template((0.05, -0.02, 0.20), (0.35, 0.75, 0.55), (0.8, -0.4, -0.2),
                                  (1, -0.3, -0.1), "pinch", (18, 180, 50, 300, 264), 1.0),
    "Neck - scratch": Template((0.05, -0.02, 0.20), (0.35, 0.75, 0.55), (0.8, -0.4, -0.2),
                               (1, -0.3, -0.1), "scratch", (18, 180, 50, 300, 264), 1.0),
    "Write name on leg": Template(**_LEG, style="write", length_scale=1.2),
    "Wave hello": Template((0.15, -0.38, 0.40), (0.05, -0.25, 0.97), (-1, 0, 0), (1, 0, 0),
                           "wave", (480, 504, 456, 540, 396), 0.0),
    "Glasses on/off": Template((0.12, -0.05, 0.38), (0.3, 0.45, 0.84), (0.8, -0.6, 0),
                               _FACE_N, "glasses", (30, 50, 180, 264, 336), 0.9,
                               length_scale=1.1),
    "Text on phone": Template((0.35, 0.0, -0.05), (0.75, 0.6, 0.2), (0.1, -0.3, 0.95),
                              (0, 0, 1), "text", (55, 276, 336, 384, 240), 0.3,
                              length_scale=1.2),
    "Write name in air": Template((0.45, -0.15, 0.25), (0.85, 0.05, 0.5), (-0.45, 0, 0.9),
                                  (1, 0, 0), "write", (456, 420, 504, 360, 540), 0.0,
                                  amp_scale=1.8, freq_scale=0.8, length_scale=1.2),
    "Feel around in tray and pull out an object": Template(
        (0.45, -0.05, -0.25), (0.85, 0.2, -0.45), (0.3, 0, 0.95), (0, 0, 1), "tray",
        (45, 240, 288, 336, 360), 0.1, length_scale=1.5),
    "Scratch knee/leg skin": Template(**_LEG, style="scratch"),
    "Pull air toward your face": Template((0.35, -0.10, 0.33), (0.9, 0.1, 0.4), (0, -1, 0),
                                          (1, 0, 0), "pull_air", (276, 312, 360, 408, 384),
                                          0.3),
    "Drink from bottle/cup": Template((0.10, -0.02, 0.30), (0.3, 0.7, 0.65), (0.6, -0.5, -0.2),
                                      _FACE_N, "drink", (35, 192, 70, 288, 264), 0.5,
                                      length_scale=1.1),
    "Pinch knee/leg skin": Template(**_LEG, style="pinch"),
}  # fmt: skip
if set(TEMPLATES) != set(GESTURES):
    raise AssertionError("every gesture needs exactly one template")

# A subject sometimes does a gesture the way its partner is done: same place, other motion.
PARTNERS: dict[str, str] = {
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

# Body pose per orientation (index into ORIENTATIONS) as a rotation vector (body -> world).
POSE_ROTVEC: dict[int, tuple[float, float, float]] = {
    0: (0.0, 0.0, 0.0),  # Seated Straight
    1: (-0.45, 0.95, 0.0),  # Seated Lean Non Dom - FACE DOWN: forward and to the left
    2: (0.0, -np.pi / 2, 0.0),  # Lie on Back: chest faces up
    3: (-np.pi / 2, 0.0, 0.0),  # Lie on Side - Non Dominant: left side down
}
# Arm posture at the target changes with the body orientation (lying on the back, the elbow
# is raised and the forearm points down at the face): a body-frame rotation of the hand.
POSTURE_ROTVEC: dict[int, tuple[float, float, float]] = {
    0: (0.0, 0.0, 0.0),
    1: (0.3, -0.6, 0.0),
    2: (0.0, -0.95, 0.0),
    3: (-0.9, 0.0, 0.0),
}
# The resting hand per orientation: (wrist position, forearm direction, device z) in the body
# frame; the hand rests on the lap, the bed or the body, seen by the sensors at REST_TOF_MM.
REST: dict[int, tuple[tuple[float, float, float], ...]] = {
    0: ((0.30, -0.15, -0.32), (1.0, 0.25, -0.2), (0, 0, 1)),
    1: ((0.30, -0.10, -0.20), (0.9, 0.4, 0.0), (0, 0, 1)),
    2: ((0.00, -0.25, -0.35), (0.2, 0.0, -1.0), (1, 0, 0)),
    3: ((0.05, -0.15, -0.30), (0.3, 0.0, -1.0), (0, -1, 0)),
}
REST_TOF_MM = (120.0, 176.0, 216.0, 200.0, 240.0)
REST_WARMTH = 0.45
