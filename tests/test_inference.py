"""cmi.inference: the API Kaggle calls, its settings, fallbacks, odd inputs, the warm-up, and
what the Kaggle path imports.

Inputs are the synthetic test files (read as Kaggle's gateway reads them); the tests that
need the real public test files take the ``real_sample`` fixture and skip without it."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from test_bundle import build_fake_bundle

from cmi import inference
from cmi.bundle import BundleError
from cmi.features import compute_features, prepare_sensor_frame
from cmi.schema import GESTURES, N_CLASSES, ROT_COLUMNS, SENSOR_COLUMNS, THM_COLUMNS, TOF_COLUMNS

ENV_VARS = (
    "MODEL_PATH",
    "TORCH_BUNDLE_PATH",
    "ENSEMBLE_W_LGBM",
    "ENSEMBLE_W_TORCH",
    "LOAD_TORCH_FOLDS_IN_MEMORY",
    "FAIL_IF_TORCH_MISSING",
    "BUNDLE_DIGEST",
    "SUBJECT_POSTPROCESS",
)
Case = tuple[pl.DataFrame, pl.DataFrame]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Read-only fake bundles."""
    by_group = {
        "default": {"lgbm": 0.4, "torch": 0.6},
        "by_sensor_group": {
            "full": {"lgbm": 1.0, "torch": 0.0},
            "imu_only": {"lgbm": 0.0, "torch": 1.0},
        },
        "optimize": "grid",
    }
    return {
        "full": build_fake_bundle(tmp_path_factory.mktemp("full")),
        "lgbm_only": build_fake_bundle(tmp_path_factory.mktemp("lgbm_only"), with_torch=False),
        "by_group": build_fake_bundle(tmp_path_factory.mktemp("by_group"), blend=by_group),
    }


@pytest.fixture
def use_bundle(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Point the environment at a bundle (plus any other variables) and drop the cache."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)

    def use(path: Path | str, **env: str) -> None:
        monkeypatch.setenv("MODEL_PATH", str(path))
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        inference.reset_cache()
        inference.reset_answer_stats()

    yield use
    inference.reset_cache()
    inference.reset_answer_stats()


def _read_like_the_gateway(folder: Path) -> Case:
    return pl.read_csv(folder / "test.csv"), pl.read_csv(folder / "test_demographics.csv")


@pytest.fixture(scope="module")
def kaggle_test(tiny_raw_dir: Path) -> Case:
    """The synthetic test files (half IMU-only), read the way Kaggle's gateway reads them."""
    return _read_like_the_gateway(tiny_raw_dir)


@pytest.fixture(scope="module")
def real_kaggle_test(real_sample: Path) -> Case:
    """The real public test files, read the way Kaggle's gateway reads them."""
    return _read_like_the_gateway(real_sample)


@pytest.fixture(
    scope="module", params=["synthetic", pytest.param("real", marks=pytest.mark.real_sample)]
)
def any_kaggle_test(request: pytest.FixtureRequest) -> Case:
    """Both: the synthetic files always, the real ones where the sample is present."""
    name = "kaggle_test" if request.param == "synthetic" else "real_kaggle_test"
    return request.getfixturevalue(name)


def _one(case: Case, sequence_id: str | None = None) -> Case:
    """One sequence (default: the first with every sensor) and its subject's demographics."""
    test, demographics = case
    if sequence_id is None:
        full = test.group_by("sequence_id", maintain_order=True).agg(
            pl.col("tof_1_v0").cast(pl.Float64, strict=False).is_not_null().any().alias("full")
        )
        sequence_id = full.filter("full")["sequence_id"][0]
    sequence = test.filter(pl.col("sequence_id") == sequence_id)
    return sequence, demographics.filter(pl.col("subject") == sequence["subject"][0])


def _null(sequence: pl.DataFrame, columns) -> pl.DataFrame:
    return sequence.with_columns(pl.lit(None, dtype=pl.Float64).alias(c) for c in columns)


def _odd_inputs(sequence: pl.DataFrame, demographics: pl.DataFrame) -> dict[str, Case]:
    rng = np.random.default_rng(0)
    long = pl.concat([sequence] * (5000 // sequence.height + 1)).head(5000)
    long = long.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("sequence_counter"))
    nan_inf = sequence.with_columns(
        pl.when(pl.int_range(pl.len()) % 3 == 0)
        .then(float("nan"))
        .otherwise(pl.col("acc_x"))
        .alias("acc_x"),
        pl.when(pl.int_range(pl.len()) % 4 == 0)
        .then(float("inf"))
        .otherwise(pl.col("rot_w"))
        .alias("rot_w"),
        pl.lit(float("-inf")).alias("thm_2"),
        pl.lit(float("nan")).alias("tof_1_v0"),
    )
    columns = list(sequence.columns)
    rng.shuffle(columns)
    other = demographics.with_columns(pl.lit("SUBJ_999999").alias("subject"))
    return {
        "kaggle": (sequence, demographics),
        "imu_only": (_null(sequence, THM_COLUMNS + TOF_COLUMNS), demographics),
        "missing_quaternion": (_null(sequence, ROT_COLUMNS), demographics),
        "all_sensors_null": (_null(sequence, SENSOR_COLUMNS), demographics),
        "nan_and_inf": (nan_inf, demographics),
        "tof_all_minus_one": (
            sequence.with_columns(pl.lit(-1.0).alias(c) for c in TOF_COLUMNS),
            demographics,
        ),
        "length_1": (sequence.head(1), demographics),
        "length_5000": (long, demographics),
        "extra_columns": (
            sequence.with_columns(
                pl.lit("Text on phone").alias("gesture"),
                pl.lit("Gesture").alias("phase"),
                pl.lit(1.0).alias("something_new"),
            ),
            demographics,
        ),
        "shuffled_columns": (sequence.select(columns), demographics.reverse()),
        "shuffled_rows": (sequence.sample(fraction=1.0, shuffle=True, seed=0), demographics),
        "string_numbers": (
            sequence.with_columns(pl.col(c).cast(pl.String) for c in SENSOR_COLUMNS),
            demographics.with_columns(pl.all().cast(pl.String)),
        ),
        "empty_demographics": (sequence, demographics.head(0)),
        "no_demographics_columns": (sequence, pl.DataFrame()),
        "unknown_subject": (sequence, other),
        "missing_sensor_columns": (
            sequence.drop("acc_x", "rot_z", "thm_3", "tof_2_v7"),
            demographics,
        ),
        "no_counter_no_ids": (sequence.drop("sequence_counter", "row_id", "subject"), demographics),
    }


def test_probabilities(bundles, use_bundle, any_kaggle_test) -> None:
    use_bundle(bundles["full"])
    sequence, demographics = _one(any_kaggle_test)
    p_lgbm = inference.predict_lgbm_proba(sequence, demographics)
    p_torch = inference.predict_torch_proba(sequence, demographics)
    p_blend = inference.predict_ensemble(sequence, demographics)
    for proba in (p_lgbm, p_torch, p_blend):
        assert proba.shape == (N_CLASSES,)
        assert np.isfinite(proba).all() and proba.min() >= 0
        assert proba.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(p_blend, 0.4 * p_lgbm + 0.6 * p_torch)
    assert inference.predict(sequence, demographics) == GESTURES[int(np.argmax(p_blend))]


def test_one_sequence_gets_the_features_of_the_batch(bundles, use_bundle, any_kaggle_test) -> None:
    """The inference path on one sequence == the batch path over the whole test table."""
    use_bundle(bundles["full"])
    predictor = inference.get_predictor()
    test, demographics = any_kaggle_test
    batch = compute_features(prepare_sensor_frame(test), demographics, predictor.bundle.extract)
    for sequence_id in test["sequence_id"].unique().to_list():
        rows = batch.sequence_features.filter(pl.col("sequence_id") == sequence_id)
        frames = batch.frame_features.filter(pl.col("sequence_id") == sequence_id)
        groups = batch.sequences.filter(pl.col("sequence_id") == sequence_id)
        expected = type(batch)(groups, rows, frames)
        sequence, demo = _one(any_kaggle_test, sequence_id)
        np.testing.assert_allclose(
            inference.predict_lgbm_proba(sequence, demo), predictor.lgbm_proba(expected)
        )
        np.testing.assert_allclose(
            inference.predict_torch_proba(sequence, demo),
            predictor.torch_proba(expected),
            rtol=1e-5,
        )


@pytest.mark.parametrize(
    "case",
    [
        "kaggle",
        "imu_only",
        "missing_quaternion",
        "all_sensors_null",
        "nan_and_inf",
        "tof_all_minus_one",
        "length_1",
        "length_5000",
        "extra_columns",
        "shuffled_columns",
        "shuffled_rows",
        "string_numbers",
        "empty_demographics",
        "no_demographics_columns",
        "unknown_subject",
        "missing_sensor_columns",
        "no_counter_no_ids",
    ],
)
def test_odd_inputs_get_a_real_answer(bundles, use_bundle, kaggle_test, case: str) -> None:
    use_bundle(bundles["full"])
    sequence, demographics = _odd_inputs(*_one(kaggle_test))[case]
    # A real prediction, not the fallback: the ensemble itself must cope with the input.
    proba = inference.predict_ensemble(sequence, demographics)
    assert proba.shape == (N_CLASSES,) and np.isfinite(proba).all()
    answer = inference.predict(sequence, demographics)
    assert isinstance(answer, str) and answer in GESTURES
    assert answer == GESTURES[int(np.argmax(proba))]


def test_imu_only_input_is_routed_as_imu_only(bundles, use_bundle, kaggle_test) -> None:
    """Per-group weights: the bundle says full -> LightGBM only, imu_only -> Torch only."""
    use_bundle(bundles["by_group"])
    sequence, demographics = _one(kaggle_test)
    imu_only = _null(sequence, THM_COLUMNS + TOF_COLUMNS)
    # -1 everywhere is "no reflection", not "no sensor": still a full-sensor sequence.
    all_far = sequence.with_columns(pl.lit(-1.0).alias(c) for c in TOF_COLUMNS)
    for case, model in ((sequence, "lgbm"), (all_far, "lgbm"), (imu_only, "torch")):
        expected = (
            inference.predict_lgbm_proba(case, demographics)
            if model == "lgbm"
            else inference.predict_torch_proba(case, demographics)
        )
        np.testing.assert_allclose(inference.predict_ensemble(case, demographics), expected)


def test_predict_never_raises(bundles, use_bundle, kaggle_test, tmp_path: Path, caplog) -> None:
    sequence, demographics = _one(kaggle_test)
    use_bundle(tmp_path / "no-such-bundle")
    with caplog.at_level(logging.ERROR, logger="cmi.inference"):
        assert inference.predict(sequence, demographics) == inference.FALLBACK_GESTURE
        assert inference.predict(sequence, demographics) == inference.FALLBACK_GESTURE
    assert sum("could not load the bundle" in r.message for r in caplog.records) == 1
    with pytest.raises(BundleError, match="no-such-bundle: bundle directory not found"):
        inference.load()

    broken = Path(shutil.copytree(bundles["full"], tmp_path / "broken"))
    (broken / "lgbm" / "fold_0.txt").write_text("tree\n")
    use_bundle(broken)
    assert inference.predict(sequence, demographics) == inference.FALLBACK_GESTURE

    use_bundle(bundles["full"])
    for garbage in (pl.DataFrame(), pl.DataFrame({"x": ["a", "b"]})):
        assert inference.predict(garbage, demographics) in GESTURES
    assert inference.predict(None, None) == inference.FALLBACK_GESTURE  # type: ignore[arg-type]


def test_lgbm_only_bundle(bundles, use_bundle, kaggle_test) -> None:
    sequence, demographics = _one(kaggle_test)
    use_bundle(bundles["lgbm_only"])
    np.testing.assert_allclose(
        inference.predict_ensemble(sequence, demographics),
        inference.predict_lgbm_proba(sequence, demographics),
    )
    with pytest.raises(inference.TorchUnavailableError):
        inference.predict_torch_proba(sequence, demographics)

    use_bundle(bundles["lgbm_only"], FAIL_IF_TORCH_MISSING="1")
    with pytest.raises(inference.TorchUnavailableError, match="has no Torch part"):
        inference.load()
    assert inference.predict(sequence, demographics) == inference.FALLBACK_GESTURE


def test_broken_torch_part_falls_back_unless_told_to_fail(
    bundles, use_bundle, kaggle_test, tmp_path: Path, caplog
) -> None:
    sequence, demographics = _one(kaggle_test)
    broken = Path(shutil.copytree(bundles["full"], tmp_path / "broken"))
    weights = broken / "torch" / "fold_1.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    use_bundle(broken)
    with caplog.at_level(logging.WARNING, logger="cmi.inference"):
        predictor = inference.load()
    assert not predictor.uses_torch
    assert any("fold_1.safetensors: checksum mismatch" in r.message for r in caplog.records)
    np.testing.assert_allclose(
        inference.predict_ensemble(sequence, demographics),
        inference.predict_lgbm_proba(sequence, demographics),
    )
    with pytest.raises(BundleError, match="checksum mismatch"):
        inference.load(strict=True)
    use_bundle(broken, FAIL_IF_TORCH_MISSING="1")
    with pytest.raises(BundleError, match=r"fold_1\.safetensors"):
        inference.load()


def test_paths_to_parts_and_a_separate_torch_bundle(bundles, use_bundle, kaggle_test) -> None:
    sequence, demographics = _one(kaggle_test)
    use_bundle(bundles["full"])
    expected = inference.predict_ensemble(sequence, demographics)

    use_bundle(bundles["full"] / "lgbm")
    np.testing.assert_allclose(inference.predict_ensemble(sequence, demographics), expected)
    use_bundle(bundles["full"].parent)  # the folder holding bundle/, as `cmi package` writes
    np.testing.assert_allclose(inference.predict_ensemble(sequence, demographics), expected)

    use_bundle(bundles["lgbm_only"], TORCH_BUNDLE_PATH=str(bundles["full"] / "torch"))
    assert inference.get_predictor().uses_torch
    # Same fake LightGBM models in both bundles, Torch and blend weights from the full one.
    np.testing.assert_allclose(inference.predict_ensemble(sequence, demographics), expected)


def test_weight_overrides_and_lazy_folds(bundles, use_bundle, kaggle_test) -> None:
    sequence, demographics = _one(kaggle_test)
    use_bundle(bundles["full"])
    p_lgbm = inference.predict_lgbm_proba(sequence, demographics)
    p_torch = inference.predict_torch_proba(sequence, demographics)

    use_bundle(bundles["full"], ENSEMBLE_W_LGBM="1", ENSEMBLE_W_TORCH="3")
    np.testing.assert_allclose(
        inference.predict_ensemble(sequence, demographics), 0.25 * p_lgbm + 0.75 * p_torch
    )
    use_bundle(bundles["full"], ENSEMBLE_W_TORCH="0")
    np.testing.assert_allclose(inference.predict_ensemble(sequence, demographics), p_lgbm)

    use_bundle(bundles["full"], LOAD_TORCH_FOLDS_IN_MEMORY="0")
    predictor = inference.get_predictor()
    assert all(m.model is None for fold in predictor._serving["full"] for m in fold)
    np.testing.assert_allclose(inference.predict_torch_proba(sequence, demographics), p_torch)

    for name, value in (("ENSEMBLE_W_TORCH", "-1"), ("ENSEMBLE_W_LGBM", "lots")):
        use_bundle(bundles["full"], **{name: value})
        with pytest.raises(ValueError, match=name):
            inference.load()
    use_bundle(bundles["full"], ENSEMBLE_W_LGBM="0", ENSEMBLE_W_TORCH="0")
    with pytest.raises(ValueError, match="must be > 0"):
        inference.load()


def test_bundle_loads_once_and_only_when_first_needed(
    bundles, use_bundle, kaggle_test, monkeypatch
) -> None:
    use_bundle(bundles["full"])
    assert inference._cache is None  # nothing loaded until the first call
    sequence, demographics = _one(kaggle_test)
    inference.predict(sequence, demographics)
    first = inference.get_predictor()
    # The environment is read when the bundle first loads, not later.
    monkeypatch.setenv("MODEL_PATH", "/nowhere")
    inference.predict(sequence, demographics)
    assert inference.get_predictor() is first


@pytest.mark.slow
def test_inference_reproduces_each_folds_oof(tiny_trained_project: Path, use_bundle) -> None:
    """Raw train rows of one sequence through the inference path give, for the fold that held
    it out, exactly the probabilities the training stages wrote into the OOF tables."""
    from cmi.schema import PROBA_COLUMNS

    root = tiny_trained_project
    use_bundle(root / "models" / "bundle")
    predictor = inference.load(strict=True)
    assert predictor.uses_torch
    train = pl.read_csv(root / "data" / "raw" / "train.csv")
    demographics = pl.read_csv(root / "data" / "raw" / "train_demographics.csv")
    oof = {m: pl.read_parquet(root / "data" / "oof" / f"{m}.parquet") for m in ("lgbm", "torch")}
    sample = oof["lgbm"].group_by("sensor_group").head(6).sort("sequence_id")
    assert set(sample["sensor_group"]) == {"full", "imu_only"}
    for sequence_id, fold in sample.select("sequence_id", "fold").iter_rows():
        sequence = train.filter(pl.col("sequence_id") == sequence_id)
        demo = demographics.filter(pl.col("subject") == sequence["subject"][0])
        features = predictor.features(sequence, demo)
        expected = {
            m: frame.filter(pl.col("sequence_id") == sequence_id)
            .select(PROBA_COLUMNS)
            .to_numpy()[0]
            for m, frame in oof.items()
        }
        np.testing.assert_allclose(
            predictor.lgbm_fold_probas(features)[fold], expected["lgbm"], atol=1e-9
        )
        np.testing.assert_allclose(
            predictor.torch_fold_probas(features)[fold], expected["torch"], atol=1e-6
        )


@pytest.fixture(scope="module")
def member_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Read-only fake bundles with Torch members: two seeds per fold with and without
    IMU-only models (their source models under ``<bundle>/../models_src/models/torch``)."""
    return {
        "members": build_fake_bundle(
            tmp_path_factory.mktemp("members"), seeds=(1, 2), imu_only_model=True
        ),
        "seeds": build_fake_bundle(tmp_path_factory.mktemp("seeds"), seeds=(1, 2)),
    }


def _members_mean(torch_dir: Path, entries: list[dict], frames: pl.DataFrame) -> np.ndarray:
    """(n_members, 18) probabilities of one sequence by the torch stage's own loader and data
    path (cmi.nn.predict.load_member_model, to_padded), independent of the bundle's."""
    from cmi.nn.data import to_padded
    from cmi.nn.predict import load_member_model, network_proba

    probas = []
    for entry in entries:
        fm = load_member_model(torch_dir, entry)
        x, mask, _ = to_padded(frames, fm.channels, fm.scaler, fm.pad_len, fm.keep)
        probas.append(network_proba(fm.model, x, mask)[0])
    return np.array(probas)


@pytest.mark.parametrize("in_memory", ["1", "0"])
def test_inference_averages_every_member_serving_the_input(
    member_bundles, use_bundle, kaggle_test, in_memory: str
) -> None:
    """Full-sensor input (also with every ToF pixel -1, "no reflection"): per fold the mean of
    the full-input seeds; IMU-only input (thm/ToF null): the mean of the IMU-only seeds."""
    from cmi.nn.predict import member_entries

    bundle = member_bundles["members"]
    torch_dir = bundle.parent / "models_src" / "models" / "torch"
    entries = member_entries(torch_dir)
    use_bundle(bundle, LOAD_TORCH_FOLDS_IN_MEMORY=in_memory)
    predictor = inference.load(strict=True)
    assert "8 Torch members over 2 folds (4 full-input, 4 IMU-only" in predictor.describe()
    sequence, demographics = _one(kaggle_test)
    all_far = sequence.with_columns(pl.lit(-1.0).alias(c) for c in TOF_COLUMNS)
    cases = {
        "full": (sequence, "full"),
        "tof_all_minus_one": (all_far, "full"),
        "imu_only": (_null(sequence, THM_COLUMNS + TOF_COLUMNS), "imu"),
    }
    answers = {}
    for case, (frame, kind) in cases.items():
        features = predictor.features(frame, demographics)
        by_fold = predictor.torch_fold_probas(features)
        assert by_fold.shape == (2, N_CLASSES)
        for k in range(2):
            members = [e for e in entries if e["fold"] == k and e["kind"] == kind]
            assert len(members) == 2
            probas = _members_mean(torch_dir, members, features.frame_features)
            assert not np.allclose(probas[0], probas[1], atol=1e-4)  # two members, two answers
            np.testing.assert_allclose(by_fold[k], probas.mean(axis=0), atol=1e-6, err_msg=case)
        answers[case] = inference.predict_torch_proba(frame, demographics)
        np.testing.assert_allclose(answers[case], by_fold.mean(axis=0), rtol=1e-9)
    assert not np.allclose(answers["full"], answers["imu_only"], atol=1e-4)
    kinds = {
        group: {m.kind for fold in predictor.torch_members(group) for m in fold}
        for group in ("full", "imu_only")
    }
    assert kinds == {"full": {"full"}, "imu_only": {"imu"}}


def test_without_imu_only_models_imu_only_input_gets_the_full_seeds(
    member_bundles, use_bundle, kaggle_test
) -> None:
    from cmi.nn.predict import member_entries

    bundle = member_bundles["seeds"]
    torch_dir = bundle.parent / "models_src" / "models" / "torch"
    use_bundle(bundle)
    predictor = inference.load(strict=True)
    sequence, demographics = _one(kaggle_test)
    features = predictor.features(_null(sequence, THM_COLUMNS + TOF_COLUMNS), demographics)
    assert features.sequences["sensor_group"][0] == "imu_only"
    by_fold = predictor.torch_fold_probas(features)
    for k in range(2):
        members = [e for e in member_entries(torch_dir) if e["fold"] == k]
        assert [e["kind"] for e in members] == ["full", "full"]
        expected = _members_mean(torch_dir, members, features.frame_features).mean(axis=0)
        np.testing.assert_allclose(by_fold[k], expected, atol=1e-6)


def test_imu_only_members_that_fail_are_found_at_load_time(
    member_bundles, use_bundle, tmp_path: Path
) -> None:
    """IMU-only members serve only IMU-only inputs: the load-time probe runs them too, so a
    broken one switches Torch off (or fails a strict load) before the first answer, even with
    members loaded on demand."""
    from test_bundle import _rewrite_manifest

    broken = Path(shutil.copytree(member_bundles["members"], tmp_path / "broken"))
    _rewrite_manifest(
        broken, lambda m: m["torch"]["imu_model"]["architecture"].update(gru_hidden=4)
    )
    for in_memory in ("0", "1"):
        use_bundle(broken, LOAD_TORCH_FOLDS_IN_MEMORY=in_memory)
        predictor = inference.load()
        assert not predictor.uses_torch and "size mismatch" in predictor.torch_problem
        with pytest.raises(RuntimeError, match="size mismatch"):
            inference.load(strict=True)


# Small: every member of every fold trains (5 folds x 2 seeds x 2 kinds).
MEMBERS_TORCH = {"epochs": 1, "seeds": [1, 2], "imu_only_model": True}


@pytest.fixture(scope="module")
def tiny_members_project(
    tiny_trained_project: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The trained tiny project with the torch stage rerun under torch.seeds [1, 2] and
    torch.imu_only_model, then oof_blend and bundle."""
    import yaml
    from pipeline_helpers import copy_project, run_stage

    root = copy_project(tiny_trained_project, tmp_path_factory.mktemp("tiny_members") / "p")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["torch"].update(MEMBERS_TORCH)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for script in ("train_torch.py", "oof_blend.py", "bundle.py"):
        run_stage(script, root)
    return root


@pytest.mark.slow
def test_inference_reproduces_each_folds_oof_with_every_member(
    tiny_members_project: Path, use_bundle
) -> None:
    """With two seeds and IMU-only models per fold, raw train rows through the inference path
    give, fold by fold, the torch OOF of both views: the full view (the full-input seeds)
    for a sequence as recorded, the imu_only view (the IMU-only seeds) for it with thm/ToF
    nulled and for natively IMU-only sequences."""
    from cmi.schema import PROBA_COLUMNS

    root = tiny_members_project
    use_bundle(root / "models" / "bundle")
    predictor = inference.load(strict=True)
    members = predictor.torch_part.members
    n_folds = predictor.torch_part.n_folds
    assert len(members) == 4 * n_folds
    assert {(m.kind, m.seed) for m in members} == {
        (kind, seed) for kind in ("full", "imu") for seed in (1, 2)
    }
    train = pl.read_csv(root / "data" / "raw" / "train.csv")
    demographics = pl.read_csv(root / "data" / "raw" / "train_demographics.csv")
    oof = pl.read_parquet(root / "data" / "oof" / "torch.parquet")
    sample = (
        oof.filter(pl.col("view") == "imu_only")
        .group_by("fold", "sensor_group", maintain_order=True)
        .head(2)
        .sort("fold", "sequence_id")
    )
    # Every fold; natively IMU-only sequences where tiny data has some (not in every fold).
    assert set(sample["fold"]) == set(range(n_folds))
    assert set(sample["sensor_group"]) == {"full", "imu_only"}
    checked = {"full": 0, "imu_only": 0}
    for sequence_id, fold, group in sample.select(
        "sequence_id", "fold", "sensor_group"
    ).iter_rows():
        sequence = train.filter(pl.col("sequence_id") == sequence_id)
        demo = demographics.filter(pl.col("subject") == sequence["subject"][0])
        views = {"imu_only": _null(sequence, THM_COLUMNS + TOF_COLUMNS)}
        if group == "full":
            views["full"] = sequence
        for view, frame in views.items():
            features = predictor.features(frame, demo)
            assert features.sequences["sensor_group"][0] == view
            expected = (
                oof.filter((pl.col("sequence_id") == sequence_id) & (pl.col("view") == view))
                .select(PROBA_COLUMNS)
                .to_numpy()[0]
            )
            np.testing.assert_allclose(
                predictor.torch_fold_probas(features)[fold],
                expected,
                atol=1e-6,
                err_msg=f"{sequence_id} fold {fold} view {view}",
            )
            checked[view] += 1
    natively_imu_only = int((sample["sensor_group"] == "imu_only").sum())
    assert checked == {"full": len(sample) - natively_imu_only, "imu_only": len(sample)}


def test_bundles_that_do_not_fit_this_feature_code(
    bundles, use_bundle, kaggle_test, tmp_path: Path
) -> None:
    from test_bundle import write_fake_models

    from cmi.bundle.builder import build_bundle
    from cmi.io import read_json, write_json
    from cmi.params import ExtractParams

    # A LightGBM part expecting a feature this cmi does not compute: refused at load time.
    paths = write_fake_models(tmp_path / "renamed", with_torch=False)
    meta = read_json(paths.lgbm_dir / "meta.json")
    meta["feature_names"][0] = "feature_from_another_version"
    write_json(meta, paths.lgbm_dir / "meta.json")
    renamed = tmp_path / "renamed_bundle"
    build_bundle(renamed, paths.lgbm_dir, None, None, ExtractParams())
    use_bundle(renamed)
    with pytest.raises(BundleError, match="feature_from_another_version"):
        inference.load()
    assert inference.predict(*_one(kaggle_test)) == inference.FALLBACK_GESTURE

    # A Torch bundle made with other extract params: LightGBM alone, and it says why.
    other = ExtractParams(tof_regions=False)
    paths = write_fake_models(tmp_path / "other", extract=other)
    other_bundle = tmp_path / "other_bundle"
    build_bundle(
        other_bundle, paths.lgbm_dir, paths.torch_dir, paths.blend_dir / "weights.json", other
    )
    use_bundle(bundles["lgbm_only"], TORCH_BUNDLE_PATH=str(other_bundle))
    predictor = inference.load()
    assert not predictor.uses_torch
    assert "extract params" in predictor.torch_problem


# ------------------------------------------------------------------ Kaggle-day safety


def test_pandas_input_gets_the_polars_answer(bundles, use_bundle, kaggle_test) -> None:
    """Older notebooks pass pandas frames: converted, not answered with the fallback."""
    use_bundle(bundles["full"])
    sequence, demographics = _one(kaggle_test)
    expected = inference.predict_ensemble(sequence, demographics)
    answer = inference.predict(sequence.to_pandas(), demographics.to_pandas())
    assert answer == GESTURES[int(np.argmax(expected))]
    np.testing.assert_allclose(
        inference.predict_ensemble(sequence.to_pandas(), demographics.to_pandas()), expected
    )
    stats = inference.answer_stats()
    assert (stats.calls, stats.fallbacks) == (1, 0), stats
    with pytest.raises(TypeError, match="sequence: expected a polars or pandas DataFrame"):
        inference.predict_gesture(inference.get_predictor(), [[1, 2]], demographics)


def test_predict_counts_its_fallbacks(bundles, use_bundle, kaggle_test, tmp_path: Path) -> None:
    sequence, demographics = _one(kaggle_test)
    use_bundle(bundles["full"])
    for _ in range(3):
        assert inference.predict(sequence, demographics) in GESTURES
    assert inference.predict(None, None) == inference.FALLBACK_GESTURE  # type: ignore[arg-type]
    stats = inference.answer_stats()
    assert (stats.calls, stats.fallbacks) == (4, 1)
    assert "TypeError" in stats.last_error

    use_bundle(tmp_path / "no-such-bundle")  # every answer is the fallback, and counted
    inference.predict(sequence, demographics)
    inference.predict(sequence, demographics)
    stats = inference.answer_stats()
    assert (stats.calls, stats.fallbacks) == (2, 2)
    assert "bundle directory not found" in stats.last_error


def test_torch_failures_are_counted(bundles, use_bundle, kaggle_test, monkeypatch) -> None:
    use_bundle(bundles["full"])
    sequence, demographics = _one(kaggle_test)
    predictor = inference.get_predictor()
    monkeypatch.setattr(predictor, "torch_proba", lambda features: 1 / 0)
    inference.predict(sequence, demographics)
    stats = inference.answer_stats()
    assert (stats.calls, stats.fallbacks, stats.torch_failures) == (1, 0, 1)
    assert "ZeroDivisionError" in stats.describe()


def test_guard_aborts_once_too_many_answers_are_fallbacks(bundles, use_bundle, kaggle_test) -> None:
    use_bundle(bundles["full"])
    sequence, demographics = _one(kaggle_test)
    limit = inference.FallbackLimit(max_share=0.1, grace=1)
    guarded = inference.guard_fallbacks(inference.predict, limit)
    assert guarded.__name__ == "predict"  # Kaggle's server routes calls by the function name
    for _ in range(7):
        guarded(sequence, demographics)
    assert guarded(sequence.head(0), demographics) == inference.FALLBACK_GESTURE  # 1 <= 1 + 0
    with pytest.raises(inference.TooManyFallbacksError, match=r"2 fallback\(s\) in 9 answer"):
        guarded(sequence.head(0), demographics)  # 2 > 1 + floor(0.1 * 9)
    assert [limit.allowed(n) for n in (0, 9, 10, 100)] == [1, 1, 2, 11]


def test_warm_up_runs_the_full_ensemble_strictly(
    bundles, use_bundle, kaggle_test, tmp_path: Path, monkeypatch
) -> None:
    sequence, demographics = _one(kaggle_test)
    use_bundle(bundles["full"])
    report = inference.warm_up(sequence, demographics)
    assert set(report.answers) == {"full", "imu_only"} and report.uses_torch
    assert set(report.answers.values()) <= set(GESTURES)
    assert inference.warm_up().uses_torch  # without input: the real-shaped probe sequence
    assert inference.answer_stats().calls == 0  # the warm-up is not an answer

    # Torch failing on real input: predict would quietly use LightGBM alone; warm-up refuses.
    predictor = inference.get_predictor()
    monkeypatch.setattr(predictor, "torch_proba", lambda features: 1 / 0)
    assert inference.predict(sequence, demographics) in GESTURES
    with pytest.raises(inference.WarmUpError, match="full view: ZeroDivisionError"):
        inference.warm_up(sequence, demographics)
    with pytest.raises(inference.WarmUpError, match="real-shaped"):
        inference.warm_up(sequence.select("sequence_id", "acc_x"), demographics)

    # A broken Torch part that a lenient load switched off is an error too.
    broken = Path(shutil.copytree(bundles["full"], tmp_path / "broken"))
    weights = broken / "torch" / "fold_0.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    use_bundle(broken)
    assert not inference.load().uses_torch
    with pytest.raises(inference.WarmUpError, match=r"Torch part is off.*checksum mismatch"):
        inference.warm_up(sequence, demographics)
    use_bundle(bundles["lgbm_only"])  # LightGBM alone by design is fine
    assert not inference.warm_up(sequence, demographics).uses_torch


def test_a_pinned_digest_refuses_another_bundle(bundles, use_bundle, kaggle_test) -> None:
    from cmi.bundle import load_bundle

    digest = load_bundle(bundles["full"]).digest
    use_bundle(bundles["full"], BUNDLE_DIGEST=digest)
    assert inference.load().bundle.digest == digest
    use_bundle(bundles["by_group"], BUNDLE_DIGEST=digest)
    with pytest.raises(BundleError, match=f"is not the pinned {digest}"):
        inference.load()
    assert inference.predict(*_one(kaggle_test)) == inference.FALLBACK_GESTURE


# ------------------------------------------------------------------ what the Kaggle path imports

# Never on the Kaggle path: training code, blending/metrics (scikit-learn), the bundle builder.
NOT_ON_KAGGLE_PATH = (
    "cmi.bundle.builder",
    "cmi.blend",
    "cmi.metrics",
    "cmi.folds",
    "cmi.lgbm",
    "cmi.nn.train",
    "cmi.synth",
    "cmi.checkpoint",
    "cmi.submission",
)
HEAVY = ("sklearn", "tqdm", "dvc", "torch", "lightgbm", "scipy")


def _fresh_python(code: str, **env: str) -> dict:
    import os

    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**{k: v for k, v in os.environ.items() if k not in ENV_VARS}, **env},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_inference_loads_nothing_heavy() -> None:
    loaded = _fresh_python(
        """
        import json, sys
        import cmi.inference
        print(json.dumps(sorted(sys.modules)))
        """
    )
    roots = {name.split(".")[0] for name in loaded}
    assert not roots & set(HEAVY), sorted(roots & set(HEAVY))
    assert not [m for m in loaded if m.startswith(NOT_ON_KAGGLE_PATH)]


def test_a_prediction_needs_neither_sklearn_tqdm_dvc_nor_the_builder(bundles) -> None:
    """Load, warm up and predict in an interpreter where scikit-learn, tqdm and DVC cannot be
    imported at all (lightgbm and torch cope without them; cmi must too)."""
    report = _fresh_python(
        """
        import json, sys
        for name in ("sklearn", "tqdm", "dvc"):
            sys.modules[name] = None  # "not installed": importing them raises ImportError
        from cmi import inference
        from cmi.probe import probe_demographics, probe_sequence
        inference.load(strict=True)
        warm = inference.warm_up()
        answer = inference.predict(probe_sequence(), probe_demographics())
        stats = inference.answer_stats()
        print(json.dumps({
            "answer": answer, "warm": warm.answers, "torch": warm.uses_torch,
            "fallbacks": stats.fallbacks, "torch_failures": stats.torch_failures,
            "postprocess": warm.postprocess, "postprocessed": stats.postprocessed,
            "postprocess_failures": stats.postprocess_failures,
            "modules": sorted(m for m, v in sys.modules.items() if v is not None),
        }))
        """,
        MODEL_PATH=str(bundles["full"]),
    )
    assert report["answer"] in GESTURES and report["torch"]
    assert report["fallbacks"] == 0 and report["torch_failures"] == 0
    # Subject-level post-processing ran too (scipy is fine on the Kaggle path).
    assert report["postprocess"] == "assignment" and report["postprocessed"] == 1
    assert report["postprocess_failures"] == 0
    modules = report["modules"]
    assert not [m for m in modules if m.startswith(NOT_ON_KAGGLE_PATH)]
    assert not [m for m in modules if m.split(".")[0] in ("sklearn", "tqdm", "dvc")]
    assert {"cmi.bundle.reader", "cmi.features", "cmi.nn.model", "lightgbm", "torch"} <= set(
        modules
    )
    assert {"cmi.subjects", "cmi.postprocess.memory", "scipy.optimize"} <= set(modules)
