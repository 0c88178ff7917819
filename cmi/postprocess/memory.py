"""What inference remembers of each subject between gateway calls, with bounded memory.

``SubjectMemory.answer`` is the stateful twin of ``replay_subject``: fed one subject's
sequences one call at a time (subjects interleaved in any way), it gives exactly the answers
``replay_subject`` gives for that subject's arrival order.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

from cmi.postprocess.assignment import (
    Method,
    Mode,
    answer_newest,
    check_method,
    slot_probabilities,
    slot_table,
)
from cmi.postprocess.slots import COMBINES, N_ORIENTATIONS, Combine
from cmi.schema import N_CLASSES

log = logging.getLogger(__name__)


@dataclass
class _SubjectState:
    """One subject: the participating sequences' slot probabilities and answers (arrival
    order), and the answer of every remembered sequence id (for repeats)."""

    slot_proba: np.ndarray  # (table.total, K), the first n_in rows used
    answered: np.ndarray  # (table.total,) gesture answered per participating row
    n_in: int = 0
    answers: dict[str, int] = field(default_factory=dict)
    warned_full: bool = False


class SubjectMemory:
    """Answers each sequence from its subject's sequences seen so far.

    - ``method``: ``"assignment"`` (protocol pairs, needs orientation probabilities; uniform
      when absent), ``"gesture_counts"`` (per-gesture counts only) or ``"none"`` (argmax).
    - ``mode``: ``"resolve"`` or ``"pinned"`` (see ``cmi.postprocess.assignment``).
    - Bounded: at most ``max_subjects`` subjects (least recently seen forgotten first) and
      ``max_sequences_per_subject`` remembered ids per subject; a subject's sequences beyond
      the protocol's slots, or beyond that cap, get the plain argmax.
    - A sequence id sent again gets its first answer back and is not counted twice.
    Thread-safe: one lock around each call (a call costs about a millisecond).
    """

    def __init__(
        self,
        method: Method = "assignment",
        mode: Mode = "resolve",
        combine: Combine = "max",
        max_subjects: int = 256,
        max_sequences_per_subject: int = 512,
    ) -> None:
        check_method(method, mode)
        if combine not in COMBINES:
            raise ValueError(f"postprocess.combine must be one of {COMBINES}, got {combine!r}")
        self.method, self.mode, self.combine = method, mode, combine
        self._table = None if method == "none" else slot_table(method)
        if max_subjects < 1:
            raise ValueError(f"max_subjects must be >= 1, got {max_subjects}")
        if self._table is not None and max_sequences_per_subject < self._table.total:
            raise ValueError(
                f"max_sequences_per_subject must be >= {self._table.total} (the protocol's "
                f"slots per subject), got {max_sequences_per_subject}"
            )
        self.max_subjects = max_subjects
        self.max_sequences_per_subject = max_sequences_per_subject
        self._subjects: OrderedDict[Hashable, _SubjectState] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Subjects currently remembered."""
        return len(self._subjects)

    def n_remembered(self, subject: Hashable) -> int:
        state = self._subjects.get(subject)
        return 0 if state is None else len(state.answers)

    def clear(self) -> None:
        with self._lock:
            self._subjects.clear()

    def answer(
        self,
        subject: Hashable,
        sequence_id: str,
        gesture_proba: np.ndarray,
        orientation_proba: np.ndarray | None = None,
    ) -> int:
        """Class index answered for ``sequence_id`` of ``subject``.

        gesture_proba: (18,) blended probabilities; orientation_proba: (4,) or None.
        """
        p = np.asarray(gesture_proba, dtype=np.float64).reshape(-1)
        if p.shape != (N_CLASSES,) or not np.isfinite(p).all():
            raise ValueError(f"gesture_proba: expected {N_CLASSES} finite values, got {p.shape}")
        q = None
        if orientation_proba is not None:
            q = np.asarray(orientation_proba, dtype=np.float64).reshape(1, -1)
            if q.shape != (1, N_ORIENTATIONS):
                raise ValueError(f"orientation_proba: expected {N_ORIENTATIONS} values")
        argmax = int(p.argmax())
        if self._table is None:
            return argmax
        with self._lock:
            state = self._state(subject)
            if sequence_id in state.answers:
                return state.answers[sequence_id]
            answer = argmax
            if state.n_in < self._table.total:
                row = slot_probabilities(self.method, p[None, :], q, self.combine)[0]
                state.slot_proba[state.n_in] = row
                n = state.n_in + 1
                answer = answer_newest(
                    state.slot_proba[:n], self._table, self.mode, state.answered[: n - 1]
                )
                state.answered[state.n_in] = answer
                state.n_in = n
            if len(state.answers) < self.max_sequences_per_subject:
                state.answers[sequence_id] = answer
            elif not state.warned_full:
                state.warned_full = True
                log.warning(
                    "subject %r: more than %d sequences; later ones are not remembered",
                    subject,
                    self.max_sequences_per_subject,
                )
            return answer

    def _state(self, subject: Hashable) -> _SubjectState:
        state = self._subjects.get(subject)
        if state is not None:
            self._subjects.move_to_end(subject)
            return state
        assert self._table is not None
        state = _SubjectState(
            slot_proba=np.zeros((self._table.total, self._table.n_kinds)),
            answered=np.zeros(self._table.total, dtype=np.int64),
        )
        self._subjects[subject] = state
        while len(self._subjects) > self.max_subjects:
            forgotten, _ = self._subjects.popitem(last=False)
            log.info("forgot subject %r (more than %d subjects)", forgotten, self.max_subjects)
        return state
