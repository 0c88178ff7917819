"""`python -m cmi.summary`: the scores of the last run, read from metrics/*.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cmi.paths import ProjectPaths


def _score_line(name: str, body: dict) -> str:
    groups = body.get("per_sensor_group", {})
    by_group = ", ".join(f"{g} {v['score']:.4f}" for g, v in sorted(groups.items()))
    return (
        f"{name:<15} score {body['score']:.4f} (binary F1 {body['binary_f1']:.4f}, "
        f"macro F1 {body['macro_f1']:.4f}){'; ' + by_group if by_group else ''}"
    )


def summary_lines(paths: ProjectPaths) -> list[str]:
    lines = []
    for name in ("lgbm", "torch"):
        path = paths.metrics(name)
        if path.exists():
            lines.append(_score_line(name, json.loads(path.read_text())))
    blend_path = paths.metrics("blend")
    if blend_path.exists():
        blend = json.loads(blend_path.read_text())
        for key in ("blend_fixed", "blend_optimized"):
            if key in blend:
                lines.append(_score_line(key, blend[key]))
        lines.append(_score_line("blend (used)", blend))
        lines.append(f"blend weights: {json.dumps(blend['weights'])}")
    bundle = paths.bundle_dir / "manifest.json"
    if bundle.exists():
        lines.append(f"bundle: {bundle.parent} (cmi predict --bundle {bundle.parent} ...)")
    return lines


def main(root: Path = Path(".")) -> int:
    lines = summary_lines(ProjectPaths(root))
    if not lines:
        print("no metrics yet: run `dvc repro`", file=sys.stderr)
        return 1
    print("== CMI pipeline summary (OOF, subject-grouped CV) ==")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
