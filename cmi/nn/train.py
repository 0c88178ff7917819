"""Training one member of an outer fold (``cmi.nn.members``), with epoch-level resume and
honest epoch choice.

Each epoch trains on the fold's training part (augmented by ``cmi.nn.augment`` where
params.torch asks; with an orientation head, its loss weighted by
``aux_orientation_weight`` is added), then scores the inner validation fold in both views (as
recorded, and IMU-only as the hidden test presents half its sequences); the epoch with the
best inner score wins: ``test_like`` for a full-input member, ``imu_only`` for an IMU-only
one (``cmi.nn.fold_data`` says why that is honest).

Reproducibility: every random draw of an epoch (shuffle, modality dropout, augmentation,
dropout masks) comes from seeds derived from (member seed, fold, epoch), so an epoch does not
depend on what ran before it in this process. With model/optimizer/scheduler/AMP-scaler/RNG
states restored from the last epoch checkpoint, a resumed run is bit-identical to an
uninterrupted one on CPU.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cmi.checkpoint import CheckpointStore
from cmi.evaluation import VIEWS
from cmi.nn import checkpoint as ckpt
from cmi.nn.augment import Augmenter, build_augmenter
from cmi.nn.batches import (
    EpochBatches,
    apply_modality_dropout,
    epoch_batches,
    mixed_cross_entropy,
    steps_per_epoch,
    training_tensors,
)
from cmi.nn.data import Scaler
from cmi.nn.fold_data import FoldInputs
from cmi.nn.members import Member, member_seeds
from cmi.nn.model import TimeSeriesNet, plain_state_dict, unwrap
from cmi.nn.runtime import (
    Distributed,
    derive_seed,
    rng_state,
    seed_everything,
    set_rng_state,
    wrap_model,
)
from cmi.nn.views import ViewPredictions, part_view_scores, predict_views, recorded_proba
from cmi.params import TorchParams

__all__ = [
    "CURVE_COLUMNS",
    "SELECTED_BY",
    "TorchFoldResult",
    "apply_modality_dropout",
    "epoch_batches",
    "kill_hook",
    "new_run",
    "steps_per_epoch",
    "train_epoch",
    "train_torch_fold",
    "training_tensors",
]

log = logging.getLogger("cmi.nn.train")

# on_batch(fold, epoch (1-based), batch (0-based)): a hook called before every training step.
BatchHook = Callable[[int, int, int], None]
# One row per finished epoch; the inner_* columns are scores of the inner validation fold.
CURVE_COLUMNS: tuple[str, ...] = (
    "epoch",
    "train_loss",
    "inner_loss",
    *(f"inner_{view}" for view in (*VIEWS, "test_like")),
)
SELECTED_BY = "inner_test_like"  # of a full-input member; Member.selected_by says for each
# on_epoch(member, curve row): called for every epoch row, restored from a checkpoint or new.
EpochHook = Callable[[Member, list[float]], None]


# ----------------------------------------------------------------------------- training
@dataclass
class TrainState:
    """What an epoch checkpoint restores besides model/optimizer/scheduler/scaler/RNG."""

    epoch: int = 0  # epochs finished
    best_score: float = -math.inf  # inner score (Member.selected_by) of the best epoch
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    curves: list[list[float]] = field(default_factory=list)  # rows of CURVE_COLUMNS


@dataclass
class TorchFoldResult:
    """One member of outer fold ``fold``: its model (best epoch on ``inner_fold``) and its
    predictions of the scored fold."""

    fold: int
    inner_fold: int
    best_epoch: int
    best_score: float
    best_state: dict[str, torch.Tensor]
    predictions: dict[str, ViewPredictions]  # the scored fold, per view
    curves: list[list[float]]
    scaler: Scaler
    pad_len: int
    resumed_from: int = 0  # epochs restored from a checkpoint (0 = fresh start)
    member: Member | None = None  # None: the fold's single model (first seed, full input)


@dataclass
class FoldRun:
    """The live objects of one fold's training."""

    model: TimeSeriesNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    grad_scaler: torch.amp.GradScaler
    state: TrainState


def new_run(
    arch: dict[str, Any],
    params: TorchParams,
    fold: int,
    steps: int,
    device,
    seed: int | None = None,
) -> FoldRun:
    """Fresh model/optimizer/scheduler of a member seeded ``seed`` (default: the first)."""
    seed = member_seeds(params)[0] if seed is None else seed
    seed_everything(derive_seed(seed, fold, "init"))
    model = TimeSeriesNet(**arch).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=params.lr, weight_decay=params.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=params.lr, total_steps=max(1, params.epochs * steps)
    )
    grad_scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    return FoldRun(model, optimizer, scheduler, grad_scaler, TrainState())


def _epoch_payload(run: FoldRun) -> dict[str, Any]:
    state = run.state
    return {
        "epoch": state.epoch,
        "model": plain_state_dict(run.model),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "grad_scaler": run.grad_scaler.state_dict(),
        "best_score": state.best_score,
        "best_epoch": state.best_epoch,
        "best_state": state.best_state,
        "curves": state.curves,
        "rng": rng_state(),
    }


def _restore(run: FoldRun, payload: dict[str, Any]) -> None:
    run.model.load_state_dict(payload["model"])
    run.optimizer.load_state_dict(payload["optimizer"])
    run.scheduler.load_state_dict(payload["scheduler"])
    run.grad_scaler.load_state_dict(payload["grad_scaler"])
    run.state = TrainState(
        epoch=int(payload["epoch"]),
        best_score=float(payload["best_score"]),
        best_epoch=int(payload["best_epoch"]),
        best_state=payload["best_state"],
        curves=[[float(v) for v in row] for row in payload["curves"]],
    )
    set_rng_state(payload["rng"])


def smoothed_cross_entropy(proba: np.ndarray, y: np.ndarray, smoothing: float) -> float:
    """The training criterion (label-smoothed CE) evaluated on probabilities."""
    if len(y) == 0:
        return float("nan")
    logp = np.log(np.clip(proba, 1e-12, 1.0))
    nll = -logp[np.arange(len(y)), y]
    return float(np.mean((1 - smoothing) * nll - smoothing * logp.mean(axis=1)))


def train_epoch(
    run: FoldRun,
    trained: nn.Module,
    inputs: FoldInputs,
    tensors: tuple[torch.Tensor, ...],
    params: TorchParams,
    epoch: int,
    device: torch.device,
    dist: Distributed,
    on_batch: BatchHook | None,
    seed: int | None = None,
    augmenter: Augmenter | None = None,
) -> float:
    """One epoch over the training part (``tensors``: ``training_tensors(inputs.train)``);
    returns the mean training loss of this rank's rows."""
    seed = member_seeds(params)[0] if seed is None else seed
    seed_everything(derive_seed(seed, inputs.fold, epoch, "train"))
    generator = torch.Generator().manual_seed(derive_seed(seed, inputs.fold, epoch, "data"))
    n = len(inputs.train)
    lengths = tensors[1].sum(dim=1)  # real steps per row (the mask)
    batches = epoch_batches(
        n, params.batch_size, generator, dist.world_size, lengths, params.bucket_batches
    )
    drop = torch.rand(n, generator=generator) < params.modality_dropout
    if dist.enabled:
        batches = [b[dist.rank :: dist.world_size] for b in batches]
    seed_parts = (seed, inputs.fold, epoch, dist.rank)
    loader = DataLoader(
        EpochBatches((*tensors, drop), batches, augmenter, seed_parts),
        batch_size=None,
        shuffle=False,
        num_workers=params.num_workers,
    )
    modality_idx = torch.from_numpy(inputs.modality_idx)
    criterion = nn.CrossEntropyLoss(label_smoothing=params.label_smoothing)
    aux_weight = params.aux_orientation_weight
    use_amp = device.type == "cuda"
    trained.train()
    total, count = 0.0, 0
    for b, batch in enumerate(loader):
        if on_batch is not None:
            on_batch(inputs.fold, epoch + 1, b)
        if augmenter is None:
            xb, mb, yb, ob, dropb = batch
            yb_mix, ob_mix, lam = yb, ob, torch.ones(len(yb))
        else:
            xb, mb, yb, yb_mix, ob, ob_mix, lam, dropb = batch
        xb = apply_modality_dropout(xb, dropb, modality_idx).to(device, non_blocking=True)
        mb, yb = mb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        run.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            if aux_weight > 0:
                logits, orientation_logits = trained(xb, mb, heads=True)
            else:
                logits = trained(xb, mb)
            if augmenter is not None and augmenter.mixes:
                yb_mix, lam = yb_mix.to(device), lam.to(device)
                loss = mixed_cross_entropy(logits.float(), yb, yb_mix, lam, params.label_smoothing)
            else:
                loss = criterion(logits.float(), yb)
            if aux_weight > 0:
                orientation_loss = mixed_cross_entropy(
                    orientation_logits.float(),
                    ob.to(device),
                    ob_mix.to(device),
                    lam.to(device),
                    params.label_smoothing,
                )
                loss = loss + aux_weight * orientation_loss
        run.grad_scaler.scale(loss).backward()
        run.grad_scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(trained.parameters(), params.grad_clip)
        run.grad_scaler.step(run.optimizer)
        run.grad_scaler.update()
        run.scheduler.step()
        total += float(loss.detach()) * len(yb)
        count += len(yb)
    return total / max(count, 1)


def _resume(
    run: FoldRun, store: CheckpointStore | None, member: Member, rebuild: Callable[[], FoldRun]
) -> tuple[FoldRun, int]:
    """The run restored from ``member``'s epoch checkpoint, if there is a usable one."""
    found = ckpt.load_member_checkpoint(store, member) if store is not None else None
    if found is None or found.kind != "epoch":
        return run, 0
    try:
        _restore(run, found.payload)
    except (KeyError, RuntimeError, ValueError, TypeError) as error:
        log.warning(
            "%s: checkpoint %s does not fit (%s); restarting the fold",
            member.label, found.path, error,
        )  # fmt: skip
        return rebuild(), 0
    log.info(
        "%s: resuming from epoch %d (checkpoint %s)", member.label, run.state.epoch + 1, found.path
    )
    return run, run.state.epoch


def default_member(inputs: FoldInputs, params: TorchParams) -> Member:
    """The fold's single model: first seed, full input."""
    return Member(inputs.fold, member_seeds(params)[0])


def train_torch_fold(
    inputs: FoldInputs,
    arch: dict[str, Any],
    params: TorchParams,
    *,
    device: torch.device,
    imu_only_share: float = 0.5,
    store: CheckpointStore | None = None,
    dist: Distributed | None = None,
    on_batch: BatchHook | None = None,
    on_epoch: EpochHook | None = None,
    member: Member | None = None,
) -> TorchFoldResult:
    """Train ``member`` (default: the fold's single model) of outer fold ``inputs.fold`` for
    ``params.epochs`` epochs on its training part; the epoch with the best inner-fold score
    (``member.selected_by``) wins; then predict the scored fold.

    ``inputs`` must be the member's own (``cmi.nn.members.member_inputs``: IMU channels only
    for an IMU-only member). With ``store``, an epoch checkpoint (unit ``member.name``) is
    written after every epoch and training resumes from a valid one. Under DDP only rank 0
    validates and writes checkpoints.
    """
    dist = dist or Distributed()
    member = member or default_member(inputs, params)
    if member.fold != inputs.fold:
        raise ValueError(f"{member.name}: inputs are fold {inputs.fold}'s")
    if member.kind == "imu" and inputs.modality_idx.size:
        raise ValueError(f"{member.name}: an IMU-only member got thm/ToF channels")
    fold = inputs.fold
    steps = steps_per_epoch(len(inputs.train), params.batch_size, dist.world_size)
    rebuild = lambda: new_run(arch, params, fold, steps, device, member.seed)  # noqa: E731
    run, resumed_from = _resume(rebuild(), store, member, rebuild)
    if on_epoch is not None and dist.is_main:
        for row in run.state.curves:  # restored epochs keep their curves
            on_epoch(member, row)

    trained = wrap_model(run.model, device, dist)
    tensors = training_tensors(inputs.train)
    augmenter = build_augmenter(params, inputs.scaler)
    # A bar only on a terminal (disable=None): logs and tests see just the epoch lines.
    epochs = tqdm(
        range(run.state.epoch, params.epochs),
        desc=f"torch {member.name}",
        initial=run.state.epoch,
        total=params.epochs,
        unit="epoch",
        disable=None if dist.is_main else True,
        leave=False,
    )
    for epoch in epochs:
        started = time.perf_counter()
        train_loss = train_epoch(
            run, trained, inputs, tensors, params, epoch, device, dist, on_batch,
            member.seed, augmenter,
        )  # fmt: skip
        run.state.epoch = epoch + 1
        if not dist.is_main:
            continue
        row = _validate(run, inputs, params, train_loss, imu_only_share, member.selected_by)
        if store is not None:
            ckpt.save_member_checkpoint(store, member, "epoch", _epoch_payload(run))
        if on_epoch is not None:
            on_epoch(member, row)
        log.info(
            "%s epoch %d/%d: train_loss %.4f; inner fold %d: loss %.4f, full %.4f, "
            "imu_only %.4f, test_like %.4f (best %.4f @ %d) %.1fs",
            member.label, epoch + 1, params.epochs, train_loss, inputs.inner_fold, *row[2:],
            run.state.best_score, run.state.best_epoch, time.perf_counter() - started,
        )  # fmt: skip
    return _finish(run, inputs, arch, device, dist, resumed_from, member)


def _validate(
    run: FoldRun,
    inputs: FoldInputs,
    params: TorchParams,
    train_loss: float,
    imu_only_share: float,
    selected_by: str = SELECTED_BY,
) -> list[float]:
    """Score the inner fold in both views; keep the weights if ``selected_by`` improved."""
    state = run.state
    model = unwrap(run.model)
    predictions = predict_views(model, inputs.inner, inputs.modality_idx)
    scores = part_view_scores(predictions, inputs.inner, imu_only_share)
    proba = recorded_proba(predictions, inputs.inner)
    inner_loss = smoothed_cross_entropy(proba, inputs.inner.y, params.label_smoothing)
    row = [
        float(state.epoch),
        float(train_loss),
        inner_loss,
        *(scores[view] for view in (*VIEWS, "test_like")),
    ]
    state.curves.append(row)
    selected = row[CURVE_COLUMNS.index(selected_by)]
    if selected > state.best_score or state.best_state is None:
        state.best_score, state.best_epoch = selected, state.epoch
        state.best_state = plain_state_dict(run.model)
    return row


def _finish(
    run: FoldRun,
    inputs: FoldInputs,
    arch: dict[str, Any],
    device: torch.device,
    dist: Distributed,
    resumed_from: int,
    member: Member,
) -> TorchFoldResult:
    state = run.state
    if state.best_state is None:
        # epochs == 0 or a non-main rank: fall back to the current weights.
        state.best_state = plain_state_dict(run.model)
    predictions: dict[str, ViewPredictions] = {}
    if dist.is_main:
        best = TimeSeriesNet(**arch).to(device)
        best.load_state_dict(state.best_state)
        predictions = predict_views(best.eval(), inputs.scored, inputs.modality_idx)
    return TorchFoldResult(
        fold=inputs.fold,
        inner_fold=inputs.inner_fold,
        best_epoch=state.best_epoch,
        best_score=state.best_score,
        best_state=state.best_state,
        predictions=predictions,
        curves=state.curves,
        scaler=inputs.scaler,
        pad_len=inputs.pad_len,
        resumed_from=resumed_from,
        member=member,
    )


@dataclass(frozen=True)
class KillAt:
    """Test hook (a BatchHook): SIGKILLs the process that is about to run training step
    (fold, epoch 1-based as logged, batch 0-based). A plain object, so it reaches the
    worker processes of ``cmi.nn.parallel`` too."""

    fold: int
    epoch: int
    batch: int

    def __call__(self, fold: int, epoch: int, batch: int) -> None:
        if (fold, epoch, batch) == (self.fold, self.epoch, self.batch):
            log.warning("kill hook %s: killing myself", self)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)


def kill_hook(spec: str | None) -> BatchHook | None:
    """Test hook: spec "fold=1,epoch=2,batch=3" SIGKILLs the process training that step
    (fold as in fold_k, epoch 1-based as logged, batch 0-based)."""
    if not spec:
        return None
    where = {k.strip(): int(v) for k, v in (part.split("=") for part in spec.split(","))}
    return KillAt(where["fold"], where["epoch"], where["batch"])
