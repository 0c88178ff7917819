"""Cross-validation: one model per fold, resumable per fold (the lgbm stage's core).

Finished folds are checkpointed (``cmi.checkpoint``), so a killed run resumes per fold and gives
the same out-of-fold table as an uninterrupted one. What the stage writes: ``cmi.lgbm.outputs``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl
from tqdm.auto import tqdm

from cmi import deps
from cmi.checkpoint import CheckpointError, CheckpointStore, write_text_file
from cmi.evaluation import view_scores
from cmi.lgbm.data import TrainingSet
from cmi.lgbm.outputs import fold_oof_frame
from cmi.lgbm.train import FoldResult, inner_fold, train_fold
from cmi.params import LgbmParams, Params, section_dict
from cmi.schema import PROBA_COLUMNS

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
        "lgbm": deps.result_params("lgbm", section_dict(params.lgbm)),
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


def slow_fold_hook(environ: Mapping[str, str]) -> Callable[[int], None] | None:
    """Test hook for ``run_cv``'s ``on_fold_start``: CMI_TEST_SLOW_FOLD=k in ``environ`` sleeps
    CMI_TEST_SLOW_SECONDS (default 60) at the start of fold k, so a kill lands there."""
    slow_fold = environ.get("CMI_TEST_SLOW_FOLD")
    if not slow_fold:
        return None
    seconds = float(environ.get("CMI_TEST_SLOW_SECONDS", "60"))

    def hook(fold: int) -> None:
        if fold == int(slow_fold):
            log.info("fold %d: CMI_TEST_SLOW_FOLD set, sleeping %.0fs", fold, seconds)
            time.sleep(seconds)

    return hook


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


def _proba_frame(sequence_ids: Sequence[str], proba: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "sequence_id": pl.Series(list(sequence_ids), dtype=pl.String),
            **{c: pl.Series(proba[:, i], dtype=pl.Float64) for i, c in enumerate(PROBA_COLUMNS)},
        }
    )
