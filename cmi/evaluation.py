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

from collections.abc import Sequence

import numpy as np
import polars as pl

from cmi.metrics import competition_scores, proba_matrix
from cmi.schema import N_CLASSES, PROBA_COLUMNS

VIEWS: tuple[str, ...] = ("full", "imu_only")
OOF_KEY: tuple[str, ...] = ("sequence_id", "view")
OOF_COLUMNS: tuple[str, ...] = ("sequence_id", "fold", "y_true", "sensor_group", "view")


def view_oof_frame(
    sequence_ids: Sequence[str] | pl.Series,
    fold: int | Sequence[int] | np.ndarray | pl.Series,
    y_true: Sequence[int] | np.ndarray | pl.Series,
    sensor_group: Sequence[str] | np.ndarray | pl.Series,
    view: str | Sequence[str] | np.ndarray | pl.Series,
    proba: np.ndarray,
) -> pl.DataFrame:
    """OOF rows in the contract's columns and types (``OOF_COLUMNS``, then p00..p17 as
    float64), one per sequence_id, in the order given. ``fold`` and ``view`` are one value for
    every row or one per row; ``proba`` is (n, 18) in schema.GESTURES order. Every writer of
    an OOF table builds it here; sort by ``OOF_KEY`` (``concat_oof``) and ``check_oof`` it."""
    n = len(sequence_ids)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.size != n * N_CLASSES:
        raise ValueError(
            f"OOF: {proba.shape} probabilities for {n} sequences (expected ({n}, {N_CLASSES}))"
        )
    proba = proba.reshape(n, N_CLASSES)
    if isinstance(fold, int | np.integer):
        fold = np.full(n, fold)
    if isinstance(view, str):
        view = [view] * n
    return pl.DataFrame(
        [
            pl.Series("sequence_id", sequence_ids, dtype=pl.String),
            pl.Series("fold", fold, dtype=pl.Int32),
            pl.Series("y_true", y_true, dtype=pl.Int32),
            pl.Series("sensor_group", sensor_group, dtype=pl.String),
            pl.Series("view", view, dtype=pl.String),
            *(pl.Series(c, proba[:, i], dtype=pl.Float64) for i, c in enumerate(PROBA_COLUMNS)),
        ]
    )


def concat_oof(parts: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """OOF parts (``view_oof_frame``) as one table sorted by (sequence_id, view)."""
    return pl.concat(parts).sort(*OOF_KEY)


def check_oof(oof: pl.DataFrame, name: str = "OOF") -> None:
    """Raise ValueError (naming ``name``, the column and a sequence) unless ``oof`` keeps the
    contract: its columns, known views, one row per (sequence_id, view), both views for a
    full-sensor sequence, only ``imu_only`` for a natively IMU-only one, one fold / label /
    sensor group per sequence, finite probabilities."""
    missing = [c for c in (*OOF_COLUMNS, *PROBA_COLUMNS) if c not in oof.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {missing[:6]}")

    def first(condition: pl.Expr, what: str) -> None:
        bad = oof.filter(condition)
        if bad.height:
            row = bad.row(0, named=True)
            raise ValueError(
                f"{name}: {what} (sequence {row['sequence_id']!r}, view {row['view']!r})"
            )

    first(~pl.col("view").is_in(VIEWS) | pl.col("view").is_null(), f"column view not in {VIEWS}")
    groups = ~pl.col("sensor_group").is_in(VIEWS) | pl.col("sensor_group").is_null()
    first(groups, f"column sensor_group not in {VIEWS}")
    first(pl.struct(OOF_KEY).is_duplicated(), "duplicate (sequence_id, view) row")
    per_sequence = pl.len().over("sequence_id")
    first(
        (pl.col("sensor_group") == "imu_only") & (pl.col("view") == "full"),
        "a natively IMU-only sequence has a 'full' view row",
    )
    first(
        (pl.col("sensor_group") == "full") & (per_sequence != len(VIEWS)),
        "a full-sensor sequence lacks one of its two views",
    )
    for column in ("fold", "y_true", "sensor_group"):
        first(pl.col(column).n_unique().over("sequence_id") > 1, f"column {column} differs by view")
    finite = np.isfinite(proba_matrix(oof)).all(axis=1)
    if not finite.all():
        row = oof.row(int(np.argmin(finite)), named=True)
        raise ValueError(
            f"{name}: non-finite probability (sequence {row['sequence_id']!r}, "
            f"view {row['view']!r})"
        )


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
        raise ValueError(f"OOF: unknown view {str(views[unknown][0])!r} (expected one of {VIEWS})")
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
    weights = view_weights(views, imu_only_share)
    # Rows of a view given no weight (share 0 or 1) leave the pool: their labels would
    # otherwise still enter the macro average (as scikit-learn counts zero-weight labels).
    pooled = weights > 0
    out["test_like"] = _scored(truth[pooled], pred[pooled], weights[pooled])
    return out


def per_fold_test_like(oof: pl.DataFrame, imu_only_share: float) -> dict[str, float]:
    """test_like score of each fold on its own (spread across folds)."""
    out = {}
    for (fold,), part in oof.group_by(["fold"], maintain_order=True):
        out[str(fold)] = view_scores(part, imu_only_share)["test_like"]["score"]
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))
