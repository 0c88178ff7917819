"""Upside-down wearers at inference: the subject decision as sequences arrive, and the fix.

``WearCorrector.upright(sequence)`` scores the raw sequence, adds it to its subject's
evidence (``SubjectWearDetector``: bounded, keyed by the ``subject`` column as the
post-processing memory is) and, when the subject's sequences so far say upside down, returns
the sequence rotated back (``rotate_back``: the raw-frame transform the extract stage applied
to the flagged training subjects, before the same ``prepare_sensor_frame``/
``compute_features``). It never raises: a sequence without a subject or id, or any failure,
gives the sequence back as it came (failures are logged and counted). Kaggle path: numpy and
polars.
"""

from __future__ import annotations

import logging
from typing import Any

import polars as pl

from cmi.wear.detect import SubjectWearDetector, WearModel
from cmi.wear.rotate import rotate_back

log = logging.getLogger("cmi.inference")


def _subject_key(sequence: pl.DataFrame) -> tuple[str, str] | None:
    if sequence.height == 0 or not {"subject", "sequence_id"} <= set(sequence.columns):
        return None
    subject, sequence_id = sequence.select("subject", "sequence_id").row(0)
    if subject is None or sequence_id is None:
        return None
    return str(subject), str(sequence_id)


class WearCorrector:
    """The inference side of ``extract.fix_upside_down`` (see the module doc)."""

    def __init__(
        self, model: WearModel, *, max_subjects: int, max_sequences_per_subject: int
    ) -> None:
        self.detector = SubjectWearDetector(model, max_subjects, max_sequences_per_subject)
        self.rotated = 0  # sequences answered rotated back
        self.failures = 0  # sequences answered as recorded because detection/rotation failed

    def upright(self, sequence: Any) -> Any:
        """``sequence`` as a normally worn device would have recorded it, if its subject is
        judged upside down from the sequences seen so far (this one included); else (and on
        any failure) ``sequence`` itself."""
        try:
            if not isinstance(sequence, pl.DataFrame):
                if type(sequence).__module__.split(".")[0] != "pandas":
                    return sequence  # odd input: the feature path reports it
                sequence = pl.from_pandas(sequence)  # older notebooks pass pandas
            key = _subject_key(sequence)
            if key is None or not self.detector.observe(*key, sequence):
                return sequence
            rotated = rotate_back(sequence)
        except Exception as err:
            self.failures += 1
            log.warning("upside-down check failed (%r); predicting on the sequence as sent", err)
            return sequence
        self.rotated += 1
        return rotated

    def check(self, sequence: pl.DataFrame) -> None:
        """Score and rotate ``sequence`` strictly (raising), remembering nothing: the
        warm-up's check that the path works."""
        score = self.detector.model.score(sequence)
        rotate_back(sequence)
        if score != score:  # NaN: no usable IMU frame
            raise ValueError("upside-down score is NaN: the sequence has no usable IMU frame")

    def is_upside_down(self, subject: str) -> bool:
        return self.detector.is_upside_down(subject)

    def reset(self) -> None:
        """Forget every subject (e.g. between two runs over the same test set)."""
        self.detector.clear()

    def describe(self) -> str:
        model = self.detector.model
        return (
            f"upside-down fix (mean score > {model.threshold:.2f} after "
            f"{model.min_sequences} sequences)"
        )
