"""Subjects: demographics, habits, how they wear the device, which protocol slots they record."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from cmi.protocol import INITIAL_BEHAVIORS, protocol_slots
from cmi.schema import (
    DEMOGRAPHICS_COLUMNS,
    DEMOGRAPHICS_SCHEMA,
    GESTURE_INDEX,
    GESTURES,
    ORIENTATIONS,
)

LEFT_HANDED_SHARE = 10 / 81  # the real training set: 71 of 81 subjects are right-handed
MAX_MISSING_PER_SUBJECT = 2  # dropped slots per subject, so >= 100 of 102 are recorded

# The 102 protocol slots as codes: (gesture index, orientation index, relaxed start?).
SLOT_CODES = np.array(
    [
        (GESTURE_INDEX[g], ORIENTATIONS.index(o), b == INITIAL_BEHAVIORS[0])
        for g, o, b in protocol_slots()
    ],
    dtype=np.int64,
)


@dataclass(frozen=True)
class SplitSpec:
    """The subjects of one split (train or test) and what they record."""

    n_subjects: int
    # Subjects who record only a sample of ``thinned_sequences`` slots (tiny stays fast);
    # every other subject records the whole protocol, minus ``missing_share`` of its slots.
    n_thinned: int = 0
    thinned_sequences: int = 6
    missing_share: float = 0.0135  # real: 8,151 of 81 x 102 = 8,262 slots recorded
    n_upside_down: int = 0  # right-handed, full-sensor subjects wearing the device upside down
    n_imu_only_subjects: int = 0  # subjects recorded without thermopiles and ToF
    imu_only_share: float = 0.0  # share of sequences presented IMU-only (the hidden test: 0.5)

    def __post_init__(self) -> None:
        if not 0 <= self.n_thinned <= self.n_subjects:
            raise ValueError(f"n_thinned={self.n_thinned} outside 0..{self.n_subjects}")
        if self.n_upside_down + self.n_imu_only_subjects >= self.n_subjects:
            raise ValueError("upside-down and IMU-only subjects must leave a normal one")
        if not 0 <= self.missing_share <= 0.05 or not 0 <= self.imu_only_share <= 1:
            raise ValueError("missing_share must be in 0..0.05, imu_only_share in 0..1")


def demographics(ids: np.ndarray, rng: np.random.Generator) -> pl.DataFrame:
    """Plausible, age-correlated body measures (heights in cm like the real file)."""
    n = len(ids)
    adult = (rng.random(n) < 0.52).astype(np.int64)
    age = np.where(
        adult == 1,
        np.minimum(18 + rng.gamma(1.6, 5.5, n), 55),
        rng.integers(10, 18, n),
    ).astype(np.int64)
    sex = (rng.random(n) < 0.62).astype(np.int64)
    handedness = np.ones(n, dtype=np.int64)  # the real share of left-handers, at least one
    n_left = max(1, round(LEFT_HANDED_SHARE * n))
    handedness[rng.choice(n, size=n_left, replace=False)] = 0
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


def _pick(rng: np.random.Generator, n: int, k: int, *pools: np.ndarray) -> np.ndarray:
    """A mask of ``k`` of ``n`` subjects drawn from the first pool (a boolean mask) that is
    large enough; the last pool must be."""
    pool = next((p for p in pools if p.sum() >= k), pools[-1])
    if pool.sum() < k:
        raise ValueError(f"cannot pick {k} subjects from {int(pool.sum())} candidates")
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(np.flatnonzero(pool), size=k, replace=False)] = True
    return mask


def subject_traits(
    demo: pl.DataFrame, spec: SplitSpec, thinned: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Per-subject habits (the subject effect grouped CV has to beat) and how each subject
    is recorded: ``left`` (mirrored motion), ``upside_down``, ``imu_only``, ``thinned``."""
    n = demo.height
    n_g = len(GESTURES)
    left = demo.get_column("handedness").to_numpy() == 0
    # Upside-down wearers are right-handed and IMU-only subjects wear it upright, so that
    # each oddity has a clean example. Both are drawn from the thinned subjects where there
    # are enough, so that the whole-protocol subjects of a thinned preset stay plain.
    upside_down = _pick(rng, n, spec.n_upside_down, thinned & ~left, ~left)
    imu_only = _pick(rng, n, spec.n_imu_only_subjects, thinned & ~upside_down, ~upside_down)
    return {
        "left": left,
        "upside_down": upside_down,
        "imu_only": imu_only,
        "thinned": thinned,
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


def _dropped_slots(n_whole: int, missing_share: float, rng: np.random.Generator) -> np.ndarray:
    """A mask over the whole-protocol subjects' slots: ~``missing_share`` dropped at random,
    at most ``MAX_MISSING_PER_SUBJECT`` per subject."""
    n_slots = len(SLOT_CODES)
    dropped = np.zeros(n_whole * n_slots, dtype=bool)
    wanted = min(round(missing_share * dropped.size), MAX_MISSING_PER_SUBJECT * n_whole)
    per_subject = np.zeros(n_whole, dtype=np.int64)
    for flat in rng.permutation(dropped.size):
        if wanted == 0:
            break
        subject = flat // n_slots
        if per_subject[subject] < MAX_MISSING_PER_SUBJECT:
            dropped[flat] = True
            per_subject[subject] += 1
            wanted -= 1
    return dropped.reshape(n_whole, n_slots)


def protocol_plan(
    spec: SplitSpec, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Which slot of the protocol each sequence records, as arrays over sequences:
    ``subject`` (index), ``gesture`` (index into GESTURES), ``orientation`` (index into
    ORIENTATIONS), ``relaxed`` (starts with 'Relaxes and moves hand to target location');
    and the mask of thinned subjects."""
    n_slots = len(SLOT_CODES)
    thinned = np.zeros(spec.n_subjects, dtype=bool)
    thinned[rng.choice(spec.n_subjects, size=spec.n_thinned, replace=False)] = True
    whole = np.flatnonzero(~thinned)
    kept = ~_dropped_slots(len(whole), spec.missing_share, rng)
    subjects, slots = [], []
    for row, subject in enumerate(whole):
        subjects.append(np.full(int(kept[row].sum()), subject))
        slots.append(np.flatnonzero(kept[row]))
    k = min(spec.thinned_sequences, n_slots)
    for subject in np.flatnonzero(thinned):
        subjects.append(np.full(k, subject))
        slots.append(np.sort(rng.choice(n_slots, size=k, replace=False)))
    codes = SLOT_CODES[np.concatenate(slots)]
    plan = {
        "subject": np.concatenate(subjects).astype(np.int64),
        "gesture": codes[:, 0],
        "orientation": codes[:, 1],
        "relaxed": codes[:, 2].astype(bool),
    }
    return plan, thinned
