"""cmi.blend and stages/oof_blend.py on small hand-made OOF tables in the view contract."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import polars as pl
import pytest
import yaml
from pipeline_helpers import STAGES_DIR, run_stage

from cmi.blend import (
    BlendError,
    BlendWeights,
    align_oof,
    apply_weights,
    blend_metrics,
    fit_blend,
    nested_blend,
    normalize_weights,
    per_class_f1_frame,
)
from cmi.evaluation import OOF_COLUMNS, check_oof, view_scores
from cmi.params import EnsembleParams
from cmi.postprocess import excess_answers
from cmi.schema import GESTURES, N_CLASSES, PROBA_COLUMNS

VIEW_KEYS = {"full", "imu_only", "test_like"}
SCORE_KEYS = {"score", "binary_f1", "macro_f1", "n_rows"}


def _oof_rows(n: int, native_imu_every: int = 6, n_folds: int = 3) -> pl.DataFrame:
    """Key columns of an OOF table: every n-th sequence natively IMU-only (one row), the others
    full-sensor (two rows: views full and imu_only); sorted by (sequence_id, view)."""
    rows = []
    for i in range(n):
        group = "imu_only" if (i + 1) % native_imu_every == 0 else "full"
        for view in ("full", "imu_only") if group == "full" else ("imu_only",):
            rows.append((f"SEQ_{i:06d}", i % n_folds, i % N_CLASSES, group, view))
    return pl.DataFrame(
        rows,
        schema={
            "sequence_id": pl.String,
            "fold": pl.Int32,
            "y_true": pl.Int32,
            "sensor_group": pl.String,
            "view": pl.String,
        },
        orient="row",
    )


def _with_proba(keys: pl.DataFrame, labels: np.ndarray, confidence: float = 0.9) -> pl.DataFrame:
    proba = _onehot_ish(labels, confidence)
    return keys.hstack(
        [pl.Series(c, proba[:, k], dtype=pl.Float64) for k, c in enumerate(PROBA_COLUMNS)]
    )


def _onehot_ish(labels: np.ndarray, confidence: float) -> np.ndarray:
    proba = np.full((len(labels), N_CLASSES), (1 - confidence) / (N_CLASSES - 1))
    proba[np.arange(len(labels)), labels] = confidence
    return proba


def _wrong(y: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (y + 1 + rng.integers(0, N_CLASSES - 1, len(y))) % N_CLASSES


@pytest.fixture
def complementary_pair() -> tuple[pl.DataFrame, pl.DataFrame]:
    """LightGBM is right on the recorded (full) view, Torch on the IMU-only view: only weights
    fitted per view get everything right. Most sequences are full-sensor, so weights fitted
    per native sensor group would not (its 'full' group mixes both views)."""
    keys = _oof_rows(72)
    y = keys["y_true"].to_numpy()
    full_view = (keys["view"] == "full").to_numpy()
    wrong = _wrong(y)
    return (
        _with_proba(keys, np.where(full_view, y, wrong)),
        _with_proba(keys, np.where(full_view, wrong, y)),
    )


def test_fixture_keeps_the_oof_contract(complementary_pair) -> None:
    for frame in complementary_pair:
        check_oof(frame)
        assert frame.columns == [*OOF_COLUMNS, *PROBA_COLUMNS]


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
    with pytest.raises(BlendError, match=r"cover different \(sequence_id, view\) rows"):
        align_oof(lgbm, torch.filter(pl.col("sequence_id") != "SEQ_000001"))
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


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (lambda f: f.drop("view"), r"torch OOF: missing column\(s\) \['view'\]"),
        (lambda f: f.with_columns(view=pl.lit("tof")), r"torch OOF: column view not in"),
        (
            lambda f: pl.concat([f, f.head(1)]),
            r"torch OOF: duplicate \(sequence_id, view\) row \(sequence 'SEQ_000000'",
        ),
        (
            # The old one-row-per-sequence table: a full-sensor sequence without its views.
            lambda f: f.filter(pl.col("view") == "imu_only"),
            r"torch OOF: a full-sensor sequence lacks one of its two views",
        ),
        (
            lambda f: f.with_columns(
                view=pl.when(pl.col("sequence_id") == "SEQ_000005")
                .then(pl.lit("full"))
                .otherwise(pl.col("view"))
            ),
            r"natively IMU-only sequence has a 'full' view row \(sequence 'SEQ_000005'",
        ),
        (
            lambda f: f.with_columns(p03=pl.lit(float("nan"))),
            r"torch OOF: non-finite probability \(sequence 'SEQ_000000'",
        ),
    ],
)
def test_align_rejects_tables_breaking_the_view_contract(
    complementary_pair, corrupt, match: str
) -> None:
    lgbm, torch = complementary_pair
    with pytest.raises(BlendError, match=match):
        align_oof(lgbm, corrupt(torch))


def test_align_ignores_row_order(complementary_pair) -> None:
    lgbm, torch = complementary_pair
    inputs = align_oof(lgbm, torch.reverse())
    assert list(zip(inputs.sequence_id, inputs.view, strict=True)) == sorted(
        lgbm.select("sequence_id", "view").rows()
    )
    np.testing.assert_allclose(
        inputs.p_torch, torch.sort("sequence_id", "view").select(PROBA_COLUMNS)
    )


def test_fixed_weights_blend_is_the_weighted_average(complementary_pair) -> None:
    inputs = align_oof(*complementary_pair)
    weights = fit_blend(inputs, EnsembleParams(w_lgbm=1, w_torch=3))
    assert weights.default == pytest.approx({"lgbm": 0.25, "torch": 0.75})
    assert weights.by_sensor_group is None
    np.testing.assert_allclose(
        apply_weights(inputs, weights), 0.25 * inputs.p_lgbm + 0.75 * inputs.p_torch
    )


@pytest.mark.parametrize("method", ["grid", "nelder_mead"])
def test_per_group_weights_are_fitted_on_the_views(complementary_pair, method: str) -> None:
    inputs = align_oof(*complementary_pair)
    params = EnsembleParams(w_lgbm=0.4, w_torch=0.6, optimize=method, by_sensor_group=True)
    weights = fit_blend(inputs, params)
    assert weights.by_sensor_group["full"]["lgbm"] > 0.5
    assert weights.by_sensor_group["imu_only"]["torch"] > 0.5
    proba = apply_weights(inputs, weights)
    assert (proba.argmax(axis=1) == inputs.y_true).all()
    # An IMU-only view row of a full-sensor sequence is blended with the imu_only weights.
    row = int(np.flatnonzero((inputs.sensor_group == "full") & (inputs.view == "imu_only"))[0])
    expected = weights.by_sensor_group["imu_only"]
    np.testing.assert_allclose(
        proba[row], expected["lgbm"] * inputs.p_lgbm[row] + expected["torch"] * inputs.p_torch[row]
    )


def test_overall_weights_follow_the_imu_only_share() -> None:
    """The overall fit maximizes test_like: the view weighing more decides the weights."""
    keys = _oof_rows(60, native_imu_every=1000)
    y = keys["y_true"].to_numpy()
    full_view = (keys["view"] == "full").to_numpy()
    wrong = _wrong(y)
    lgbm = _with_proba(keys, np.where(full_view, y, wrong))
    torch = _with_proba(keys, np.where(full_view, wrong, y))
    inputs = align_oof(lgbm, torch)
    params = EnsembleParams(w_lgbm=0.5, w_torch=0.5, optimize="grid")
    assert fit_blend(inputs, params, imu_only_share=0.9).default["torch"] > 0.5
    assert fit_blend(inputs, params, imu_only_share=0.1).default["lgbm"] > 0.5


def _fold0_disagrees() -> tuple[pl.DataFrame, pl.DataFrame]:
    """LightGBM right and Torch wrong on folds 1 and 2, the other way round on fold 0."""
    keys = _oof_rows(90)
    y = keys["y_true"].to_numpy()
    fold0 = (keys["fold"] == 0).to_numpy()
    wrong = _wrong(y)
    return (
        _with_proba(keys, np.where(fold0, wrong, y)),
        _with_proba(keys, np.where(fold0, y, wrong)),
    )


def test_nested_blend_scores_each_fold_with_weights_fitted_without_it() -> None:
    inputs = align_oof(*_fold0_disagrees())
    params = EnsembleParams(w_lgbm=0.5, w_torch=0.5, optimize="grid", by_sensor_group=True)
    proba, per_fold = nested_blend(inputs, params)
    others = inputs.subset(inputs.fold != 0)
    assert per_fold["0"] == fit_blend(others, params)
    assert per_fold["0"].default["lgbm"] > 0.5  # fitted where LightGBM is right ...
    fold0 = inputs.fold == 0
    assert (proba[fold0].argmax(axis=1) != inputs.y_true[fold0]).all()  # ... so wrong on fold 0
    np.testing.assert_allclose(proba[fold0], apply_weights(inputs.subset(fold0), per_fold["0"]))
    # Fold 0's own labels never reach its weights: relabel it, nothing about it changes.
    relabeled = inputs.subset(np.arange(len(inputs)))
    object.__setattr__(
        relabeled, "y_true", np.where(fold0, (inputs.y_true + 3) % 18, inputs.y_true)
    )
    proba_again, per_fold_again = nested_blend(relabeled, params)
    assert per_fold_again["0"] == per_fold["0"]
    np.testing.assert_array_equal(proba_again[fold0], proba[fold0])


def test_blend_metrics_report_views_for_every_model(complementary_pair) -> None:
    inputs = align_oof(*complementary_pair)
    params = EnsembleParams(w_lgbm=0.4, w_torch=0.6, optimize="grid", by_sensor_group=True)
    weights = fit_blend(inputs, params)
    nested = nested_blend(inputs, params)
    metrics = blend_metrics(inputs, params, weights, nested, 0.5)
    for name in ("lgbm", "torch", "blend", "blend_fixed", "blend_in_sample"):
        assert set(metrics[name]) == VIEW_KEYS
        for view in VIEW_KEYS:
            assert set(metrics[name][view]) == SCORE_KEYS
    assert metrics["score"] == metrics["blend"]["test_like"]["score"]
    # LightGBM is perfect on the full view and wrong on every imu_only row (a non-target
    # taken for another non-target still counts as right, hence not exactly 0).
    assert metrics["lgbm"]["full"]["score"] == 1.0
    assert metrics["lgbm"]["imu_only"]["score"] < 0.5
    assert metrics["torch"]["imu_only"]["score"] == 1.0
    assert metrics["lgbm"]["full"]["n_rows"] == int((inputs.view == "full").sum())
    assert metrics["blend_in_sample"]["test_like"]["score"] == pytest.approx(1.0)
    assert set(metrics["weights_by_fold"]) == {"0", "1", "2"}
    assert set(metrics["per_fold_test_like"]) == {"lgbm", "torch", "blend"}
    assert metrics["n_sequences"] == 72 and metrics["n_rows"] == len(inputs)


def test_per_class_f1_lists_all_18_gestures_weighted_by_view() -> None:
    keys = _oof_rows(4, native_imu_every=1000, n_folds=1)  # 4 full sequences, 8 rows
    keys = keys.with_columns(y_true=pl.Series([0, 0, 0, 0, 1, 1, 9, 9], dtype=pl.Int32))
    inputs = align_oof(_with_proba(keys, np.zeros(8, int)), _with_proba(keys, np.zeros(8, int)))
    # Predict class 0 everywhere except the imu_only row of the class-1 sequence (right).
    pred = np.array([0, 0, 0, 0, 0, 1, 0, 0])
    frame = per_class_f1_frame(inputs, _onehot_ish(pred, 0.9), imu_only_share=0.5)
    assert frame["gesture"].to_list() == list(GESTURES)
    f1 = dict(zip(frame["gesture"], frame["f1"], strict=True))
    assert f1[GESTURES[1]] == pytest.approx(2 / 3)  # tp 1, fn 1 (equal view weights)
    assert f1[GESTURES[9]] == 0.0 and f1[GESTURES[5]] == 0.0
    # Weighted: only the imu_only rows count at share 1.0, and class 1's one is right.
    weighted = per_class_f1_frame(inputs, _onehot_ish(pred, 0.9), imu_only_share=1.0)
    assert dict(zip(weighted["gesture"], weighted["f1"], strict=True))[GESTURES[1]] == 1.0


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


def oof_blend_stage() -> ModuleType:
    """stages/oof_blend.py as a module, to call its main() in-process."""
    spec = importlib.util.spec_from_file_location("stage_oof_blend", STAGES_DIR / "oof_blend.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _replay_inputs(oof: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """sequences.parquet (each sequence's subject: one per fold, as the grouped split makes
    them) and an orientation OOF table (random estimates) for the oof_blend stage's replay."""
    ids = oof["sequence_id"].unique().sort()
    folds = oof.group_by("sequence_id").agg(pl.col("fold").first()).sort("sequence_id")["fold"]
    sequences = pl.DataFrame(
        {"sequence_id": ids, "subject": [f"SUBJ_{k}" for k in folds.to_list()]}
    )
    q = np.random.default_rng(0).dirichlet(np.ones(4), size=len(ids))
    orientation = pl.DataFrame(
        {"sequence_id": ids, "fold": folds, **{f"o{i}": q[:, i] for i in range(4)}}
    )
    return sequences, orientation


def _blend_project(root: Path, pair, ensemble: dict, share: float = 0.5) -> Path:
    (root / "data" / "oof").mkdir(parents=True)
    (root / "data" / "features").mkdir(parents=True)
    pair[0].write_parquet(root / "data" / "oof" / "lgbm.parquet")
    pair[1].write_parquet(root / "data" / "oof" / "torch.parquet")
    sequences, orientation = _replay_inputs(pair[0])
    sequences.write_parquet(root / "data" / "features" / "sequences.parquet")
    orientation.write_parquet(root / "data" / "oof" / "orientation.parquet")
    params = {"ensemble": ensemble, "eval": {"imu_only_share": share}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def test_stage_writes_every_output(tmp_path: Path, complementary_pair) -> None:
    root = _blend_project(
        tmp_path,
        complementary_pair,
        {"w_lgbm": 0.4, "w_torch": 0.6, "optimize": "grid", "by_sensor_group": True},
    )
    run_stage("oof_blend.py", root)
    metrics = json.loads((root / "metrics" / "blend.json").read_text())
    for name in ("lgbm", "torch", "blend", "blend_fixed", "blend_in_sample"):
        assert set(metrics[name]) == VIEW_KEYS
    assert metrics["score"] == metrics["blend"]["test_like"]["score"] == pytest.approx(1.0)
    weights = json.loads((root / "models" / "blend" / "weights.json").read_text())
    assert weights == metrics["weights"]
    assert set(weights["by_sensor_group"]) == {"full", "imu_only"}
    for pair in [weights["default"], *weights["by_sensor_group"].values()]:
        # Readable numbers (0.45, not 1 - 0.55 = 0.44999999999999996) that still sum to 1.
        assert all(round(v, 6) == v for v in pair.values()), pair
        assert pair["lgbm"] + pair["torch"] == pytest.approx(1.0, abs=1e-9)

    blend = pl.read_parquet(root / "data" / "oof" / "blend.parquet")
    check_oof(blend, "blend.parquet")
    assert blend.columns == [*OOF_COLUMNS, *PROBA_COLUMNS]
    assert blend.height == complementary_pair[0].height
    np.testing.assert_allclose(blend.select(PROBA_COLUMNS).to_numpy().sum(axis=1), 1.0)
    assert view_scores(blend, 0.5) == {k: metrics["blend"][k] for k in VIEW_KEYS}
    confusion = pl.read_csv(root / "plots" / "confusion.csv")
    assert confusion.columns == ["actual", "predicted", "view"]
    assert confusion.height == blend.height
    assert set(confusion["actual"]) <= set(GESTURES)
    per_class = pl.read_csv(root / "plots" / "per_class_f1.csv")
    assert per_class.height == N_CLASSES

    # The gateway replay on the nested blend: every method on the same presentations.
    replay = metrics["postprocess"]
    assert (replay["mode"], replay["combine"], replay["n_orders"]) == ("resolve", "max", 5)
    assert replay["n_sequences"] == 72 and replay["imu_only_share"] == 0.5
    for method in ("none", "gesture_counts", "assignment"):
        assert len(replay[method]["test_like_per_order"]) == 5
        assert 0 <= replay[method]["test_like"] <= 1
        assert ("gain" in replay[method]) == (method != "none")
    # The blend is right on every row, so the plain answers exceed the protocol's counts
    # exactly where this fixture's labels do (its labels ignore the protocol).
    assert replay["none"]["test_like"] == replay["none"]["full"] == pytest.approx(1.0)
    sequences, _ = _replay_inputs(complementary_pair[0])
    truth = blend.unique("sequence_id").join(sequences, on="sequence_id")
    expected = excess_answers(truth["subject"].to_numpy(), truth["y_true"].to_numpy())
    assert replay["none"]["excess_answers"] == expected > 0


def test_stage_without_optimization_reports_the_fixed_blend(
    tmp_path: Path, complementary_pair
) -> None:
    root = _blend_project(tmp_path, complementary_pair, {"w_lgbm": 0.4, "w_torch": 0.6})
    oof_blend_stage().main(
        root
    )  # in-process: fast (test_stage_writes_every_output runs it as DVC does)
    metrics = json.loads((root / "metrics" / "blend.json").read_text())
    assert "blend_in_sample" not in metrics and "weights_by_fold" not in metrics
    assert metrics["blend"] == metrics["blend_fixed"]
    assert metrics["weights"] == {
        "default": {"lgbm": 0.4, "torch": 0.6},
        "by_sensor_group": None,
        "optimize": "none",
    }


def test_stage_replays_post_processing_and_needs_its_inputs(
    tmp_path: Path, complementary_pair
) -> None:
    """Post-processing changes answers where a subject's capacities bind: 20 sequences of one
    subject all guessed 'Glasses on/off' (done twice per subject) by both models."""
    keys = _oof_rows(20, native_imu_every=1000, n_folds=1)
    glasses = GESTURES.index("Glasses on/off")
    y = keys["y_true"].to_numpy()
    guess = np.full((len(y), N_CLASSES), 0.02)
    guess[:, glasses] = 0.4
    guess[np.arange(len(y)), y] += 0.2  # the truth is always the runner-up
    guess /= guess.sum(axis=1, keepdims=True)
    oof = keys.hstack([pl.Series(c, guess[:, k]) for k, c in enumerate(PROBA_COLUMNS)])
    root = _blend_project(tmp_path, (oof, oof), {"w_lgbm": 0.5, "w_torch": 0.5})
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["postprocess"] = {"n_orders": 3, "seed": 1}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    oof_blend_stage().main(root)
    replay = json.loads((root / "metrics" / "blend.json").read_text())["postprocess"]
    assert replay["n_orders"] == 3 and len(replay["none"]["test_like_per_order"]) == 3
    assert replay["none"]["excess_answers"] == 18  # 20 answers of a gesture done twice
    for method in ("gesture_counts", "assignment"):
        # resolve mode may still send a few: an answer sent is kept when a later sequence
        # takes its slot (pinned never exceeds; tests/test_postprocess.py).
        assert replay[method]["excess_answers"] <= 4
        assert replay[method]["gain"] > 0.3, replay[method]

    (root / "data" / "oof" / "orientation.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"orientation\.parquet: not found; run the orient"):
        oof_blend_stage().main(root)


def test_stage_rejects_bad_weights_naming_the_key(tmp_path: Path, complementary_pair) -> None:
    root = _blend_project(tmp_path, complementary_pair, {"w_lgbm": -1.0, "w_torch": 0.6})
    with pytest.raises(BlendError, match=r"params\.yaml: ensemble\.w_lgbm must be >= 0"):
        oof_blend_stage().main(root)
    assert not (root / "models" / "blend").exists()


def test_stage_rejects_an_oof_without_views(tmp_path: Path, complementary_pair) -> None:
    old_format = complementary_pair[1].filter(pl.col("view") == "imu_only").drop("view")
    root = _blend_project(tmp_path, (complementary_pair[0], old_format), {"w_lgbm": 0.4})
    with pytest.raises(BlendError, match=r"torch\.parquet: missing column\(s\) \['view'\]"):
        oof_blend_stage().main(root)


@pytest.mark.slow
def test_pipeline_blend_outputs(tiny_trained_project: Path) -> None:
    root = tiny_trained_project
    metrics = json.loads((root / "metrics" / "blend.json").read_text())
    lgbm = pl.read_parquet(root / "data" / "oof" / "lgbm.parquet")
    blend = pl.read_parquet(root / "data" / "oof" / "blend.parquet")
    check_oof(blend, "blend.parquet")
    assert blend.height == lgbm.height == metrics["n_rows"]
    for key in ("lgbm", "torch", "blend", "blend_fixed"):
        assert set(metrics[key]) == VIEW_KEYS
        assert 0 <= metrics[key]["test_like"]["score"] <= 1
    lgbm_metrics = json.loads((root / "dvclive" / "lgbm" / "metrics.json").read_text())
    for view in VIEW_KEYS:
        assert metrics["lgbm"][view] == pytest.approx(lgbm_metrics[view])
    weights = json.loads((root / "models" / "blend" / "weights.json").read_text())
    bundle = json.loads((root / "models" / "bundle" / "manifest.json").read_text())
    assert bundle["blend"] == weights == metrics["weights"]
    replay = metrics["postprocess"]
    assert replay["n_sequences"] == blend["sequence_id"].n_unique()
    for method in ("none", "gesture_counts", "assignment"):
        assert 0 <= replay[method]["test_like"] <= 1
    assert pl.read_csv(root / "plots" / "confusion.csv").height == blend.height
