"""`python -m cmi.summary`: one table of the last run's out-of-fold scores.

Rows are models (LightGBM, Torch, the blend as scored nested, the fixed-weight blend), columns
the views of ``cmi.evaluation``: ``full`` (recorded view of full-sensor sequences),
``imu_only`` (every sequence with thm/ToF nulled) and ``test_like`` (both pooled at
``eval.imu_only_share``, with its binary and macro F1). ``test_like`` is the figure to compare
with the leaderboard. The table is built from a list of (name, metrics) pairs
(``summary_rows``); the last rows are the gateway replay of subject-level post-processing on
the nested blend (``postprocess_rows``: none, gesture_counts, assignment; medians over the
seeded arrival orders).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from cmi.paths import ProjectPaths

VIEW_COLUMNS: tuple[str, ...] = ("full", "imu_only", "test_like")
TRAINING_STAGES: tuple[str, ...] = ("lgbm", "torch")
POSTPROCESS_METHODS: tuple[str, ...] = ("none", "gesture_counts", "assignment")
_NAME_WIDTH = 24


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def has_views(metrics: dict | None) -> bool:
    return isinstance(metrics, dict) and all(isinstance(metrics.get(v), dict) for v in VIEW_COLUMNS)


def stage_metrics(paths: ProjectPaths, stage: str) -> dict | None:
    """A training stage's final metrics: metrics/<stage>.json, else its dvclive summary
    (dvclive/<stage>/metrics.json); the first that has the three views (an older file
    without them is skipped)."""
    for path in (paths.metrics(stage), paths.live_dir(stage) / "metrics.json"):
        metrics = _read(path)
        if has_views(metrics):
            return metrics
    return None


def postprocess_rows(blend: dict) -> list[tuple[str, dict]]:
    """Table rows of metrics/blend.json's ``postprocess`` section (the gateway replay): one
    per method, as ``replay: <method>``, with each median in the table's layout."""
    section = blend.get("postprocess")
    if not isinstance(section, dict):
        return []
    rows = []
    for method in POSTPROCESS_METHODS:
        replay = section.get(method)
        if not isinstance(replay, dict) or "test_like" not in replay:
            continue
        metrics = {
            "full": {"score": replay["full"]},
            "imu_only": {"score": replay["imu_only"]},
            "test_like": {
                "score": replay["test_like"],
                "binary_f1": replay["test_like_binary_f1"],
                "macro_f1": replay["test_like_macro_f1"],
                "n_rows": int(section.get("n_sequences", 0)),
            },
        }
        rows.append((f"replay: {method}", metrics))
    return rows


def summary_rows(paths: ProjectPaths) -> list[tuple[str, dict]]:
    """(name, metrics with full / imu_only / test_like) for every model that has them; a
    training stage without its own file falls back to its scores in metrics/blend.json. Then
    the gateway replay's rows (``postprocess_rows``)."""
    blend = _read(paths.metrics("blend")) or {}
    rows = []
    for stage in TRAINING_STAGES:
        metrics = stage_metrics(paths, stage) or blend.get(stage)
        if has_views(metrics):
            rows.append((stage, metrics))
    for key, name in (("blend", "blend"), ("blend_fixed", "blend (fixed)")):
        if has_views(blend.get(key)):
            rows.append((name, blend[key]))
    return rows + postprocess_rows(blend)


def format_table(rows: Sequence[tuple[str, dict]]) -> list[str]:
    """Fixed-width lines: a header, then one line per (name, metrics) row."""
    header = (
        f"{'model':<{_NAME_WIDTH}}{'full':>9}{'imu_only':>10}{'test_like':>11}"
        f"{'binary F1':>11}{'macro F1':>10}{'rows':>8}"
    )
    lines = [header, "-" * len(header)]
    for name, metrics in rows:
        test_like = metrics["test_like"]
        lines.append(
            f"{name:<{_NAME_WIDTH}}{metrics['full']['score']:>9.4f}"
            f"{metrics['imu_only']['score']:>10.4f}{test_like['score']:>11.4f}"
            f"{test_like['binary_f1']:>11.4f}{test_like['macro_f1']:>10.4f}"
            f"{test_like.get('n_rows', 0):>8d}"
        )
    return lines


def _share(rows: Sequence[tuple[str, dict]], blend: dict) -> float | None:
    for metrics in [blend, *(m for _, m in rows)]:
        if "imu_only_share" in metrics:
            return float(metrics["imu_only_share"])
    return None


def summary_lines(paths: ProjectPaths, extra_rows: Sequence[tuple[str, dict]] = ()) -> list[str]:
    rows = [*summary_rows(paths), *extra_rows]
    if not rows:
        return []
    blend = _read(paths.metrics("blend")) or {}
    share = _share(rows, blend)
    share_text = f"eval.imu_only_share = {share:g}" if share is not None else "eval.imu_only_share"
    lines = format_table(rows)
    lines += [
        "",
        f"test_like pools both views of every validation sequence at {share_text}, as",
        "the hidden test mixes them: it is the figure to compare with the leaderboard (the",
        "binary / macro F1 columns are test_like's). full: recorded view of full-sensor",
        "sequences; imu_only: every sequence with thm/ToF nulled. No selection (early stopping,",
        "best epoch, fitted blend weights) saw the fold it scores; blend (fixed) uses the",
        "configured weights.",
    ]
    replay = blend.get("postprocess")
    if isinstance(replay, dict) and "assignment" in replay:
        counts = " / ".join(
            f"{replay[m]['excess_answers']:g}" for m in ("none", "gesture_counts", "assignment")
        )
        lines += [
            "replay: the Kaggle gateway replayed on the nested blend's OOF: per subject, "
            f"{replay['n_orders']} seeded",
            "arrival orders, half of each subject's sequences IMU-only, each answered from the",
            f"sequences seen so far (mode {replay['mode']!r}); medians over orders; rows = "
            "sequences per order.",
            f"Gain over none: gesture_counts {replay['gesture_counts']['gain']:+.4f}, assignment "
            f"{replay['assignment']['gain']:+.4f}; answers beyond the",
            f"protocol's per-subject counts (none / gesture_counts / assignment): {counts}.",
        ]
    if "weights" in blend:
        lines.append(f"blend weights (bundle): {json.dumps(blend['weights'])}")
    bundle = paths.bundle_dir / "manifest.json"
    if bundle.exists():
        lines.append(f"bundle: {bundle.parent} (cmi predict --bundle {bundle.parent} ...)")
    return lines


def main(root: Path = Path(".")) -> int:
    lines = summary_lines(ProjectPaths(root))
    if not lines:
        print("no metrics yet: run `dvc repro`", file=sys.stderr)
        return 1
    print("== CMI pipeline summary (out-of-fold, subject-grouped CV) ==")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
