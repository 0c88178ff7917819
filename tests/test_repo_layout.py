"""Repository invariants that DVC's workflow depends on."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def _git_ignores(path: str) -> bool:
    result = subprocess.run(
        ["git", "check-ignore", "-q", "--no-index", path], cwd=REPO_ROOT, check=False
    )
    return result.returncode == 0


def test_gitignore_leaves_dvc_tracked_paths_to_dvc() -> None:
    # Regression: a root rule ignoring /data/* made `dvc exp run` delete data/raw.
    for path in ("data/raw", "data/raw/train.csv", "models/bundle", "data/features"):
        assert not _git_ignores(path), path
    for path in ("checkpoints/lgbm", ".venv/bin/python", "model.pkl", "x.joblib"):
        assert _git_ignores(path), path


def test_each_stage_lists_only_the_params_it_reads() -> None:
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    params = {name: set(stage.get("params", [])) for name, stage in stages.items()}
    assert params["extract"] == {"extract"}
    assert params["folds"] == {"cv"}
    assert params["lgbm"] == {"cv", "lgbm", "eval"}
    assert params["torch"] == {"cv", "torch"}
    assert params["oof_blend"] == {"ensemble", "eval"}
    assert [name for name, keys in params.items() if "ensemble" in keys] == ["oof_blend"]
    assert "torch.py" not in {Path(s["cmd"].split()[-1]).name for s in stages.values()}


def test_no_pickle_is_tracked() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert not [f for f in tracked if f.endswith((".pkl", ".pickle", ".joblib"))]
