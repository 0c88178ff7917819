"""Issue 9's end-to-end check: every model's metrics carry the leaderboard-like views.

Runs on the session's tiny pipeline (every stage through bundle on tiny synthetic data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmi.paths import ProjectPaths

VIEWS = ("full", "imu_only", "test_like")
FIELDS = ("score", "binary_f1", "macro_f1", "n_rows")


def _check_views(body: dict, where: str) -> None:
    for view in VIEWS:
        assert view in body, f"{where}: no {view!r}"
        for field in FIELDS:
            value = body[view][field]
            assert isinstance(value, int | float), f"{where}.{view}.{field} = {value!r}"
        assert 0.0 <= body[view]["score"] <= 1.0
    # Every scored sequence appears in the IMU-only view: natively IMU-only ones once, the
    # others as their nulled copy, so the IMU-only half is never a handful of native rows.
    assert body["imu_only"]["n_rows"] >= body["full"]["n_rows"], where
    assert body["test_like"]["n_rows"] == body["full"]["n_rows"] + body["imu_only"]["n_rows"]


@pytest.fixture(scope="module")
def metrics(tiny_trained_project: Path) -> dict[str, dict]:
    paths = ProjectPaths(tiny_trained_project)
    return {
        "lgbm": json.loads((paths.live_dir("lgbm") / "metrics.json").read_text()),
        "torch": json.loads(paths.metrics("torch").read_text()),
        "blend": json.loads(paths.metrics("blend").read_text()),
    }


@pytest.mark.parametrize("stage", ["lgbm", "torch"])
def test_training_stage_metrics_have_the_three_views(metrics: dict, stage: str) -> None:
    _check_views(metrics[stage], f"{stage} metrics")
    assert metrics[stage]["score"] == metrics[stage]["test_like"]["score"]


@pytest.mark.parametrize("model", ["lgbm", "torch", "blend"])
def test_blend_metrics_have_the_three_views_per_model(metrics: dict, model: str) -> None:
    _check_views(metrics["blend"][model], f"blend.json {model}")


def test_blend_metrics_repeat_the_stage_scores(metrics: dict) -> None:
    for stage in ("lgbm", "torch"):
        for view in VIEWS:
            ours = metrics["blend"][stage][view]["score"]
            assert ours == pytest.approx(metrics[stage][view]["score"], abs=1e-9), (stage, view)
