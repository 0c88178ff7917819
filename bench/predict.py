"""Inference speed as Kaggle sees it: bundle load time, and per-call latency of `predict`.

Uses the demo data in /tmp/cmi-bench/demo and the demo project in /tmp/cmi-bench/project-demo
(made when missing: cmi synth, then the extract, folds, lgbm, torch, oof_blend and bundle
stage scripts with this repo's params.yaml; training takes several minutes on 2 cores, and is
reused by later runs). Then, in this process, like the Kaggle notebook (one Torch thread):
  - load: seconds for `cmi.inference.load()` (verify every checksum, parse all fold models);
  - predict: milliseconds per `cmi.inference.predict(sequence, demographics)` call over the
    demo test.csv (500 sequences) in the gateway's shuffled order; median and p99 of wall
    time, and of this process's CPU time (on a shared host the wall time also counts waiting
    for other processes); then a breakdown (features, LightGBM folds, Torch folds) over the
    same calls.
Targets: load < 10 s, median < 50 ms, p99 < 150 ms.
Usage: python bench/predict.py [--calls 500] [--seed 0] [--json out.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the other benches and stages

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = Path("/tmp/cmi-bench")
RAW_DIR = BENCH_DIR / "demo"
PROJECT = BENCH_DIR / "project-demo"
TARGETS = {"load_s": 10.0, "median_ms": 50.0, "p99_ms": 150.0}
# Stage scripts in order, each with the file that says it has run.
STAGES: tuple[tuple[str, str], ...] = (
    ("extract.py", "data/features/frame_features.parquet"),
    ("make_folds.py", "data/folds/folds.parquet"),
    ("train_lgbm.py", "models/lgbm/meta.json"),
    ("train_torch.py", "models/torch/meta.json"),
    ("oof_blend.py", "models/blend/weights.json"),
    ("bundle.py", "models/bundle/manifest.json"),
)


def ensure_bundle() -> Path:
    """The demo project's bundle, running whatever stage has not run yet."""
    if not (RAW_DIR / "test.csv").exists():
        subprocess.run(
            [sys.executable, "-m", "cmi", "synth", "--preset", "demo", "--out", str(RAW_DIR)],
            check=True,
        )
    if not (PROJECT / "params.yaml").exists():
        PROJECT.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "params.yaml", PROJECT / "params.yaml")
    if not (PROJECT / "data" / "raw" / "test.csv").exists():
        shutil.copytree(RAW_DIR, PROJECT / "data" / "raw", dirs_exist_ok=True)
    for script, done in STAGES:
        if not (PROJECT / done).exists():
            print(f"[bench predict] running stages/{script} in {PROJECT}", flush=True)
            started = time.perf_counter()
            subprocess.run([sys.executable, str(REPO / "stages" / script)], cwd=PROJECT, check=True)
            print(f"[bench predict] {script}: {time.perf_counter() - started:.0f}s", flush=True)
    return PROJECT / "models" / "bundle"


def _ms(values: list[float]) -> dict[str, float]:
    array = 1000 * np.asarray(values)
    return {
        "median_ms": float(np.median(array)),
        "p99_ms": float(np.percentile(array, 99)),
        "max_ms": float(array.max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="sequences to predict (max: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the gateway order")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    bundle_dir = ensure_bundle()
    started = time.perf_counter()
    import polars as pl
    import torch

    from cmi import inference
    from cmi.submission import gateway_batches

    import_s = time.perf_counter() - started
    torch.set_num_threads(1)  # as kaggle/submission_notebook.py

    started = time.perf_counter()
    predictor = inference.load(inference.InferenceSettings(model_path=bundle_dir), strict=True)
    load_s = time.perf_counter() - started
    print(f"[bench predict] {predictor.describe()}", flush=True)

    test = pl.read_csv(RAW_DIR / "test.csv")
    demographics = pl.read_csv(RAW_DIR / "test_demographics.csv")
    batches = gateway_batches(test, demographics, seed=args.seed)[: args.calls]
    inference.predict(*batches[0][1:])  # first call pays one-off allocations, as on Kaggle

    latency, cpu, features_s, lgbm_s, torch_s = [], [], [], [], []
    answers = []
    for _, sequence, demo in batches:
        t0, c0 = time.perf_counter(), time.process_time()
        answers.append(inference.predict(sequence, demo))
        latency.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    for _, sequence, demo in batches:  # the same calls again, split by component
        t0 = time.perf_counter()
        features = predictor.features(sequence, demo)
        t1 = time.perf_counter()
        predictor.lgbm_proba(features)
        t2 = time.perf_counter()
        if predictor.uses_torch:
            predictor.torch_proba(features)
        t3 = time.perf_counter()
        features_s.append(t1 - t0)
        lgbm_s.append(t2 - t1)
        torch_s.append(t3 - t2)

    lengths = test.group_by("sequence_id").len()["len"]
    result = {
        "bundle": str(bundle_dir),
        "lgbm_folds": len(predictor.lgbm.boosters),
        "torch_folds": len(predictor.torch_part.folds) if predictor.uses_torch else 0,
        "sequences": len(batches),
        "sequence_length_median": float(lengths.median()),
        "sequence_length_max": int(lengths.max()),
        "import_s": import_s,
        "load_s": load_s,
        "predict": _ms(latency),
        # CPU time of this process per call: what the call costs when it has the CPU to
        # itself (wall time above also counts waiting for other processes on a shared host).
        "predict_cpu": _ms(cpu),
        "load_average_1m": os.getloadavg()[0],
        "features": _ms(features_s),
        "lgbm": _ms(lgbm_s),
        "torch": _ms(torch_s),
        "distinct_answers": len(set(answers)),
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
    }
    ok = (
        load_s < TARGETS["load_s"]
        and result["predict"]["median_ms"] < TARGETS["median_ms"]
        and result["predict"]["p99_ms"] < TARGETS["p99_ms"]
    )
    result["meets_targets"] = ok
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    p = result["predict"]
    print(
        f"predict bench: load {load_s:.2f}s (imports {import_s:.1f}s), "
        f"{len(batches)} sequences with {result['lgbm_folds']} LightGBM + "
        f"{result['torch_folds']} Torch folds: median {p['median_ms']:.1f} ms, "
        f"p99 {p['p99_ms']:.1f} ms, max {p['max_ms']:.1f} ms "
        f"(CPU time median {result['predict_cpu']['median_ms']:.1f} ms, "
        f"p99 {result['predict_cpu']['p99_ms']:.1f} ms; load average "
        f"{result['load_average_1m']:.1f} on {result['cpus']} CPUs) "
        f"[features {result['features']['median_ms']:.1f} / lgbm {result['lgbm']['median_ms']:.1f}"
        f" / torch {result['torch']['median_ms']:.1f} ms median] "
        f"(targets load < {TARGETS['load_s']:.0f}s, median < {TARGETS['median_ms']:.0f} ms, "
        f"p99 < {TARGETS['p99_ms']:.0f} ms): {'OK' if ok else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
