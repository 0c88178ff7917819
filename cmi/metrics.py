"""The competition metric: 0.5 * binary F1 (target or not) + 0.5 * collapsed macro F1."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
from sklearn.metrics import f1_score

from cmi.schema import GESTURES, PROBA_COLUMNS, TARGET_INDICES

NON_TARGET_LABEL = "non_target"


def _as_gesture_strings(labels: Sequence[str] | Sequence[int] | np.ndarray) -> list[str]:
    out = []
    for label in labels:
        if isinstance(label, str):
            if label not in GESTURES:
                raise ValueError(f"{label!r} is not one of the 18 gestures")
            out.append(label)
        else:
            index = int(label)
            # A plain GESTURES[index] would wrap -1 round to the last gesture.
            if not 0 <= index < len(GESTURES):
                raise ValueError(f"class index {index} is not one of the 18 gestures (0..17)")
            out.append(GESTURES[index])
    return out


def competition_scores(
    y_true: Sequence[str] | Sequence[int] | np.ndarray,
    y_pred: Sequence[str] | Sequence[int] | np.ndarray,
    sample_weight: np.ndarray | None = None,
) -> dict[str, float]:
    """score, binary_f1 and macro_f1 exactly as the competition defines them.

    Labels are gesture strings or class indices into ``GESTURES``. ``sample_weight`` weighs
    rows in both F1s (used to pool the recorded and IMU-only views at a given share).
    """
    truth = _as_gesture_strings(y_true)
    pred = _as_gesture_strings(y_pred)
    if len(truth) != len(pred):
        raise ValueError(f"{len(truth)} true labels but {len(pred)} predictions")
    if not truth:
        return {"score": 0.0, "binary_f1": 0.0, "macro_f1": 0.0}
    targets = {GESTURES[i] for i in TARGET_INDICES}
    binary_f1 = f1_score(
        [g in targets for g in truth],
        [g in targets for g in pred],
        pos_label=True,
        zero_division=0,
        sample_weight=sample_weight,
    )
    collapsed_truth = [g if g in targets else NON_TARGET_LABEL for g in truth]
    collapsed_pred = [g if g in targets else NON_TARGET_LABEL for g in pred]
    macro_f1 = f1_score(
        collapsed_truth,
        collapsed_pred,
        average="macro",
        zero_division=0,
        sample_weight=sample_weight,
    )
    return {
        "score": float(0.5 * binary_f1 + 0.5 * macro_f1),
        "binary_f1": float(binary_f1),
        "macro_f1": float(macro_f1),
    }


def competition_score(y_true, y_pred) -> float:
    return competition_scores(y_true, y_pred)["score"]


def proba_matrix(frame: pl.DataFrame) -> np.ndarray:
    """The (n, 18) probability block of an OOF / prediction frame."""
    return frame.select(PROBA_COLUMNS).to_numpy().astype(np.float64)


def summarize_oof(oof: pl.DataFrame) -> dict:
    """Metrics of an OOF table (sequence_id, fold, y_true, sensor_group, p00..p17):
    overall, per fold and per sensor group. The same shape for every model stage."""
    pred = proba_matrix(oof).argmax(axis=1)
    truth = oof.get_column("y_true").to_numpy()
    summary: dict = dict(competition_scores(truth, pred))
    summary["n_sequences"] = int(oof.height)
    summary["per_fold"] = _grouped_scores(oof, "fold", truth, pred)
    summary["per_sensor_group"] = _grouped_scores(oof, "sensor_group", truth, pred)
    return summary


def _grouped_scores(oof: pl.DataFrame, column: str, truth: np.ndarray, pred: np.ndarray) -> dict:
    keys = oof.get_column(column).to_numpy()
    out = {}
    for key in sorted(set(keys.tolist())):
        rows = keys == key
        out[str(key)] = dict(
            competition_scores(truth[rows], pred[rows]), n_sequences=int(rows.sum())
        )
    return out
