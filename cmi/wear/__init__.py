"""Devices worn upside down (rotated 180 degrees about the forearm): detect and undo.

On the Kaggle path (numpy and polars only):
- ``rotate_back(frame)``: a raw sensor frame as the device worn the normal way would have
  recorded it (acc y/z, quaternion, thermopile/ToF sensors 2 and 4, ToF image orientation);
- ``upside_down_score(frame, model)``: one sequence's evidence (log-odds, > 0 upside down);
- ``decide_subject(scores, model)`` and ``SubjectWearDetector``: the subject-level decision
  from the sequences seen so far.

Training side: ``fit_wear_model(train_frame)`` fits the score and chooses the decision rule
(``cmi.wear.fit``). Suggested switch: ``extract.fix_upside_down: bool`` (off by default).
"""

from cmi.wear.detect import (
    FEATURE_NAMES,
    HALF_TURN_SIGNS,
    SubjectWearDetector,
    WearModel,
    decide_subject,
    sequence_features,
    upside_down_score,
    wear_features,
)
from cmi.wear.fit import WearFit, WearFitParams, fit_wear_model
from cmi.wear.rotate import AWAY_COLUMNS, COLUMN_SOURCES, rotate_back

__all__ = [
    "AWAY_COLUMNS",
    "COLUMN_SOURCES",
    "FEATURE_NAMES",
    "HALF_TURN_SIGNS",
    "SubjectWearDetector",
    "WearFit",
    "WearFitParams",
    "WearModel",
    "decide_subject",
    "fit_wear_model",
    "rotate_back",
    "sequence_features",
    "upside_down_score",
    "wear_features",
]
