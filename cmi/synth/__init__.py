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
  to the surface each sensor looks at (face, neck, leg, tray, or nothing in mid-air).

Every subject follows the study's protocol (``cmi.protocol``): 51 gesture x orientation
pairs, each once per initial behaviour, 102 slots, with about 1.3% of the slots dropped at
random (at most 2 per subject). ``tiny`` keeps two subjects with the whole protocol and
thins the others to a few slots. The test split holds other subjects, half of its sequences
presented IMU-only; a few training subjects are natively IMU-only.

Subject effects (device mounting, aim, tempo, amplitude, skin temperature) and confusable
gesture pairs that share a location keep a good model well below a perfect score.
Left-handed subjects (10 of 81, the real share) are the mirror image of right-handed ones,
and a few subjects wear the device upside down (``cmi.synth.sensors`` says exactly how each
changes the readings). ``subject_table`` says which subjects are which.

Modules: ``gestures`` (templates and poses), ``subjects`` (demographics, habits, protocol
plan), ``kinematics`` (trajectories), ``sensors`` (readings), ``dataset`` (presets, files).
"""

from __future__ import annotations

from cmi.protocol import PROTOCOL_PAIRS, protocol_slots
from cmi.synth.dataset import (
    FILE_NAMES,
    PRESETS,
    SynthPreset,
    generate,
    subject_table,
    write_synthetic,
)
from cmi.synth.kinematics import FS_HZ
from cmi.synth.subjects import SplitSpec

__all__ = [
    "FILE_NAMES",
    "FS_HZ",
    "PRESETS",
    "PROTOCOL_PAIRS",
    "SplitSpec",
    "SynthPreset",
    "generate",
    "protocol_slots",
    "subject_table",
    "write_synthetic",
]
