"""Time the lgbm stage from scratch on `full`-size synthetic data with the real params.yaml.

    python bench/lgbm.py [--cache /tmp/cmi-bench] [--force-extract]

Raw CSVs are cached in <cache>/full (shared with bench/extract.py) and the features in a bench
project <cache>/project-full; both are built only when missing. The lgbm stage's checkpoints
are cleared first, so the time is a full training run. Target: under 15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
STAGES = REPO_ROOT / "stages"
TARGET_SECONDS = 15 * 60


def ensure_raw(raw_dir: Path) -> None:
    if (raw_dir / "train.csv").is_file():
        print(f"raw data: reusing {raw_dir}")
        return
    from cmi.synth import write_synthetic

    print(f"raw data: writing `full` synthetic data to {raw_dir} ...", flush=True)
    started = time.perf_counter()
    write_synthetic("full", raw_dir, seed=0)
    print(f"raw data: done in {time.perf_counter() - started:.0f}s")


def run_stage(script: str, project: Path) -> tuple[float, float]:
    """Wall and CPU (user + sys) seconds of one stage run in a subprocess."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, str(STAGES / script)], cwd=project, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def ensure_project(project: Path, raw_dir: Path, force_extract: bool) -> None:
    """A project whose params.yaml is the repo's and whose data/raw points at the cache."""
    project.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO_ROOT / "params.yaml", project / "params.yaml")
    raw_link = project / "data" / "raw"
    if not raw_link.exists():
        raw_link.parent.mkdir(parents=True, exist_ok=True)
        raw_link.symlink_to(raw_dir.resolve(), target_is_directory=True)
    features = project / "data" / "features" / "sequence_features.parquet"
    if force_extract or not features.is_file():
        print(f"extract: {run_stage('extract.py', project)[0]:.0f}s", flush=True)
    else:
        print(f"features: reusing {features.parent}")
    # Cheap, and keeps the folds in step with the current cv params.
    print(f"folds: {run_stage('make_folds.py', project)[0]:.1f}s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/cmi-bench"))
    parser.add_argument("--force-extract", action="store_true")
    args = parser.parse_args(argv)
    raw_dir, project = args.cache / "full", args.cache / "project-full"

    ensure_raw(raw_dir)
    ensure_project(project, raw_dir, args.force_extract)
    shutil.rmtree(project / "checkpoints" / "lgbm", ignore_errors=True)
    wall, cpu = run_stage("train_lgbm.py", project)

    metrics = json.loads((project / "dvclive" / "lgbm" / "metrics.json").read_text())
    views = {k: round(metrics[k]["score"], 4) for k in ("full", "imu_only")}
    print(
        f"\nlgbm stage wall time: {wall:.0f}s ({wall / 60:.1f} min; target < "
        f"{TARGET_SECONDS // 60} min: {'OK' if wall < TARGET_SECONDS else 'TOO SLOW'}); "
        f"CPU {cpu:.0f}s (user + sys; wall well above CPU / n_jobs means a busy machine)\n"
        f"OOF test_like {metrics['score']:.4f} (binary F1 {metrics['test_like']['binary_f1']:.4f}"
        f", macro F1 {metrics['test_like']['macro_f1']:.4f}); views {views}\n"
        f"best iterations {metrics['best_iterations']}"
    )
    return 0 if wall < TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
