"""LightGBM per-fold training, modality dropout, OOF format, checkpoints and resume."""

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

import numpy as np
import polars as pl
import pytest
import yaml
from pipeline_helpers import STAGES_DIR, copy_project, run_stage, stage_command

from cmi import lgbm
from cmi.checkpoint import (
    DONE_MARKER,
    CheckpointError,
    CheckpointStore,
    write_json_file,
    write_text_file,
)
from cmi.io import read_json, write_parquet
from cmi.params import CVParams, LgbmParams, Params, section_dict
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
    assert result.valid_proba.shape == (len(valid), N_CLASSES)
    np.testing.assert_allclose(result.valid_proba.sum(axis=1), 1.0)
    # Separable classes: argmax right for every class the model saw proves the column order.
    seen = data.y[valid] != N_CLASSES - 1
    accuracy = (result.valid_proba[seen].argmax(axis=1) == data.y[valid][seen]).mean()
    assert accuracy > 0.8
    assert result.valid_proba[:, N_CLASSES - 1].max() < 0.05  # never trained on: tiny proba
    assert "num_class=18" in result.model_text


def test_train_fold_is_deterministic_and_early_stops() -> None:
    data = _fake_data()
    first = lgbm.train_fold(data, 1, SMALL)
    second = lgbm.train_fold(data, 1, SMALL)
    assert first.model_text == second.model_text
    np.testing.assert_array_equal(first.valid_proba, second.valid_proba)
    assert 1 <= first.best_iteration <= SMALL.n_estimators
    no_stop = lgbm.train_fold(data, 1, replace(SMALL, early_stopping_rounds=0, n_estimators=5))
    assert no_stop.best_iteration == 5


def test_oof_frame_contract() -> None:
    data = _fake_data()
    results = lgbm.run_cv(data, SMALL)
    oof = lgbm.oof_frame(data, results)
    assert oof.columns == ["sequence_id", "fold", "y_true", "sensor_group", *PROBA_COLUMNS]
    assert oof.schema["fold"] == pl.Int32 and oof.schema["y_true"] == pl.Int32
    assert all(oof.schema[c] == pl.Float64 for c in PROBA_COLUMNS)
    assert oof["sequence_id"].to_list() == data.sequence_ids
    np.testing.assert_allclose(oof.select(PROBA_COLUMNS).to_numpy().sum(axis=1), 1.0)
    importance = lgbm.importance_frame(data.feature_names, results)
    assert importance.columns[:2] == ["feature", "gain"]
    assert sorted(importance["feature"].to_list()) == sorted(FEATURES)
    meta = lgbm.model_meta(data, results, SMALL)
    assert meta["classes"] == list(GESTURES) and meta["num_class"] == 18
    assert meta["feature_names"] == FEATURES and meta["n_folds"] == 3
    assert meta["modality_features"] == MODALITY_FEATURES


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
        np.testing.assert_array_equal(a.valid_proba, b.valid_proba)
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


def test_stage_main_on_fake_project(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    train_lgbm = _load_stage_module("train_lgbm.py")  # main() in-process: fast, no subprocess
    paths = ProjectPaths(tmp_path)
    sequences, features, folds = _fake_frames()
    for frame, path in ((sequences, paths.sequences), (features, paths.sequence_features)):
        write_parquet(frame, path)
    write_parquet(folds, paths.folds)
    params = {"cv": {"n_splits": 3}, "lgbm": section_dict(SMALL)}
    paths.params.write_text(yaml.safe_dump(params))
    train_lgbm.main(tmp_path)
    oof = pl.read_parquet(paths.oof("lgbm"))
    assert oof.height == sequences.height
    assert sorted(p.name for p in paths.lgbm_dir.iterdir()) == [
        "feature_importance.csv",
        "fold_0.txt",
        "fold_1.txt",
        "fold_2.txt",
        "meta.json",
    ]
    with caplog.at_level(logging.INFO):
        train_lgbm.main(tmp_path)
    assert caplog.text.count("reusing checkpoint") == 3
    assert pl.read_parquet(paths.oof("lgbm")).equals(oof)
    params["cv"]["n_splits"] = 5
    paths.params.write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match=r"3 folds but cv\.n_splits=5"):
        train_lgbm.main(tmp_path)


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
    metrics = read_json(root / "metrics/lgbm.json")
    for key in ("score", "binary_f1", "macro_f1", "per_fold", "per_sensor_group"):
        assert key in metrics
    assert metrics["best_iterations"] == meta["best_iterations"]
    assert metrics["wall_time_s"] > 0
    assert not list(root.rglob("*.pkl")) and not list(root.rglob("*.joblib"))


def test_stage_oof_covers_every_sequence_once(lgbm_project: Path) -> None:
    root = lgbm_project
    oof = pl.read_parquet(root / "data/oof/lgbm.parquet")
    sequences = pl.read_parquet(root / "data/features/sequences.parquet")
    folds = pl.read_parquet(root / "data/folds/folds.parquet")
    assert oof.columns == ["sequence_id", "fold", "y_true", "sensor_group", *PROBA_COLUMNS]
    assert oof["sequence_id"].n_unique() == oof.height == sequences.height
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
