"""Cross-validation: one model per fold (resumable per fold), the OOF table in views, outputs.

Finished folds are checkpointed (``cmi.checkpoint``), so a killed run resumes per fold and gives
the same out-of-fold table as an uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl
from tqdm.auto import tqdm

from cmi import deps
from cmi.checkpoint import CheckpointError, CheckpointStore, write_text_file
from cmi.evaluation import view_scores
from cmi.lgbm.data import TrainingSet, is_modality_feature
from cmi.lgbm.train import FoldResult, inner_fold, train_fold
from cmi.params import LgbmParams, Params, section_dict
from cmi.schema import GESTURES, N_CLASSES, PROBA_COLUMNS

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "lgbm-fold-v2"
# The stage whose code (the script and every cmi module it reaches, cmi.deps) keys checkpoints;
# dvc.yaml's deps list the same files (tests/test_deps.py).
STAGE_SCRIPT = "stages/train_lgbm.py"
_PROBA_FILES = {"recorded": "proba_recorded.parquet", "imu_only": "proba_imu_only.parquet"}


# ---------------------------------------------------------------- checkpoints


def fingerprint_params(params: Params) -> dict[str, Any]:
    """The params a fold's result depends on: ``cv``, ``lgbm``, and ``eval`` (the view weights
    of the early-stopping metric)."""
    return {
        "lgbm": section_dict(params.lgbm),
        "cv": section_dict(params.cv),
        "eval": section_dict(params.eval),
    }


def checkpoint_store(base: Path, input_files: Sequence[Path], params: Params) -> CheckpointStore:
    """Fold checkpoints keyed by inputs, params, the stage's code and the library versions."""
    salt = f"{CHECKPOINT_FORMAT}/code-{deps.code_digest(STAGE_SCRIPT)}"
    return CheckpointStore.for_inputs(base, input_files, fingerprint_params(params), salt)


def _fold_unit(fold: int) -> str:
    return f"fold_{fold}"


def save_fold(store: CheckpointStore, data: TrainingSet, result: FoldResult) -> Path:
    valid_ids = [data.sequence_ids[i] for i in data.valid_rows(result.fold)]
    frames = {
        _PROBA_FILES["recorded"]: _proba_frame(valid_ids, result.proba_recorded),
        _PROBA_FILES["imu_only"]: _proba_frame(valid_ids, result.proba_imu_only),
    }
    return store.save(
        _fold_unit(result.fold),
        {
            "model.txt": write_text_file(result.model_text),
            **{name: (lambda tmp, f=frame: f.write_parquet(tmp)) for name, frame in frames.items()},
        },
        meta={
            "fold": result.fold,
            "best_iteration": result.best_iteration,
            "inner_logloss": list(result.inner_logloss),
        },
    )


def load_fold(store: CheckpointStore, data: TrainingSet, fold: int) -> FoldResult:
    """A finished fold from its checkpoint; CheckpointError if it is unusable."""
    unit = store.load(_fold_unit(fold))
    expected_ids = [data.sequence_ids[i] for i in data.valid_rows(fold)]
    try:
        model_text = unit.file("model.txt").read_text(encoding="utf-8")
        lgb.Booster(model_str=model_text)  # parses, or the checkpoint is no good
        frames = {k: pl.read_parquet(unit.file(name)) for k, name in _PROBA_FILES.items()}
        best_iteration = int(unit.meta["best_iteration"])
        inner_logloss = tuple(float(v) for v in unit.meta["inner_logloss"])
    except Exception as err:  # any read/parse failure means "retrain this fold"
        raise CheckpointError(f"{unit.path}: unreadable ({type(err).__name__}: {err})") from err
    for frame in frames.values():
        if frame.columns != ["sequence_id", *PROBA_COLUMNS] or (
            frame["sequence_id"].to_list() != expected_ids
        ):
            raise CheckpointError(f"{unit.path}: validation rows do not match this fold")
    proba = {k: f.select(PROBA_COLUMNS).to_numpy().astype(np.float64) for k, f in frames.items()}
    return FoldResult(
        fold,
        model_text,
        best_iteration,
        proba["recorded"],
        proba["imu_only"],
        inner_logloss,
        reused=True,
    )


# ---------------------------------------------------------------- cross-validation


def run_cv(
    data: TrainingSet,
    params: LgbmParams,
    store: CheckpointStore | None = None,
    on_fold_start: Callable[[int], None] | None = None,
    imu_only_share: float = 0.5,
    on_fold_end: Callable[[FoldResult], None] | None = None,
) -> list[FoldResult]:
    """Train (or reuse from ``store``) one model per fold, in fold order."""
    if params.early_stopping_rounds > 0:
        inner_fold(0, data.n_folds)  # fails early, with the fix, when there are too few folds
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
            result = train_fold(data, fold, params, imu_only_share)
            if store is not None:
                save_fold(store, data, result)
            log.info("fold %d: trained in %.1fs", fold, time.perf_counter() - started)
        scores = view_scores(fold_oof_frame(data, result), imu_only_share)
        log.info(
            "fold %d: test_like %.4f (full %.4f, imu_only %.4f)",
            fold,
            scores["test_like"]["score"],
            scores["full"]["score"],
            scores["imu_only"]["score"],
        )
        if on_fold_end is not None:
            on_fold_end(result)
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


def _view_rows(data: TrainingSet, rows: np.ndarray, view: str, proba: np.ndarray) -> pl.DataFrame:
    ids = [data.sequence_ids[i] for i in rows]
    return pl.DataFrame(
        {
            "sequence_id": pl.Series(ids, dtype=pl.String),
            "fold": pl.Series(data.fold[rows], dtype=pl.Int32),
            "y_true": pl.Series(data.y[rows], dtype=pl.Int32),
            "sensor_group": pl.Series(data.sensor_group[rows].tolist(), dtype=pl.String),
            "view": pl.Series([view] * len(rows), dtype=pl.String),
        }
    ).hstack(_proba_frame(ids, proba).drop("sequence_id"))


def fold_oof_frame(data: TrainingSet, result: FoldResult) -> pl.DataFrame:
    """One fold's rows of the OOF contract (``cmi.evaluation``): the recorded view of its
    full-sensor sequences, the IMU-only view of all of them; sorted by (sequence_id, view)."""
    rows = data.valid_rows(result.fold)
    full = data.sensor_group[rows] == "full"
    return pl.concat(
        [
            _view_rows(data, rows[full], "full", result.proba_recorded[full]),
            _view_rows(data, rows, "imu_only", result.proba_imu_only),
        ]
    ).sort("sequence_id", "view")


def oof_frame(data: TrainingSet, results: Sequence[FoldResult]) -> pl.DataFrame:
    """The OOF table of every fold (``sequence_id, fold, y_true, sensor_group, view,
    p00..p17``), sorted by (sequence_id, view)."""
    folds = sorted(r.fold for r in results)
    if folds != list(range(data.n_folds)):
        raise ValueError(f"out-of-fold probabilities missing: have folds {folds}")
    return pl.concat([fold_oof_frame(data, r) for r in results]).sort("sequence_id", "view")


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
