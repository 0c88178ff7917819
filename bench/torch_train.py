"""Torch stage speed at demo scale: training throughput and one-sequence inference latency.

Makes demo data in /tmp/cmi-bench/demo and a featurized project in /tmp/cmi-bench/project-demo
when they are missing (cmi synth, stages/extract.py, stages/make_folds.py), then, with the
params.yaml torch settings of this repo:
  - training: sequences/second of fold 0, median over a few epochs (training steps only), per
    core (per process-CPU-second), 1 thread vs all as a ratio, the share of time steps the
    network computes (it cuts a batch after its longest sequence), and length-bucketed batches
    (``--bucket N``, torch.bucket_batches) vs plain shuffled ones as a ratio in one run;
    with --augment the epochs also run params.yaml's augmentation (or, where a key is off,
    mixup 0.4, rotation 10 degrees, stretch 0.2, shift 8), to price it;
  - inference: milliseconds to predict ONE sequence with a fold model (median, p99 over a few
    hundred calls), model only and to_padded + model;
on CPU, and on CUDA too when a GPU is visible. About 2-4 minutes on 2 cores.
Usage: python bench/torch_train.py [--epochs 3] [--calls 300] [--augment] [--bucket 8]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see stages/train_torch.py

import argparse
import dataclasses
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from cmi.nn.augment import build_augmenter
from cmi.nn.data import input_channels, to_padded
from cmi.nn.fold_data import labeled_sequences, prepare_fold
from cmi.nn.model import architecture_kwargs
from cmi.nn.predict import network_proba
from cmi.nn.runtime import Distributed, configure_torch, usable_cores
from cmi.nn.train import epoch_batches, new_run, steps_per_epoch, train_epoch, training_tensors
from cmi.nn.views import predict_views
from cmi.params import load_params
from cmi.paths import ProjectPaths

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = Path("/tmp/cmi-bench")
RAW_DIR = BENCH_DIR / "demo"
PROJECT = BENCH_DIR / "project-demo"


def ensure_project() -> ProjectPaths:
    """Demo CSVs and a project with extract + folds done, reused across bench runs."""
    if not (RAW_DIR / "train.csv").exists():
        subprocess.run(
            [sys.executable, "-m", "cmi", "synth", "--preset", "demo", "--out", str(RAW_DIR)],
            check=True,
        )
    paths = ProjectPaths(PROJECT)
    if not paths.folds.exists():
        PROJECT.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "params.yaml", paths.params)
        shutil.copytree(RAW_DIR, paths.raw_dir, dirs_exist_ok=True)
        for script in ("extract.py", "make_folds.py"):
            subprocess.run([sys.executable, str(REPO / "stages" / script)], cwd=PROJECT, check=True)
    return paths


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def bench_training(inputs, params, device: torch.device, epochs: int, threads: int):
    """Timed epochs at ``threads`` intra-op threads: wall rates, CPU-second rate, val seconds."""
    torch.set_num_threads(threads)
    arch = architecture_kwargs(
        inputs.train.x.shape[2],
        params.conv_channels,
        params.lstm_hidden,
        params.gru_hidden,
        params.dropout,
    )
    steps = steps_per_epoch(len(inputs.train), params.batch_size)
    run = new_run(arch, params, inputs.fold, steps, device)
    tensors = training_tensors(inputs.train)
    augmenter = build_augmenter(params, inputs.scaler)
    rates, cpu_rates = [], []
    for epoch in range(epochs):
        started, cpu_started = time.perf_counter(), time.process_time()
        train_epoch(
            run, run.model, inputs, tensors, params, epoch, device, Distributed(), None,
            None, augmenter,
        )  # fmt: skip
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(len(inputs.train) / (time.perf_counter() - started))
        cpu_rates.append(len(inputs.train) / (time.process_time() - cpu_started))
    started = time.perf_counter()
    predict_views(run.model, inputs.inner, inputs.modality_idx)  # what each epoch validates
    val_seconds = time.perf_counter() - started
    return run.model, rates, statistics.median(cpu_rates), val_seconds


def computed_step_share(lengths: np.ndarray, batches: list[torch.Tensor], pad_len: int) -> float:
    """Share of pad_len-wide time steps the network computes: it cuts each batch after the
    batch's longest sequence."""
    return float(np.mean([lengths[b.numpy()].max() for b in batches]) / pad_len)


def padding_report(inputs, batch_size: int, bucket_batches: int) -> str:
    """How many time steps an epoch computes, of pad_len per row, and how many are real."""
    mask = inputs.train.mask
    lengths = mask.sum(axis=1)
    shares = {}
    for bucket in (0, bucket_batches):
        generator = torch.Generator().manual_seed(0)
        batches = epoch_batches(
            len(lengths), batch_size, generator, lengths=torch.from_numpy(lengths),
            bucket_batches=bucket,
        )  # fmt: skip
        shares[bucket] = computed_step_share(lengths, batches, inputs.pad_len)
    return (
        f"padding: real steps are {mask.mean():.0%} of pad_len x rows (pad_len {inputs.pad_len}, "
        f"mean length {lengths.mean():.0f}); the network computes {shares[0]:.0%} of them with "
        f"shuffled batches, {shares[bucket_batches]:.0%} with bucket_batches={bucket_batches}"
    )


def bucket_comparison(inputs, params, device: torch.device, bucket: int, rounds: int = 3) -> str:
    """Plain shuffled batches vs length-bucketed ones, interleaved epochs (medians of
    ``rounds``) at the current thread count, as a ratio."""
    threads = torch.get_num_threads()
    results: dict[int, list[tuple[float, float]]] = {0: [], bucket: []}
    for _ in range(rounds):
        for n in results:
            variant = dataclasses.replace(params, bucket_batches=n)
            _, rates, cpu_rate, _ = bench_training(inputs, variant, device, 1, threads)
            results[n].append((rates[0], cpu_rate))
    wall = {n: statistics.median(r[0] for r in v) for n, v in results.items()}
    cpu = {n: statistics.median(r[1] for r in v) for n, v in results.items()}
    verdict = "PASS" if wall[bucket] > wall[0] else "FAIL"
    return (
        f"bucketing: bucket_batches={bucket} vs 0, medians of {rounds} interleaved epochs: wall "
        f"{wall[bucket]:.0f} vs {wall[0]:.0f} sequences/s (x{wall[bucket] / wall[0]:.2f}), per "
        f"CPU-second {cpu[bucket]:.0f} vs {cpu[0]:.0f} (x{cpu[bucket] / cpu[0]:.2f}) -> {verdict}"
    )


def bench_inference(model, inputs, frames: pl.DataFrame, channels, device, calls: int):
    model.to(device).eval()
    x, mask = inputs.scored.x[:1], inputs.scored.mask[:1]
    one_id = inputs.scored.ids[0]
    one_frames = frames.filter(pl.col("sequence_id") == one_id)
    model_ms, full_ms = [], []
    for i in range(calls + 10):
        started = time.perf_counter()
        network_proba(model, x, mask)
        if device.type == "cuda":
            torch.cuda.synchronize()
        middle = time.perf_counter()
        xs, ms, _ = to_padded(one_frames, channels, inputs.scaler, inputs.pad_len, "end")
        network_proba(model, xs, ms)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 10:  # warm-up calls excluded
            model_ms.append((middle - started) * 1e3)
            full_ms.append((time.perf_counter() - middle) * 1e3)
    return model_ms, full_ms


def thread_comparison(inputs, params, device: torch.device, threads: int, rounds: int = 3) -> str:
    """1 thread vs ``threads``, interleaved epochs (medians of ``rounds``), as ratios."""
    results: dict[int, list[tuple[float, float]]] = {1: [], threads: []}
    for _ in range(rounds):
        for n in results:
            _, rates, cpu_rate, _ = bench_training(inputs, params, device, 1, n)
            results[n].append((rates[0], cpu_rate))
    torch.set_num_threads(threads)
    wall = {n: statistics.median(r[0] for r in v) for n, v in results.items()}
    cpu = {n: statistics.median(r[1] for r in v) for n, v in results.items()}
    return (
        f"threads: {threads} vs 1, medians of {rounds} interleaved epochs: wall "
        f"{wall[threads]:.0f} vs {wall[1]:.0f} sequences/s (x{wall[threads] / wall[1]:.2f}), per "
        f"CPU-second {cpu[threads]:.0f} vs {cpu[1]:.0f} (x{cpu[threads] / cpu[1]:.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="timed training epochs")
    parser.add_argument("--calls", type=int, default=300, help="timed one-sequence predictions")
    parser.add_argument("--augment", action="store_true", help="train with augmentation on")
    parser.add_argument(
        "--bucket", type=int, default=8, help="bucket_batches to compare with plain batches"
    )
    args = parser.parse_args()

    paths = ensure_project()
    params = load_params(REPO / "params.yaml").torch
    if args.augment:
        params = dataclasses.replace(
            params,
            mixup_alpha=params.mixup_alpha or 0.4,
            rotate_deg=params.rotate_deg or 10.0,
            time_stretch=params.time_stretch or 0.2,
            time_shift=params.time_shift or 8,
        )
    frames = pl.read_parquet(paths.frame_features)
    labeled = labeled_sequences(pl.read_parquet(paths.sequences), pl.read_parquet(paths.folds))
    channels = input_channels(frames)
    inputs = prepare_fold(frames, labeled, 0, channels, params)
    n_folds = labeled["fold"].n_unique()
    print(
        f"demo: {labeled.height} sequences, {n_folds} folds; fold 0: {len(inputs.train)} train "
        f"/ {len(inputs.inner)} inner / {len(inputs.scored)} scored, pad_len {inputs.pad_len}, "
        f"{len(channels)} channels"
    )
    print(
        f"torch params: epochs {params.epochs}, batch {params.batch_size}, conv "
        f"{list(params.conv_channels)}, lstm {params.lstm_hidden}, gru {params.gru_hidden}; "
        f"augmentation: mixup {params.mixup_alpha}, rotate {params.rotate_deg} deg, stretch "
        f"{params.time_stretch}, shift {params.time_shift}"
    )
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(padding_report(inputs, params.batch_size, args.bucket))
    for device in devices:
        threads = configure_torch(device)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"\n== {device} ({threads} CPU threads, load average {load:.1f})")
        model, rates, cpu_rate, val_seconds = bench_training(
            inputs, params, device, args.epochs, threads
        )
        median_rate = statistics.median(rates)
        epoch_s = len(inputs.train) / median_rate + val_seconds
        stage_s = epoch_s * params.epochs * n_folds
        print(
            f"training: {median_rate:.0f} sequences/s (median of {len(rates)} epochs: "
            f"{', '.join(f'{r:.0f}' for r in rates)}); inner validation, both views, "
            f"{val_seconds:.2f} s"
        )
        if device.type == "cpu":
            # Per CPU-second of this process: what one core delivers, and less sensitive
            # to other load on a shared machine than the wall rate.
            print(
                f"  per core: {cpu_rate:.0f} sequences per process-CPU-second; wall "
                f"{median_rate / threads:.0f} sequences/s per thread"
            )
        print(
            f"  -> about {epoch_s:.1f} s per epoch, {stage_s / 60:.1f} min for "
            f"{params.epochs} epochs x {n_folds} folds (the whole stage, data prep excluded)"
        )
        print(bucket_comparison(inputs, params, device, args.bucket))
        if device.type == "cpu" and usable_cores() > 1:
            # the stage trains with CPU_THREADS per process (members side by side); more
            # threads in one process, for the record:
            print(thread_comparison(inputs, params, device, usable_cores()))
            torch.set_num_threads(threads)
        model_ms, full_ms = bench_inference(model, inputs, frames, channels, device, args.calls)
        for name, values in (("model only", model_ms), ("to_padded + model", full_ms)):
            print(
                f"inference, one sequence, one fold ({name}): median "
                f"{statistics.median(values):.2f} ms, p99 {percentile(values, 99):.2f} ms "
                f"({len(values)} calls); x{n_folds} folds per sequence"
            )


if __name__ == "__main__":
    main()
