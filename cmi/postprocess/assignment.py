"""The subject-level assignment: pure functions over one subject's sequences.

Every subject follows the same script, so among one subject's sequences each slot kind
(a protocol pair, or a gesture in the weaker variant) occurs at most ``capacity`` times. Given
the slot probabilities of the sequences seen so far, the most likely joint labelling that
respects the capacities is a min-cost assignment on ``-log p``: expand each slot kind into
``capacity`` identical columns and solve it with ``scipy.optimize.linear_sum_assignment``.

Two ways to treat answers already given (Kaggle keeps a sequence's first answer):
- ``"resolve"``: re-solve the whole history each call, ignoring earlier answers, and answer
  the newest sequence's slot. Earlier answers may then disagree with the current solution;
  that is fine, they are not sent again.
- ``"pinned"``: an earlier sequence may only take a slot of the gesture it was answered (its
  orientation stays free), so the answers given so far always fit the capacities together.
  With gesture slots this is greedy: the newest takes its best gesture with room left.

Sequences beyond a subject's total capacity (more than the protocol's 102) are answered with
the plain argmax and take no part in the assignment.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

from cmi.params import POSTPROCESS_METHODS, POSTPROCESS_MODES
from cmi.postprocess.slots import (
    N_ORIENTATIONS,
    Combine,
    SlotTable,
    gesture_slots,
    pair_proba,
    pair_slots,
)
from cmi.schema import N_CLASSES

Method = Literal["none", "gesture_counts", "assignment"]
Mode = Literal["resolve", "pinned"]
METHODS: tuple[str, ...] = POSTPROCESS_METHODS
MODES: tuple[str, ...] = POSTPROCESS_MODES

_MIN_PROBA = 1e-12
# Cost of a slot a pinned sequence may not take: larger than any feasible total
# (102 rows x -log(1e-12) ~ 2,800), so it is only ever used when nothing else fits.
_FORBIDDEN_COST = 1e6


def check_method(method: str, mode: str) -> None:
    if method not in METHODS:
        raise ValueError(f"postprocess.method must be one of {METHODS}, got {method!r}")
    if mode not in MODES:
        raise ValueError(f"postprocess.mode must be one of {MODES}, got {mode!r}")


def slot_costs(slot_proba: np.ndarray) -> np.ndarray:
    """-log p, with p floored so a zero probability is very costly but finite."""
    return -np.log(np.maximum(np.asarray(slot_proba, dtype=np.float64), _MIN_PROBA))


def assign_capacitated(
    cost: np.ndarray, capacity: np.ndarray, allowed: np.ndarray | None = None
) -> np.ndarray:
    """Slot kind of each row in a minimum-total-cost assignment of rows to slot kinds where
    kind ``k`` takes at most ``capacity[k]`` rows.

    cost: (m, K); capacity: (K,) ints with sum >= m; allowed: optional (m, K) bool, the kinds
    each row may take. Returns (m,) kind indices.
    """
    cost = np.asarray(cost, dtype=np.float64)
    capacity = np.asarray(capacity, dtype=np.int64)
    m, n_kinds = cost.shape
    if capacity.shape != (n_kinds,):
        raise ValueError(f"capacity has shape {capacity.shape}, expected ({n_kinds},)")
    if m > capacity.sum():
        raise ValueError(f"{m} rows but only {capacity.sum()} slots")
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    columns = np.repeat(np.arange(n_kinds), capacity)
    expanded = cost[:, columns]
    if allowed is not None:
        expanded = np.where(np.asarray(allowed, dtype=bool)[:, columns], expanded, _FORBIDDEN_COST)
    rows, cols = linear_sum_assignment(expanded)
    kinds = np.empty(m, dtype=np.int64)
    kinds[rows] = columns[cols]
    return kinds


def answer_newest(
    slot_proba: np.ndarray,
    table: SlotTable,
    mode: Mode = "resolve",
    answered: np.ndarray | None = None,
) -> int:
    """Gesture (class index) for the last row of ``slot_proba``: one subject's participating
    sequences in arrival order, (m, K) with m <= table.total. ``answered``: the gestures
    given to the first m - 1 rows (used by ``"pinned"``)."""
    cost = slot_costs(slot_proba)
    allowed = None
    if mode == "pinned" and len(cost) > 1:
        if answered is None or len(answered) != len(cost) - 1:
            raise ValueError("pinned mode needs the answers of every earlier sequence")
        allowed = np.ones(cost.shape, dtype=bool)
        allowed[:-1] = table.gesture[None, :] == np.asarray(answered)[:, None]
    elif mode not in MODES:
        raise ValueError(f"postprocess.mode must be one of {MODES}, got {mode!r}")
    kinds = assign_capacitated(cost, table.capacity, allowed)
    return int(table.gesture[kinds[-1]])


def slot_table(method: Method) -> SlotTable:
    """The slot kinds a method assigns to (``none`` has none)."""
    if method == "assignment":
        return pair_slots()
    if method == "gesture_counts":
        return gesture_slots()
    raise ValueError(f"method {method!r} has no slot table")


def slot_probabilities(
    method: Method,
    gesture_proba: np.ndarray,
    orientation_proba: np.ndarray | None = None,
    combine: Combine = "max",
) -> np.ndarray:
    """(n, K) probabilities over ``slot_table(method)``'s kinds."""
    if method == "assignment":
        return pair_proba(gesture_proba, orientation_proba, combine)
    if method == "gesture_counts":
        p = np.atleast_2d(np.asarray(gesture_proba, dtype=np.float64))
        return p / np.maximum(p.sum(axis=1, keepdims=True), _MIN_PROBA)
    raise ValueError(f"method {method!r} has no slot probabilities")


def replay_subject(
    gesture_proba: np.ndarray,
    orientation_proba: np.ndarray | None = None,
    method: Method = "assignment",
    mode: Mode = "resolve",
    combine: Combine = "max",
) -> np.ndarray:
    """Answers (class indices) for one subject's distinct sequences given in arrival order,
    each computed from the sequences before it and itself, as the gateway would get them.

    gesture_proba: (n, 18); orientation_proba: (n, 4) or None (uniform).
    """
    check_method(method, mode)
    p = np.atleast_2d(np.asarray(gesture_proba, dtype=np.float64))
    if p.shape[1] != N_CLASSES:
        raise ValueError(f"gesture_proba: expected shape (n, {N_CLASSES}), got {p.shape}")
    if orientation_proba is not None and np.shape(orientation_proba) != (len(p), N_ORIENTATIONS):
        raise ValueError(
            f"orientation_proba: expected shape ({len(p)}, {N_ORIENTATIONS}), "
            f"got {np.shape(orientation_proba)}"
        )
    answers = p.argmax(axis=1).astype(np.int64)
    if method == "none":
        return answers
    table = slot_table(method)
    proba = slot_probabilities(method, p, orientation_proba, combine)
    for t in range(min(len(p), table.total)):
        answers[t] = answer_newest(proba[: t + 1], table, mode, answers[:t])
    return answers


def excess_answers(subjects: np.ndarray, answers: np.ndarray) -> int:
    """How many answers exceed the protocol's per-subject gesture counts (8 / 6 / 2), summed
    over subjects and gestures: 0 means the answers could all be true."""
    capacity = gesture_slots().capacity
    subjects = np.asarray(subjects)
    answers = np.asarray(answers, dtype=np.int64)
    excess = 0
    for subject in np.unique(subjects):
        counts = np.bincount(answers[subjects == subject], minlength=N_CLASSES)
        excess += int(np.maximum(counts - capacity, 0).sum())
    return excess
