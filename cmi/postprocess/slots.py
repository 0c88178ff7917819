"""Slot tables and per-slot probabilities: what the subject-level assignment works on.

A *slot table* lists kinds of slot a subject's sequences can fill, each with the gesture it
answers and how many sequences of one subject it holds:
- ``pair_slots()``: the protocol's 51 (gesture, orientation) pairs, 2 sequences each (one
  per initial behaviour), 102 in all;
- ``gesture_slots()``: the 18 gestures with their per-subject counts (8 / 6 / 2), 102 in all;
  the weaker variant that ignores orientation.

``pair_proba`` turns a sequence's 18 gesture and 4 orientation probabilities into one
probability per pair. It treats the gesture and orientation estimates as independent given
the sequence (they come from different models; neither is conditioned on the other), which
is an approximation: a real sequence's gesture and orientation evidence overlap.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np

from cmi.params import POSTPROCESS_COMBINES
from cmi.protocol import PROTOCOL_PAIRS, SLOTS_PER_PAIR, gesture_capacity
from cmi.schema import GESTURE_INDEX, GESTURES, N_CLASSES, ORIENTATIONS

N_ORIENTATIONS = len(ORIENTATIONS)
_ORIENTATION_INDEX = {o: i for i, o in enumerate(ORIENTATIONS)}

Combine = Literal["max", "product", "bayes"]
COMBINES: tuple[str, ...] = POSTPROCESS_COMBINES
# Floor of an orientation mass we divide by (a zero would make a gesture's pairs 0 / 0).
_FLOOR = 1e-12


@dataclass(frozen=True)
class SlotTable:
    """Kinds of slot: ``gesture[k]`` is the class index slot kind ``k`` answers and
    ``capacity[k]`` how many of one subject's sequences it holds."""

    gesture: np.ndarray  # (K,) int
    capacity: np.ndarray  # (K,) int >= 0

    def __post_init__(self) -> None:
        if self.gesture.shape != self.capacity.shape or self.gesture.ndim != 1:
            raise ValueError("SlotTable: gesture and capacity must be 1-d arrays of one length")
        if (self.capacity < 0).any():
            raise ValueError("SlotTable: negative capacity")

    @property
    def n_kinds(self) -> int:
        return len(self.gesture)

    @property
    def total(self) -> int:
        """Sequences of one subject the table holds; more than this fall back to argmax."""
        return int(self.capacity.sum())


@lru_cache(maxsize=1)
def _pair_indices() -> tuple[np.ndarray, np.ndarray]:
    gesture = np.array([GESTURE_INDEX[g] for g, _ in PROTOCOL_PAIRS], dtype=np.int64)
    orientation = np.array([_ORIENTATION_INDEX[o] for _, o in PROTOCOL_PAIRS], dtype=np.int64)
    return gesture, orientation


def pair_gesture() -> np.ndarray:
    """(51,) class index of each protocol pair, in PROTOCOL_PAIRS order."""
    return _pair_indices()[0].copy()


def pair_orientation() -> np.ndarray:
    """(51,) orientation index (into schema.ORIENTATIONS) of each protocol pair."""
    return _pair_indices()[1].copy()


def pair_slots() -> SlotTable:
    gesture, _ = _pair_indices()
    return SlotTable(gesture.copy(), np.full(len(gesture), SLOTS_PER_PAIR, dtype=np.int64))


def gesture_slots() -> SlotTable:
    capacity = gesture_capacity()
    return SlotTable(
        np.arange(N_CLASSES, dtype=np.int64),
        np.array([capacity[g] for g in GESTURES], dtype=np.int64),
    )


def _as_rows(values: np.ndarray, width: int, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != width:
        raise ValueError(f"{name}: expected shape (n, {width}), got {np.shape(values)}")
    if not np.isfinite(array).all() or (array < 0).any():
        raise ValueError(f"{name}: probabilities must be finite and non-negative")
    return array


def pair_proba(
    gesture_proba: np.ndarray,
    orientation_proba: np.ndarray | None = None,
    combine: Combine = "max",
) -> np.ndarray:
    """(n, 51) score of each protocol pair, rows renormalised to sum to 1.

    The gesture estimate p and the orientation estimate q come from different models and
    are treated as independent given the sequence (an approximation: their evidence overlaps,
    both see the IMU). Only ratios within a row matter to the assignment (a per-row factor is
    a constant shift of -log p); the options differ in how far q may overrule p:
    - ``"max"`` (default): p(g) * q(o) / max of q over g's orientations: a gesture's best
      orientation keeps its full blended probability, so q only decides which of a gesture's
      pairs (and their capacities) a sequence uses. The assignment answers a sequence's plain
      argmax unless the subject's capacities bind (so a one-sequence subject gets it).
    - ``"product"``: p(g) * q(o) over the 51 allowed pairs: q also counts as evidence
      against gestures never done in the orientation it sees, and can change a lone
      sequence's answer.
    - ``"bayes"``: the product divided by each estimate's prior under the protocol (every
      pair equally likely): p(g) q(o) / (n_orientations(g) * share of slots in o).
    Without an orientation estimate (``None``) all use a uniform one, and the pair assignment
    becomes the per-gesture-count assignment.
    """
    p = _as_rows(gesture_proba, N_CLASSES, "gesture_proba")
    if orientation_proba is None:
        q = np.full((len(p), N_ORIENTATIONS), 1.0 / N_ORIENTATIONS)
    else:
        q = _as_rows(orientation_proba, N_ORIENTATIONS, "orientation_proba")
        if len(q) != len(p):
            raise ValueError(f"{len(p)} gesture rows but {len(q)} orientation rows")
    gesture, orientation = _pair_indices()
    q_pairs = q[:, orientation]  # (n, 51)
    joint = p[:, gesture] * q_pairs
    if combine == "max":
        best = np.zeros((len(q), N_CLASSES))
        np.maximum.at(best.T, gesture, q_pairs.T)  # per gesture, its best allowed orientation
        joint = joint / np.maximum(best[:, gesture], _FLOOR)
    elif combine == "bayes":
        # Two independent experts under a uniform prior over pairs: each estimate divided by
        # its own prior (a gesture's n_o(g) / 51 of the pairs, an orientation's share).
        n_orientations = np.bincount(gesture, minlength=N_CLASSES)
        orientation_prior = np.bincount(orientation, minlength=N_ORIENTATIONS) / len(gesture)
        joint = joint / (n_orientations[gesture] * orientation_prior[orientation])[None, :]
    elif combine != "product":
        raise ValueError(f"postprocess.combine must be one of {COMBINES}, got {combine!r}")
    total = joint.sum(axis=1, keepdims=True)
    # A row with no mass on any pair (degenerate inputs) becomes uniform, not NaN.
    return np.where(total > 0, joint / np.where(total > 0, total, 1.0), 1.0 / len(gesture))
