"""DVC stage `torch`: TimeSeriesNet per fold, with epoch-level resume from checkpoints/torch/.

Outputs: models/torch/{fold_k.pt, fold_k_scaler.json, meta.json}, data/oof/torch.parquet,
metrics/torch.json, plots/torch_curves.csv. Several GPUs: run it under
`torchrun --nproc_per_node=N stages/train_torch.py` (DDP); a plain run over several visible
GPUs uses DataParallel.

Test hook: CMI_TORCH_KILL_AT="fold=1,epoch=2,batch=3" SIGKILLs this process just before that
training step (fold as in fold_k, epoch 1-based as logged, batch 0-based).
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: idle worker threads sleep instead of spinning. On a small shared
# machine spinning threads made a training step ~7x slower in CPU time under load.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import logging
import signal
import time
from pathlib import Path

import polars as pl
import torch

from cmi.io import fingerprint, write_json, write_parquet, write_text
from cmi.metrics import summarize_oof
from cmi.nn.checkpoint import save_state_dict
from cmi.nn.data import frame_channels
from cmi.nn.model import architecture_kwargs
from cmi.nn.train import (
    BatchHook,
    Distributed,
    FoldResult,
    configure_torch,
    curves_frame,
    labeled_sequences,
    oof_frame,
    resolve_device,
    run_fold,
)
from cmi.params import Params, load_params, section_dict
from cmi.paths import ProjectPaths
from cmi.schema import GESTURES

log = logging.getLogger("cmi.stages.torch")
NN_PACKAGE = Path(__file__).resolve().parents[1] / "cmi" / "nn"


def stage_fingerprint(paths: ProjectPaths, params: Params) -> str:
    """Inputs, this stage's params and its code: a change in any of them is a new run."""
    code = [*sorted(NN_PACKAGE.glob("*.py")), Path(__file__).resolve()]
    files = [paths.sequences, paths.frame_features, paths.folds, *code]
    section = {"torch": section_dict(params.torch), "cv": section_dict(params.cv)}
    return fingerprint(files, section, salt="torch")


def kill_hook(spec: str | None) -> BatchHook | None:
    """The CMI_TORCH_KILL_AT test hook: SIGKILL self at (fold, epoch, batch)."""
    if not spec:
        return None
    where = {k.strip(): int(v) for k, v in (part.split("=") for part in spec.split(","))}
    target = (where["fold"], where["epoch"], where["batch"])

    def hook(fold: int, epoch: int, batch: int) -> None:
        if (fold, epoch, batch) == target:
            log.warning("CMI_TORCH_KILL_AT=%s: killing myself", spec)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def distributed_from_env() -> Distributed:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; a plain run has none of them."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    return Distributed(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def write_outputs(
    paths: ProjectPaths,
    params: Params,
    results: list[FoldResult],
    labeled: pl.DataFrame,
    channels: list[str],
) -> dict:
    tp = params.torch
    out_dir = paths.torch_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("fold_*"):
        stale.unlink()  # a previous run with more folds must not leave extra weights behind
    for result in results:
        k = result.fold
        save_state_dict(result.best_state, out_dir / f"fold_{k}.pt")
        write_json(
            {**result.scaler.to_json(), "pad_len": result.pad_len},
            out_dir / f"fold_{k}_scaler.json",
        )
    pad_lens = [r.pad_len for r in results]
    arch = architecture_kwargs(
        len(channels), tp.conv_channels, tp.lstm_hidden, tp.gru_hidden, tp.dropout
    )
    write_json(
        {
            "n_folds": len(results),
            "channels": channels,
            # One value for code that wants one; each fold's own is in fold_{k}_scaler.json.
            "pad_len": max(pad_lens),
            "pad_len_per_fold": pad_lens,
            "keep": tp.keep,
            "architecture": arch,
            "classes": list(GESTURES),
            "best_epochs": [r.best_epoch for r in results],
        },
        out_dir / "meta.json",
    )
    oof = oof_frame(results, labeled)
    write_parquet(oof, paths.oof("torch"))
    metrics = summarize_oof(oof)
    metrics["best_epochs"] = [r.best_epoch for r in results]
    metrics["best_val_scores"] = [r.best_score for r in results]
    metrics["pad_len_per_fold"] = pad_lens
    write_json(metrics, paths.metrics("torch"))
    curves = curves_frame(results)
    write_text(curves.write_csv(), paths.plots_dir / "torch_curves.csv")
    return metrics


def main(root: Path = Path(".")) -> None:
    started = time.perf_counter()
    paths = ProjectPaths(root)
    params = load_params(paths.params)
    dist = distributed_from_env()
    if not dist.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # one rank tells the story
    device = resolve_device(params.torch.device, dist)
    if dist.enabled:
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # one GPU per torchrun rank
    threads = configure_torch(device, dist)
    log.info("device %s, %d threads, world size %d", device, threads, dist.world_size)

    sequences = pl.read_parquet(paths.sequences)
    frame_features = pl.read_parquet(paths.frame_features)
    labeled = labeled_sequences(sequences, pl.read_parquet(paths.folds))
    channels = frame_channels(frame_features)
    key = stage_fingerprint(paths, params)
    checkpoint_root = paths.checkpoints_dir / "torch"
    log.info("checkpoints under %s", checkpoint_root / key)
    hook = kill_hook(os.environ.get("CMI_TORCH_KILL_AT"))

    results = []
    for fold in sorted(labeled["fold"].unique().to_list()):
        if dist.enabled:
            torch.distributed.barrier()
        results.append(
            run_fold(
                frame_features,
                labeled,
                fold,
                channels,
                params.torch,
                device=device,
                checkpoint_root=checkpoint_root,
                fingerprint=key,
                dist=dist,
                on_batch=hook,
            )
        )
    if dist.is_main:
        metrics = write_outputs(paths, params, results, labeled, channels)
        log.info(
            "OOF score %.4f (binary F1 %.4f, macro F1 %.4f), best epochs %s, %.0fs",
            metrics["score"],
            metrics["binary_f1"],
            metrics["macro_f1"],
            metrics["best_epochs"],
            time.perf_counter() - started,
        )
    if dist.enabled:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main()
