"""Build throwaway project folders and run the real stage scripts in them (tests only)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def _find_real_sample() -> Path:
    """The real competition sample: $CMI_REAL_SAMPLE when set (even if it does not exist, so
    pointing it at nothing simulates a clone without the sample), else ../shared/ beside the
    project. No absolute fallback: a clone elsewhere sets CMI_REAL_SAMPLE."""
    configured = os.environ.get("CMI_REAL_SAMPLE")
    if configured:
        return Path(configured)
    return REPO_ROOT.parent / "shared" / "cmi-real-sample"


REAL_SAMPLE = _find_real_sample()
STAGES_DIR = REPO_ROOT / "stages"

# The real params.yaml shrunk for tiny data: same keys, small models, few epochs.
TINY_OVERRIDES: dict[str, dict[str, Any]] = {
    "cv": {"n_splits": 5, "seed": 42},
    "lgbm": {"n_estimators": 60, "early_stopping_rounds": 10, "n_jobs": 1, "num_leaves": 7},
    "torch": {
        "epochs": 3,
        "batch_size": 32,
        "conv_channels": [16, 32],
        "lstm_hidden": 16,
        "gru_hidden": 16,
        # One process: tiny members train faster than workers start; the tests of
        # cmi.nn.parallel ask for 2.
        "cpu_processes": 1,
    },
}


def tiny_params(overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for layer in (TINY_OVERRIDES, overrides or {}):
        for section, values in layer.items():
            params.setdefault(section, {}).update(values)
    return params


def make_project(
    root: Path, raw_dir: Path, overrides: dict[str, dict[str, Any]] | None = None
) -> Path:
    """A folder laid out like the repo's workspace: params.yaml and data/raw (copied)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(overrides), sort_keys=False))
    shutil.copytree(raw_dir, root / "data" / "raw", dirs_exist_ok=True)
    return root


def copy_project(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def stage_command(stage_script: str) -> list[str]:
    return [sys.executable, str(STAGES_DIR / stage_script)]


def run_stage(
    stage_script: str, root: Path, *, check: bool = True, timeout: float = 600, **kwargs: Any
) -> subprocess.CompletedProcess:
    """Run ``stages/<stage_script>`` with ``root`` as the working directory, as DVC would."""
    env = {**os.environ, "PYTHONHASHSEED": "0", **kwargs.pop("env", {})}
    result = subprocess.run(
        stage_command(stage_script),
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{stage_script} failed ({result.returncode})\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result
