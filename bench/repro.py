"""`make repro` from a fresh clone, as a newcomer runs it: wall time against the 10-minute target.

    python bench/repro.py [--runs 1] [--workdir /tmp/cmi-bench/repro] [--keep]

``--runs`` times: clones this repository's HEAD (committed files only, as `git clone` gives
them) into a new folder, then times `make setup` (the virtual environment; from the pip
wheelhouse once it is filled) and `make repro` (demo data, `dvc repro`, the summary) in that
clone, and prints the stage times from DVC's log and the summary's scores. The last line,
`SUMMARY ... -> PASS/FAIL`, takes the median over runs (target: the two together <= 600 s on
2 cores). The load average is printed before and after: the target is for a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 600.0
TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ ")
SUMMARY_ROWS = ("lgbm", "torch", "blend", "replay: gesture_counts")


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def timed_make(target: str, clone: Path, log_path: Path) -> float:
    """Wall seconds of ``make target`` in ``clone``; its output goes to ``log_path``."""
    started = time.perf_counter()
    with open(log_path, "w") as log:
        result = subprocess.run(["make", target], cwd=clone, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise SystemExit(f"make {target} failed (rc {result.returncode}); log {log_path}:\n{tail}")
    return seconds


def stage_seconds(log_text: str) -> dict[str, float]:
    """Seconds per DVC stage: from its 'Running stage' line to the next one (or the end),
    using the timestamps of the log lines the stage scripts print."""
    stages: dict[str, list[datetime]] = {}
    current = None
    for line in log_text.splitlines():
        found = re.match(r"Running stage '([^']+)'", line)
        if found:
            current = found.group(1)
            stages[current] = []
            continue
        stamp = TIMESTAMP.match(line)
        if current is not None and stamp:
            stages[current].append(datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S"))
    names = list(stages)
    seconds = {}
    for i, name in enumerate(names):
        start = stages[name][0] if stages[name] else None
        nxt = next((stages[n][0] for n in names[i + 1 :] if stages[n]), None)
        end = nxt or (stages[name][-1] if stages[name] else None)
        if start and end:
            seconds[name] = (end - start).total_seconds()
    return seconds


def summary_rows(log_text: str) -> list[str]:
    return [line for line in log_text.splitlines() if line.startswith(SUMMARY_ROWS)]


def one_run(workdir: Path, keep: bool) -> float:
    """Clone, ``make setup``, ``make repro``; print the figures; return setup + repro seconds."""
    clone = workdir / "clone"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    print(f"fresh clone of {REPO} at {head} in {clone}; load average {load_average():.1f}")
    setup_s = timed_make("setup", clone, workdir / "setup.log")
    print(f"make setup: {setup_s:.0f} s")
    repro_log = workdir / "repro.log"
    repro_s = timed_make("repro", clone, repro_log)
    text = repro_log.read_text()
    print(f"make repro (after setup): {repro_s:.0f} s; load average {load_average():.1f}")
    for name, seconds in stage_seconds(text).items():
        print(f"  stage {name}: {seconds:.0f} s")
    for row in summary_rows(text):
        print(f"  {row}")
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return setup_s + repro_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="fresh clones to time (median)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cmi-bench/repro"))
    parser.add_argument("--keep", action="store_true", help="keep the last clone afterwards")
    args = parser.parse_args()
    totals = []
    for run in range(args.runs):
        print(f"run {run + 1}/{args.runs}")
        totals.append(one_run(args.workdir, keep=args.keep and run == args.runs - 1))
    total = statistics.median(totals)
    verdict = "PASS" if total <= TARGET_S else "FAIL"
    listed = ", ".join(f"{t:.0f}" for t in totals)
    print(
        f"SUMMARY make setup + make repro = {total:.0f} s median of {len(totals)} ({listed}) "
        f"(<= {TARGET_S:.0f}) -> {verdict}"
    )


if __name__ == "__main__":
    sys.exit(main())
