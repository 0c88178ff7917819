"""Benchmark: generate a synthetic preset (default ``full``) and write its four CSVs.

Usage: python bench/synth.py [--preset full] [--seed 0] [--out DIR]

Runs in-process, so the peak RSS (``ru_maxrss`` of this process) covers generation and writing.
Also prints who the subjects are (protocol, left-handed, upside-down, IMU-only). The last line
printed is the summary against the target (``full`` in under 2 minutes), e.g.
``synth full: 8150 sequences, 579263 rows, wall 45.2 s (target < 120 s: PASS), peak RSS 2.7 GB``.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import polars as pl

from cmi.synth import PRESETS, subject_table, write_synthetic

TARGET_WALL_S = 120.0  # `full` must stay quick enough to regenerate on a whim


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="keep the files here")
    return parser.parse_args(argv)


def count(path: Path) -> tuple[int, int]:
    """Rows and distinct sequences of a written sensor file (read back, outside the timing)."""
    counts = pl.scan_csv(path).select(pl.len(), pl.col("sequence_id").n_unique()).collect()
    return int(counts.item(0, 0)), int(counts.item(0, 1))


def run(preset: str, seed: int, out: Path) -> str:
    start = time.perf_counter()
    paths = write_synthetic(preset, out, seed=seed)
    wall = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux
    for name, path in paths.items():
        print(f"{name}: {path.stat().st_size / 1e6:.1f} MB")
    rows, sequences = count(paths["train.csv"])
    test_rows, test_sequences = count(paths["test.csv"])
    print(f"test.csv: {test_sequences} sequences, {test_rows} rows")
    print(describe_subjects(preset, seed))
    verdict = "PASS" if wall < TARGET_WALL_S else "FAIL"
    target = f" (target < {TARGET_WALL_S:.0f} s: {verdict})" if preset == "full" else ""
    return (
        f"synth {preset}: {sequences} sequences, {rows} rows, "
        f"wall {wall:.1f} s{target}, peak RSS {peak_gb:.1f} GB"
    )


def describe_subjects(preset: str, seed: int) -> str:
    """One line per split: subjects, whole-protocol ones, and the odd ones out."""
    table = subject_table(preset, seed)
    lines = []
    for split in ("train", "test"):
        t = table.filter(pl.col("split") == split)
        lines.append(
            f"{split}: {t.height} subjects ({int(t['whole_protocol'].sum())} whole protocol), "
            f"{int(t['left_handed'].sum())} left-handed, {int(t['upside_down'].sum())} upside "
            f"down, {int(t['imu_only'].sum())} IMU-only"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out is not None:
        print(run(args.preset, args.seed, args.out))
        return 0
    with tempfile.TemporaryDirectory(prefix="synth-bench-") as tmp:
        print(run(args.preset, args.seed, Path(tmp)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
