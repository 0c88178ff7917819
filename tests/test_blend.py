"""cmi.blend and stages/oof_blend.py on small hand-made OOF tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from pipeline_helpers import run_stage

from cmi.blend import (
    BlendError,
    BlendWeights,
    align_oof,
    apply_weights,
    fit_blend,
    normalize_weights,
    per_class_f1_frame,
)
from cmi.params import EnsembleParams
from cmi.schema import GESTURES, N_CLASSES, PROBA_COLUMNS


def _oof(y_true: np.ndarray, proba: np.ndarray, groups: list[str]) -> pl.DataFrame:
    n = len(y_true)
    return pl.DataFrame(
        {
            "sequence_id": [f"SEQ_{i:06d}" for i in range(n)],
            "fold": pl.Series([i % 3 for i in range(n)], dtype=pl.Int32),
            "y_true": pl.Series(y_true, dtype=pl.Int32),
            "sensor_group": groups,
            **{c: pl.Series(proba[:, k], dtype=pl.Float64) for k, c in enumerate(PROBA_COLUMNS)},
        }
    )


def _onehot_ish(labels: np.ndarray, confidence: float) -> np.ndarray:
    proba = np.full((len(labels), N_CLASSES), (1 - confidence) / (N_CLASSES - 1))
    proba[np.arange(len(labels)), labels] = confidence
    return proba


@pytest.fixture
def complementary_pair() -> tuple[pl.DataFrame, pl.DataFrame]:
    """LightGBM is right on 'full' sequences, Torch on 'imu_only' ones: only a per-group
    blend gets everything right."""
    rng = np.random.default_rng(0)
    n = 72
    y = np.arange(n) % N_CLASSES
    groups = ["full" if i % 2 == 0 else "imu_only" for i in range(n)]
    wrong = (y + 1 + rng.integers(0, N_CLASSES - 1, n)) % N_CLASSES
    full = np.array([g == "full" for g in groups])
    lgbm_label = np.where(full, y, wrong)
    torch_label = np.where(full, wrong, y)
    return (
        _oof(y, _onehot_ish(lgbm_label, 0.9), groups),
        _oof(y, _onehot_ish(torch_label, 0.9), groups),
    )


def test_normalize_weights() -> None:
    assert normalize_weights(0.4, 0.6) == pytest.approx({"lgbm": 0.4, "torch": 0.6})
    assert normalize_weights(2, 6) == pytest.approx({"lgbm": 0.25, "torch": 0.75})
    assert normalize_weights(0, 1) == {"lgbm": 0.0, "torch": 1.0}
    once = normalize_weights(0.4, 0.7)
    assert normalize_weights(once["lgbm"], once["torch"]) == once  # exactly, as json round trips


@pytest.mark.parametrize(
    ("w_lgbm", "w_torch", "match"),
    [
        (-0.1, 0.6, r"params\.yaml: ensemble\.w_lgbm must be >= 0"),
        (0.4, -1, r"params\.yaml: ensemble\.w_torch must be >= 0"),
        (0.0, 0.0, r"params\.yaml: ensemble\.w_lgbm \+ ensemble\.w_torch must be > 0"),
        (float("nan"), 0.5, r"ensemble\.w_lgbm must be a finite number"),
    ],
)
def test_bad_weights_are_rejected(w_lgbm: float, w_torch: float, match: str) -> None:
    with pytest.raises(BlendError, match=match):
        normalize_weights(w_lgbm, w_torch)


def test_align_rejects_mismatched_tables(complementary_pair) -> None:
    lgbm, torch = complementary_pair
    with pytest.raises(BlendError, match="cover different sequences"):
        align_oof(lgbm, torch.head(10))
    flipped = torch.with_columns(
        pl.when(pl.col("sequence_id") == "SEQ_000003")
        .then(5)
        .otherwise(pl.col("y_true"))
        .cast(pl.Int32)
        .alias("y_true")
    )
    with pytest.raises(BlendError, match=r"disagree on y_true for sequence 'SEQ_000003'"):
        align_oof(lgbm, flipped)
    refolded = torch.with_columns((pl.col("fold") + 1).cast(pl.Int32))
    with pytest.raises(BlendError, match="disagree on fold"):
        align_oof(lgbm, refolded)


def test_align_ignores_row_order(complementary_pair) -> None:
    lgbm, torch = complementary_pair
    inputs = align_oof(lgbm, torch.reverse())
    assert list(inputs.sequence_id) == sorted(lgbm["sequence_id"].to_list())
    np.testing.assert_allclose(inputs.p_torch, torch.sort("sequence_id").select(PROBA_COLUMNS))


def test_fixed_weights_blend_is_the_weighted_average(complementary_pair) -> None:
    inputs = align_oof(*complementary_pair)
    weights = fit_blend(inputs, EnsembleParams(w_lgbm=1, w_torch=3))
    assert weights.default == pytest.approx({"lgbm": 0.25, "torch": 0.75})
    assert weights.by_sensor_group is None
    np.testing.assert_allclose(
        apply_weights(inputs, weights), 0.25 * inputs.p_lgbm + 0.75 * inputs.p_torch
    )


@pytest.mark.parametrize("method", ["grid", "nelder_mead"])
def test_per_group_optimization_finds_the_complementary_weights(
    complementary_pair, method: str
) -> None:
    inputs = align_oof(*complementary_pair)
    params = EnsembleParams(w_lgbm=0.4, w_torch=0.6, optimize=method, by_sensor_group=True)
    weights = fit_blend(inputs, params)
    assert weights.by_sensor_group["full"]["lgbm"] > 0.5
    assert weights.by_sensor_group["imu_only"]["torch"] > 0.5
    proba = apply_weights(inputs, weights)
    assert (proba.argmax(axis=1) == inputs.y_true).all()


def test_weights_json_round_trip() -> None:
    weights = BlendWeights(
        {"lgbm": 0.4, "torch": 0.6},
        {"full": {"lgbm": 0.5, "torch": 0.5}, "imu_only": {"lgbm": 0.2, "torch": 0.8}},
        "grid",
    )
    again = BlendWeights.from_json(json.loads(json.dumps(weights.to_json())))
    assert again == weights
    assert again.for_group("imu_only") == {"lgbm": 0.2, "torch": 0.8}
    assert BlendWeights(weights.default, None, "none").for_group("full") == weights.default


def test_per_class_f1_lists_all_18_gestures() -> None:
    y = np.array([0, 0, 1, 9])
    frame = per_class_f1_frame(y, _onehot_ish(np.array([0, 1, 1, 9]), 0.9))
    assert frame["gesture"].to_list() == list(GESTURES)
    f1 = dict(zip(frame["gesture"], frame["f1"], strict=True))
    assert f1[GESTURES[9]] == 1.0
    assert f1[GESTURES[0]] == pytest.approx(2 / 3)
    assert f1[GESTURES[5]] == 0.0


def _blend_project(root: Path, pair, ensemble: dict) -> Path:
    (root / "data" / "oof").mkdir(parents=True)
    pair[0].write_parquet(root / "data" / "oof" / "lgbm.parquet")
    pair[1].write_parquet(root / "data" / "oof" / "torch.parquet")
    (root / "params.yaml").write_text(yaml.safe_dump({"ensemble": ensemble}))
    return root


def test_stage_writes_every_output(tmp_path: Path, complementary_pair) -> None:
    root = _blend_project(
        tmp_path,
        complementary_pair,
        {"w_lgbm": 0.4, "w_torch": 0.6, "optimize": "grid", "by_sensor_group": True},
    )
    run_stage("oof_blend.py", root)
    metrics = json.loads((root / "metrics" / "blend.json").read_text())
    assert metrics["score"] == pytest.approx(1.0)
    for key in ("lgbm", "torch", "blend_fixed", "blend_optimized"):
        assert set(metrics[key]["per_sensor_group"]) == {"full", "imu_only"}
    assert metrics["blend_optimized"]["score"] >= metrics["blend_fixed"]["score"]
    weights = json.loads((root / "models" / "blend" / "weights.json").read_text())
    assert weights == metrics["weights"]
    assert set(weights["by_sensor_group"]) == {"full", "imu_only"}

    blend = pl.read_parquet(root / "data" / "oof" / "blend.parquet")
    assert blend.columns == ["sequence_id", "fold", "y_true", "sensor_group", *PROBA_COLUMNS]
    np.testing.assert_allclose(blend.select(PROBA_COLUMNS).to_numpy().sum(axis=1), 1.0)
    confusion = pl.read_csv(root / "plots" / "confusion.csv")
    assert confusion.columns == ["actual", "predicted"]
    assert confusion.height == blend.height
    assert set(confusion["actual"]) <= set(GESTURES)
    per_class = pl.read_csv(root / "plots" / "per_class_f1.csv")
    assert per_class.height == N_CLASSES


def test_stage_without_optimization_reports_no_optimized_blend(
    tmp_path: Path, complementary_pair
) -> None:
    root = _blend_project(tmp_path, complementary_pair, {"w_lgbm": 0.4, "w_torch": 0.6})
    run_stage("oof_blend.py", root)
    metrics = json.loads((root / "metrics" / "blend.json").read_text())
    assert "blend_optimized" not in metrics
    assert metrics["score"] == metrics["blend_fixed"]["score"]
    assert metrics["weights"] == {
        "default": {"lgbm": 0.4, "torch": 0.6},
        "by_sensor_group": None,
        "optimize": "none",
    }


def test_stage_rejects_bad_weights_naming_the_key(tmp_path: Path, complementary_pair) -> None:
    root = _blend_project(tmp_path, complementary_pair, {"w_lgbm": -1.0, "w_torch": 0.6})
    result = run_stage("oof_blend.py", root, check=False)
    assert result.returncode != 0
    assert "params.yaml: ensemble.w_lgbm must be >= 0" in result.stderr
    assert not (root / "models" / "blend").exists()


@pytest.mark.slow
def test_pipeline_blend_outputs(tiny_trained_project: Path) -> None:
    root = tiny_trained_project
    metrics = json.loads((root / "metrics" / "blend.json").read_text())
    lgbm = pl.read_parquet(root / "data" / "oof" / "lgbm.parquet")
    blend = pl.read_parquet(root / "data" / "oof" / "blend.parquet")
    assert blend.height == lgbm.height == metrics["n_sequences"]
    for key in ("lgbm", "torch", "blend_fixed"):
        assert 0 <= metrics[key]["score"] <= 1
        assert set(metrics[key]["per_sensor_group"]) == set(lgbm["sensor_group"])
    lgbm_metrics = json.loads((root / "metrics" / "lgbm.json").read_text())
    assert metrics["lgbm"]["score"] == pytest.approx(lgbm_metrics["score"])
    weights = json.loads((root / "models" / "blend" / "weights.json").read_text())
    bundle = json.loads((root / "models" / "bundle" / "manifest.json").read_text())
    assert bundle["blend"] == weights == metrics["weights"]
    assert pl.read_csv(root / "plots" / "confusion.csv").height == blend.height
