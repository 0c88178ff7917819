"""Body orientation (seated, leaning, lying on back or side) estimated from IMU features.

Post-processing needs, per sequence, a probability for each of the protocol's 51 (gesture,
orientation) pairs; this small LightGBM classifier gives the orientation half. Orientation is
a training-only column of train.csv: here it is the *target*, never a feature of any model.

Only IMU sequence features are used (``cmi.features.is_modality_channel`` marks the thm/ToF
ones), so a sequence gets the same estimate in its recorded and its IMU-only view. One model
per CV fold, on the same folds as the gesture models and with the same honest rule: fold k's
model trains on the folds other than k and ``(k + 1) % K``, early-stops on ``(k + 1) % K``,
and is scored on fold k, which it never sees.

Inference does not import this module: the bundle ships the fold models and their feature
names, and ``cmi.subjects`` predicts with them the way ``predict_orientation_proba`` does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl

from cmi.features import is_modality_channel
from cmi.io import write_json, write_parquet
from cmi.lgbm.data import FEATURES_FILE
from cmi.lgbm.outputs import write_fold_models
from cmi.params import OrientationParams, section_dict
from cmi.paths import ProjectPaths
from cmi.protocol import ORIENTATION_COLUMNS
from cmi.schema import ORIENTATIONS
from cmi.sequences import (
    SEQUENCES_FILE,
    labeled_folds,
    read_tables,
    require_columns,
    require_ids_in,
    require_unique_ids,
)

log = logging.getLogger(__name__)

N_ORIENTATIONS = len(ORIENTATIONS)
ORIENTATION_INDEX: dict[str, int] = {o: i for i, o in enumerate(ORIENTATIONS)}


def orientation_feature_names(feature_names: Sequence[str]) -> list[str]:
    """The IMU (and length / demographic) features: the same for both views of a sequence."""
    return [name for name in feature_names if not is_modality_channel(name)]


@dataclass(frozen=True)
class OrientationSet:
    """IMU features, orientation labels and folds, rows sorted by sequence_id."""

    sequence_ids: list[str]
    x: np.ndarray  # (n, n_features) float32, NaN = missing
    feature_names: list[str]
    y: np.ndarray  # (n,) int32 index into ORIENTATIONS
    fold: np.ndarray  # (n,) int32

    @property
    def n_folds(self) -> int:
        return int(self.fold.max()) + 1


@dataclass(frozen=True)
class OrientationFold:
    fold: int
    model_text: str  # LightGBM text model cut at the best iteration
    best_iteration: int
    valid_proba: np.ndarray  # (n_fold_rows, 4), rows in sequence_id order


def _orientation_index(labeled: pl.DataFrame) -> pl.Series:
    """The ``orientation`` column of ``labeled`` as int32 indices into ORIENTATIONS."""
    bad = labeled.filter(
        pl.col("orientation").is_null() | ~pl.col("orientation").is_in(list(ORIENTATIONS))
    )
    if bad.height:
        raise ValueError(
            f"{SEQUENCES_FILE}: column orientation null or not one of schema.ORIENTATIONS for "
            f"sequence(s) {bad['sequence_id'].head(3).to_list()} "
            f"(e.g. {bad['orientation'][0]!r}); rerun the extract stage"
        )
    return labeled["orientation"].replace_strict(ORIENTATION_INDEX, return_dtype=pl.Int32)


def build_orientation_set(
    sequences: pl.DataFrame, sequence_features: pl.DataFrame, folds: pl.DataFrame
) -> OrientationSet:
    """Join extract and folds outputs: labels and folds as ``cmi.sequences.labeled_folds``
    checks them (plus a valid orientation), one feature row for each of those sequences."""
    labeled = labeled_folds(sequences, folds, ["orientation"])
    labeled = labeled.with_columns(_orientation_index(labeled).alias("y"))
    require_columns(sequence_features, ["sequence_id"], FEATURES_FILE)
    require_unique_ids(sequence_features, FEATURES_FILE)
    names = orientation_feature_names([c for c in sequence_features.columns if c != "sequence_id"])
    if not names:
        raise ValueError(f"{FEATURES_FILE}: no IMU feature columns")
    ids = sequence_features["sequence_id"]
    require_ids_in(ids, labeled["sequence_id"], FEATURES_FILE, SEQUENCES_FILE)
    require_ids_in(labeled["sequence_id"], ids, SEQUENCES_FILE, FEATURES_FILE)
    table = (
        sequence_features.select("sequence_id", *names)
        .join(labeled.select("sequence_id", "y", "fold"), on="sequence_id")
        .sort("sequence_id")
    )
    return OrientationSet(
        sequence_ids=table["sequence_id"].to_list(),
        x=table.select(pl.col(names).cast(pl.Float32)).to_numpy(),
        feature_names=names,
        y=table["y"].to_numpy().astype(np.int32),
        fold=table["fold"].to_numpy().astype(np.int32),
    )


def read_orientation_set(paths: ProjectPaths, n_splits: int) -> OrientationSet:
    """The checked orientation set of a project; ValueError unless its folds are ``n_splits``."""
    files = [paths.sequences, paths.sequence_features, paths.folds]
    data = build_orientation_set(*read_tables(files))
    if data.n_folds != n_splits:
        raise ValueError(
            f"{paths.folds}: {data.n_folds} folds but cv.n_splits={n_splits}; rerun the folds stage"
        )
    return data


def inner_fold(fold: int, n_folds: int) -> int:
    """The fold fold ``fold``'s model early-stops on (never the fold it is scored on)."""
    return (fold + 1) % n_folds


def booster_params(params: OrientationParams) -> dict[str, Any]:
    return {
        "objective": "multiclass",
        "num_class": N_ORIENTATIONS,
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


def predict_orientation_proba(models: Sequence[lgb.Booster], x: np.ndarray) -> np.ndarray:
    """(n, 4) orientation probabilities in ORIENTATIONS order: the mean of ``models``
    (the fold models at inference, one model for OOF), rows summing to 1."""
    if not models:
        raise ValueError("no orientation models")
    x = np.atleast_2d(np.asarray(x, dtype=np.float32))
    total = np.zeros((len(x), N_ORIENTATIONS))
    for booster in models:
        total += np.asarray(booster.predict(x), dtype=np.float64).reshape(len(x), N_ORIENTATIONS)
    return total / total.sum(axis=1, keepdims=True)


def train_orientation_fold(
    data: OrientationSet, fold: int, params: OrientationParams
) -> OrientationFold:
    """Train on the folds other than ``fold`` and its inner fold; early-stop on the inner
    fold; predict ``fold``."""
    if data.n_folds < 3:
        raise ValueError(
            f"orientation needs cv.n_splits >= 3 (train, stop, score), got {data.n_folds}"
        )
    stop = inner_fold(fold, data.n_folds)
    train_rows = np.flatnonzero((data.fold != fold) & (data.fold != stop))
    stop_rows = np.flatnonzero(data.fold == stop)
    valid_rows = np.flatnonzero(data.fold == fold)
    train_set = lgb.Dataset(data.x[train_rows], label=data.y[train_rows])
    stop_set = lgb.Dataset(data.x[stop_rows], label=data.y[stop_rows], reference=train_set)
    callbacks = [lgb.log_evaluation(period=0)]
    if params.early_stopping_rounds > 0:
        callbacks.append(lgb.early_stopping(params.early_stopping_rounds, verbose=False))
    booster = lgb.train(
        booster_params(params),
        train_set,
        num_boost_round=params.n_estimators,
        valid_sets=[stop_set],
        valid_names=["inner"],
        callbacks=callbacks,
    )
    best_iteration = int(booster.best_iteration or booster.current_iteration())
    model_text = booster.model_to_string(num_iteration=best_iteration)
    if params.refit_full:
        # The stop fold chose the number of rounds; now every training subject can teach.
        fit_rows = np.concatenate([train_rows, stop_rows])
        refit = lgb.train(
            booster_params(params),
            lgb.Dataset(data.x[fit_rows], label=data.y[fit_rows]),
            num_boost_round=best_iteration,
        )
        model_text = refit.model_to_string()
    # Predict with the model as shipped (parsed back from text): OOF = what inference gives.
    valid_proba = predict_orientation_proba([lgb.Booster(model_str=model_text)], data.x[valid_rows])
    log.info(
        "orientation fold %d: %d train, %d stop (fold %d), %d scored, best iteration %d",
        fold,
        len(train_rows),
        len(stop_rows),
        stop,
        len(valid_rows),
        best_iteration,
    )
    return OrientationFold(fold, model_text, best_iteration, valid_proba)


def run_orientation_cv(data: OrientationSet, params: OrientationParams) -> list[OrientationFold]:
    return [train_orientation_fold(data, fold, params) for fold in range(data.n_folds)]


def orientation_oof_frame(data: OrientationSet, results: Sequence[OrientationFold]) -> pl.DataFrame:
    """data/oof/orientation.parquet: sequence_id, fold, o0..o3 (ORIENTATIONS order)."""
    proba = np.full((len(data.sequence_ids), N_ORIENTATIONS), np.nan)
    for result in results:
        proba[data.fold == result.fold] = result.valid_proba
    if np.isnan(proba).any():
        raise ValueError("orientation: out-of-fold probabilities missing for some sequences")
    return pl.DataFrame(
        {
            "sequence_id": pl.Series(data.sequence_ids, dtype=pl.String),
            "fold": pl.Series(data.fold, dtype=pl.Int32),
            **{c: pl.Series(proba[:, i]) for i, c in enumerate(ORIENTATION_COLUMNS)},
        }
    )


def _accuracy_and_log_loss(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    picked = np.clip(proba[np.arange(len(y)), y], 1e-15, 1.0)
    return {
        "accuracy": float((proba.argmax(axis=1) == y).mean()),
        "log_loss": float(-np.log(picked).mean()),
    }


def orientation_metrics(data: OrientationSet, oof: pl.DataFrame) -> dict:
    """metrics/orientation.json: accuracy and log loss overall and per fold, with the
    majority-class accuracy and the uniform log loss (ln 4) as baselines."""
    proba = oof.select(ORIENTATION_COLUMNS).to_numpy()
    out: dict[str, Any] = _accuracy_and_log_loss(data.y, proba)
    out["n_sequences"] = len(data.y)
    out["majority_accuracy"] = float(
        np.bincount(data.y, minlength=N_ORIENTATIONS).max() / len(data.y)
    )
    out["uniform_log_loss"] = float(np.log(N_ORIENTATIONS))
    out["per_fold"] = {
        str(k): _accuracy_and_log_loss(data.y[data.fold == k], proba[data.fold == k])
        for k in range(data.n_folds)
    }
    return out


def orientation_meta(
    data: OrientationSet, results: Sequence[OrientationFold], params: OrientationParams
) -> dict:
    """models/orientation/meta.json: what inference needs to use the fold models (the model
    files carry no feature names; columns are ``feature_names`` in this order)."""
    return {
        "n_folds": len(results),
        "feature_names": list(data.feature_names),
        "classes": list(ORIENTATIONS),
        "best_iterations": [r.best_iteration for r in results],
        "lightgbm_version": lgb.__version__,
        "params": section_dict(params),
    }


def write_orientation_outputs(
    paths: ProjectPaths,
    data: OrientationSet,
    results: Sequence[OrientationFold],
    params: OrientationParams,
    started: float,
) -> dict:
    """Write models/orientation/{fold_k.txt, meta.json}, data/oof/orientation.parquet and
    metrics/orientation.json (its ``wall_time_s`` counted from ``started``, a
    ``time.perf_counter()`` reading); return the metrics."""
    write_fold_models(paths.orientation_dir, {r.fold: r.model_text for r in results})
    write_json(orientation_meta(data, results, params), paths.orientation_dir / "meta.json")
    oof = orientation_oof_frame(data, results)
    write_parquet(oof, paths.oof("orientation"))
    metrics = orientation_metrics(data, oof)
    metrics["best_iterations"] = [r.best_iteration for r in results]
    metrics["wall_time_s"] = round(time.perf_counter() - started, 2)
    write_json(metrics, paths.metrics("orientation"))
    return metrics
