"""Subject-level post-processing: its cost per gateway call, and its gain on a project's OOF.

- timing (always): ``SubjectMemory.answer`` for subjects of ``--sequences`` sequences each
  (random probabilities), every method and mode; median, p99 and max milliseconds per call.
  The last calls of a subject are the dearest (they re-solve ~100 sequences x 102 slots).
- gain (``--project DIR``, a project where the orientation stage and a model stage have
  run): ``compare_postprocessing`` on ``data/oof/<--oof>.parquet`` with the orientation OOF,
  for each ``--combine``: median test_like over ``--orders`` seeded arrival orders.
Usage: python bench/postprocess.py [--sequences 102] [--subjects 20]
       [--project DIR --oof blend --orders 5 --combine max product]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import polars as pl

from cmi.postprocess import COMBINES, METHODS, MODES, SubjectMemory
from cmi.schema import N_CLASSES


def time_calls(n_sequences: int, n_subjects: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for method in METHODS:
        for mode in MODES if method != "none" else ("resolve",):
            memory = SubjectMemory(method, mode)
            times = []
            for s in range(n_subjects):
                p = rng.dirichlet(np.full(N_CLASSES, 0.3), size=n_sequences)
                q = rng.dirichlet(np.ones(4), size=n_sequences)
                for i in range(n_sequences):
                    started = time.perf_counter()
                    memory.answer(f"S{s}", f"S{s}_{i}", p[i], q[i])
                    times.append(time.perf_counter() - started)
            ms = np.array(times) * 1e3
            out[f"{method}/{mode}"] = {
                "median_ms": round(float(np.median(ms)), 4),
                "p99_ms": round(float(np.percentile(ms, 99)), 4),
                "max_ms": round(float(ms.max()), 4),
            }
    return out


def gain(project: Path, oof_name: str, n_orders: int, combines: list[str]) -> dict:
    from cmi.params import load_params
    from cmi.postprocess.gateway import compare_postprocessing

    share = load_params(project / "params.yaml").eval.imu_only_share
    oof = pl.read_parquet(project / "data" / "oof" / f"{oof_name}.parquet")
    orientation = pl.read_parquet(project / "data" / "oof" / "orientation.parquet")
    sequences = pl.read_parquet(project / "data" / "features" / "sequences.parquet")
    out = {}
    for combine in combines:
        result = compare_postprocessing(
            oof, orientation, sequences, imu_only_share=share, n_orders=n_orders, combine=combine
        )
        out[combine] = {"none": _short(result["none"])}
        for method in ("gesture_counts", "assignment"):
            for mode in MODES:
                out[combine][f"{method}/{mode}"] = _short(result[method][mode])
    return out


def _short(summary: dict) -> dict:
    keys = ("test_like", "gain", "full", "imu_only", "excess_answers")
    return {k: round(summary[k], 4) for k in keys if k in summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=102)
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--project", type=Path)
    parser.add_argument("--oof", default="blend", help="which data/oof/<name>.parquet")
    parser.add_argument("--orders", type=int, default=5)
    parser.add_argument("--combine", nargs="+", default=["max"], choices=COMBINES)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = {"timing": time_calls(args.sequences, args.subjects)}
    for name, row in report["timing"].items():
        ms = f"median {row['median_ms']:.3f}  p99 {row['p99_ms']:.3f}  max {row['max_ms']:.3f}"
        print(f"{name:26s} {ms} ms")
    if args.project:
        report["gain"] = gain(args.project, args.oof, args.orders, args.combine)
        for combine, rows in report["gain"].items():
            for name, row in rows.items():
                print(f"{combine:12s} {name:26s} {json.dumps(row)}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
