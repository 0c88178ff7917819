"""Shared fixtures: tiny synthetic data made once per session, and projects built on it.

Session-scoped projects are read-only by convention: a test that writes copies one first
(``pipeline_helpers.copy_project``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pipeline_helpers import REAL_SAMPLE, make_project, run_stage


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A test reads the real sample only through the `real_sample` fixture (directly or via
    # another fixture), so exactly those tests carry the mark: `-m "not real_sample"` works.
    for item in items:
        if "real_sample" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_sample)


def pytest_runtest_setup(item: pytest.Item) -> None:
    # Tests marked real_sample read ../shared/cmi-real-sample; without it they skip, loudly.
    if item.get_closest_marker("real_sample") and not REAL_SAMPLE.is_dir():
        pytest.skip(f"real competition sample not found at {REAL_SAMPLE} (set CMI_REAL_SAMPLE)")


@pytest.fixture(scope="session")
def real_sample() -> Path:
    """The real competition sample (15 train sequences, the public test files): the only way
    tests reach it. Absent (a clone without ../shared), the tests using it skip."""
    if not REAL_SAMPLE.is_dir():
        pytest.skip(f"real competition sample not found at {REAL_SAMPLE} (set CMI_REAL_SAMPLE)")
    return REAL_SAMPLE


@pytest.fixture(scope="session")
def tiny_raw_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cmi.synth import write_synthetic

    out = tmp_path_factory.mktemp("tiny_raw")
    write_synthetic("tiny", out, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_features_project(tmp_path_factory: pytest.TempPathFactory, tiny_raw_dir: Path) -> Path:
    """A project with extract and folds done on tiny data."""
    root = make_project(tmp_path_factory.mktemp("tiny_features"), tiny_raw_dir)
    run_stage("extract.py", root)
    run_stage("make_folds.py", root)
    return root


@pytest.fixture(scope="session")
def tiny_trained_project(
    tiny_features_project: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A project with every stage run through bundle on tiny data."""
    from pipeline_helpers import copy_project

    root = copy_project(tiny_features_project, tmp_path_factory.mktemp("tiny_trained") / "p")
    stages = ("train_orientation.py", "train_lgbm.py", "train_torch.py", "oof_blend.py")
    for script in (*stages, "bundle.py"):
        run_stage(script, root)
    return root
