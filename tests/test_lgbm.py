"""LightGBM per-fold training, modality dropout, the IMU-only view, honest selection, OOF in
views, checkpoints and resume."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest
import yaml
from pipeline_helpers import STAGES_DIR, copy_project, run_stage, stage_command

from cmi import deps, lgbm
from cmi.checkpoint import (
    DONE_MARKER,
    CheckpointError,
    CheckpointStore,
    write_json_file,
    write_text_file,
)
from cmi.evaluation import OOF_COLUMNS, check_oof, view_scores
from cmi.features import compute_features, prepare_sensor_frame
from cmi.io import read_json, write_parquet
from cmi.params import CVParams, EvalParams, ExtractParams, LgbmParams, Params, section_dict
from cmi.paths import ProjectPaths
from cmi.schema import GESTURES, N_CLASSES, PROBA_COLUMNS

SMALL = LgbmParams(
    n_estimators=40,
    learning_rate=0.2,
    num_leaves=7,
    min_child_samples=3,
    early_stopping_rounds=10,
    n_jobs=1,
    feature_fraction=0.5,  # the fake data has few informative columns: do not depend on defaults
)
IMU_FEATURES = ["acc_a", "acc_b", "rot_c"]
MODALITY_FEATURES = ["thm_1_mean", "tof_2_min"]
FEATURES = IMU_FEATURES + MODALITY_FEATURES


def _fake_frames(
    n_per_class: int = 8, n_folds: int = 3, seed: int = 0, class_only_in_fold: int | None = None
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """sequences / sequence_features / folds in the contract format, with separable classes.

    ``class_only_in_fold=k`` puts every sequence of the last class in fold k, so fold k's
    training part has no example of it.
    """
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(N_CLASSES), n_per_class)
    n = len(labels)
    ids = [f"SEQ_{i:05d}" for i in rng.permutation(n)]
    centers = rng.normal(scale=4.0, size=(N_CLASSES, len(FEATURES)))
    x = (centers[labels] + rng.normal(size=(n, len(FEATURES)))).astype(np.float32)
    group = np.where(rng.random(n) < 0.25, "imu_only", "full")
    x[np.ix_(group == "imu_only", [FEATURES.index(f) for f in MODALITY_FEATURES])] = np.nan
    fold = np.arange(n) % n_folds
    if class_only_in_fold is not None:
        fold[labels == N_CLASSES - 1] = class_only_in_fold
    sequences = pl.DataFrame(
        {
            "sequence_id": ids,
            "subject": [f"SUBJ_{i % 7}" for i in range(n)],
            "gesture": [GESTURES[k] for k in labels],
            "label": pl.Series(labels, dtype=pl.Int32),
            "sensor_group": group.tolist(),
            "length": pl.Series(np.full(n, 50), dtype=pl.Int32),
            "handedness": pl.Series(np.ones(n), dtype=pl.Int32),
        }
    )
    features = pl.DataFrame(
        {"sequence_id": ids, **{name: x[:, j] for j, name in enumerate(FEATURES)}}
    ).with_columns(pl.col(FEATURES).cast(pl.Float32))
    folds = pl.DataFrame({"sequence_id": ids, "fold": pl.Series(fold, dtype=pl.Int32)})
    # Rows in a different order in each file: the join must not care.
    return sequences, features.reverse(), folds.sort("sequence_id")


def _fake_data(**kwargs) -> lgbm.TrainingSet:
    return lgbm.build_training_set(*_fake_frames(**kwargs))


# ---------------------------------------------------------------- unit tests on fake frames


def test_build_training_set_joins_and_sorts() -> None:
    sequences, features, folds = _fake_frames()
    data = lgbm.build_training_set(sequences, features, folds)
    assert data.sequence_ids == sorted(sequences["sequence_id"].to_list())
    assert data.feature_names == FEATURES
    assert data.x.dtype == np.float32 and data.x.shape == (sequences.height, len(FEATURES))
    assert data.n_folds == 3
    row = data.sequence_ids.index(sequences["sequence_id"][0])
    assert data.y[row] == sequences["label"][0]
    assert data.sensor_group[row] == sequences["sensor_group"][0]


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda s, f, k: (s.drop("label"), f, k), r"sequences.parquet: missing column.*label"),
        (lambda s, f, k: (s, f, k.head(10)), r"folds.parquet: no row for"),
        (lambda s, f, k: (s, f.head(10), k), r"sequence_features.parquet: no row for"),
        (
            lambda s, f, k: (s.with_columns(label=pl.lit(18, pl.Int32)), f, k),
            r"label null or outside 0..17",
        ),
        (
            lambda s, f, k: (s.with_columns(sensor_group=pl.lit("tof")), f, k),
            r"sensor_group not in",
        ),
        (
            lambda s, f, k: (s, f.with_columns(acc_a=pl.lit("x")), k),
            r"non-numeric feature column.*acc_a",
        ),
        (lambda s, f, k: (s, f, pl.concat([k, k.head(1)])), r"folds.parquet: duplicate"),
        (
            lambda s, f, k: (s, f, k.with_columns(fold=pl.col("fold") * 2)),
            r"folds \[0, 2, 4\] are not 0..4",
        ),
    ],
)
def test_build_training_set_rejects_bad_input(corrupt, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        lgbm.build_training_set(*corrupt(*_fake_frames()))


def test_modality_dropout_blanks_only_thm_tof_of_full_rows() -> None:
    data = _fake_data()
    mask = np.array([lgbm.is_modality_feature(n) for n in data.feature_names])
    assert mask.tolist() == [False, False, False, True, True]
    x, dropped = lgbm.modality_dropout(
        data.x, data.sensor_group, mask, 0.3, np.random.default_rng(0)
    )
    full = np.flatnonzero(data.sensor_group == "full")
    assert len(dropped) == round(0.3 * len(full))
    assert set(dropped) <= set(full)
    assert np.isnan(x[np.ix_(dropped, np.flatnonzero(mask))]).all()
    np.testing.assert_array_equal(x[:, ~mask], data.x[:, ~mask])  # IMU features untouched
    kept = np.setdiff1d(np.arange(len(x)), dropped)
    np.testing.assert_array_equal(x[kept], data.x[kept])  # other rows untouched (NaN == NaN)
    assert not np.isnan(data.x[np.ix_(dropped, np.flatnonzero(mask))]).any()  # input not mutated
    _, dropped_again = lgbm.modality_dropout(
        data.x, data.sensor_group, mask, 0.3, np.random.default_rng(0)
    )
    np.testing.assert_array_equal(dropped, dropped_again)
    unchanged, no_rows = lgbm.modality_dropout(
        data.x, data.sensor_group, mask, 0.0, np.random.default_rng(0)
    )
    assert len(no_rows) == 0
    np.testing.assert_array_equal(unchanged, data.x)
    with pytest.raises(ValueError, match="modality_dropout"):
        lgbm.modality_dropout(data.x, data.sensor_group, mask, 1.5, np.random.default_rng(0))


def test_booster_params_come_from_lgbm_section() -> None:
    params = lgbm.booster_params(SMALL)
    assert params["num_class"] == 18 and params["objective"] == "multiclass"
    assert params["num_leaves"] == 7 and params["min_child_samples"] == 3
    assert params["num_threads"] == 1 and params["seed"] == SMALL.seed
    assert params["deterministic"] is True


def test_absent_class_in_training_fold_keeps_global_class_order() -> None:
    data = _fake_data(n_per_class=10, class_only_in_fold=0)
    assert (N_CLASSES - 1) not in set(data.y[data.train_rows(0)])
    result = lgbm.train_fold(data, 0, SMALL)
    valid = data.valid_rows(0)
    for proba in (result.proba_recorded, result.proba_imu_only):
        assert proba.shape == (len(valid), N_CLASSES)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    # Separable classes: argmax right for every class the model saw proves the column order.
    seen = data.y[valid] != N_CLASSES - 1
    accuracy = (result.proba_recorded[seen].argmax(axis=1) == data.y[valid][seen]).mean()
    assert accuracy > 0.8
    assert result.proba_recorded[:, N_CLASSES - 1].max() < 0.05  # never trained on: tiny proba
    assert "num_class=18" in result.model_text


def test_train_fold_is_deterministic_and_early_stops() -> None:
    data = _fake_data()
    first = lgbm.train_fold(data, 1, SMALL)
    second = lgbm.train_fold(data, 1, SMALL)
    assert first.model_text == second.model_text
    np.testing.assert_array_equal(first.proba_recorded, second.proba_recorded)
    np.testing.assert_array_equal(first.proba_imu_only, second.proba_imu_only)
    assert 1 <= first.best_iteration <= SMALL.n_estimators
    # The inner curve runs early_stopping_rounds past the chosen round (or to n_estimators).
    curve = first.inner_logloss
    assert len(curve) in (first.best_iteration + SMALL.early_stopping_rounds, SMALL.n_estimators)
    assert int(np.argmin(curve)) + 1 == first.best_iteration
    # The refit model is shipped with exactly the chosen number of rounds.
    assert _rounds(first.model_text) == first.best_iteration
    no_stop = lgbm.train_fold(data, 1, replace(SMALL, early_stopping_rounds=0, n_estimators=5))
    assert no_stop.best_iteration == 5 and _rounds(no_stop.model_text) == 5
    assert no_stop.inner_logloss == ()


def _rounds(model_text: str) -> int:
    return lgb.Booster(model_str=model_text).current_iteration()


def test_refit_off_ships_the_early_stopped_inner_model() -> None:
    data = _fake_data()
    refit = lgbm.train_fold(data, 1, SMALL)
    inner_only = lgbm.train_fold(data, 1, replace(SMALL, refit_full=False))
    assert inner_only.best_iteration == refit.best_iteration  # the same selection ...
    assert _rounds(inner_only.model_text) == inner_only.best_iteration
    assert inner_only.model_text != refit.model_text  # ... but trained on fewer folds


def test_inner_fold_is_the_next_fold_and_needs_three_folds() -> None:
    assert [lgbm.inner_fold(k, 5) for k in range(5)] == [1, 2, 3, 4, 0]
    with pytest.raises(ValueError, match=r"cv\.n_splits >= 3.*early_stopping_rounds: 0"):
        lgbm.inner_fold(0, 2)
    data = _fake_data(n_folds=2)
    with pytest.raises(ValueError, match=r"cv\.n_splits >= 3"):
        lgbm.run_cv(data, SMALL)
    fixed = lgbm.run_cv(data, replace(SMALL, early_stopping_rounds=0, n_estimators=3))
    assert [r.best_iteration for r in fixed] == [3, 3]


def test_both_views_adds_the_imu_only_view_of_full_rows_weighted_by_share() -> None:
    data = _fake_data()
    rows = data.valid_rows(2)
    full = rows[data.sensor_group[rows] == "full"]
    x, y, weights = lgbm.both_views(data, rows, imu_only_share=0.5)
    assert len(x) == len(y) == len(weights) == len(rows) + len(full)
    np.testing.assert_array_equal(x[: len(rows)], data.x[rows])
    view = x[len(rows) :]
    assert np.isnan(view[:, data.modality_columns]).all()
    np.testing.assert_array_equal(
        view[:, ~data.modality_columns], data.x[full][:, ~data.modality_columns]
    )
    np.testing.assert_array_equal(y, np.concatenate([data.y[rows], data.y[full]]))
    n_imu = len(rows) - len(full) + len(full)  # native IMU-only rows + the views of full rows
    is_full = np.r_[data.sensor_group[rows] == "full", np.zeros(len(full), bool)]
    assert weights[is_full].sum() == pytest.approx(weights[~is_full].sum())  # 0.5 each
    assert (~is_full).sum() == n_imu
    assert weights.mean() == pytest.approx(1.0)


def test_oof_frame_contract() -> None:
    data = _fake_data()
    results = lgbm.run_cv(data, SMALL)
    oof = lgbm.oof_frame(data, results)
    check_oof(oof, "lgbm OOF")  # the shared contract: views, keys, finite probabilities
    assert oof.columns == [*OOF_COLUMNS, *PROBA_COLUMNS]
    assert oof.schema["fold"] == pl.Int32 and oof.schema["y_true"] == pl.Int32
    assert all(oof.schema[c] == pl.Float64 for c in PROBA_COLUMNS)
    # Both views of every full-sensor sequence, the IMU-only view of every sequence.
    n_full = int((data.sensor_group == "full").sum())
    assert oof.height == len(data.sequence_ids) + n_full
    assert (oof["view"] == "imu_only").sum() == len(data.sequence_ids)
    assert oof.select("sequence_id", "view").rows() == sorted(
        oof.select("sequence_id", "view").rows()
    )
    native_imu = oof.filter(pl.col("sensor_group") == "imu_only")
    assert (native_imu["view"] == "imu_only").all()
    np.testing.assert_allclose(oof.select(PROBA_COLUMNS).to_numpy().sum(axis=1), 1.0)
    # The imu_only row of a full sequence is the model's answer to its masked features.
    result = results[0]
    booster = lgb.Booster(model_str=result.model_text)
    row = int(np.flatnonzero(data.sensor_group[data.valid_rows(0)] == "full")[0])
    index = data.valid_rows(0)[row]
    masked = lgbm.imu_only_view(data.x[[index]], data.modality_columns)
    got = oof.filter(
        (pl.col("sequence_id") == data.sequence_ids[index]) & (pl.col("view") == "imu_only")
    )
    np.testing.assert_allclose(
        got.select(PROBA_COLUMNS).to_numpy(), lgbm.predict_proba(booster, masked)
    )
    importance = lgbm.importance_frame(data.feature_names, results)
    assert importance.columns[:2] == ["feature", "gain"]
    assert sorted(importance["feature"].to_list()) == sorted(FEATURES)
    meta = lgbm.model_meta(data, results, SMALL)
    assert meta["classes"] == list(GESTURES) and meta["num_class"] == 18
    assert meta["feature_names"] == FEATURES and meta["n_folds"] == 3
    assert meta["modality_features"] == MODALITY_FEATURES


def test_imu_only_view_is_what_the_feature_path_gives_nulled_raw_data(tiny_raw_dir: Path) -> None:
    """The IMU-only view (recorded features, thm/tof features nulled) equals the features the
    real path computes when every thm/ToF value of the raw rows is null, as the hidden test
    presents its IMU-only sequences."""
    train = pl.read_csv(tiny_raw_dir / "train.csv", infer_schema_length=None)
    demographics = pl.read_csv(tiny_raw_dir / "train_demographics.csv")
    first_ids = train["sequence_id"].unique(maintain_order=True).head(12)
    raw = train.filter(pl.col("sequence_id").is_in(first_ids.implode()))
    params = ExtractParams()
    recorded = compute_features(prepare_sensor_frame(raw), demographics, params)
    assert (recorded.sequences["sensor_group"] == "full").any()
    modality_raw = [c for c in raw.columns if c.startswith(("thm_", "tof_"))]
    nulled_raw = raw.with_columns(pl.lit(None, dtype=raw.schema[c]).alias(c) for c in modality_raw)
    nulled = compute_features(prepare_sensor_frame(nulled_raw), demographics, params)
    assert (nulled.sequences["sensor_group"] == "imu_only").all()

    names = recorded.sequence_features.columns[1:]
    assert nulled.sequence_features.columns == recorded.sequence_features.columns
    mask = lgbm.modality_mask(names)
    assert mask.any() and not mask.all()
    x_recorded = recorded.sequence_features.select(names).to_numpy().astype(np.float32)
    x_nulled = nulled.sequence_features.select(names).to_numpy().astype(np.float32)
    # Exactly equal, NaN where null (assert_array_equal treats NaN == NaN).
    np.testing.assert_array_equal(lgbm.imu_only_view(x_recorded, mask), x_nulled)
    assert np.isnan(x_nulled[:, mask]).all()
    assert not np.isnan(x_recorded[:, mask]).all()  # the recorded view did have thm/tof


def _write_inputs(root: Path, frames) -> list[Path]:
    paths = [root / name for name in ("sequences.parquet", "features.parquet", "folds.parquet")]
    root.mkdir(parents=True, exist_ok=True)
    for frame, path in zip(frames, paths, strict=True):
        frame.write_parquet(path)
    return paths


def test_fingerprint_changes_with_params_and_inputs(tmp_path: Path) -> None:
    files = _write_inputs(tmp_path / "in", _fake_frames())
    base = tmp_path / "ckpt"
    params = Params(lgbm=SMALL, cv=CVParams(n_splits=3))
    key = lgbm.checkpoint_store(base, files, params).key
    assert key == lgbm.checkpoint_store(base, files, params).key
    assert (
        key != lgbm.checkpoint_store(base, files, replace(params, lgbm=replace(SMALL, seed=1))).key
    )
    assert key != lgbm.checkpoint_store(base, files, replace(params, cv=CVParams(seed=1))).key
    # eval.imu_only_share weighs the views of the early-stopping metric.
    other_share = replace(params, eval=EvalParams(imu_only_share=0.3))
    assert key != lgbm.checkpoint_store(base, files, other_share).key
    # Sections the stage does not read do not matter.
    other = replace(params, torch=replace(params.torch, epochs=99))
    assert key == lgbm.checkpoint_store(base, files, other).key
    features = _fake_frames()[1]
    features.with_columns(pl.col("acc_a") + 1).write_parquet(files[1])
    assert key != lgbm.checkpoint_store(base, files, params).key


def test_run_cv_reuses_checkpoints_and_retrains_corrupt_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = _fake_data()
    store = CheckpointStore(tmp_path, "abc")
    first = lgbm.run_cv(data, SMALL, store)
    assert all(store.is_done(f"fold_{k}") for k in range(3))
    model = store.unit_dir("fold_1") / "model.txt"
    model.write_text(model.read_text()[:100])  # damaged: checksum no longer matches
    started = []
    with caplog.at_level(logging.INFO, logger="cmi.lgbm"):
        second = lgbm.run_cv(data, SMALL, store, on_fold_start=started.append)
    assert started == [1]
    assert [r.reused for r in second] == [True, False, True]
    assert "fold 0: reusing checkpoint" in caplog.text
    assert "fold 1: checkpoint unusable, retraining" in caplog.text
    for a, b in zip(first, second, strict=True):
        assert a.model_text == b.model_text
        np.testing.assert_array_equal(a.proba_recorded, b.proba_recorded)
        np.testing.assert_array_equal(a.proba_imu_only, b.proba_imu_only)
        assert a.inner_logloss == b.inner_logloss
    assert lgbm.oof_frame(data, first).equals(lgbm.oof_frame(data, second))


def test_unfinished_unit_is_not_reused(tmp_path: Path) -> None:
    data = _fake_data()
    store = CheckpointStore(tmp_path, "abc")
    lgbm.run_cv(data, SMALL, store)
    (store.unit_dir("fold_2") / DONE_MARKER).unlink()  # as if killed before the marker
    started = []
    results = lgbm.run_cv(data, SMALL, store, on_fold_start=started.append)
    assert started == [2]
    assert [r.reused for r in results] == [True, True, False]


def _load_stage_module(script: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"stage_{Path(script).stem}", STAGES_DIR / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_project(root: Path, frames, lgbm_params: LgbmParams = SMALL) -> ProjectPaths:
    paths = ProjectPaths(root)
    sequences, features, folds = frames
    write_parquet(sequences, paths.sequences)
    write_parquet(features, paths.sequence_features)
    write_parquet(folds, paths.folds)
    params = {"cv": {"n_splits": 3}, "lgbm": section_dict(lgbm_params)}
    paths.params.write_text(yaml.safe_dump(params))
    return paths


def test_stage_main_on_fake_project(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    train_lgbm = _load_stage_module("train_lgbm.py")  # main() in-process: fast, no subprocess
    frames = _fake_frames()
    paths = _fake_project(tmp_path, frames)
    train_lgbm.main(tmp_path)
    oof = pl.read_parquet(paths.oof("lgbm"))
    check_oof(oof, "lgbm OOF")
    assert oof["sequence_id"].n_unique() == frames[0].height
    assert sorted(p.name for p in paths.lgbm_dir.iterdir()) == [
        "feature_importance.csv",
        "fold_0.txt",
        "fold_1.txt",
        "fold_2.txt",
        "meta.json",
    ]
    metrics = read_json(paths.live_dir("lgbm") / "metrics.json")
    assert metrics["score"] == metrics["test_like"]["score"]
    assert metrics == {**metrics, **view_scores(oof, 0.5)}  # full / imu_only / test_like
    assert set(metrics["per_fold_test_like"]) == {"0", "1", "2"}
    curves = sorted(p.name for p in (paths.live_dir("lgbm") / "plots" / "custom").iterdir())
    assert curves == [f"inner_logloss_fold_{k}.json" for k in range(3)]
    curve = read_json(paths.live_dir("lgbm") / "plots" / "custom" / curves[0])
    assert curve[0]["iteration"] == 1 and curve[0]["inner_logloss"] > 0
    assert not (tmp_path / "dvc.yaml").exists()  # dvclive must not write pipeline config
    with caplog.at_level(logging.INFO):
        train_lgbm.main(tmp_path)
    assert caplog.text.count("reusing checkpoint") == 3
    assert pl.read_parquet(paths.oof("lgbm")).equals(oof)
    again = read_json(paths.live_dir("lgbm") / "metrics.json")
    assert {k: v for k, v in again.items() if k != "wall_time_s"} == {
        k: v for k, v in metrics.items() if k != "wall_time_s"
    }
    params = yaml.safe_load(paths.params.read_text())
    params["cv"]["n_splits"] = 5
    paths.params.write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match=r"3 folds but cv\.n_splits=5"):
        train_lgbm.main(tmp_path)


def test_read_training_set_names_a_missing_input(tmp_path: Path) -> None:
    paths = _fake_project(tmp_path, _fake_frames())
    assert lgbm.read_training_set(paths, 3).n_folds == 3
    paths.sequence_features.unlink()
    with pytest.raises(FileNotFoundError, match=r"sequence_features\.parquet: missing; run"):
        lgbm.read_training_set(paths, 3)


def test_write_fold_models_leaves_exactly_this_runs_models(tmp_path: Path) -> None:
    for name in ("fold_1.txt", "fold_2.txt", "fold_7.txt", "fold_x.txt", "meta.json"):
        (tmp_path / name).write_text("an earlier run")
    lgbm.write_fold_models(tmp_path, {0: "model 0", 1: "model 1"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "fold_0.txt",
        "fold_1.txt",
        "fold_x.txt",  # not a fold model: left alone
        "meta.json",
    ]
    assert (tmp_path / "fold_1.txt").read_text() == "model 1"


@pytest.mark.parametrize("refit_full", [True, False])
def test_shuffled_labels_of_fold_k_leave_fold_k_model_byte_identical(
    tmp_path: Path, refit_full: bool
) -> None:
    """Honest selection: nothing about fold k's validation rows but their features reaches
    fold k's model (no early stopping on them). The other folds train on fold k, so their
    models must change: that shows the shuffle did reach the training data."""
    train_lgbm = _load_stage_module("train_lgbm.py")
    params = replace(SMALL, refit_full=refit_full)
    sequences, features, folds = _fake_frames()
    scored = 1
    in_fold = folds.filter(pl.col("fold") == scored)["sequence_id"]
    rows = sequences["sequence_id"].is_in(in_fold.implode()).to_numpy()
    labels = sequences["label"].to_numpy().copy()
    rng = np.random.default_rng(7)
    labels[rows] = rng.permutation(labels[rows])
    assert (labels != sequences["label"].to_numpy()).sum() > rows.sum() // 2
    shuffled = sequences.with_columns(pl.Series("label", labels, dtype=pl.Int32))

    original = _fake_project(tmp_path / "original", (sequences, features, folds), params)
    relabeled = _fake_project(tmp_path / "shuffled", (shuffled, features, folds), params)
    train_lgbm.main(original.root)
    train_lgbm.main(relabeled.root)
    model = f"fold_{scored}.txt"
    assert (relabeled.lgbm_dir / model).read_bytes() == (original.lgbm_dir / model).read_bytes()
    for other in {0, 1, 2} - {scored}:
        name = f"fold_{other}.txt"
        assert (relabeled.lgbm_dir / name).read_bytes() != (original.lgbm_dir / name).read_bytes()
    # Fold k's predictions are the same; only its scores moved with the labels.
    key = ["sequence_id", "view"]
    a = pl.read_parquet(original.oof("lgbm")).filter(pl.col("fold") == scored).sort(key)
    b = pl.read_parquet(relabeled.oof("lgbm")).filter(pl.col("fold") == scored).sort(key)
    assert a.select(PROBA_COLUMNS).equals(b.select(PROBA_COLUMNS))
    assert not a["y_true"].equals(b["y_true"])


def test_dvc_yaml_lgbm_stage_matches_the_code(tmp_path: Path) -> None:
    """deps cover the code the checkpoint fingerprint hashes; params are the sections read;
    the metrics file is dvclive's; dvclive's plots are declared."""
    stage = yaml.safe_load((STAGES_DIR.parent / "dvc.yaml").read_text())["stages"]["lgbm"]
    assert stage["cmd"].split()[-1] == lgbm.STAGE_SCRIPT
    assert deps.missing_deps(lgbm.STAGE_SCRIPT, stage["deps"]) == []
    # Whole sections or single keys: the stage reads cv, lgbm and eval (the views' weights).
    assert {str(p).split(".")[0] for p in stage["params"]} == {"cv", "lgbm", "eval"}
    live = ProjectPaths(Path(".")).live_dir("lgbm")
    assert [next(iter(m)) for m in stage["metrics"]] == [str(live / "metrics.json")]
    assert str(live / "plots" / "custom") in [next(iter(p)) for p in stage["plots"]]


# ---------------------------------------------------------------- cmi.checkpoint


def test_checkpoint_unit_roundtrip_and_replace(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, "key")
    assert not store.is_done("unit")
    store.save("unit", {"a.txt": write_text_file("one"), "b.json": write_json_file([1])}, {"x": 1})
    unit = store.load("unit")
    assert unit.meta == {"x": 1}
    assert unit.file("a.txt").read_text() == "one"
    assert read_json(unit.file("b.json")) == [1]
    store.save("unit", {"a.txt": write_text_file("two")}, {"x": 2})  # replaces the whole unit
    unit = store.load("unit")
    assert unit.meta == {"x": 2} and not unit.file("b.json").exists()
    assert sorted(p.name for p in store.root.iterdir()) == ["unit"]  # no staging leftovers


def test_checkpoint_damaged_or_unfinished_units_fail_to_load(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, "key")
    store.save("unit", {"a.txt": write_text_file("one")})
    store.unit_dir("unit").joinpath("a.txt").write_text("ONE")
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        store.load("unit")
    store.unit_dir("unit").joinpath(DONE_MARKER).write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable marker"):
        store.load("unit")
    store.unit_dir("unit").joinpath(DONE_MARKER).unlink()
    with pytest.raises(CheckpointError, match="not finished"):
        store.load("unit")
    with pytest.raises(ValueError, match="not allowed"):
        store.save("unit", {DONE_MARKER: write_text_file("")})


def test_checkpoint_begin_clears_leftovers_and_prune_keeps_current(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, "key")
    (store.root / ".unit.staging-1").mkdir(parents=True)
    (store.root / "unit").mkdir()
    (store.root / "unit" / "partial").write_text("x")
    assert list(store.begin("unit").iterdir()) == []
    assert not (store.root / ".unit.staging-1").exists()
    (tmp_path / "old-key" / "unit").mkdir(parents=True)
    assert store.prune_others() == [tmp_path / "old-key"]
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


# ---------------------------------------------------------------- the stage on tiny data


@pytest.fixture(scope="module")
def lgbm_project(tiny_features_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_features_project copied, with the lgbm stage run once uninterrupted.

    Fewer rounds than the tiny params: these tests are about files, folds and resume, and
    every stage run in this file costs about n_folds * n_estimators * 18 trees.
    """
    root = copy_project(tiny_features_project, tmp_path_factory.mktemp("lgbm") / "p")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["lgbm"]["n_estimators"] = 20
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_stage("train_lgbm.py", root)
    return root


def test_stage_writes_every_output(lgbm_project: Path) -> None:
    root = lgbm_project
    n_splits = yaml.safe_load((root / "params.yaml").read_text())["cv"]["n_splits"]
    meta = read_json(root / "models/lgbm/meta.json")
    assert meta["n_folds"] == n_splits and meta["num_class"] == 18
    assert meta["classes"] == list(GESTURES)
    assert len(meta["best_iterations"]) == n_splits
    features = pl.read_parquet(root / "data/features/sequence_features.parquet")
    assert meta["feature_names"] == features.columns[1:]
    for k in range(n_splits):
        assert (root / f"models/lgbm/fold_{k}.txt").read_text().startswith("tree")
    importance = pl.read_csv(root / "models/lgbm/feature_importance.csv")
    assert sorted(importance["feature"].to_list()) == sorted(meta["feature_names"])
    metrics = read_json(root / "dvclive/lgbm/metrics.json")
    for view in ("full", "imu_only", "test_like"):
        assert set(metrics[view]) == {"score", "binary_f1", "macro_f1", "n_rows"}
        assert 0 <= metrics[view]["score"] <= 1
    assert metrics["score"] == metrics["test_like"]["score"]
    assert set(metrics["per_fold_test_like"]) == {str(k) for k in range(n_splits)}
    assert metrics["best_iterations"] == meta["best_iterations"]
    assert metrics["wall_time_s"] > 0
    assert not list(root.rglob("*.pkl")) and not list(root.rglob("*.joblib"))


def test_stage_oof_covers_every_sequence_in_its_views(lgbm_project: Path) -> None:
    root = lgbm_project
    oof = pl.read_parquet(root / "data/oof/lgbm.parquet")
    sequences = pl.read_parquet(root / "data/features/sequences.parquet")
    folds = pl.read_parquet(root / "data/folds/folds.parquet")
    check_oof(oof, "data/oof/lgbm.parquet")
    assert oof.columns == [*OOF_COLUMNS, *PROBA_COLUMNS]
    # One imu_only row per sequence, plus a full row per full-sensor sequence.
    n_full = (sequences["sensor_group"] == "full").sum()
    assert oof.height == sequences.height + n_full
    assert oof.filter(pl.col("view") == "imu_only").height == sequences.height
    assert set(oof["sequence_id"]) == set(sequences["sequence_id"])
    np.testing.assert_allclose(oof.select(PROBA_COLUMNS).to_numpy().sum(axis=1), 1.0)
    joined = oof.join(sequences, on="sequence_id").join(folds, on="sequence_id", suffix="_f")
    assert (joined["y_true"] == joined["label"]).all()
    assert (joined["sensor_group"] == joined["sensor_group_right"]).all()
    assert (joined["fold"] == joined["fold_f"]).all()


def _checkpoint_root(root: Path) -> Path:
    (fingerprint_dir,) = (root / "checkpoints/lgbm").iterdir()
    return fingerprint_dir


def _wait_for(condition, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"stage exited early ({proc.returncode})")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the stage")
        time.sleep(0.05)


def test_killed_stage_resumes_with_identical_oof(lgbm_project: Path, tmp_path: Path) -> None:
    root = copy_project(lgbm_project, tmp_path / "p")
    for output in ("checkpoints", "models", "data/oof", "metrics"):
        shutil.rmtree(root / output, ignore_errors=True)
    env = {
        **os.environ,
        "PYTHONHASHSEED": "0",
        "CMI_TEST_SLOW_FOLD": "2",
        "CMI_TEST_SLOW_SECONDS": "120",
    }
    log_file = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(
        stage_command("train_lgbm.py"), cwd=root, env=env, stdout=log_file, stderr=log_file
    )
    ckpt = root / "checkpoints/lgbm"

    def folds_0_1_done_and_2_started() -> bool:
        dirs = list(ckpt.glob("*"))
        return (
            bool(dirs)
            and all((dirs[0] / f"fold_{k}" / DONE_MARKER).is_file() for k in (0, 1))
            and (dirs[0] / "fold_2").is_dir()
        )

    try:
        _wait_for(folds_0_1_done_and_2_started, proc, timeout=120)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log_file.close()
    assert not (_checkpoint_root(root) / "fold_2" / DONE_MARKER).exists()
    assert not (root / "data/oof/lgbm.parquet").exists()

    rerun = run_stage("train_lgbm.py", root)
    assert "fold 0: reusing checkpoint" in rerun.stderr
    assert "fold 1: reusing checkpoint" in rerun.stderr
    assert "fold 2: reusing checkpoint" not in rerun.stderr
    expected = pl.read_parquet(lgbm_project / "data/oof/lgbm.parquet")
    assert pl.read_parquet(root / "data/oof/lgbm.parquet").equals(expected)
    for model in (lgbm_project / "models/lgbm").glob("fold_*.txt"):
        assert (root / "models/lgbm" / model.name).read_text() == model.read_text()


def test_stage_retrains_corrupt_fold_and_prunes_stale_fingerprints(
    lgbm_project: Path, tmp_path: Path
) -> None:
    root = copy_project(lgbm_project, tmp_path / "p")
    (_checkpoint_root(root) / "fold_3" / "model.txt").write_text("garbage")
    stale = root / "checkpoints/lgbm/0123456789abcdef/fold_0"
    stale.mkdir(parents=True)
    rerun = run_stage("train_lgbm.py", root)
    assert "fold 3: checkpoint unusable, retraining" in rerun.stderr
    assert "fold 0: reusing checkpoint" in rerun.stderr
    assert not stale.parent.exists()
    expected = pl.read_parquet(lgbm_project / "data/oof/lgbm.parquet")
    assert pl.read_parquet(root / "data/oof/lgbm.parquet").equals(expected)


def test_stage_ignores_checkpoints_of_other_params(lgbm_project: Path, tmp_path: Path) -> None:
    root = copy_project(lgbm_project, tmp_path / "p")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["lgbm"]["n_estimators"] = 5  # any lgbm key; a small one keeps the retrain quick
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rerun = run_stage("train_lgbm.py", root)
    assert "reusing checkpoint" not in rerun.stderr
    assert len(list((root / "checkpoints/lgbm").iterdir())) == 1  # the old one pruned
