"""Benchmark: generate a synthetic preset (default ``full``) and write its four CSVs.

Usage: python bench/synth.py [--preset full] [--seed 0] [--out DIR]

Runs in-process, so the peak RSS (``ru_maxrss`` of this process) covers generation and writing.
The last line printed is the summary, e.g.
``synth full: 8151 sequences, 575123 rows, wall 45.2 s, peak RSS 3.1 GB``.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import polars as pl

from cmi.synth import PRESETS, write_synthetic


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
    return (
        f"synth {preset}: {sequences} sequences, {rows} rows, "
        f"wall {wall:.1f} s, peak RSS {peak_gb:.1f} GB"
    )


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
