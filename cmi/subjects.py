"""Subject-level post-processing at inference: each answer from the subject's sequences so far.

``cmi.inference.predict`` blends the gesture models' probabilities for one sequence, then asks
``SubjectPostprocessor.answer`` for the gesture to send. The post-processor keeps a
``cmi.postprocess.SubjectMemory`` (bounded; keyed by the ``subject`` column; a sequence sent
again gets its first answer back) and, for the ``assignment`` method, estimates the body
orientation with the bundle's orientation fold models on the sequence's IMU features (the
same values in a sequence's recorded and IMU-only views). Its answers are those of
``cmi.postprocess.replay_subject`` for the same arrival order: what the oof_blend stage's
gateway replay scores.

A sequence without a subject or a sequence id (odd input) gets the plain argmax and takes no
part. Errors are raised to the caller, which answers the plain argmax and counts them.

Kaggle path: scipy (and ``cmi.postprocess``) load only when a method other than ``none`` is
used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from cmi.bundle import OrientationPart, PostprocessSettings
from cmi.predictor import feature_row
from cmi.schema import ORIENTATIONS
from cmi.wear.online import WearCorrector

log = logging.getLogger("cmi.inference")

N_ORIENTATIONS = len(ORIENTATIONS)
# Bounds of every per-subject memory at inference (post-processing, cmi.wear.online).
MAX_SUBJECTS = 256
MAX_SEQUENCES_PER_SUBJECT = 512


@dataclass(frozen=True)
class SubjectAnswer:
    gesture: int  # class index answered
    argmax: int  # the plain blend's argmax
    postprocessed: bool  # False: method none, or no subject / sequence id to key on


def build_wear_corrector(bundle: Any) -> WearCorrector | None:
    """The upside-down fix ``predict`` applies (the bundle's features were built with
    ``extract.fix_upside_down``), with the same bounds as the post-processing memory."""
    if getattr(bundle, "wear", None) is None:
        return None
    return WearCorrector(
        bundle.wear,
        max_subjects=MAX_SUBJECTS,
        max_sequences_per_subject=MAX_SEQUENCES_PER_SUBJECT,
    )


class SubjectPostprocessor:
    """The post-processing ``predict`` applies, with its per-subject memory.

    ``source`` says where the method came from (the bundle, or SUBJECT_POSTPROCESS).
    ``max_subjects`` / ``max_sequences_per_subject`` bound the memory (``SubjectMemory``).
    """

    def __init__(
        self,
        settings: PostprocessSettings,
        orientation: OrientationPart | None,
        source: str = "bundle",
        *,
        max_subjects: int = MAX_SUBJECTS,
        max_sequences_per_subject: int = MAX_SEQUENCES_PER_SUBJECT,
    ) -> None:
        self.settings = settings
        self.source = source
        self.problem: str | None = None  # why orientation is uniform, for logs and reports
        self.memory: Any = None  # cmi.postprocess.SubjectMemory, None for method "none"
        self.orientation = orientation if settings.method == "assignment" else None
        if settings.method != "none":
            from cmi.postprocess import SubjectMemory

            self.memory = SubjectMemory(
                settings.method,  # type: ignore[arg-type]
                settings.mode,  # type: ignore[arg-type]
                settings.combine,  # type: ignore[arg-type]
                max_subjects=max_subjects,
                max_sequences_per_subject=max_sequences_per_subject,
            )
        if settings.method == "assignment" and orientation is None:
            self.problem = (
                "the bundle has no orientation models: every pair gets a uniform orientation "
                "(the assignment then equals gesture_counts)"
            )

    @property
    def method(self) -> str:
        return self.settings.method

    def disable_orientation(self, reason: str) -> None:
        self.orientation = None
        self.problem = f"{reason}; pairs use a uniform orientation"

    def orientation_proba(self, sequence_features: Any) -> np.ndarray | None:
        """(4,) orientation probabilities (mean of the fold models, ORIENTATIONS order), or
        None without orientation models."""
        if self.orientation is None:
            return None
        x = feature_row(sequence_features, self.orientation.feature_names, "orientation part")
        total = np.zeros(N_ORIENTATIONS)
        for booster in self.orientation.boosters:
            # One thread: for one row, waking a thread pool costs more than the trees.
            proba = np.asarray(booster.predict(x, num_threads=1), dtype=np.float64)
            total += proba.reshape(N_ORIENTATIONS)
        if not np.isfinite(total).all() or total.sum() <= 0:
            raise ValueError(f"orientation models produced invalid probabilities {total!r}")
        return total / total.sum()

    def answer(self, features: Any, proba: np.ndarray) -> SubjectAnswer:
        """The answer for the sequence of ``features`` (a ``cmi.features.FeatureSet``) whose
        blended probabilities are ``proba`` (18,); raises on failure."""
        argmax = int(np.argmax(proba))
        if self.memory is None:
            return SubjectAnswer(argmax, argmax, False)
        from cmi.features import MISSING_SEQUENCE_ID

        key = features.sequences.select("subject", "sequence_id").row(0)
        subject, sequence_id = key
        if subject is None or sequence_id is None or sequence_id == MISSING_SEQUENCE_ID:
            log.debug("no subject or sequence id: answering the plain argmax")
            return SubjectAnswer(argmax, argmax, False)
        orientation = self.orientation_proba(features.sequence_features)
        gesture = self.memory.answer(subject, sequence_id, proba, orientation)
        return SubjectAnswer(int(gesture), argmax, True)

    def check(self, features: Any, proba: np.ndarray) -> int:
        """Run the whole post-processing path once on a scratch memory (the warm-up's strict
        check; the real memory is left alone). Returns the class index it answers."""
        if self.memory is None:
            return int(np.argmax(proba))
        from cmi.postprocess import SubjectMemory

        scratch = SubjectMemory(self.memory.method, self.memory.mode, self.memory.combine)
        orientation = self.orientation_proba(features.sequence_features)
        return int(scratch.answer("warm-up", "warm-up", proba, orientation))

    def reset(self) -> None:
        """Forget every subject (e.g. between two runs over the same test set)."""
        if self.memory is not None:
            self.memory.clear()

    def describe(self) -> str:
        if self.memory is None:
            return f"post-processing none ({self.source})"
        orientation = (
            f"{len(self.orientation.boosters)} orientation folds"
            if self.orientation is not None
            else "no orientation"
        )
        text = (
            f"post-processing {self.method} ({self.settings.mode}, {self.settings.combine}; "
            f"{self.source}; {orientation})"
        )
        return text + (f" [{self.problem}]" if self.problem else "")
