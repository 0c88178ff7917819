"""Training one fold: honest early stopping on an inner fold, refit, both views predicted.

Selection never sees the scored fold. For scored fold ``k`` of ``K``:
1. the *inner* fold is ``(k + 1) % K`` (whole subjects, like every fold): a model trains on
   the other ``K - 2`` folds and early-stops on the inner fold, whose rows count in both views
   (as recorded, and with thm/ToF nulled), weighted like ``test_like``
   (``eval.imu_only_share``);
2. with ``lgbm.refit_full`` (the default) a second model trains on all ``K - 1`` training folds
   (the inner one included) for the number of rounds step 1 chose; without it the step-1 model
   is shipped. With ``lgbm.early_stopping_rounds: 0`` there is no selection at all: one model
   trains on the ``K - 1`` folds for ``n_estimators`` rounds.
Fold ``k``'s rows, labels included, are used only to predict them, so its model does not
change when they do (a test shuffles them and compares the model files byte for byte).
Every scored row is predicted twice: as recorded and in its IMU-only view.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np

from cmi.evaluation import view_weights
from cmi.lgbm.data import TrainingSet, imu_only_view
from cmi.params import LgbmParams
from cmi.schema import N_CLASSES

log = logging.getLogger(__name__)

INNER_VALID_NAME = "inner"


@dataclass(frozen=True)
class FoldResult:
    fold: int
    model_text: str  # the shipped LightGBM text model
    best_iteration: int  # boosting rounds of the shipped model
    # (n_valid, 18) each, rows in TrainingSet.valid_rows(fold) order: features as recorded,
    # and with every thm/tof feature null (the IMU-only view).
    proba_recorded: np.ndarray
    proba_imu_only: np.ndarray
    # Inner-fold multi_logloss (both views, weighted) per round; empty without early stopping.
    inner_logloss: tuple[float, ...] = ()
    reused: bool = False


def modality_dropout(
    x: np.ndarray,
    sensor_group: np.ndarray,
    modality_columns: np.ndarray,
    share: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """A copy of ``x`` where ``share`` of the full-sensor rows have their thm/tof features NaN.

    This teaches the model the IMU-only case (half the hidden test) from full-sensor data.
    Returns the new matrix and the blanked row indices.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"lgbm.modality_dropout must be in [0, 1], got {share}")
    x = x.copy()
    full_rows = np.flatnonzero(sensor_group == "full")
    n_drop = round(share * len(full_rows))
    if n_drop == 0 or not modality_columns.any():
        return x, np.array([], dtype=np.int64)
    dropped = np.sort(rng.choice(full_rows, size=n_drop, replace=False))
    x[np.ix_(dropped, np.flatnonzero(modality_columns))] = np.nan
    return x, dropped


def booster_params(params: LgbmParams) -> dict[str, Any]:
    """LightGBM parameters; deterministic for a given seed and thread count."""
    return {
        "objective": "multiclass",
        "num_class": N_CLASSES,
        "metric": "multi_logloss",
        "learning_rate": params.learning_rate,
        "num_leaves": params.num_leaves,
        "min_child_samples": params.min_child_samples,
        "feature_fraction": params.feature_fraction,
        "bagging_fraction": params.bagging_fraction,
        "bagging_freq": params.bagging_freq,
        "lambda_l2": params.lambda_l2,
        "num_threads": params.n_jobs,
        "seed": params.seed,
        "deterministic": True,
        "force_col_wise": True,
        "verbosity": -1,
    }


def lightgbm_feature_names(feature_names: Sequence[str]) -> list[str]:
    """Names LightGBM accepts (no JSON special characters or spaces), for the model file only."""
    cleaned = [re.sub(r"[^0-9A-Za-z_.\-]", "_", name) for name in feature_names]
    if len(set(cleaned)) != len(cleaned):
        raise ValueError("sequence_features.parquet: feature names collide after cleaning")
    return cleaned


def predict_proba(booster: lgb.Booster, x: np.ndarray) -> np.ndarray:
    """(n, 18) probabilities in GESTURES order, rows summing to 1."""
    proba = np.asarray(booster.predict(x), dtype=np.float64).reshape(len(x), N_CLASSES)
    return proba / proba.sum(axis=1, keepdims=True)


def inner_fold(fold: int, n_folds: int) -> int:
    """The training fold that early-stops the model scored on ``fold``."""
    if n_folds < 3:
        raise ValueError(
            f"params.yaml: lgbm early stopping needs cv.n_splits >= 3 (got {n_folds}): one "
            "fold is scored, one picks the rounds, the rest train; or set "
            "lgbm.early_stopping_rounds: 0 for a fixed number of rounds"
        )
    return (fold + 1) % n_folds


def both_views(
    data: TrainingSet, rows: np.ndarray, imu_only_share: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``rows`` as recorded plus the IMU-only view of their full-sensor rows: x, y and weights
    (mean 1) that give each view its share, as ``test_like`` does."""
    full = rows[data.sensor_group[rows] == "full"]
    x = np.vstack([data.x[rows], imu_only_view(data.x[full], data.modality_columns)])
    y = np.concatenate([data.y[rows], data.y[full]])
    views = np.concatenate(
        [
            np.where(data.sensor_group[rows] == "full", "full", "imu_only"),
            np.full(len(full), "imu_only"),
        ]
    )
    return x, y, view_weights(views, imu_only_share) * len(views)


def _train(
    data: TrainingSet,
    rows: np.ndarray,
    params: LgbmParams,
    rounds: int,
    rng: np.random.Generator,
    inner: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[lgb.Booster, list[float], int]:
    """A booster on ``rows`` (with modality dropout), early-stopped on ``inner`` if given.
    Returns it, the inner logloss curve and the number of rows blanked by dropout."""
    x_train, dropped = modality_dropout(
        data.x[rows], data.sensor_group[rows], data.modality_columns, params.modality_dropout, rng
    )
    names = lightgbm_feature_names(data.feature_names)
    train_set = lgb.Dataset(x_train, label=data.y[rows], feature_name=names)
    callbacks = [lgb.log_evaluation(period=0)]
    valid_sets, valid_names, curves = [], [], {}
    if inner is not None:
        x_inner, y_inner, w_inner = inner
        valid_sets = [lgb.Dataset(x_inner, label=y_inner, weight=w_inner, reference=train_set)]
        valid_names = [INNER_VALID_NAME]
        callbacks += [
            lgb.early_stopping(params.early_stopping_rounds, first_metric_only=True, verbose=False),
            lgb.record_evaluation(curves),
        ]
    booster = lgb.train(
        booster_params(params),
        train_set,
        num_boost_round=rounds,
        valid_sets=valid_sets,
        valid_names=valid_names,
        callbacks=callbacks,
    )
    curve = [float(v) for v in curves.get(INNER_VALID_NAME, {}).get("multi_logloss", [])]
    return booster, curve, len(dropped)


def train_fold(
    data: TrainingSet, fold: int, params: LgbmParams, imu_only_share: float = 0.5
) -> FoldResult:
    """The model scored on ``fold`` (selection as in the module docstring) and its predictions
    of ``fold`` in both views."""
    train_rows, valid_rows = data.train_rows(fold), data.valid_rows(fold)
    if params.early_stopping_rounds > 0:
        inner = inner_fold(fold, data.n_folds)
        inner_rows = data.valid_rows(inner)
        fit_rows = train_rows[data.fold[train_rows] != inner]
        booster, curve, n_dropped = _train(
            data,
            fit_rows,
            params,
            params.n_estimators,
            np.random.default_rng([params.seed, fold]),
            inner=both_views(data, inner_rows, imu_only_share),
        )
        rounds = booster.best_iteration or booster.current_iteration()
        model_text = booster.model_to_string(num_iteration=rounds)
        log.info(
            "fold %d: inner fold %d chose %d rounds (%d rows trained, %d with thm/tof blanked)",
            fold,
            inner,
            rounds,
            len(fit_rows),
            n_dropped,
        )
        if params.refit_full:
            booster, _, n_dropped = _train(
                data, train_rows, params, rounds, np.random.default_rng([params.seed, fold, 1])
            )
            model_text = booster.model_to_string()
            log.info("fold %d: refit on %d rows for %d rounds", fold, len(train_rows), rounds)
    else:
        rounds, curve = params.n_estimators, []
        booster, _, n_dropped = _train(
            data, train_rows, params, rounds, np.random.default_rng([params.seed, fold])
        )
        model_text = booster.model_to_string()
    # Predict with the model as shipped (parsed back from text), so OOF = what inference gives.
    shipped = lgb.Booster(model_str=model_text)
    x_valid = data.x[valid_rows]
    return FoldResult(
        fold=fold,
        model_text=model_text,
        best_iteration=int(rounds),
        proba_recorded=predict_proba(shipped, x_valid),
        proba_imu_only=predict_proba(shipped, imu_only_view(x_valid, data.modality_columns)),
        inner_logloss=tuple(curve),
    )
