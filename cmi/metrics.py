"""The competition metric: 0.5 * binary F1 (target or not) + 0.5 * collapsed macro F1."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from cmi.schema import GESTURE_INDEX, GESTURES, PROBA_COLUMNS, TARGET_INDICES

NON_TARGET_LABEL = "non_target"
# Target gestures come first in GESTURES (a test checks): "index < N_TARGETS" is "is a target".
N_TARGETS = len(TARGET_INDICES)


def _as_class_indices(labels: Sequence[str] | Sequence[int] | np.ndarray) -> np.ndarray:
    """int64 class indices into ``GESTURES`` from gesture strings or indices; anything else
    (an unknown string, an index outside 0..17) is an error naming the value."""
    values = np.asarray(labels)
    if values.size == 0:
        return np.zeros(0, dtype=np.int64)
    if values.dtype.kind in "iu":
        bad = (values < 0) | (values >= len(GESTURES))
        if bad.any():
            # A plain GESTURES[index] would wrap -1 round to the last gesture.
            raise ValueError(
                f"class index {int(values[bad][0])} is not one of the 18 gestures (0..17)"
            )
        return values.astype(np.int64).ravel()
    out = np.empty(values.size, dtype=np.int64)
    for i, label in enumerate(values.ravel().tolist()):
        if isinstance(label, str):
            if label not in GESTURE_INDEX:
                raise ValueError(f"{label!r} is not one of the 18 gestures")
            out[i] = GESTURE_INDEX[label]
        else:
            index = int(label)
            if not 0 <= index < len(GESTURES) or index != label:
                raise ValueError(f"class index {label!r} is not one of the 18 gestures (0..17)")
            out[i] = index
    return out


def _f1(tp: float, fp: float, fn: float) -> float:
    # scikit-learn's F1 with zero_division=0: 2tp / (2tp + fp + fn), 0 when that is 0 / 0.
    denominator = 2 * tp + fp + fn
    return 0.0 if denominator == 0 else 2 * tp / denominator


def competition_scores(
    y_true: Sequence[str] | Sequence[int] | np.ndarray,
    y_pred: Sequence[str] | Sequence[int] | np.ndarray,
    sample_weight: np.ndarray | None = None,
) -> dict[str, float]:
    """score, binary_f1 and macro_f1 exactly as the competition defines them.

    Labels are gesture strings or class indices into ``GESTURES``. ``sample_weight`` weighs
    rows in both F1s (used to pool the recorded and IMU-only views at a given share).
    Computed from weighted counts in numpy (the blend's weight search calls this hundreds of
    times); ``tests/test_metrics.py`` checks it against scikit-learn's ``f1_score``.
    """
    truth = _as_class_indices(y_true)
    pred = _as_class_indices(y_pred)
    if len(truth) != len(pred):
        raise ValueError(f"{len(truth)} true labels but {len(pred)} predictions")
    if len(truth) == 0:
        return {"score": 0.0, "binary_f1": 0.0, "macro_f1": 0.0}
    weight = (
        np.ones(len(truth)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
    )
    if weight.shape != truth.shape:
        raise ValueError(f"{len(weight)} sample weights for {len(truth)} labels")
    is_target_true, is_target_pred = truth < N_TARGETS, pred < N_TARGETS
    binary_f1 = _f1(
        weight[is_target_true & is_target_pred].sum(),
        weight[~is_target_true & is_target_pred].sum(),
        weight[is_target_true & ~is_target_pred].sum(),
    )
    # Every non-target gesture becomes one label (index N_TARGETS); the macro average runs over
    # the labels present in truth or prediction, whatever their weight, as scikit-learn's.
    collapsed_true = np.minimum(truth, N_TARGETS)
    collapsed_pred = np.minimum(pred, N_TARGETS)
    n_labels = N_TARGETS + 1
    tp = np.bincount(
        collapsed_true[collapsed_true == collapsed_pred],
        weights=weight[collapsed_true == collapsed_pred],
        minlength=n_labels,
    )
    true_total = np.bincount(collapsed_true, weights=weight, minlength=n_labels)
    pred_total = np.bincount(collapsed_pred, weights=weight, minlength=n_labels)
    present = np.union1d(collapsed_true, collapsed_pred)
    per_label = [_f1(tp[k], pred_total[k] - tp[k], true_total[k] - tp[k]) for k in present.tolist()]
    macro_f1 = float(np.mean(per_label))
    return {
        "score": float(0.5 * binary_f1 + 0.5 * macro_f1),
        "binary_f1": float(binary_f1),
        "macro_f1": macro_f1,
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
