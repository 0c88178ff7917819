"""Benchmark of the extract stage and the single-sequence inference feature path.

    python bench/extract.py [--runs 3] [--n-single 200] [--data /tmp/cmi-bench/full]

Generates the ``full`` synthetic preset once (cached in --data), runs ``stages/extract.py``
in a fresh project folder ``--runs`` times, each in its own subprocess under
``/usr/bin/time -v`` when available (else ``getrusage(RUSAGE_CHILDREN)``) so its peak RSS is
measured alone, and times ``prepare_sensor_frame`` + ``compute_features`` on single
sequences the way inference calls them. Targets: stage < 60 s and < 8 GB, inference < 10 ms.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

STAGE_SECONDS, STAGE_GB, SINGLE_MS = 60.0, 8.0, 10.0
RAW_FILES = ("train.csv", "train_demographics.csv", "test.csv", "test_demographics.csv")


def ensure_data(data_dir: Path) -> Path:
    if all((data_dir / name).exists() for name in RAW_FILES):
        print(f"using cached synthetic data in {data_dir}")
        return data_dir
    from cmi.synth import write_synthetic

    start = time.perf_counter()
    write_synthetic("full", data_dir, seed=0)
    print(f"generated 'full' synthetic data in {data_dir} ({time.perf_counter() - start:.0f} s)")
    return data_dir


def make_project(root: Path, data_dir: Path) -> Path:
    """A project folder with the repo's params.yaml and data/raw linked to the cached CSVs."""
    (root / "data" / "raw").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "params.yaml", root / "params.yaml")
    for name in RAW_FILES:
        os.symlink(data_dir / name, root / "data" / "raw" / name)
    return root


def run_stage_once(root: Path) -> tuple[float, float, float]:
    """(wall seconds, peak RSS GB, CPU seconds user+sys) of one stage run in its own process."""
    command = [sys.executable, str(REPO_ROOT / "stages" / "extract.py")]
    time_v = Path("/usr/bin/time")
    if time_v.exists():
        command = [str(time_v), "-v", *command]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    result = subprocess.run(command, cwd=root, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"extract failed:\n{result.stderr[-4000:]}")
    steps = [line.split(": ", 1)[-1] for line in result.stderr.splitlines() if " s" in line[-6:]]
    print("   steps:", "; ".join(steps))
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    user = re.search(r"User time \(seconds\): ([\d.]+)", result.stderr)
    system = re.search(r"System time \(seconds\): ([\d.]+)", result.stderr)
    if found and user and system:
        peak_kb = int(found.group(1))
        cpu = float(user.group(1)) + float(system.group(1))
    else:
        # ru_maxrss of children is the max over all children so far: fine while runs are alike.
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak_kb = max(before, usage.ru_maxrss)
        cpu = usage.ru_utime + usage.ru_stime  # cumulative over runs: an upper bound
    return wall, peak_kb / 1024**2, cpu


def single_sequence_ms(data_dir: Path, n_single: int) -> tuple[float, float, int]:
    """Median wall and CPU ms of prepare_sensor_frame + compute_features on one test-like
    sequence (CPU counts polars' worker threads too)."""
    from cmi.features import compute_features, prepare_sensor_frame
    from cmi.params import load_params
    from cmi.schema import TRAIN_ONLY_COLUMNS

    params = load_params(REPO_ROOT / "params.yaml").extract
    train = pl.read_csv(data_dir / "train.csv", n_rows=60_000, infer_schema_length=10_000)
    demographics = pl.read_csv(data_dir / "train_demographics.csv")
    test_like = train.drop(TRAIN_ONLY_COLUMNS)
    # the same kind of per-call frames Kaggle's gateway hands to predict()
    sequences = list(test_like.partition_by("sequence_id", maintain_order=True))[:n_single]
    demo_rows = {
        row[0]: demographics.filter(pl.col("subject") == row[0])
        for row in demographics.select("subject").iter_rows()
    }
    for sequence in sequences[:5]:  # warm-up
        compute_features(prepare_sensor_frame(sequence), demo_rows[sequence["subject"][0]], params)
    walls, cpus = [], []
    for sequence in sequences:
        demo = demo_rows[sequence["subject"][0]]
        start, start_cpu = time.perf_counter(), time.process_time()
        compute_features(prepare_sensor_frame(sequence), demo, params)
        walls.append((time.perf_counter() - start) * 1000)
        cpus.append((time.process_time() - start_cpu) * 1000)
    return statistics.median(walls), statistics.median(cpus), len(walls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--n-single", type=int, default=200)
    parser.add_argument("--data", type=Path, default=Path("/tmp/cmi-bench/full"))
    args = parser.parse_args()

    data_dir = ensure_data(args.data)
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    walls, peaks, cpus = [], [], []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="cmi-bench-extract-") as tmp:
            wall, peak, cpu = run_stage_once(make_project(Path(tmp), data_dir))
        walls.append(wall)
        peaks.append(peak)
        cpus.append(cpu)
        print(f"run {run + 1}/{args.runs}: {wall:.1f} s, CPU {cpu:.1f} s, peak RSS {peak:.2f} GB")
    stage_s, stage_cpu = statistics.median(walls), statistics.median(cpus)
    print(
        f"extract stage: median {stage_s:.1f} s wall ({stage_cpu:.1f} s CPU), "
        f"median peak RSS {statistics.median(peaks):.2f} GB (max {max(peaks):.2f} GB) "
        f"over {args.runs} runs"
    )

    single_ms, single_cpu_ms, n = single_sequence_ms(data_dir, args.n_single)
    print(
        f"inference features: median {single_ms:.2f} ms wall ({single_cpu_ms:.2f} ms CPU) "
        f"per sequence over {n} sequences"
    )
    print(f"load average after: {os.getloadavg()[0]:.1f}")

    ok = stage_s < STAGE_SECONDS and max(peaks) < STAGE_GB and single_ms < SINGLE_MS
    print(
        f"SUMMARY extract={stage_s:.1f}s (<{STAGE_SECONDS:.0f}) "
        f"peak_rss={max(peaks):.2f}GB (<{STAGE_GB:.0f}) "
        f"single={single_ms:.2f}ms (<{SINGLE_MS:.0f}) -> {'PASS' if ok else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
