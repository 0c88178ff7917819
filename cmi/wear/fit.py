"""Fitting the upside-down detector on training data (training side; numpy and polars).

1. The score (``cmi.wear.detect``): an L2 logistic model, no intercept, on the odd terms of
   normal wearers' features against the same rows half-turned. Because the terms are odd,
   the two classes mirror each other and the fit reduces to minimising
   sum(softplus(terms @ w)) + l2/2 |w|^2 (Newton's method, a handful of steps).
2. Who is a normal wearer: real training data holds upside-down subjects too (two of 81).
   They are taken from ``known_upside_down`` when given; otherwise found by self-training:
   fit on everyone, flag the subjects whose out-of-fold scores, all their sequences,
   lean upside down on average (clipped mean > 0), half-turn their features, refit, until
   the flagged set stops changing.
3. The decision rule (``threshold``, ``min_sequences``): out-of-fold scores (subjects split
   into folds, each fold scored by a model fitted on the others) replayed in random arrival
   orders. A normal subject's half-turned twin has exactly the negated scores, so one replay
   gives both classes. The rule minimises the share of answered sequences that get the
   wrong decision, weighting upside-down subjects by ``prior`` (their share among people,
   2/81 on the real training data) and normal ones by 1 - prior.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import polars as pl

from cmi.wear.detect import (
    FEATURE_NAMES,
    HALF_TURN_SIGNS,
    N_TERMS,
    WearModel,
    odd_terms,
    wear_features,
)

_THRESHOLD_STEPS = 40  # candidate thresholds: 0, clip/40, ..., 39 clip/40
_MIN_SEQUENCES = (1, 2, 3, 4, 5, 6, 8, 10)


@dataclass(frozen=True)
class WearFitParams:
    """How the detector is fitted; the defaults are the ones the bench reports."""

    score_clip: float = 4.0  # |per-sequence evidence| counted at most (log-odds)
    prior: float = 2 / 81  # share of upside-down subjects assumed when choosing the rule
    l2: float = 1.0
    n_folds: int = 5
    n_orders: int = 50  # random arrival orders replayed per subject
    max_rounds: int = 5  # self-training rounds
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.prior < 0.5:
            raise ValueError(f"WearFitParams.prior must be in (0, 0.5), got {self.prior}")
        if self.score_clip <= 0 or self.l2 <= 0:
            raise ValueError("WearFitParams.score_clip and l2 must be positive")
        if self.n_folds < 2 or self.n_orders < 1 or self.max_rounds < 1:
            raise ValueError("WearFitParams needs n_folds >= 2, n_orders >= 1, max_rounds >= 1")


@dataclass(frozen=True)
class WearFit:
    """A fitted detector and what the fit saw: ``sequences`` has one row per training
    sequence with ``sequence_id``, ``subject``, ``upside_down`` (the labels used) and
    ``oof_score`` (the out-of-fold score of the sequence as recorded)."""

    model: WearModel
    upside_down_subjects: tuple[str, ...]
    sequences: pl.DataFrame
    decision_error: float  # prior-weighted share of wrong decisions in the replay


def fit_coefficients(x_normal: np.ndarray, l2: float) -> np.ndarray:
    """Coefficients of the score from (n, 6) normal-wearer features (NaN rows skipped)."""
    terms = odd_terms(x_normal[np.isfinite(x_normal).all(axis=1)])
    if len(terms) == 0:
        raise ValueError("no sequence with usable IMU frames to fit the upside-down score on")
    w = np.zeros(N_TERMS)
    for _ in range(50):
        z = terms @ w
        p = 1.0 / (1.0 + np.exp(-z))
        gradient = terms.T @ p + l2 * w
        hessian = (terms * (p * (1 - p))[:, None]).T @ terms + l2 * np.eye(N_TERMS)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    # The fit pushes normal rows negative; the score is "evidence for upside down".
    return w


def _subject_folds(subjects: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    unique = np.unique(subjects)
    if len(unique) < 2:
        raise ValueError("fitting the upside-down detector needs at least 2 subjects")
    n_folds = min(n_folds, len(unique))
    perm = np.random.default_rng(seed).permutation(len(unique))
    fold_of_subject = np.empty(len(unique), np.int64)
    fold_of_subject[perm] = np.arange(len(unique)) % n_folds
    return fold_of_subject[np.searchsorted(unique, subjects)]


def out_of_fold_scores(x: np.ndarray, subjects: np.ndarray, params: WearFitParams) -> np.ndarray:
    """Score of each (normal-frame) feature row from a model fitted without its subject's
    fold."""
    folds = _subject_folds(subjects, params.n_folds, params.seed)
    scores = np.full(len(x), np.nan)
    for fold in np.unique(folds):
        held = folds == fold
        w = fit_coefficients(x[~held], params.l2)
        scores[held] = odd_terms(x[held]) @ w
    return scores


def replay_running_means(
    scores: np.ndarray, clip: float, n_orders: int, rng: np.random.Generator
) -> np.ndarray:
    """(n_orders, n) running mean of the clipped finite scores of one subject, in random
    arrival orders: entry [r, i] is what the subject looks like after i + 1 sequences."""
    values = np.clip(scores[np.isfinite(scores)], -clip, clip)
    if len(values) == 0:
        return np.zeros((n_orders, 0))
    orders = np.argsort(rng.random((n_orders, len(values))), axis=1)
    return np.cumsum(values[orders], axis=1) / np.arange(1, len(values) + 1)


def choose_decision_rule(
    scores_by_subject: list[np.ndarray], params: WearFitParams
) -> tuple[float, int, float]:
    """(threshold, min_sequences, weighted error) from normal wearers' out-of-fold scores."""
    rng = np.random.default_rng(params.seed)
    means, counts = [], []
    for scores in scores_by_subject:
        m = replay_running_means(scores, params.score_clip, params.n_orders, rng)
        means.append(m.ravel())
        counts.append(np.tile(np.arange(1, m.shape[1] + 1), params.n_orders))
    mean, count = np.concatenate(means), np.concatenate(counts)
    thresholds = params.score_clip * np.arange(_THRESHOLD_STEPS) / _THRESHOLD_STEPS
    errors = np.empty((len(_MIN_SEQUENCES), len(thresholds)))
    for i, min_sequences in enumerate(_MIN_SEQUENCES):
        ready = count >= min_sequences
        for j, threshold in enumerate(thresholds):
            false_flag = np.mean(ready & (mean > threshold))
            # The half-turned twin's running mean is exactly -mean.
            missed = 1.0 - np.mean(ready & (-mean > threshold))
            errors[i, j] = (1 - params.prior) * false_flag + params.prior * missed
    # Ties (common when the classes separate well, e.g. zero error): the minimum count with
    # the widest band of best thresholds (fewest sequences among equals), then the middle of
    # that band, which leaves the widest margin on both sides.
    best = errors <= errors.min() + 1e-12
    i = int(np.argmax(best.sum(axis=1)))
    tied = np.flatnonzero(best[i])
    j = int(tied[len(tied) // 2])
    return float(thresholds[j]), _MIN_SEQUENCES[i], float(errors[i, j])


def _normal_frame(x: np.ndarray, flagged: np.ndarray) -> np.ndarray:
    return np.where(flagged[:, None], x * HALF_TURN_SIGNS, x)


def _majority_upside_down(scores: np.ndarray, subjects: np.ndarray, clip: float) -> list[str]:
    """Subjects whose sequences, all of them, lean upside down on average. Relabelling uses
    this and not the fitted rule: with upside-down subjects still counted as normal, the
    rule is fitted on contaminated data and, weighted by a small prior, may never flag."""
    found = []
    for subject in np.unique(subjects):
        values = scores[(subjects == subject) & np.isfinite(scores)]
        if len(values) and np.clip(values, -clip, clip).mean() > 0:
            found.append(str(subject))
    return found


def _fit_with_labels(
    x: np.ndarray, subjects: np.ndarray, upside_down: set[str], params: WearFitParams
) -> tuple[WearModel, np.ndarray, float]:
    """Model, out-of-fold scores of the normal-frame rows, and the rule's replay error."""
    x_normal = _normal_frame(x, np.isin(subjects, list(upside_down)))
    oof = out_of_fold_scores(x_normal, subjects, params)
    threshold, min_sequences, error = choose_decision_rule(
        [oof[subjects == s] for s in np.unique(subjects)], params
    )
    coef = tuple(float(c) for c in fit_coefficients(x_normal, params.l2))
    return WearModel(coef, threshold, min_sequences, params.score_clip), oof, error


def fit_wear_model(
    frame_or_features: pl.DataFrame,
    params: WearFitParams | None = None,
    known_upside_down: Collection[str] | None = None,
) -> WearFit:
    """Fit the detector on training data: a raw sensor frame (IMU columns, ``sequence_id``,
    ``subject``, ``sequence_counter``) or the output of ``wear_features``. Without
    ``known_upside_down`` the upside-down training subjects are found by self-training."""
    params = params or WearFitParams()
    features = frame_or_features
    if not set(FEATURE_NAMES) <= set(features.columns):
        features = wear_features(frame_or_features)
    x = features.select(FEATURE_NAMES).to_numpy().astype(float)
    subjects = features["subject"].to_numpy().astype(str)
    upside_down = set(known_upside_down or ())
    model, oof, error = _fit_with_labels(x, subjects, upside_down, params)
    rounds = 0 if known_upside_down is not None else params.max_rounds
    for _ in range(rounds):
        recorded = np.where(np.isin(subjects, list(upside_down)), -oof, oof)
        found = set(_majority_upside_down(recorded, subjects, params.score_clip))
        if found == upside_down:
            break
        upside_down = found
        model, oof, error = _fit_with_labels(x, subjects, upside_down, params)
    flagged = np.isin(subjects, list(upside_down))
    # The out-of-fold score of each sequence as recorded (upside-down ones score positive).
    sequences = features.select("sequence_id", "subject").with_columns(
        pl.Series("upside_down", flagged), pl.Series("oof_score", np.where(flagged, -oof, oof))
    )
    return WearFit(model, tuple(sorted(upside_down)), sequences, error)
