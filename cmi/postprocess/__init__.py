"""Subject-level post-processing: assign each subject's sequences to the protocol's slots.

On the Kaggle path (numpy and scipy only):
- ``pair_proba(gesture_proba, orientation_proba)``: (n, 51) protocol-pair probabilities;
- ``replay_subject(...)``: the answers for one subject's sequences in arrival order (pure);
- ``SubjectMemory(method, mode).answer(subject, sequence_id, gesture_proba,
  orientation_proba)``: the same, one gateway call at a time, with bounded memory.

Training only (imports the metric): ``cmi.postprocess.gateway`` replays the gateway on the
out-of-fold tables and scores each method.
"""

from cmi.postprocess.assignment import (
    METHODS,
    MODES,
    Method,
    Mode,
    answer_newest,
    assign_capacitated,
    excess_answers,
    replay_subject,
    slot_probabilities,
    slot_table,
)
from cmi.postprocess.memory import SubjectMemory
from cmi.postprocess.slots import (
    COMBINES,
    Combine,
    SlotTable,
    gesture_slots,
    pair_gesture,
    pair_orientation,
    pair_proba,
    pair_slots,
)

__all__ = [
    "COMBINES",
    "METHODS",
    "MODES",
    "Combine",
    "Method",
    "Mode",
    "SlotTable",
    "SubjectMemory",
    "answer_newest",
    "assign_capacitated",
    "excess_answers",
    "gesture_slots",
    "pair_gesture",
    "pair_orientation",
    "pair_proba",
    "pair_slots",
    "replay_subject",
    "slot_probabilities",
    "slot_table",
]
