"""LightGBM on per-sequence features: one multiclass model per CV fold, out-of-fold probabilities.

Every model is trained with ``num_class=18``, so its probability columns are always the global
class order of ``cmi.schema.GESTURES``, even when a fold's training part lacks a class.
Finished folds are checkpointed (``cmi.checkpoint``), so a killed run resumes per fold and gives
the same out-of-fold table as an uninterrupted one.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl
from tqdm.auto import tqdm

from cmi.checkpoint import CheckpointError, CheckpointStore, write_text_file
from cmi.features import is_modality_channel
from cmi.io import sha256_file
from cmi.metrics import competition_score
from cmi.params import LgbmParams, Params, section_dict
from cmi.schema import GESTURES, N_CLASSES, PROBA_COLUMNS

log = logging.getLogger(__name__)

SENSOR_GROUPS = ("full", "imu_only")
CHECKPOINT_FORMAT = "lgbm-fold-v1"


def is_modality_feature(name: str) -> bool:
    """thm/tof features: null for IMU-only sequences, blanked by modality dropout."""
    return is_modality_channel(name)


@dataclass(frozen=True)
class TrainingSet:
    """Features, labels and folds of every sequence, rows sorted by sequence_id."""

    sequence_ids: list[str]
    x: np.ndarray  # (n, n_features) float32, NaN = missing
    feature_names: list[str]
    y: np.ndarray  # (n,) int32 class index into GESTURES
    fold: np.ndarray  # (n,) int32
    sensor_group: np.ndarray  # (n,) str

    @property
    def n_folds(self) -> int:
        return int(self.fold.max()) + 1

    def valid_rows(self, fold: int) -> np.ndarray:
        return np.flatnonzero(self.fold == fold)

    def train_rows(self, fold: int) -> np.ndarray:
        return np.flatnonzero(self.fold != fold)


@dataclass(frozen=True)
class FoldResult:
    fold: int
    model_text: str  # LightGBM text model cut at the best iteration
    best_iteration: int
    valid_proba: np.ndarray  # (n_valid, 18), rows in TrainingSet.valid_rows(fold) order
    reused: bool = False


# ---------------------------------------------------------------- inputs


def _require_columns(frame: pl.DataFrame, columns: Sequence[str], file_name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{file_name}: missing column(s) {missing}")


def _require_unique_ids(frame: pl.DataFrame, file_name: str) -> None:
    duplicated = frame.filter(pl.col("sequence_id").is_duplicated())["sequence_id"]
    if duplicated.len():
        raise ValueError(
            f"{file_name}: duplicate sequence_id {duplicated.unique().head(3).to_list()}"
        )


def _require_same_ids(ids: pl.Series, other: pl.Series, file_name: str, other_name: str) -> None:
    missing = ids.filter(~ids.is_in(other.implode()))
    if missing.len():
        raise ValueError(
            f"{other_name}: no row for {missing.len()} sequence(s) of {file_name}, "
            f"e.g. {missing.head(3).to_list()}"
        )


def build_training_set(
    sequences: pl.DataFrame, sequence_features: pl.DataFrame, folds: pl.DataFrame
) -> TrainingSet:
    """Join the extract and folds outputs (contract format) into one checked training set."""
    _require_columns(sequences, ["sequence_id", "label", "sensor_group"], "sequences.parquet")
    _require_columns(sequence_features, ["sequence_id"], "sequence_features.parquet")
    _require_columns(folds, ["sequence_id", "fold"], "folds.parquet")
    for frame, name in (
        (sequences, "sequences.parquet"),
        (sequence_features, "sequence_features.parquet"),
        (folds, "folds.parquet"),
    ):
        _require_unique_ids(frame, name)
    feature_names = [c for c in sequence_features.columns if c != "sequence_id"]
    if not feature_names:
        raise ValueError("sequence_features.parquet: no feature columns")
    schema = sequence_features.schema  # built once: it is rebuilt on every .schema access
    not_numeric = [c for c in feature_names if not schema[c].is_numeric()]
    if not_numeric:
        raise ValueError(f"sequence_features.parquet: non-numeric feature column(s) {not_numeric}")
    ids = sequence_features["sequence_id"]
    _require_same_ids(
        ids, sequences["sequence_id"], "sequence_features.parquet", "sequences.parquet"
    )
    _require_same_ids(
        sequences["sequence_id"], ids, "sequences.parquet", "sequence_features.parquet"
    )
    _require_same_ids(ids, folds["sequence_id"], "sequence_features.parquet", "folds.parquet")

    table = (
        sequence_features.join(
            sequences.select("sequence_id", "label", "sensor_group"), on="sequence_id"
        )
        .join(folds.select("sequence_id", "fold"), on="sequence_id")
        .sort("sequence_id")
    )
    _check_values(table)
    return TrainingSet(
        sequence_ids=table["sequence_id"].to_list(),
        x=table.select(pl.col(feature_names).cast(pl.Float32)).to_numpy(),
        feature_names=feature_names,
        y=table["label"].to_numpy().astype(np.int32),
        fold=table["fold"].to_numpy().astype(np.int32),
        sensor_group=table["sensor_group"].to_numpy().astype(str),
    )


def _check_values(table: pl.DataFrame) -> None:
    def first_bad(condition: pl.Expr) -> list[str]:
        return table.filter(condition)["sequence_id"].head(3).to_list()

    bad = first_bad(pl.col("label").is_null() | ~pl.col("label").is_between(0, N_CLASSES - 1))
    if bad:
        raise ValueError(f"sequences.parquet: column label null or outside 0..17 for {bad}")
    bad = first_bad(~pl.col("sensor_group").is_in(SENSOR_GROUPS) | pl.col("sensor_group").is_null())
    if bad:
        raise ValueError(f"sequences.parquet: column sensor_group not in {SENSOR_GROUPS} for {bad}")
    bad = first_bad(pl.col("fold").is_null() | (pl.col("fold") < 0))
    if bad:
        raise ValueError(f"folds.parquet: column fold null or negative for {bad}")
    present = set(table["fold"].unique().to_list())
    expected = set(range(max(present) + 1))
    if present != expected:
        raise ValueError(f"folds.parquet: folds {sorted(present)} are not 0..{max(present)}")


# ---------------------------------------------------------------- training


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


def train_fold(data: TrainingSet, fold: int, params: LgbmParams) -> FoldResult:
    """Train on every fold but ``fold`` (with modality dropout), early-stop on ``fold``."""
    train_rows, valid_rows = data.train_rows(fold), data.valid_rows(fold)
    rng = np.random.default_rng([params.seed, fold])
    modality_columns = np.array([is_modality_feature(n) for n in data.feature_names], dtype=bool)
    x_train, dropped = modality_dropout(
        data.x[train_rows],
        data.sensor_group[train_rows],
        modality_columns,
        params.modality_dropout,
        rng,
    )
    names = lightgbm_feature_names(data.feature_names)
    train_set = lgb.Dataset(x_train, label=data.y[train_rows], feature_name=names)
    valid_set = lgb.Dataset(data.x[valid_rows], label=data.y[valid_rows], reference=train_set)
    callbacks = [lgb.log_evaluation(period=0)]
    if params.early_stopping_rounds > 0:
        callbacks.append(
            lgb.early_stopping(params.early_stopping_rounds, first_metric_only=True, verbose=False)
        )
    booster = lgb.train(
        booster_params(params),
        train_set,
        num_boost_round=params.n_estimators,
        valid_sets=[valid_set],
        valid_names=["valid"],
        callbacks=callbacks,
    )
    best_iteration = booster.best_iteration or booster.current_iteration()
    model_text = booster.model_to_string(num_iteration=best_iteration)
    # Predict with the model as shipped (parsed back from text), so OOF = what inference gives.
    valid_proba = predict_proba(lgb.Booster(model_str=model_text), data.x[valid_rows])
    log.info(
        "fold %d: %d train (%d with thm/tof blanked), %d valid, best iteration %d",
        fold,
        len(train_rows),
        len(dropped),
        len(valid_rows),
        best_iteration,
    )
    return FoldResult(fold, model_text, int(best_iteration), valid_proba)


# ---------------------------------------------------------------- checkpoints


def fingerprint_params(params: Params) -> dict[str, Any]:
    """The params a fold's result depends on (the stage's ``cv`` and ``lgbm`` keys)."""
    return {"lgbm": section_dict(params.lgbm), "cv": section_dict(params.cv)}


def checkpoint_store(base: Path, input_files: Sequence[Path], params: Params) -> CheckpointStore:
    """Fold checkpoints keyed by inputs, params, this module's code and LightGBM's version."""
    salt = f"{CHECKPOINT_FORMAT}/lightgbm-{lgb.__version__}/code-{sha256_file(Path(__file__))}"
    return CheckpointStore.for_inputs(base, input_files, fingerprint_params(params), salt)


def _fold_unit(fold: int) -> str:
    return f"fold_{fold}"


def save_fold(store: CheckpointStore, data: TrainingSet, result: FoldResult) -> Path:
    valid_ids = [data.sequence_ids[i] for i in data.valid_rows(result.fold)]
    proba = _proba_frame(valid_ids, result.valid_proba)
    return store.save(
        _fold_unit(result.fold),
        {
            "model.txt": write_text_file(result.model_text),
            "valid_proba.parquet": lambda tmp: proba.write_parquet(tmp),
        },
        meta={"fold": result.fold, "best_iteration": result.best_iteration},
    )


def load_fold(store: CheckpointStore, data: TrainingSet, fold: int) -> FoldResult:
    """A finished fold from its checkpoint; CheckpointError if it is unusable."""
    unit = store.load(_fold_unit(fold))
    try:
        model_text = unit.file("model.txt").read_text(encoding="utf-8")
        lgb.Booster(model_str=model_text)  # parses, or the checkpoint is no good
        proba = pl.read_parquet(unit.file("valid_proba.parquet"))
        best_iteration = int(unit.meta["best_iteration"])
    except Exception as err:  # any read/parse failure means "retrain this fold"
        raise CheckpointError(f"{unit.path}: unreadable ({type(err).__name__}: {err})") from err
    expected_ids = [data.sequence_ids[i] for i in data.valid_rows(fold)]
    if proba.columns != ["sequence_id", *PROBA_COLUMNS] or proba["sequence_id"].to_list() != (
        expected_ids
    ):
        raise CheckpointError(f"{unit.path}: validation rows do not match this fold")
    valid_proba = proba.select(PROBA_COLUMNS).to_numpy().astype(np.float64)
    return FoldResult(fold, model_text, best_iteration, valid_proba, reused=True)


# ---------------------------------------------------------------- cross-validation


def run_cv(
    data: TrainingSet,
    params: LgbmParams,
    store: CheckpointStore | None = None,
    on_fold_start: Callable[[int], None] | None = None,
) -> list[FoldResult]:
    """Train (or reuse from ``store``) one model per fold, in fold order."""
    results = []
    # A bar only on a terminal (disable=None): logs and tests see just the fold lines.
    for fold in tqdm(range(data.n_folds), desc="lgbm folds", unit="fold", disable=None):
        unit = _fold_unit(fold)
        result = None
        if store is not None and store.is_done(unit):
            try:
                result = load_fold(store, data, fold)
                log.info("fold %d: reusing checkpoint %s", fold, store.unit_dir(unit))
            except CheckpointError as err:
                log.warning("fold %d: checkpoint unusable, retraining: %s", fold, err)
        if result is None:
            if store is not None:
                store.begin(unit)  # also clears what a killed run left half-written
            if on_fold_start is not None:
                on_fold_start(fold)
            started = time.perf_counter()
            result = train_fold(data, fold, params)
            if store is not None:
                save_fold(store, data, result)
            log.info("fold %d: trained in %.1fs", fold, time.perf_counter() - started)
        score = competition_score(data.y[data.valid_rows(fold)], result.valid_proba.argmax(axis=1))
        log.info("fold %d: score %.4f", fold, score)
        results.append(result)
    return results


# ---------------------------------------------------------------- outputs


def _proba_frame(sequence_ids: Sequence[str], proba: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "sequence_id": pl.Series(list(sequence_ids), dtype=pl.String),
            **{c: pl.Series(proba[:, i], dtype=pl.Float64) for i, c in enumerate(PROBA_COLUMNS)},
        }
    )


def oof_frame(data: TrainingSet, results: Sequence[FoldResult]) -> pl.DataFrame:
    """The contract's OOF table: sequence_id, fold, y_true, sensor_group, p00..p17."""
    proba = np.full((len(data.sequence_ids), N_CLASSES), np.nan)
    for result in results:
        proba[data.valid_rows(result.fold)] = result.valid_proba
    if np.isnan(proba).any():
        raise ValueError("out-of-fold probabilities missing for some sequences")
    return pl.DataFrame(
        {
            "sequence_id": pl.Series(data.sequence_ids, dtype=pl.String),
            "fold": pl.Series(data.fold, dtype=pl.Int32),
            "y_true": pl.Series(data.y, dtype=pl.Int32),
            "sensor_group": pl.Series(data.sensor_group.tolist(), dtype=pl.String),
        }
    ).hstack(_proba_frame(data.sequence_ids, proba).drop("sequence_id"))


def gain_importance(model_text: str) -> np.ndarray:
    return lgb.Booster(model_str=model_text).feature_importance(importance_type="gain")


def importance_frame(feature_names: Sequence[str], results: Sequence[FoldResult]) -> pl.DataFrame:
    """feature, gain (mean over folds), gain_fold_k ...; most important first."""
    per_fold = {f"gain_fold_{r.fold}": gain_importance(r.model_text) for r in results}
    gains = np.vstack(list(per_fold.values()))
    return pl.DataFrame(
        {"feature": list(feature_names), "gain": gains.mean(axis=0), **per_fold}
    ).sort(["gain", "feature"], descending=[True, False])


def model_meta(data: TrainingSet, results: Sequence[FoldResult], params: LgbmParams) -> dict:
    """models/lgbm/meta.json: what inference needs to use the fold models."""
    return {
        "n_folds": len(results),
        "feature_names": list(data.feature_names),
        "best_iterations": [r.best_iteration for r in results],
        "classes": list(GESTURES),
        "num_class": N_CLASSES,
        "modality_features": [n for n in data.feature_names if is_modality_feature(n)],
        "lightgbm_version": lgb.__version__,
        "params": section_dict(params),
    }
