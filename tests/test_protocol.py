"""The protocol table: 51 pairs, 102 slots, the class counts of DOMAIN.md."""

from __future__ import annotations

from collections import Counter

from cmi.protocol import (
    INITIAL_BEHAVIORS,
    PROTOCOL_PAIRS,
    SLOTS_PER_PAIR,
    SLOTS_PER_SUBJECT,
    gesture_capacity,
    orientation_capacity,
    protocol_slots,
)
from cmi.schema import BEHAVIORS, GESTURES, NON_TARGET_GESTURES, ORIENTATIONS, TARGET_GESTURES


def test_pairs_are_51_distinct_known_gesture_orientation_pairs() -> None:
    assert len(PROTOCOL_PAIRS) == 51 == len(set(PROTOCOL_PAIRS))
    assert {g for g, _ in PROTOCOL_PAIRS} == set(GESTURES)
    assert {o for _, o in PROTOCOL_PAIRS} == set(ORIENTATIONS)


def test_slots_are_pairs_times_the_two_initial_behaviors() -> None:
    assert INITIAL_BEHAVIORS == (
        "Relaxes and moves hand to target location",
        "Moves hand to target location",
    )
    assert set(INITIAL_BEHAVIORS) <= set(BEHAVIORS)
    slots = protocol_slots()
    assert SLOTS_PER_PAIR == 2
    assert len(slots) == SLOTS_PER_SUBJECT == 102 == len(set(slots))
    assert Counter((g, o) for g, o, _ in slots) == dict.fromkeys(PROTOCOL_PAIRS, 2)


def test_gesture_capacity_gives_the_real_class_proportions() -> None:
    capacity = gesture_capacity()
    assert sum(capacity.values()) == 102
    assert all(capacity[g] == 8 for g in TARGET_GESTURES)
    non_target = Counter(capacity[g] for g in NON_TARGET_GESTURES)
    assert non_target == {8: 1, 6: 3, 2: 6}
    assert capacity["Text on phone"] == 8
    # 81 subjects x capacity ~ the real counts (~640 / ~480 / ~160 before missing sequences)
    assert {81 * c for c in capacity.values()} == {648, 486, 162}


def test_orientation_capacity() -> None:
    capacity = orientation_capacity()
    assert sum(capacity.values()) == 102
    assert set(capacity) == set(ORIENTATIONS)
    assert min(capacity.values()) >= 18
