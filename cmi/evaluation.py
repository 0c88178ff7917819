"""Leaderboard-like scores of an OOF table: the recorded view, the IMU-only view, and both
pooled as the hidden test mixes them.

The OOF contract (every model stage and the blend write it): one row per validation
sequence and *view*:
- ``view == "full"``: the sequence as recorded, for sequences that have all sensors;
- ``view == "imu_only"``: the same sequence with every thm/ToF value nulled, exactly as the
  hidden test presents its IMU-only half; natively IMU-only sequences have only this row.
Columns: ``sequence_id, fold, y_true, sensor_group, view, p00..p17`` (``sensor_group`` is the
sequence's native group, ``view`` the one the probabilities were computed on).

``test_like`` is the competition score of both views pooled, each view weighing
``imu_only_share`` / ``1 - imu_only_share`` in total. It is the figure to compare with the
leaderboard: the hidden test is about half IMU-only.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from cmi.metrics import competition_scores, proba_matrix

VIEWS: tuple[str, ...] = ("full", "imu_only")
OOF_KEY: tuple[str, ...] = ("sequence_id", "view")


def check_share(imu_only_share: float) -> float:
    if not 0.0 <= imu_only_share <= 1.0:
        raise ValueError(
            f"params.yaml: eval.imu_only_share must be in [0, 1], got {imu_only_share}"
        )
    return float(imu_only_share)


def view_weights(views: np.ndarray, imu_only_share: float) -> np.ndarray:
    """Per-row weights: each view sums to its share of the pooled score (an absent view
    gives its share to the other)."""
    share = check_share(imu_only_share)
    imu = views == "imu_only"
    full = views == "full"
    unknown = ~(imu | full)
    if unknown.any():
        raise ValueError(f"OOF: unknown view {views[unknown][0]!r} (expected one of {VIEWS})")
    if not imu.any():
        share = 0.0
    elif not full.any():
        share = 1.0
    weights = np.zeros(len(views))
    if full.any():
        weights[full] = (1.0 - share) / full.sum()
    if imu.any():
        weights[imu] = share / imu.sum()
    return weights


def _scored(truth: np.ndarray, pred: np.ndarray, weight: np.ndarray | None = None) -> dict:
    return dict(competition_scores(truth, pred, sample_weight=weight), n_rows=len(truth))


def view_scores(
    oof: pl.DataFrame, imu_only_share: float, pred: np.ndarray | None = None
) -> dict[str, dict]:
    """``{"full": ..., "imu_only": ..., "test_like": ...}``, each with score, binary_f1,
    macro_f1 and n_rows. ``pred`` (class indices) overrides the argmax of the probabilities,
    e.g. for post-processed answers."""
    if pred is None:
        pred = proba_matrix(oof).argmax(axis=1)
    truth = oof.get_column("y_true").to_numpy()
    views = oof.get_column("view").to_numpy().astype(str)
    out = {}
    for view in VIEWS:
        rows = views == view
        out[view] = _scored(truth[rows], pred[rows])
    out["test_like"] = _scored(truth, pred, view_weights(views, imu_only_share))
    return out


def per_fold_test_like(oof: pl.DataFrame, imu_only_share: float) -> dict[str, float]:
    """test_like score of each fold on its own (spread across folds)."""
    out = {}
    for (fold,), part in oof.group_by(["fold"], maintain_order=True):
        out[str(fold)] = view_scores(part, imu_only_share)["test_like"]["score"]
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))
