"""Cross-validation of the network: one model per outer fold, resumable (the torch stage's core).

``run_torch_cv`` mirrors ``cmi.lgbm.run_cv``: for each fold it reuses a finished fold from
the checkpoint store, or trains it (resuming from its last epoch), then saves it finished.
The store's fingerprint covers the stage's inputs, its params (``cv``, ``torch`` and ``eval``,
whose ``imu_only_share`` weighs the views that pick the epoch), the ``cmi`` code the stage's
deps in dvc.yaml list (``code_files``) and torch's version.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import yaml

from cmi.checkpoint import CheckpointStore
from cmi.evaluation import check_share
from cmi.nn import checkpoint as ckpt
from cmi.nn.data import Scaler, input_channels
from cmi.nn.fold_data import inner_fold_of, labeled_sequences, prepare_fold
from cmi.nn.model import architecture_kwargs
from cmi.nn.runtime import Runtime
from cmi.nn.train import BatchHook, EpochHook, TorchFoldResult, train_torch_fold
from cmi.nn.views import ViewPredictions
from cmi.params import Params, section_dict
from cmi.paths import ProjectPaths

log = logging.getLogger("cmi.nn.cv")

REPO_ROOT = Path(__file__).resolve().parents[2]
STAGE_NAME = "torch"


@dataclass(frozen=True)
class TorchTrainingData:
    """The torch stage's inputs, checked: per-frame features and the labeled fold table."""

    frame_features: pl.DataFrame
    labeled: pl.DataFrame  # sequence_id, fold, label, sensor_group (sorted by id)
    channels: list[str]

    @property
    def n_folds(self) -> int:
        return int(self.labeled["fold"].n_unique())


def read_training_data(paths: ProjectPaths, params: Params) -> TorchTrainingData:
    frames = []
    for path in (paths.sequences, paths.frame_features, paths.folds):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run the extract and folds stages first")
        frames.append(pl.read_parquet(path))
    sequences, frame_features, folds = frames
    labeled = labeled_sequences(sequences, folds)
    fold_ids = sorted(labeled["fold"].unique().to_list())
    if fold_ids != list(range(params.cv.n_splits)):
        raise ValueError(
            f"{paths.folds}: folds {fold_ids} but cv.n_splits={params.cv.n_splits}; "
            "rerun the folds stage"
        )
    inner_fold_of(0, len(fold_ids))  # fails early, with the reason, for fewer than 3 folds
    return TorchTrainingData(frame_features, labeled, input_channels(frame_features))


def code_files(root: Path = REPO_ROOT) -> list[Path]:
    """The ``cmi`` files the torch stage lists as deps in dvc.yaml (a folder: its .py files).

    Read from dvc.yaml itself, so the fingerprint hashes exactly the code whose change makes
    DVC rerun the stage: a rerun for changed code never reuses checkpoints made by the old.
    """
    dvc_yaml = root / "dvc.yaml"
    try:
        deps = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"][STAGE_NAME]["deps"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as error:
        raise ValueError(f"{dvc_yaml}: no deps for stage {STAGE_NAME!r} ({error})") from error
    files: list[Path] = []
    for dep in deps:
        if not str(dep).startswith("cmi/") and str(dep) != "cmi":
            continue
        path = root / dep
        if not path.exists():
            raise FileNotFoundError(f"{dvc_yaml}: stage {STAGE_NAME!r} dep {dep} does not exist")
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def fingerprint_params(params: Params) -> dict[str, Any]:
    """The params a fold's result depends on."""
    return {
        "torch": section_dict(params.torch),
        "cv": section_dict(params.cv),
        "eval": section_dict(params.eval),
    }


def checkpoint_store(base: Path, input_files: Sequence[Path], params: Params) -> CheckpointStore:
    """Fold checkpoints keyed by inputs, params, code (``code_files``) and torch's version."""
    salt = f"torch/v{ckpt.CHECKPOINT_VERSION}/torch-{torch.__version__}"
    files = [*input_files, *code_files()]
    return CheckpointStore.for_inputs(base, files, fingerprint_params(params), salt)


# ----------------------------------------------------------------------------- finished folds
def _finished_payload(result: TorchFoldResult) -> dict[str, Any]:
    return {
        "inner_fold": result.inner_fold,
        "best_epoch": result.best_epoch,
        "best_score": result.best_score,
        "best_state": result.best_state,
        "view_ids": {view: pred.ids for view, pred in result.predictions.items()},
        "view_proba": {
            view: torch.from_numpy(np.ascontiguousarray(pred.proba))
            for view, pred in result.predictions.items()
        },
        "curves": result.curves,
        "scaler": result.scaler.to_json(),
        "pad_len": result.pad_len,
    }


def _result_from_payload(payload: dict[str, Any], fold: int) -> TorchFoldResult:
    return TorchFoldResult(
        fold=fold,
        inner_fold=int(payload["inner_fold"]),
        best_epoch=int(payload["best_epoch"]),
        best_score=float(payload["best_score"]),
        best_state=payload["best_state"],
        predictions={
            view: ViewPredictions(list(ids), payload["view_proba"][view].numpy())
            for view, ids in payload["view_ids"].items()
        },
        curves=[[float(v) for v in row] for row in payload["curves"]],
        scaler=Scaler.from_json(payload["scaler"]),
        pad_len=int(payload["pad_len"]),
    )


def load_finished_fold(store: CheckpointStore, fold: int) -> TorchFoldResult | None:
    found = ckpt.load_fold_checkpoint(store, fold)
    if found is None or found.kind != "finished":
        return None
    try:
        result = _result_from_payload(found.payload, fold)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        log.warning(
            "fold %d: finished-fold file %s is incomplete (%s); retraining", fold, found.path, error
        )
        return None
    log.info("fold %d: finished earlier, using %s", fold, found.path)
    return result


# ----------------------------------------------------------------------------- folds
def run_torch_fold(
    data: TorchTrainingData,
    fold: int,
    params: Params,
    runtime: Runtime,
    store: CheckpointStore | None = None,
    on_batch: BatchHook | None = None,
    on_epoch: EpochHook | None = None,
) -> TorchFoldResult:
    """A finished fold from the store, else train it (resuming from its last epoch)."""
    if store is not None:
        done = load_finished_fold(store, fold)
        if done is not None:
            if on_epoch is not None and runtime.dist.is_main:
                for row in done.curves:
                    on_epoch(fold, row)
            return done
    tp = params.torch
    inputs = prepare_fold(data.frame_features, data.labeled, fold, data.channels, tp)
    arch = architecture_kwargs(
        len(data.channels), tp.conv_channels, tp.lstm_hidden, tp.gru_hidden, tp.dropout
    )
    log.info(
        "fold %d: %d training / %d inner validation (fold %d) / %d scored sequences, "
        "pad_len %d, %d channels",
        fold, len(inputs.train), len(inputs.inner), inputs.inner_fold, len(inputs.scored),
        inputs.pad_len, len(data.channels),
    )  # fmt: skip
    result = train_torch_fold(
        inputs,
        arch,
        tp,
        device=runtime.device,
        imu_only_share=check_share(params.eval.imu_only_share),
        store=store,
        dist=runtime.dist,
        on_batch=on_batch,
        on_epoch=on_epoch,
    )
    if store is not None and runtime.dist.is_main:
        ckpt.save_fold_checkpoint(store, fold, "finished", _finished_payload(result))
    return result


def run_torch_cv(
    data: TorchTrainingData,
    params: Params,
    runtime: Runtime,
    store: CheckpointStore | None = None,
    *,
    on_batch: BatchHook | None = None,
    on_epoch: EpochHook | None = None,
) -> list[TorchFoldResult]:
    """Train (or reuse from ``store``) one model per outer fold, in fold order."""
    results = []
    for fold in range(data.n_folds):
        runtime.barrier()
        results.append(run_torch_fold(data, fold, params, runtime, store, on_batch, on_epoch))
    return results
