"""The study's recording protocol: which (gesture, orientation) pairs every subject performs.

Every subject performs the same script: 51 gesture x orientation pairs, each twice, once per
initial behaviour (the ``behavior`` of a sequence's first rows). That makes 102 slots per
subject; a few sequences are missing in the real data (8,151 / 81 = 100.6 per subject).

- the 8 targets and ``Text on phone``: all 4 orientations (8 sequences per subject each);
- mid-air, ``Wave hello``, ``Write name in air``, ``Pull air toward your face``: Seated
  Straight, Lie on Back, Lie on Side - Non Dominant (6 each);
- leg, ``Write name on leg``, ``Scratch knee/leg skin``, ``Pinch knee/leg skin``: Seated Lean
  Non Dom - FACE DOWN (2 each);
- objects, ``Feel around in tray and pull out an object``, ``Drink from bottle/cup``,
  ``Glasses on/off``: Seated Straight (2 each).

The competition does not publish which orientations the 3-orientation and 1-orientation
gestures use; this is our choice, the one ``cmi synth`` simulates. Why these: the mid-air
gestures need a free dominant arm, which every pose but the forward lean gives; leaning
forward brings the hand to the leg (the real sample has ``Write name on leg`` in that pose);
handling a tray, a cup or glasses is done sitting up (the real sample has the tray gesture
seated straight). Per orientation this gives 30 / 24 / 24 / 24 slots per subject.

This module is the ground floor for post-processing: it imports only ``cmi.schema``, so code
that assigns sequences to slots never imports the synthetic generator.
"""

from __future__ import annotations

from cmi.schema import BEHAVIORS, GESTURES, ORIENTATIONS, TARGET_GESTURES

SEATED_STRAIGHT, SEATED_LEAN, LIE_ON_BACK, LIE_ON_SIDE = ORIENTATIONS
# Columns of an orientation estimate (the orientation stage's OOF table), in ORIENTATIONS order.
ORIENTATION_COLUMNS: tuple[str, ...] = tuple(f"o{i}" for i in range(len(ORIENTATIONS)))

# The two behaviours a sequence can start with; each pair is recorded once with each.
INITIAL_BEHAVIORS: tuple[str, ...] = BEHAVIORS[:2]
SLOTS_PER_PAIR = len(INITIAL_BEHAVIORS)

# gesture -> the orientations it is performed in (in ORIENTATIONS order).
GESTURE_ORIENTATIONS: dict[str, tuple[str, ...]] = {
    **{gesture: ORIENTATIONS for gesture in TARGET_GESTURES},
    "Text on phone": ORIENTATIONS,
    "Wave hello": (SEATED_STRAIGHT, LIE_ON_BACK, LIE_ON_SIDE),
    "Write name in air": (SEATED_STRAIGHT, LIE_ON_BACK, LIE_ON_SIDE),
    "Pull air toward your face": (SEATED_STRAIGHT, LIE_ON_BACK, LIE_ON_SIDE),
    "Write name on leg": (SEATED_LEAN,),
    "Scratch knee/leg skin": (SEATED_LEAN,),
    "Pinch knee/leg skin": (SEATED_LEAN,),
    "Feel around in tray and pull out an object": (SEATED_STRAIGHT,),
    "Drink from bottle/cup": (SEATED_STRAIGHT,),
    "Glasses on/off": (SEATED_STRAIGHT,),
}

# The 51 (gesture, orientation) pairs, gestures in GESTURES order.
PROTOCOL_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (gesture, orientation) for gesture in GESTURES for orientation in GESTURE_ORIENTATIONS[gesture]
)
N_PAIRS = len(PROTOCOL_PAIRS)
SLOTS_PER_SUBJECT = N_PAIRS * SLOTS_PER_PAIR


def protocol_slots() -> tuple[tuple[str, str, str], ...]:
    """The 102 slots of one subject: (gesture, orientation, initial behaviour)."""
    return tuple(
        (gesture, orientation, behavior)
        for gesture, orientation in PROTOCOL_PAIRS
        for behavior in INITIAL_BEHAVIORS
    )


def gesture_capacity() -> dict[str, int]:
    """Sequences per subject of each gesture when the whole protocol is recorded (8, 6 or 2)."""
    return {g: SLOTS_PER_PAIR * len(GESTURE_ORIENTATIONS[g]) for g in GESTURES}


def orientation_capacity() -> dict[str, int]:
    """Sequences per subject in each orientation when the whole protocol is recorded."""
    counts = dict.fromkeys(ORIENTATIONS, 0)
    for _, orientation in PROTOCOL_PAIRS:
        counts[orientation] += SLOTS_PER_PAIR
    return counts


def _check() -> None:
    """The table is the study's shape: 51 distinct pairs, 9 x 4 + 3 x 3 + 6 x 1 orientations."""
    if set(GESTURE_ORIENTATIONS) != set(GESTURES):
        raise AssertionError("GESTURE_ORIENTATIONS must name each of the 18 gestures once")
    unknown = {o for _, o in PROTOCOL_PAIRS} - set(ORIENTATIONS)
    if unknown:
        raise AssertionError(f"unknown orientation(s) in the protocol: {sorted(unknown)}")
    if len(set(PROTOCOL_PAIRS)) != N_PAIRS or N_PAIRS != 51:
        raise AssertionError(f"the protocol has {N_PAIRS} pairs (distinct?), expected 51")
    shape = sorted(len(o) for o in GESTURE_ORIENTATIONS.values())
    if shape != [1] * 6 + [3] * 3 + [4] * 9:
        raise AssertionError(f"orientations per gesture {shape} are not 9 x 4, 3 x 3, 6 x 1")


_check()
