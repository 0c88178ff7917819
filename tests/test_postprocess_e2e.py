"""Subject-level post-processing wired end to end: the bundle's settings and orientation models,
the stateful ``cmi.inference.predict`` (the same answers as the offline replay, bounded memory,
failures answered with the argmax and counted apart), SUBJECT_POSTPROCESS, and `cmi predict`
on a synthetic test set (slow: needs the trained tiny project)."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from test_bundle import build_fake_bundle

from cmi import inference
from cmi.bundle import PostprocessSettings
from cmi.fallback import FallbackLimit
from cmi.io import read_json
from cmi.postprocess import excess_answers, replay_subject
from cmi.probe import imu_only_view
from cmi.schema import GESTURE_INDEX, GESTURES, N_CLASSES, TEST_COLUMNS, THM_COLUMNS, TOF_COLUMNS
from cmi.subjects import SubjectPostprocessor
from cmi.submission import gateway_batches

REPO_ROOT = Path(__file__).resolve().parents[1]
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
def pp_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Read-only LightGBM-only fake bundles (post-processing does not care about Torch)."""
    return {
        "assignment": build_fake_bundle(tmp_path_factory.mktemp("pp_assign"), with_torch=False),
        "no_orientation": build_fake_bundle(
            tmp_path_factory.mktemp("pp_none"),
            with_torch=False,
            with_orientation=False,
            postprocess="none",
        ),
    }


@pytest.fixture
def use_bundle(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)

    def use(path: Path | str, **env: str) -> None:
        for name in ENV_VARS:  # each call starts from a clean environment
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("MODEL_PATH", str(path))
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        inference.reset_cache()
        inference.reset_answer_stats()

    yield use
    inference.reset_cache()
    inference.reset_answer_stats()


@pytest.fixture(scope="module")
def kaggle_test(tiny_raw_dir: Path) -> Case:
    """The tiny synthetic test files (2 subjects x 10 sequences), read as the gateway does."""
    return pl.read_csv(tiny_raw_dir / "test.csv"), pl.read_csv(
        tiny_raw_dir / "test_demographics.csv"
    )


def _first(case: Case) -> Case:
    test, demographics = case
    sequence = test.filter(pl.col("sequence_id") == test["sequence_id"][0])
    return sequence, demographics.filter(pl.col("subject") == sequence["subject"][0])


def _as(sequence: pl.DataFrame, sequence_id: str, subject: str | None = None) -> pl.DataFrame:
    """The same sensor rows under another sequence id (and subject)."""
    columns = [pl.lit(sequence_id).alias("sequence_id")]
    if subject is not None:
        columns.append(pl.lit(subject).alias("subject"))
    return sequence.with_columns(columns)


def _offline_answers(
    predictor: inference.Predictor, batches: list, method: str, mode: str
) -> dict[str, str]:
    """What ``replay_subject`` answers for the gateway's order, from the predictor's own
    blended and orientation probabilities (nothing is remembered while computing them)."""
    by_subject: dict[str, list] = {}
    for sequence_id, sequence, demographics in batches:
        features = predictor.features(sequence, demographics)
        proba = predictor.ensemble_proba(features)
        orientation = (
            predictor.postprocess.orientation_proba(features.sequence_features)
            if predictor.postprocess is not None
            else None
        )
        by_subject.setdefault(sequence["subject"][0], []).append((sequence_id, proba, orientation))
    answers = {}
    for rows in by_subject.values():
        ids = [r[0] for r in rows]
        p = np.vstack([r[1] for r in rows])
        q = None if rows[0][2] is None else np.vstack([r[2] for r in rows])
        for sequence_id, k in zip(ids, replay_subject(p, q, method, mode), strict=True):
            answers[sequence_id] = GESTURES[int(k)]
    return answers


# ------------------------------------------------------------------ the stateful predict


@pytest.mark.parametrize(
    ("method", "mode"),
    [("assignment", "resolve"), ("assignment", "pinned"), ("gesture_counts", "resolve")],
)
def test_stateful_predict_gives_the_offline_replay_answers(
    pp_bundles, use_bundle, kaggle_test, method: str, mode: str
) -> None:
    use_bundle(pp_bundles["assignment"])
    predictor = inference.get_predictor()
    bundle = predictor.bundle
    predictor.postprocess = SubjectPostprocessor(
        PostprocessSettings(method, mode, "max"), bundle.orientation
    )
    batches = gateway_batches(*kaggle_test, seed=3)
    expected = _offline_answers(predictor, batches, method, mode)
    answers = {sid: inference.predict(seq, demo) for sid, seq, demo in batches}
    assert answers == expected
    stats = inference.answer_stats()
    assert stats.calls == stats.postprocessed == len(batches) and stats.fallbacks == 0
    # Every answer for a subject's 10 sequences came from its own prefix: a second pass over
    # the same sequences (repeats) changes nothing.
    assert {sid: inference.predict(seq, demo) for sid, seq, demo in batches} == answers


def test_post_processing_keeps_each_subject_within_the_protocols_counts(
    pp_bundles, use_bundle, kaggle_test, monkeypatch
) -> None:
    """Five sequences whose blend says 'Glasses on/off' (done twice per subject), each a bit
    less sure than the one before: the plain argmax answers it five times, post-processing
    twice (the surest two) and the runner-up for the rest."""
    sequence, demographics = _first(kaggle_test)
    glasses, runner_up = GESTURE_INDEX["Glasses on/off"], GESTURE_INDEX["Text on phone"]
    probas = {}
    for i in range(5):
        proba = np.full(N_CLASSES, 0.01)
        proba[glasses], proba[runner_up] = 0.6 - 0.04 * i, 0.25 + 0.04 * i
        probas[f"SEQ_G{i}"] = proba / proba.sum()

    def blend(features) -> np.ndarray:
        return probas[features.sequences["sequence_id"][0]]

    results = {}
    for method in ("none", "gesture_counts", "assignment"):
        use_bundle(pp_bundles["assignment"], SUBJECT_POSTPROCESS=method)
        predictor = inference.get_predictor()
        monkeypatch.setattr(predictor, "ensemble_proba", blend)
        results[method] = [
            inference.predict(_as(sequence, f"SEQ_G{i}", "SUBJ_G"), demographics) for i in range(5)
        ]
        stats = inference.answer_stats()
        assert stats.fallbacks == 0
        assert stats.postprocessed == (0 if method == "none" else 5)
        assert stats.postprocess_changed == (0 if method == "none" else 3)
    assert results["none"] == ["Glasses on/off"] * 5
    for method in ("gesture_counts", "assignment"):
        assert results[method] == ["Glasses on/off"] * 2 + ["Text on phone"] * 3
    indices = {m: [GESTURE_INDEX[g] for g in a] for m, a in results.items()}
    subjects = np.array(["SUBJ_G"] * 5)
    assert excess_answers(subjects, indices["none"]) == 3
    assert excess_answers(subjects, indices["assignment"]) == 0


def test_a_sequence_sent_twice_counts_once(pp_bundles, use_bundle, kaggle_test) -> None:
    use_bundle(pp_bundles["assignment"])
    sequence, demographics = _first(kaggle_test)
    first = inference.predict(sequence, demographics)
    assert inference.predict(sequence, demographics) == first
    memory = inference.get_predictor().postprocess.memory
    assert memory.n_remembered(sequence["subject"][0]) == 1


def test_memory_is_bounded(pp_bundles, use_bundle, kaggle_test) -> None:
    use_bundle(pp_bundles["assignment"])
    predictor = inference.get_predictor()
    predictor.postprocess = SubjectPostprocessor(
        predictor.bundle.postprocess, predictor.bundle.orientation, max_subjects=2
    )
    sequence, demographics = _first(kaggle_test)
    for k in range(3):
        inference.predict(_as(sequence, f"SEQ_M{k}", f"SUBJ_M{k}"), demographics)
    memory = predictor.postprocess.memory
    assert len(memory) == 2
    assert memory.n_remembered("SUBJ_M0") == 0  # the least recently seen subject went first
    assert memory.n_remembered("SUBJ_M2") == 1
    inference.reset_subject_memory()
    assert len(memory) == 0


def test_a_post_processing_failure_answers_the_argmax_and_is_counted_apart(
    pp_bundles, use_bundle, kaggle_test, monkeypatch, caplog
) -> None:
    use_bundle(pp_bundles["assignment"])
    sequence, demographics = _first(kaggle_test)
    predictor = inference.get_predictor()
    plain = GESTURES[int(np.argmax(inference.predict_ensemble(sequence, demographics)))]

    def broken(*args, **kwargs):
        raise RuntimeError("scipy went away")

    monkeypatch.setattr(predictor.postprocess.memory, "answer", broken)
    with caplog.at_level(logging.WARNING, logger="cmi.inference"):
        answers = [inference.predict(sequence, demographics) for _ in range(5)]
    assert answers == [plain] * 5
    stats = inference.answer_stats()
    assert (stats.calls, stats.fallbacks, stats.postprocess_failures) == (5, 0, 5)
    assert "scipy went away" in stats.last_error and "failed on 5" in stats.describe()
    FallbackLimit().check(stats)  # not fallbacks: a submission goes on
    assert any("post-processing failed" in r.message for r in caplog.records)


def test_input_without_a_subject_gets_the_argmax(pp_bundles, use_bundle, kaggle_test) -> None:
    use_bundle(pp_bundles["assignment"])
    sequence, demographics = _first(kaggle_test)
    plain = GESTURES[int(np.argmax(inference.predict_ensemble(sequence, demographics)))]
    assert inference.predict(sequence.drop("subject"), demographics) == plain
    assert inference.predict(sequence.drop("sequence_id"), demographics) == plain
    stats = inference.answer_stats()
    assert stats.calls == 2 and stats.postprocessed == 0 and stats.postprocess_failures == 0
    assert len(inference.get_predictor().postprocess.memory) == 0


def test_orientation_is_the_same_in_both_views(pp_bundles, use_bundle, kaggle_test) -> None:
    use_bundle(pp_bundles["assignment"])
    predictor = inference.get_predictor()
    test, demographics = kaggle_test
    has_tof = test.group_by("sequence_id").agg(
        pl.col("tof_1_v0").cast(pl.Float64, strict=False).is_not_null().any().alias("full")
    )
    sequence_id = has_tof.filter("full")["sequence_id"].sort()[0]
    sequence = test.filter(pl.col("sequence_id") == sequence_id)
    views = [sequence, imu_only_view(sequence)]
    probas = [
        predictor.postprocess.orientation_proba(
            predictor.features(v, demographics).sequence_features
        )
        for v in views
    ]
    np.testing.assert_array_equal(probas[0], probas[1])
    assert probas[0].shape == (4,) and probas[0].sum() == pytest.approx(1.0)


# ------------------------------------------------------------------ settings and loading


def test_subject_postprocess_overrides_the_bundle(pp_bundles, use_bundle, kaggle_test) -> None:
    sequence, demographics = _first(kaggle_test)
    use_bundle(pp_bundles["assignment"])
    predictor = inference.get_predictor()
    assert predictor.postprocess.method == "assignment"
    assert "post-processing assignment (resolve, max; bundle; 2 orientation folds)" in (
        predictor.describe()
    )
    use_bundle(pp_bundles["assignment"], SUBJECT_POSTPROCESS="gesture_counts")
    postprocess = inference.get_predictor().postprocess
    assert postprocess.method == "gesture_counts" and postprocess.source == "SUBJECT_POSTPROCESS"
    use_bundle(pp_bundles["assignment"], SUBJECT_POSTPROCESS="None ")
    assert inference.get_predictor().postprocess.memory is None

    use_bundle(pp_bundles["assignment"], SUBJECT_POSTPROCESS="hungarian")
    with pytest.raises(ValueError, match="SUBJECT_POSTPROCESS='hungarian'"):
        inference.load()
    assert inference.predict(sequence, demographics) == inference.FALLBACK_GESTURE

    # A bundle without orientation models: none by default; assignment on request runs with
    # a uniform orientation (then the same as gesture_counts), and says so.
    use_bundle(pp_bundles["no_orientation"])
    assert inference.get_predictor().postprocess.method == "none"
    use_bundle(pp_bundles["no_orientation"], SUBJECT_POSTPROCESS="assignment")
    postprocess = inference.get_predictor().postprocess
    assert postprocess.orientation is None and "uniform orientation" in postprocess.problem
    assert inference.predict(sequence, demographics) in GESTURES
    assert inference.answer_stats().postprocessed == 1


def _break_orientation(bundle: Path, tmp_path: Path) -> Path:
    """A copy whose orientation models ask for a feature this cmi does not compute (resealed:
    a bundle built by another cmi version, not a tampered one)."""
    from cmi.bundle.seal import seal_manifest

    broken = Path(shutil.copytree(bundle, tmp_path / "broken"))
    manifest = read_json(broken / "manifest.json")
    manifest["orientation"]["feature_names"][0] = "acc_x__not_computed"
    (broken / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))
    return broken


def test_warm_up_checks_post_processing(
    pp_bundles, use_bundle, kaggle_test, tmp_path: Path
) -> None:
    sequence, demographics = _first(kaggle_test)
    use_bundle(pp_bundles["assignment"])
    report = inference.warm_up(sequence, demographics)
    assert report.postprocess == "assignment"
    assert inference.get_predictor().postprocess.memory.n_remembered("warm-up") == 0
    assert len(inference.get_predictor().postprocess.memory) == 0  # a scratch memory

    broken = _break_orientation(pp_bundles["assignment"], tmp_path)
    use_bundle(broken)
    predictor = inference.load()  # lenient: post-processing goes on with a uniform orientation
    assert predictor.postprocess.orientation is None
    assert "acc_x__not_computed" in predictor.postprocess.problem
    assert inference.predict(sequence, demographics) in GESTURES
    with pytest.raises(inference.WarmUpError, match="orientation models are off"):
        inference.warm_up(sequence, demographics)
    with pytest.raises(Exception, match="acc_x__not_computed"):
        inference.load(strict=True)


# ------------------------------------------------------------------ dvc.yaml


def test_changing_the_method_reruns_only_the_bundle() -> None:
    """`dvc exp run -S postprocess.method=none` must rebuild the bundle and nothing else; the
    replay's own keys rerun oof_blend (and so the bundle)."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]

    def readers(key: str) -> set[str]:
        return {name for name, stage in stages.items() if key in stage.get("params", [])}

    assert readers("postprocess.method") == {"bundle"}
    for key in ("postprocess.mode", "postprocess.combine"):
        assert readers(key) == {"oof_blend", "bundle"}
    for key in ("postprocess.n_orders", "postprocess.seed"):
        assert readers(key) == {"oof_blend"}
    assert {"data/oof/orientation.parquet", "data/features/sequences.parquet"} <= set(
        stages["oof_blend"]["deps"]
    )
    assert "models/orientation" in stages["bundle"]["deps"]


# ------------------------------------------------------------------ end to end (slow)


def _unseen_test_set(out: Path) -> tuple[Path, Path]:
    """test.csv / test_demographics.csv from the whole-protocol subjects of another tiny
    synthetic draw (subjects the tiny project never trained on), half of each subject's
    sequences IMU-only as in the hidden test."""
    from cmi.synth import write_synthetic

    write_synthetic("tiny", out / "draw", seed=11)
    train = pl.read_csv(out / "draw" / "train.csv")
    counts = train.group_by("subject").agg(pl.col("sequence_id").n_unique().alias("n"))
    whole = counts.filter(pl.col("n") >= 90)["subject"].to_list()
    assert len(whole) == 2, counts
    test = train.filter(pl.col("subject").is_in(whole))
    ids = test["sequence_id"].unique().sort()
    rng = np.random.default_rng(0)
    imu_only = ids.gather(rng.permutation(len(ids))[: len(ids) // 2])
    nulled = pl.col("sequence_id").is_in(imu_only.implode())
    test = test.with_columns(
        pl.when(nulled).then(None).otherwise(pl.col(c)).alias(c)
        for c in (*THM_COLUMNS, *TOF_COLUMNS)
    ).select(TEST_COLUMNS)
    test_csv, demographics_csv = out / "test.csv", out / "test_demographics.csv"
    test.write_csv(test_csv)
    pl.read_csv(out / "draw" / "train_demographics.csv").filter(
        pl.col("subject").is_in(whole)
    ).write_csv(demographics_csv)
    return test_csv, demographics_csv


@pytest.mark.slow
def test_cmi_predict_applies_post_processing_end_to_end(
    tiny_trained_project: Path, use_bundle, tmp_path: Path
) -> None:
    """~200 unseen sequences through `cmi predict` (shuffled like the gateway), with the
    assignment and with none (both through SUBJECT_POSTPROCESS): post-processing changes some
    answers, exceeds the protocol's per-subject counts less often than the plain argmax, and
    answers exactly as the offline replay of the same arrival order."""
    from cmi.cli import main as cli_main

    bundle = tiny_trained_project / "models" / "bundle"
    test_csv, demographics_csv = _unseen_test_set(tmp_path)
    test = pl.read_csv(test_csv)
    subjects = dict(test.select("sequence_id", "subject").unique().iter_rows())
    use_bundle(bundle)
    submissions = {}
    for method in ("assignment", "none"):
        out = tmp_path / f"{method}.parquet"
        use_bundle(bundle, SUBJECT_POSTPROCESS=method)
        args = ["predict", "--test", str(test_csv), "--demographics", str(demographics_csv)]
        assert cli_main([*args, "--out", str(out), "--bundle", str(bundle), "--seed", "5"]) == 0
        submissions[method] = dict(pl.read_parquet(out).iter_rows())
    assert submissions["assignment"].keys() == submissions["none"].keys() == subjects.keys()
    ids = sorted(subjects)
    answered = {m: np.array([GESTURE_INDEX[s[i]] for i in ids]) for m, s in submissions.items()}
    differ = int((answered["assignment"] != answered["none"]).sum())
    assert 0 < differ < len(ids)
    subject_of = np.array([subjects[i] for i in ids])
    excess = {m: excess_answers(subject_of, a) for m, a in answered.items()}
    assert excess["assignment"] < excess["none"], excess

    # The bundle ships its orientation models whatever its default method (gesture_counts in
    # params.yaml); the env override switches the joint assignment on.
    use_bundle(bundle, SUBJECT_POSTPROCESS="assignment")
    predictor = inference.load(strict=True)
    assert predictor.postprocess.method == "assignment" and predictor.postprocess.orientation
    batches = gateway_batches(test, pl.read_csv(demographics_csv), seed=5)
    assert (
        _offline_answers(predictor, batches, "assignment", "resolve") == submissions["assignment"]
    )


@pytest.mark.slow
def test_bundled_orientation_models_reproduce_the_orientation_oof(
    tiny_trained_project: Path, use_bundle
) -> None:
    """Raw train rows through the inference path give, for the fold that held the sequence
    out, the orientation probabilities of data/oof/orientation.parquet."""
    from cmi.orientation import ORIENTATION_COLUMNS

    root = tiny_trained_project
    use_bundle(root / "models" / "bundle", SUBJECT_POSTPROCESS="assignment")
    predictor = inference.load(strict=True)
    boosters = predictor.postprocess.orientation.boosters
    oof = pl.read_parquet(root / "data" / "oof" / "orientation.parquet")
    train = pl.read_csv(root / "data" / "raw" / "train.csv")
    demographics = pl.read_csv(root / "data" / "raw" / "train_demographics.csv")
    for sequence_id, fold, *expected in oof.sort("sequence_id").head(8).iter_rows():
        sequence = train.filter(pl.col("sequence_id") == sequence_id)
        features = predictor.features(sequence, demographics)
        only = SubjectPostprocessor(
            predictor.postprocess.settings,
            type(predictor.postprocess.orientation)(
                predictor.postprocess.orientation.feature_names, [boosters[fold]]
            ),
        )
        np.testing.assert_allclose(
            only.orientation_proba(features.sequence_features), expected, atol=1e-9
        )
    assert oof.columns[2:] == list(ORIENTATION_COLUMNS)


def test_bad_postprocess_params_are_named() -> None:
    from cmi.params import params_from_dict

    assert params_from_dict({}).postprocess.method == "assignment"
    with pytest.raises(ValueError, match=r"params.yaml: postprocess.method must be one of"):
        params_from_dict({"postprocess": {"method": "hungarian"}})
    with pytest.raises(ValueError, match=r"postprocess.n_orders must be >= 1"):
        params_from_dict({"postprocess": {"n_orders": 0}})
