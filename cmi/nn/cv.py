"""Cross-validation of the network: the members of each outer fold (``cmi.nn.members``: one
per seed, full input and optionally IMU-only), resumable (the torch stage's core).

``run_torch_cv`` mirrors ``cmi.lgbm.run_cv``: for each member of each fold it reuses a
finished member from the checkpoint store, or trains it (resuming from its last epoch), then
saves it finished.
The store's fingerprint covers the stage's inputs, its params (``cv``, ``torch`` and ``eval``,
whose ``imu_only_share`` weighs the views that pick the epoch), the ``cmi`` code the stage
script reaches and the library versions (``cmi.deps.code_digest``, as for LightGBM).
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

from cmi import deps
from cmi.checkpoint import CheckpointStore
from cmi.evaluation import check_share
from cmi.nn import checkpoint as ckpt
from cmi.nn.augment import check_augment_params
from cmi.nn.data import Scaler, input_channels
from cmi.nn.fold_data import FoldInputs, inner_fold_of, labeled_sequences, prepare_fold
from cmi.nn.members import Member, fold_members, member_inputs, member_seeds, network_architecture
from cmi.nn.parallel import cpu_processes, train_in_processes
from cmi.nn.runtime import Runtime
from cmi.nn.train import BatchHook, EpochHook, TorchFoldResult, train_torch_fold
from cmi.nn.views import ViewPredictions, average_predictions
from cmi.params import Params, section_dict
from cmi.paths import ProjectPaths

log = logging.getLogger("cmi.nn.cv")

STAGE_SCRIPT = "stages/train_torch.py"


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


def fingerprint_params(params: Params) -> dict[str, Any]:
    """The params a fold's result depends on."""
    return {
        "torch": deps.result_params("torch", section_dict(params.torch)),
        "cv": section_dict(params.cv),
        "eval": section_dict(params.eval),
    }


def checkpoint_store(base: Path, input_files: Sequence[Path], params: Params) -> CheckpointStore:
    """Fold checkpoints keyed by inputs, params, and code: ``cmi.deps.code_digest`` of the
    stage script (every cmi module it reaches, as dvc.yaml's deps list them, plus library
    versions, torch's included), the same rule as the lgbm stage's."""
    salt = f"torch/v{ckpt.CHECKPOINT_VERSION}/code-{deps.code_digest(STAGE_SCRIPT)}"
    return CheckpointStore.for_inputs(base, input_files, fingerprint_params(params), salt)


# ----------------------------------------------------------------------------- folds
@dataclass
class TorchFold:
    """Outer fold ``fold``: its members (``cmi.nn.members``) and their averaged predictions.

    The ``full`` view averages the full-input members; the ``imu_only`` view averages the
    IMU-only members when there are some (``torch.imu_only_model``), else the full-input
    members (which then serve IMU-only inputs through their modality dropout).
    """

    fold: int
    inner_fold: int
    members: list[TorchFoldResult]
    scaler: Scaler  # the full-input members' (IMU-only members: the same stats, IMU channels)
    pad_len: int

    def of_kind(self, kind: str) -> list[TorchFoldResult]:
        return [r for r in self.members if member_of(r).kind == kind]

    @property
    def predictions(self) -> dict[str, ViewPredictions]:
        full = self.of_kind("full")
        imu_only = self.of_kind("imu") or full
        return {
            "full": average_predictions([r.predictions["full"] for r in full]),
            "imu_only": average_predictions([r.predictions["imu_only"] for r in imu_only]),
        }

    @property
    def primary(self) -> TorchFoldResult:
        """The first full-input member (the fold's single model by default)."""
        return self.of_kind("full")[0]


def member_of(result: TorchFoldResult) -> Member:
    """The member a result belongs to (every result of ``run_torch_fold`` has one)."""
    if result.member is None:
        raise ValueError(f"fold {result.fold}: a member result without its member")
    return result.member


def _finished_payload(result: TorchFoldResult) -> dict[str, Any]:
    payload = {
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
    if all(pred.orientation is not None for pred in result.predictions.values()):
        payload["view_orientation"] = {
            view: torch.from_numpy(np.ascontiguousarray(pred.orientation))
            for view, pred in result.predictions.items()
        }
    return payload


def _result_from_payload(payload: dict[str, Any], member: Member) -> TorchFoldResult:
    orientation = payload.get("view_orientation", {})
    return TorchFoldResult(
        fold=member.fold,
        inner_fold=int(payload["inner_fold"]),
        best_epoch=int(payload["best_epoch"]),
        best_score=float(payload["best_score"]),
        best_state=payload["best_state"],
        predictions={
            view: ViewPredictions(
                list(ids),
                payload["view_proba"][view].numpy(),
                orientation[view].numpy() if view in orientation else None,
            )
            for view, ids in payload["view_ids"].items()
        },
        curves=[[float(v) for v in row] for row in payload["curves"]],
        scaler=Scaler.from_json(payload["scaler"]),
        pad_len=int(payload["pad_len"]),
        member=member,
    )


def load_finished_member(store: CheckpointStore, member: Member) -> TorchFoldResult | None:
    found = ckpt.load_member_checkpoint(store, member)
    if found is None or found.kind != "finished":
        return None
    try:
        result = _result_from_payload(found.payload, member)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        log.warning(
            "%s: finished-fold file %s is incomplete (%s); retraining",
            member.label, found.path, error,
        )  # fmt: skip
        return None
    log.info("%s: finished earlier, using %s", member.label, found.path)
    return result


def train_member(
    inputs: FoldInputs,
    member: Member,
    params: Params,
    runtime: Runtime,
    store: CheckpointStore | None,
    on_batch: BatchHook | None,
    on_epoch: EpochHook | None,
) -> TorchFoldResult:
    own = member_inputs(inputs, member.kind)
    arch = network_architecture(len(own.scaler.channels), params.torch)
    log.info(
        "%s: %d training / %d inner validation (fold %d) / %d scored sequences, "
        "pad_len %d, %d channels, seed %d",
        member.label, len(own.train), len(own.inner), own.inner_fold, len(own.scored),
        own.pad_len, len(own.scaler.channels), member.seed,
    )  # fmt: skip
    result = train_torch_fold(
        own,
        arch,
        params.torch,
        device=runtime.device,
        imu_only_share=check_share(params.eval.imu_only_share),
        store=store,
        dist=runtime.dist,
        on_batch=on_batch,
        on_epoch=on_epoch,
        member=member,
    )
    if store is not None and runtime.dist.is_main:
        ckpt.save_member_checkpoint(store, member, "finished", _finished_payload(result))
    return result


def run_torch_fold(
    data: TorchTrainingData,
    fold: int,
    params: Params,
    runtime: Runtime,
    store: CheckpointStore | None = None,
    on_batch: BatchHook | None = None,
    on_epoch: EpochHook | None = None,
    trained: dict[str, TorchFoldResult] | None = None,
) -> TorchFold:
    """Every member of ``fold``: those in ``trained`` (by member name, trained elsewhere),
    finished ones from the store, the others trained here (resuming from their last epoch)."""
    inputs: FoldInputs | None = None  # prepared only if some member must train
    results = []
    for member in fold_members(fold, params.torch):
        runtime.barrier()
        done = trained.get(member.name) if trained is not None else None
        if done is None and store is not None:
            done = load_finished_member(store, member)
        if done is not None:
            if on_epoch is not None and runtime.dist.is_main:
                for row in done.curves:
                    on_epoch(member, row)
            results.append(done)
            continue
        if inputs is None:
            inputs = prepare_fold(
                data.frame_features, data.labeled, fold, data.channels, params.torch
            )
        results.append(train_member(inputs, member, params, runtime, store, on_batch, on_epoch))
    full = next(r for r in results if member_of(r).kind == "full")
    return TorchFold(fold, full.inner_fold, results, full.scaler, full.pad_len)


def run_torch_cv(
    data: TorchTrainingData,
    params: Params,
    runtime: Runtime,
    store: CheckpointStore | None = None,
    *,
    on_batch: BatchHook | None = None,
    on_epoch: EpochHook | None = None,
) -> list[TorchFold]:
    """Train (or reuse from ``store``) every member of every outer fold, in fold order; on
    CPU the unfinished members train side by side (``cmi.nn.parallel``)."""
    check_augment_params(params.torch)
    member_seeds(params.torch)  # a repeated seed fails before any training
    members = [m for fold in range(data.n_folds) for m in fold_members(fold, params.torch)]
    pending = [m for m in members if store is None or not ckpt.is_finished(store, m)]
    processes = cpu_processes(params, runtime, len(pending))
    trained = None
    if processes > 1:
        trained = train_in_processes(data, pending, params, store, processes, on_batch)
    return [
        run_torch_fold(data, fold, params, runtime, store, on_batch, on_epoch, trained)
        for fold in range(data.n_folds)
    ]
