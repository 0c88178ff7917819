"""Benchmark of the extract stage against the floor, and of the one-sequence feature path.

    python bench/extract.py [--runs 3] [--n-single 200] [--data /tmp/cmi-bench/full]

Generates the ``full`` synthetic preset once (cached in --data). Then, ``--runs`` times and
interleaved so that other load on a shared machine hits both alike:

- the floor: a plain ``pl.read_csv`` of the same train.csv with its known schema, in its own
  Python process (interpreter start and imports included, as for the stage);
- ``stages/extract.py`` in a fresh project folder, in its own process under
  ``/usr/bin/time -v`` when available (else ``getrusage(RUSAGE_CHILDREN)``) so its peak RSS
  is measured alone.

It prints the ratio of the medians. Then it times ``prepare_sensor_frame`` +
``compute_features`` on single sequences the way ``cmi.inference`` calls them, ``--runs``
passes over ``--n-single`` sequences. Targets: extract <= 2.0x the floor, peak RSS < 8 GB,
one sequence's features <= 5 ms median.
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

RATIO_TARGET, STAGE_GB, SINGLE_MS = 2.0, 8.0, 5.0
RAW_FILES = ("train.csv", "train_demographics.csv", "test.csv", "test_demographics.csv")
FLOOR_SCRIPT = (
    "import sys, polars as pl\n"
    "from cmi.schema import TRAIN_SCHEMA\n"
    "print(pl.read_csv(sys.argv[1], schema=TRAIN_SCHEMA).height)\n"
)


def ensure_data(data_dir: Path) -> Path:
    if all((data_dir / name).exists() for name in RAW_FILES):
        print(f"using cached synthetic data in {data_dir}")
        return data_dir
    from cmi.synth import write_synthetic

    start = time.perf_counter()
    write_synthetic("full", data_dir, seed=0)
    print(f"generated 'full' synthetic data in {data_dir} ({time.perf_counter() - start:.0f} s)")
    return data_dir


def make_project(root: Path, data_dir: Path, checkout: Path = REPO_ROOT) -> Path:
    """A project folder with the checkout's params.yaml and data/raw linked to the cached
    CSVs."""
    (root / "data" / "raw").mkdir(parents=True)
    shutil.copy(checkout / "params.yaml", root / "params.yaml")
    for name in RAW_FILES:
        os.symlink(data_dir / name, root / "data" / "raw" / name)
    return root


def floor_once(train_csv: Path) -> float:
    """Wall seconds of a plain polars read of train.csv in a fresh process."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", FLOOR_SCRIPT, str(train_csv)],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def run_stage_once(root: Path, checkout: Path = REPO_ROOT) -> tuple[float, float, float]:
    """(wall seconds, peak RSS GB, CPU seconds user+sys) of one stage run in its own process,
    with the stage script and ``cmi`` of ``checkout``."""
    command = [sys.executable, str(checkout / "stages" / "extract.py")]
    time_v = Path("/usr/bin/time")
    if time_v.exists():
        command = [str(time_v), "-v", *command]
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, env=env)
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


def single_sequence_ms(data_dir: Path, n_single: int, runs: int) -> tuple[list[float], float]:
    """Per pass, the median wall ms of prepare_sensor_frame + compute_features on one
    test-like sequence, called as cmi.inference calls them; and the median CPU ms over all
    passes (CPU counts polars' worker threads too)."""
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

    def features_of(sequence: pl.DataFrame) -> None:
        sensor = prepare_sensor_frame(sequence)
        first = sensor.get_column("sequence_id")[0]  # as Predictor.features does
        sensor = sensor.with_columns(pl.lit(first, dtype=pl.String).alias("sequence_id"))
        compute_features(sensor, demo_rows[sequence["subject"][0]], params)

    for sequence in sequences[:5]:  # warm-up
        features_of(sequence)
    medians, cpus = [], []
    for _ in range(runs):
        walls = []
        for sequence in sequences:
            start, start_cpu = time.perf_counter(), time.process_time()
            features_of(sequence)
            walls.append((time.perf_counter() - start) * 1000)
            cpus.append((time.process_time() - start_cpu) * 1000)
        medians.append(statistics.median(walls))
    return medians, statistics.median(cpus)


def load_average() -> str:
    return f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--n-single", type=int, default=200)
    parser.add_argument("--data", type=Path, default=Path("/tmp/cmi-bench/full"))
    parser.add_argument("--skip-stage", action="store_true", help="only the one-sequence path")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (e.g. `git archive REV | tar -x -C DIR`) whose extract stage is "
        "timed in the same rounds, for a before -> after under the same load",
    )
    args = parser.parse_args()

    data_dir = ensure_data(args.data)
    print(f"load average before: {load_average()}")
    ratio, peak = 0.0, 0.0
    if not args.skip_stage:
        floors, walls, peaks, cpus, baselines = [], [], [], [], []
        for run in range(args.runs):
            floors.append(floor_once(data_dir / "train.csv"))
            if args.baseline:
                with tempfile.TemporaryDirectory(prefix="cmi-bench-extract-") as tmp:
                    project = make_project(Path(tmp), data_dir, args.baseline)
                    baselines.append(run_stage_once(project, args.baseline))
                print(f"run {run + 1}/{args.runs}: baseline extract {baselines[-1][0]:.1f} s")
            with tempfile.TemporaryDirectory(prefix="cmi-bench-extract-") as tmp:
                wall, peak, cpu = run_stage_once(make_project(Path(tmp), data_dir))
            walls.append(wall)
            peaks.append(peak)
            cpus.append(cpu)
            print(
                f"run {run + 1}/{args.runs}: floor {floors[-1]:.1f} s; extract {wall:.1f} s, "
                f"CPU {cpu:.1f} s, peak RSS {peak:.2f} GB; load average {load_average()}"
            )
        stage_s, floor_s, peak = statistics.median(walls), statistics.median(floors), max(peaks)
        ratio = stage_s / floor_s
        print(
            f"extract stage: median {stage_s:.1f} s wall ({statistics.median(cpus):.1f} s CPU), "
            f"floor (plain pl.read_csv of train.csv) median {floor_s:.1f} s -> {ratio:.2f}x; "
            f"peak RSS median {statistics.median(peaks):.2f} GB, max {peak:.2f} GB"
        )
        if baselines:
            base_s = statistics.median(b[0] for b in baselines)
            print(
                f"baseline {args.baseline}: median {base_s:.1f} s wall "
                f"({statistics.median(b[2] for b in baselines):.1f} s CPU) -> "
                f"{base_s / floor_s:.2f}x the floor; peak RSS max "
                f"{max(b[1] for b in baselines):.2f} GB"
            )

    medians, single_cpu = single_sequence_ms(data_dir, args.n_single, args.runs)
    single_ms = statistics.median(medians)
    print(
        f"one sequence's features: median {single_ms:.2f} ms wall ({single_cpu:.2f} ms CPU), "
        f"per-pass medians {', '.join(f'{m:.2f}' for m in medians)} over {args.n_single} "
        "sequences"
    )
    print(f"load average after: {load_average()}")

    checks = {f"single={single_ms:.2f}ms (<={SINGLE_MS:.0f})": single_ms <= SINGLE_MS}
    if not args.skip_stage:
        checks[f"extract/floor={ratio:.2f}x (<={RATIO_TARGET:.1f})"] = ratio <= RATIO_TARGET
        checks[f"peak_rss={peak:.2f}GB (<{STAGE_GB:.0f})"] = peak < STAGE_GB
    verdict = "PASS" if all(checks.values()) else "FAIL"
    print(f"SUMMARY {' '.join(checks)} -> {verdict}")


if __name__ == "__main__":
    main()
