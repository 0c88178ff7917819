"""Per-fold training of TimeSeriesNet with epoch-level resume.

Reproducibility: every random draw of an epoch (shuffle, modality dropout, dropout masks) comes
from seeds derived from (seed, fold, epoch), so an epoch does not depend on what ran before
it in this process. With model/optimizer/scheduler/AMP-scaler states restored from the last
epoch checkpoint, a resumed run is bit-identical to an uninterrupted one on CPU.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from cmi.metrics import competition_score
from cmi.nn import checkpoint as ckpt
from cmi.nn.data import (
    FILL_VALUE,
    Scaler,
    modality_indices,
    pad_length,
    sequence_lengths,
    to_padded,
)
from cmi.nn.model import TimeSeriesNet, architecture_kwargs, plain_state_dict, unwrap
from cmi.nn.predict import predict_proba
from cmi.params import TorchParams
from cmi.schema import N_CLASSES

log = logging.getLogger("cmi.nn.train")

# on_batch(fold, epoch (1-based), batch (0-based)): a hook called before every training step.
BatchHook = Callable[[int, int, int], None]
CURVE_COLUMNS: tuple[str, ...] = ("fold", "epoch", "train_loss", "val_loss", "val_score")


# ----------------------------------------------------------------------------- setup helpers
@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job; world_size 1 = a plain single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from (seed, fold, epoch, purpose...), independent of run history."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def resolve_device(name: str, dist: Distributed | None = None) -> torch.device:
    """'auto' -> cuda if available else cpu; under torchrun each rank gets cuda:local_rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and dist is not None and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    return device


def configure_torch(device: torch.device, dist: Distributed | None = None) -> int:
    """Threads = usable cores (shared between local ranks); deterministic kernels where possible."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cores or 1) // (dist.world_size if dist and dist.enabled else 1))
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return threads


# ----------------------------------------------------------------------------- fold data
@dataclass
class FoldInputs:
    """Standardized, padded arrays of one fold, plus what its scaler json needs."""

    fold: int
    x_train: np.ndarray
    mask_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    mask_val: np.ndarray
    y_val: np.ndarray
    val_ids: list[str]
    modality_idx: np.ndarray
    scaler: Scaler
    pad_len: int


def labeled_sequences(sequences: pl.DataFrame, folds: pl.DataFrame) -> pl.DataFrame:
    """sequence_id, label, sensor_group, fold for every sequence of the folds table."""
    for name, frame, columns in (
        ("sequences.parquet", sequences, ("sequence_id", "label", "sensor_group")),
        ("folds.parquet", folds, ("sequence_id", "fold")),
    ):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"{name}: missing column(s) {missing}")
    table = folds.select("sequence_id", "fold").join(
        sequences.select("sequence_id", "label", "sensor_group"), on="sequence_id", how="left"
    )
    bad = table.filter(pl.col("label").is_null())
    if bad.height:
        raise ValueError(
            f"sequences.parquet: no label for {bad.height} sequence(s) of folds.parquet, "
            f"e.g. {bad['sequence_id'].head(3).to_list()}"
        )
    out_of_range = table.filter((pl.col("label") < 0) | (pl.col("label") >= N_CLASSES))
    if out_of_range.height:
        raise ValueError(
            f"sequences.parquet: label outside 0..{N_CLASSES - 1} for sequence "
            f"{out_of_range['sequence_id'][0]}"
        )
    return table.sort("sequence_id")


def prepare_fold(
    frame_features: pl.DataFrame,
    labeled: pl.DataFrame,
    fold: int,
    channels: Sequence[str],
    params: TorchParams,
) -> FoldInputs:
    """Scaler and pad_len from the fold's training part only, then pad both parts."""
    train_ids = labeled.filter(pl.col("fold") != fold)["sequence_id"]
    val_ids = labeled.filter(pl.col("fold") == fold)["sequence_id"]
    if train_ids.len() == 0 or val_ids.len() == 0:
        raise ValueError(f"fold {fold}: empty training or validation part")
    train_frames = frame_features.filter(pl.col("sequence_id").is_in(train_ids.implode()))
    val_frames = frame_features.filter(pl.col("sequence_id").is_in(val_ids.implode()))
    scaler = Scaler.fit(train_frames, channels)
    pad_len = pad_length(sequence_lengths(train_frames)["length"].to_numpy(), params.pad_percentile)
    label_of = dict(zip(labeled["sequence_id"].to_list(), labeled["label"].to_list(), strict=True))
    x_tr, m_tr, ids_tr = to_padded(train_frames, channels, scaler, pad_len, params.keep)
    x_va, m_va, ids_va = to_padded(val_frames, channels, scaler, pad_len, params.keep)
    for part, wanted, got in (("training", train_ids, ids_tr), ("validation", val_ids, ids_va)):
        missing = sorted(set(wanted.to_list()) - set(got))
        if missing:
            raise ValueError(
                f"frame_features.parquet: no frames for {len(missing)} {part} sequence(s) "
                f"of fold {fold}, e.g. {missing[:3]}"
            )
    return FoldInputs(
        fold=fold,
        x_train=x_tr,
        mask_train=m_tr,
        y_train=np.array([label_of[s] for s in ids_tr], dtype=np.int64),
        x_val=x_va,
        mask_val=m_va,
        y_val=np.array([label_of[s] for s in ids_va], dtype=np.int64),
        val_ids=ids_va,
        modality_idx=modality_indices(channels),
        scaler=scaler,
        pad_len=pad_len,
    )


# ----------------------------------------------------------------------------- batches
def epoch_batches(
    n: int, batch_size: int, generator: torch.Generator, world_size: int = 1
) -> list[torch.Tensor]:
    """Shuffled index batches; a last batch too small to give every rank a row is dropped."""
    perm = torch.randperm(n, generator=generator)
    batches = list(torch.split(perm, batch_size))
    if batches and len(batches[-1]) < world_size:
        batches.pop()
    return batches


def steps_per_epoch(n: int, batch_size: int, world_size: int = 1) -> int:
    steps = math.ceil(n / batch_size)
    last = n - (steps - 1) * batch_size
    return steps - (1 if steps and last < world_size else 0)


class _EpochBatches(Dataset):
    """Each item is a whole batch (DataLoader with batch_size=None): no per-row collation."""

    def __init__(self, tensors: tuple[torch.Tensor, ...], batches: list[torch.Tensor]) -> None:
        self.tensors = tensors
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        idx = self.batches[i]
        return tuple(t[idx] for t in self.tensors)


def apply_modality_dropout(
    x: torch.Tensor, drop: torch.Tensor, modality_idx: torch.Tensor
) -> torch.Tensor:
    """thm/tof channels of the ``drop`` rows set to FILL_VALUE, as in a real IMU-only sequence."""
    if modality_idx.numel() == 0 or not bool(drop.any()):
        return x
    x = x.clone()
    rows = drop.nonzero(as_tuple=True)[0]
    x[rows[:, None], :, modality_idx[None, :]] = FILL_VALUE
    return x


# ----------------------------------------------------------------------------- training
@dataclass
class TrainState:
    """What an epoch checkpoint restores besides model/optimizer/scheduler/scaler."""

    epoch: int = 0  # epochs finished
    best_score: float = -math.inf
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    best_val_proba: np.ndarray | None = None
    curves: list[list[float]] = field(default_factory=list)  # [epoch, train, val, score]


@dataclass
class FoldResult:
    fold: int
    best_epoch: int
    best_score: float
    best_state: dict[str, torch.Tensor]
    val_ids: list[str]
    val_proba: np.ndarray
    curves: list[list[float]]
    scaler: Scaler
    pad_len: int
    resumed_from: int = 0  # epochs restored from a checkpoint (0 = fresh start)


@dataclass
class FoldRun:
    """The live objects of one fold's training."""

    model: TimeSeriesNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    grad_scaler: torch.amp.GradScaler
    state: TrainState


def new_run(arch: dict[str, Any], params: TorchParams, fold: int, steps: int, device) -> FoldRun:
    seed_everything(derive_seed(params.seed, fold, "init"))
    model = TimeSeriesNet(**arch).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=params.lr, weight_decay=params.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=params.lr, total_steps=max(1, params.epochs * steps)
    )
    grad_scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    return FoldRun(model, optimizer, scheduler, grad_scaler, TrainState())


def _checkpoint_payload(run: FoldRun, fingerprint: str, fold: int) -> dict[str, Any]:
    state = run.state
    return {
        "version": ckpt.CHECKPOINT_VERSION,
        "fingerprint": fingerprint,
        "fold": fold,
        "epoch": state.epoch,
        "model": plain_state_dict(run.model),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "grad_scaler": run.grad_scaler.state_dict(),
        "best_score": state.best_score,
        "best_epoch": state.best_epoch,
        "best_state": state.best_state,
        "best_val_proba": None
        if state.best_val_proba is None
        else torch.from_numpy(state.best_val_proba),
        "curves": state.curves,
        "rng": ckpt.rng_state(),
    }


def _restore(run: FoldRun, payload: dict[str, Any]) -> None:
    run.model.load_state_dict(payload["model"])
    run.optimizer.load_state_dict(payload["optimizer"])
    run.scheduler.load_state_dict(payload["scheduler"])
    run.grad_scaler.load_state_dict(payload["grad_scaler"])
    proba = payload["best_val_proba"]
    run.state = TrainState(
        epoch=int(payload["epoch"]),
        best_score=float(payload["best_score"]),
        best_epoch=int(payload["best_epoch"]),
        best_state=payload["best_state"],
        best_val_proba=None if proba is None else proba.numpy(),
        curves=[list(row) for row in payload["curves"]],
    )
    ckpt.set_rng_state(payload["rng"])


def _wrap(model: nn.Module, device: torch.device, dist: Distributed) -> nn.Module:
    """DDP under torchrun; DataParallel over several visible GPUs; else the model itself."""
    if dist.enabled:
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if device.type == "cuda" and torch.cuda.device_count() > 1:
        return nn.DataParallel(model)
    return model


def smoothed_cross_entropy(proba: np.ndarray, y: np.ndarray, smoothing: float) -> float:
    """The training criterion (label-smoothed CE) evaluated on probabilities."""
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
) -> float:
    """One epoch; returns the mean training loss of this rank's rows."""
    seed_everything(derive_seed(params.seed, inputs.fold, epoch, "train"))
    generator = torch.Generator().manual_seed(derive_seed(params.seed, inputs.fold, epoch, "data"))
    n = len(inputs.y_train)
    batches = epoch_batches(n, params.batch_size, generator, dist.world_size)
    drop = torch.rand(n, generator=generator) < params.modality_dropout
    if dist.enabled:
        batches = [b[dist.rank :: dist.world_size] for b in batches]
    loader = DataLoader(
        _EpochBatches((*tensors, drop), batches),
        batch_size=None,
        shuffle=False,
        num_workers=params.num_workers,
    )
    modality_idx = torch.from_numpy(inputs.modality_idx)
    criterion = nn.CrossEntropyLoss(label_smoothing=params.label_smoothing)
    use_amp = device.type == "cuda"
    trained.train()
    total, count = 0.0, 0
    for b, (xb, mb, yb, dropb) in enumerate(loader):
        if on_batch is not None:
            on_batch(inputs.fold, epoch + 1, b)
        xb = apply_modality_dropout(xb, dropb, modality_idx).to(device, non_blocking=True)
        mb, yb = mb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        run.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            loss = criterion(trained(xb, mb).float(), yb)
        run.grad_scaler.scale(loss).backward()
        run.grad_scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(trained.parameters(), params.grad_clip)
        run.grad_scaler.step(run.optimizer)
        run.grad_scaler.update()
        run.scheduler.step()
        total += float(loss.detach()) * len(yb)
        count += len(yb)
    return total / max(count, 1)


def train_fold(
    inputs: FoldInputs,
    arch: dict[str, Any],
    params: TorchParams,
    *,
    device: torch.device,
    checkpoint_dir: Path | None = None,
    fingerprint: str = "",
    dist: Distributed | None = None,
    on_batch: BatchHook | None = None,
) -> FoldResult:
    """Train one fold for ``params.epochs`` epochs; the best epoch by competition score wins.

    With ``checkpoint_dir``, a checkpoint is written after every epoch and training resumes
    from a valid one. Under DDP only rank 0 validates and writes checkpoints.
    """
    dist = dist or Distributed()
    fold = inputs.fold
    steps = steps_per_epoch(len(inputs.y_train), params.batch_size, dist.world_size)
    run = new_run(arch, params, fold, steps, device)
    resumed_from = 0
    last_path = checkpoint_dir / ckpt.LAST_NAME if checkpoint_dir else None
    payload = ckpt.load_payload(last_path, fingerprint, fold) if last_path else None
    if payload is not None:
        try:
            _restore(run, payload)
            resumed_from = run.state.epoch
            log.info(
                "fold %d: resuming from epoch %d (checkpoint %s)", fold, resumed_from + 1, last_path
            )
        except (KeyError, RuntimeError, ValueError, TypeError) as error:
            log.warning(
                "fold %d: checkpoint %s does not fit (%s); restarting the fold",
                fold,
                last_path,
                error,
            )
            run = new_run(arch, params, fold, steps, device)

    trained = _wrap(run.model, device, dist)
    tensors = (
        torch.from_numpy(inputs.x_train),
        torch.from_numpy(inputs.mask_train),
        torch.from_numpy(inputs.y_train),
    )
    # A bar only on a terminal (disable=None): logs and tests see just the epoch lines.
    epochs = tqdm(
        range(run.state.epoch, params.epochs),
        desc=f"torch fold {fold}",
        initial=run.state.epoch,
        total=params.epochs,
        unit="epoch",
        disable=None if dist.is_main else True,
        leave=False,
    )
    for epoch in epochs:
        started = time.perf_counter()
        train_loss = train_epoch(
            run, trained, inputs, tensors, params, epoch, device, dist, on_batch
        )
        run.state.epoch = epoch + 1
        if not dist.is_main:
            continue
        _validate_and_checkpoint(run, inputs, params, train_loss, last_path, fingerprint)
        state = run.state
        log.info(
            "fold %d epoch %d/%d: train_loss %.4f val_loss %.4f val_score %.4f "
            "(best %.4f @ %d) %.1fs",
            fold,
            epoch + 1,
            params.epochs,
            train_loss,
            state.curves[-1][2],
            state.curves[-1][3],
            state.best_score,
            state.best_epoch,
            time.perf_counter() - started,
        )
    return _result(run, inputs, resumed_from)


def _validate_and_checkpoint(
    run: FoldRun,
    inputs: FoldInputs,
    params: TorchParams,
    train_loss: float,
    last_path: Path | None,
    fingerprint: str,
) -> None:
    state = run.state
    proba = predict_proba(unwrap(run.model), inputs.x_val, inputs.mask_val)
    val_loss = smoothed_cross_entropy(proba, inputs.y_val, params.label_smoothing)
    val_score = competition_score(inputs.y_val, proba.argmax(axis=1))
    state.curves.append([state.epoch, train_loss, val_loss, val_score])
    if val_score > state.best_score or state.best_state is None:
        state.best_score, state.best_epoch = val_score, state.epoch
        state.best_state = plain_state_dict(run.model)
        state.best_val_proba = proba
    if last_path is not None:
        ckpt.save_payload(_checkpoint_payload(run, fingerprint, inputs.fold), last_path)


def _result(run: FoldRun, inputs: FoldInputs, resumed_from: int) -> FoldResult:
    state = run.state
    if state.best_state is None or state.best_val_proba is None:
        # epochs == 0 or a non-main rank: fall back to the current weights.
        state.best_state = plain_state_dict(run.model)
        state.best_val_proba = predict_proba(unwrap(run.model), inputs.x_val, inputs.mask_val)
    return FoldResult(
        fold=inputs.fold,
        best_epoch=state.best_epoch,
        best_score=state.best_score,
        best_state=state.best_state,
        val_ids=list(inputs.val_ids),
        val_proba=state.best_val_proba,
        curves=state.curves,
        scaler=inputs.scaler,
        pad_len=inputs.pad_len,
        resumed_from=resumed_from,
    )


# ----------------------------------------------------------------------------- finished folds
def save_fold_done(result: FoldResult, path: Path, fingerprint: str) -> None:
    ckpt.save_payload(
        {
            "version": ckpt.CHECKPOINT_VERSION,
            "fingerprint": fingerprint,
            "fold": result.fold,
            "best_epoch": result.best_epoch,
            "best_score": result.best_score,
            "best_state": result.best_state,
            "val_ids": result.val_ids,
            "val_proba": torch.from_numpy(np.ascontiguousarray(result.val_proba)),
            "curves": result.curves,
            "scaler": result.scaler.to_json(),
            "pad_len": result.pad_len,
        },
        path,
    )


def load_fold_done(path: Path, fingerprint: str, fold: int) -> FoldResult | None:
    payload = ckpt.load_payload(path, fingerprint, fold)
    if payload is None:
        return None
    try:
        return FoldResult(
            fold=fold,
            best_epoch=int(payload["best_epoch"]),
            best_score=float(payload["best_score"]),
            best_state=payload["best_state"],
            val_ids=list(payload["val_ids"]),
            val_proba=payload["val_proba"].numpy(),
            curves=[list(row) for row in payload["curves"]],
            scaler=Scaler.from_json(payload["scaler"]),
            pad_len=int(payload["pad_len"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        log.warning(
            "fold %d: finished-fold file %s is incomplete (%s); retraining", fold, path, error
        )
        return None


def run_fold(
    frame_features: pl.DataFrame,
    labeled: pl.DataFrame,
    fold: int,
    channels: Sequence[str],
    params: TorchParams,
    *,
    device: torch.device,
    checkpoint_root: Path | None,
    fingerprint: str,
    dist: Distributed | None = None,
    on_batch: BatchHook | None = None,
) -> FoldResult:
    """A finished fold from its done-file, else train it (resuming from its last epoch)."""
    dist = dist or Distributed()
    directory = ckpt.fold_dir(checkpoint_root, fingerprint, fold) if checkpoint_root else None
    if directory is not None:
        done = load_fold_done(directory / ckpt.DONE_NAME, fingerprint, fold)
        if done is not None:
            log.info("fold %d: finished earlier, using %s", fold, directory / ckpt.DONE_NAME)
            return done
    inputs = prepare_fold(frame_features, labeled, fold, channels, params)
    arch = architecture_kwargs(
        len(channels), params.conv_channels, params.lstm_hidden, params.gru_hidden, params.dropout
    )
    log.info(
        "fold %d: %d training / %d validation sequences, pad_len %d, %d channels",
        fold,
        len(inputs.y_train),
        len(inputs.y_val),
        inputs.pad_len,
        len(channels),
    )
    result = train_fold(
        inputs,
        arch,
        params,
        device=device,
        checkpoint_dir=directory,
        fingerprint=fingerprint,
        dist=dist,
        on_batch=on_batch,
    )
    if directory is not None and dist.is_main:
        save_fold_done(result, directory / ckpt.DONE_NAME, fingerprint)
        (directory / ckpt.LAST_NAME).unlink(missing_ok=True)
    return result


# ----------------------------------------------------------------------------- stage outputs
def oof_frame(results: Sequence[FoldResult], labeled: pl.DataFrame) -> pl.DataFrame:
    """The OOF table: sequence_id, fold, y_true, sensor_group, p00..p17 (sorted by id)."""
    from cmi.schema import PROBA_COLUMNS

    parts = []
    for result in results:
        proba = np.asarray(result.val_proba, dtype=np.float64)
        proba = proba / proba.sum(axis=1, keepdims=True)
        frame = pl.DataFrame({"sequence_id": result.val_ids}).with_columns(
            pl.lit(result.fold, dtype=pl.Int32).alias("fold"),
            *(pl.Series(name, proba[:, i]) for i, name in enumerate(PROBA_COLUMNS)),
        )
        parts.append(frame)
    probs = pl.concat(parts)
    info = labeled.select(
        "sequence_id",
        pl.col("label").cast(pl.Int32).alias("y_true"),
        pl.col("sensor_group").cast(pl.Utf8),
    )
    oof = probs.join(info, on="sequence_id", how="left")
    return oof.select("sequence_id", "fold", "y_true", "sensor_group", *PROBA_COLUMNS).sort(
        "sequence_id"
    )


def curves_frame(results: Sequence[FoldResult]) -> pl.DataFrame:
    rows = [
        (r.fold, int(epoch), float(tl), float(vl), float(vs))
        for r in results
        for epoch, tl, vl, vs in r.curves
    ]
    schema = {
        "fold": pl.Int32,
        "epoch": pl.Int32,
        "train_loss": pl.Float64,
        "val_loss": pl.Float64,
        "val_score": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema, orient="row")
