"""extract.fix_upside_down end to end on tiny synthetic data: the extract stage fits the
detector, flags the generator's upside-down subject, rotates its rows back before the shared
feature path and records the decision; inference (cmi.wear.online) decides per subject from
the sequences seen so far and rotates a flagged subject's sequences back the same way."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
from pipeline_helpers import make_project, run_stage

import cmi.extract
from cmi.extract import extract
from cmi.features import compute_features, is_modality_channel, prepare_sensor_frame
from cmi.io import read_json, write_with
from cmi.params import ExtractParams, load_params
from cmi.paths import ProjectPaths
from cmi.predictor import Predictor
from cmi.schema import DEMOGRAPHICS_SCHEMA, GESTURES, TRAIN_ONLY_COLUMNS, TRAIN_SCHEMA
from cmi.synth import subject_table
from cmi.synth.dataset import FILE_NAMES, generate
from cmi.wear import SubjectWearDetector, WearModel, rotate_back
from cmi.wear.online import WearCorrector
from cmi.wear.pipeline import model_from_record, rotate_subjects, wear_record

FIX = ExtractParams(fix_upside_down=True)


@pytest.fixture(scope="module")
def generator_upside_down() -> str:
    table = subject_table("tiny", 0).filter(pl.col("split") == "train", pl.col("upside_down"))
    assert table.height == 1
    return table["subject"][0]


@pytest.fixture(scope="module")
def fixed_project(tmp_path_factory: pytest.TempPathFactory, tiny_raw_dir: Path) -> Path:
    """The extract stage run on tiny data with the correction on."""
    root = make_project(
        tmp_path_factory.mktemp("wear"), tiny_raw_dir, {"extract": {"fix_upside_down": True}}
    )
    run_stage("extract.py", root)
    return root


@pytest.fixture(scope="module")
def upright_raw_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny's twin in which every subject wears the device the normal way."""
    out = tmp_path_factory.mktemp("upright_raw")
    frames = generate("tiny", 0, upside_down=False)
    for name in FILE_NAMES:
        write_with(out / name, frames[name].write_csv)
    return out


def _rows_of(table: pl.DataFrame, ids: pl.Series) -> pl.DataFrame:
    return table.filter(pl.col("sequence_id").is_in(ids.implode())).sort(
        "sequence_id", maintain_order=True
    )


def test_extract_flags_and_records_the_generators_subject(
    fixed_project: Path, tiny_features_project: Path, generator_upside_down: str
) -> None:
    fixed, plain = ProjectPaths(fixed_project), ProjectPaths(tiny_features_project)
    sequences = pl.read_parquet(fixed.sequences)
    assert sequences.schema["upside_down"] == pl.Boolean
    flagged = sequences.filter(pl.col("upside_down"))["subject"].unique().to_list()
    assert flagged == [generator_upside_down]
    # The other columns are the contract's, as with the correction off.
    assert sequences.drop("upside_down").equals(pl.read_parquet(plain.sequences))

    record = read_json(fixed.wear_model)
    assert record["enabled"] and record["upside_down_subjects"] == [generator_upside_down]
    model = model_from_record(record)
    assert model is not None and model.to_dict() == record["model"]
    assert read_json(plain.wear_model) == {"version": 1, "enabled": False}
    assert model_from_record(read_json(plain.wear_model)) is None

    # Everyone else's features are exactly those of the run without the correction.
    others = sequences.filter(~pl.col("upside_down"))["sequence_id"]
    for path in ("sequence_features", "frame_features"):
        got = _rows_of(pl.read_parquet(getattr(fixed, path)), others)
        assert got.equals(_rows_of(pl.read_parquet(getattr(plain, path)), others)), path


def _imu_sequence_features(raw_dir: Path, params: ExtractParams, ids: pl.Series) -> np.ndarray:
    table = _rows_of(extract(raw_dir, params).features.sequence_features, ids)
    imu = [c for c in table.columns[1:] if not is_modality_channel(c)]
    return table.select(imu).to_numpy().astype(float)


def test_rotated_back_subject_looks_like_its_upright_twin(
    tiny_raw_dir: Path, upright_raw_dir: Path, generator_upside_down: str
) -> None:
    """The generator's twin data set differs only in how that subject wears the device (its
    accelerometer bias stays with the device, so the match is close, not exact)."""
    train = pl.read_csv(tiny_raw_dir / "train.csv", columns=["sequence_id", "subject"])
    ids = train.filter(pl.col("subject") == generator_upside_down)["sequence_id"].unique()
    upright = _imu_sequence_features(upright_raw_dir, ExtractParams(), ids)
    fixed = _imu_sequence_features(tiny_raw_dir, FIX, ids)
    as_recorded = _imu_sequence_features(tiny_raw_dir, ExtractParams(), ids)
    scale = np.nanmax(np.abs(upright), axis=0) + 1e-6
    fixed_gap = np.nanmedian(np.nanmax(np.abs(fixed - upright), axis=0) / scale)
    recorded_gap = np.nanmedian(np.nanmax(np.abs(as_recorded - upright), axis=0) / scale)
    assert fixed_gap < 0.25 * recorded_gap, (fixed_gap, recorded_gap)
    assert fixed_gap < 0.1


def test_whole_table_fallback_applies_the_same_correction(
    tiny_raw_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sequence split in the file: the features come from the validated table, corrected
    the same way as the streamed ones."""
    monkeypatch.setattr(cmi.extract, "BATCH_ROWS", 997)
    raw_dir = tmp_path / "raw"
    shutil.copytree(tiny_raw_dir, raw_dir)
    train = pl.read_csv(raw_dir / "train.csv", schema=TRAIN_SCHEMA)
    first = train["sequence_id"][0]
    one = train.filter(pl.col("sequence_id") == first)
    rest = train.filter(pl.col("sequence_id") != first)
    pl.concat([one.head(5), rest, one.slice(5)]).write_csv(raw_dir / "train.csv")
    outputs = extract(raw_dir, FIX)
    assert outputs.wear is not None and len(outputs.wear.upside_down_subjects) == 1
    demographics = pl.read_csv(raw_dir / "train_demographics.csv", schema=DEMOGRAPHICS_SCHEMA)
    sensor = prepare_sensor_frame(rotate_subjects(train, outputs.wear.upside_down_subjects))
    expected = compute_features(sensor, demographics, FIX)
    assert outputs.features.sequence_features.equals(expected.sequence_features)
    assert outputs.features.frame_features.equals(expected.frame_features)
    streamed = extract(tiny_raw_dir, FIX)
    assert streamed.wear is not None
    assert streamed.wear.upside_down_subjects == outputs.wear.upside_down_subjects


def test_known_subjects_are_taken_and_unknown_ones_named(
    tiny_raw_dir: Path, generator_upside_down: str
) -> None:
    params = ExtractParams(fix_upside_down=True, upside_down_subjects=[generator_upside_down])
    assert params.upside_down_subjects == (generator_upside_down,)
    outputs = extract(tiny_raw_dir, params)
    assert outputs.wear is not None
    assert outputs.wear.upside_down_subjects == (generator_upside_down,)
    bad = ExtractParams(fix_upside_down=True, upside_down_subjects=("SUBJ_NOBODY",))
    with pytest.raises(ValueError, match=r"extract\.upside_down_subjects.*SUBJ_NOBODY"):
        extract(tiny_raw_dir, bad)


def test_rotate_subjects_touches_only_their_rows(tiny_raw_dir: Path) -> None:
    train = pl.read_csv(tiny_raw_dir / "train.csv", schema=TRAIN_SCHEMA)
    subject = train["subject"][0]
    out = rotate_subjects(train, [subject])
    mine = pl.col("subject") == subject
    assert out.filter(~mine).equals(train.filter(~mine))
    assert out.filter(mine).equals(rotate_back(train.filter(mine)))
    assert rotate_subjects(train, []) is train


def test_wear_record_rejects_a_malformed_file() -> None:
    assert wear_record(None) == {"version": 1, "enabled": False}
    with pytest.raises(ValueError, match=r"wear_model\.json"):
        model_from_record({"version": 1, "enabled": True, "model": {"coef": [1.0]}})
    with pytest.raises(ValueError, match="version"):
        model_from_record({"enabled": False})


# ----------------------------------------------------------------------------- inference


def _subject_sequences(raw_dir: Path, subject: str) -> list[pl.DataFrame]:
    """The subject's sequences as the gateway sends them (no train-only columns)."""
    train = pl.read_csv(raw_dir / "train.csv", schema=TRAIN_SCHEMA)
    rows = train.filter(pl.col("subject") == subject).drop(TRAIN_ONLY_COLUMNS)
    return [part for _, part in rows.group_by("sequence_id", maintain_order=True)]


def _corrector(project: Path) -> WearCorrector:
    model = model_from_record(read_json(ProjectPaths(project).wear_model))
    assert model is not None
    return WearCorrector(model, max_subjects=8, max_sequences_per_subject=64)


def test_online_corrector_rotates_a_flagged_subject_back(
    fixed_project: Path, tiny_raw_dir: Path, generator_upside_down: str
) -> None:
    corrector = _corrector(fixed_project)
    need = corrector.detector.model.min_sequences
    sequences = _subject_sequences(tiny_raw_dir, generator_upside_down)
    answered = [corrector.upright(s) for s in sequences]
    assert corrector.is_upside_down(generator_upside_down)
    # From the decision on, every sequence comes back rotated; never before min_sequences.
    rotated = [not a.equals(s) for a, s in zip(answered, sequences, strict=True)]
    assert not any(rotated[: need - 1])
    first = rotated.index(True)
    assert all(rotated[first:]) and first <= 2
    for got, sent in zip(answered[first:], sequences[first:], strict=True):
        assert got.equals(rotate_back(sent))
    # A normal subject's sequences come back as sent (the same object).
    train = pl.read_csv(tiny_raw_dir / "train.csv", columns=["subject"])
    normal = next(s for s in train["subject"].unique().sort() if s != generator_upside_down)
    for sequence in _subject_sequences(tiny_raw_dir, normal):
        assert corrector.upright(sequence) is sequence
    assert not corrector.is_upside_down(normal) and corrector.failures == 0
    corrector.reset()
    assert corrector.detector.n_seen(generator_upside_down) == 0


def test_online_corrector_never_raises(fixed_project: Path, caplog) -> None:
    corrector = _corrector(fixed_project)
    broken = pl.DataFrame({"subject": ["S"], "sequence_id": ["X"], "acc_x": [1.0]})
    assert corrector.upright(broken) is broken
    assert corrector.failures == 1 and "upside-down check failed" in caplog.text
    no_subject = pl.DataFrame({"acc_x": [1.0]})
    assert corrector.upright(no_subject) is no_subject
    assert corrector.upright("not a frame") == "not a frame"
    with pytest.raises(ValueError):
        corrector.check(broken)


def test_detector_memory_is_bounded() -> None:
    model = WearModel(tuple([0.0] * 16), threshold=0.5, min_sequences=1, score_clip=4.0)
    detector = SubjectWearDetector(model, max_subjects=2, max_sequences_per_subject=3)
    for i in range(5):
        detector.add_score("a", f"s{i}", 1.0)
    assert detector.n_seen("a") == 3
    detector.add_score("b", "s", 1.0)
    detector.add_score("c", "s", 1.0)
    assert detector.n_seen("a") == 0 and detector.n_seen("c") == 1


def test_one_sequence_path_gives_the_batch_features(
    fixed_project: Path, tiny_raw_dir: Path, generator_upside_down: str
) -> None:
    """Parity: the flagged subject's sequences through the corrector and the inference
    feature path (Predictor.features) get exactly the features the extract stage wrote."""
    paths = ProjectPaths(fixed_project)
    params = load_params(paths.params).extract
    assert params.fix_upside_down
    corrector = _corrector(fixed_project)
    sequences = _subject_sequences(tiny_raw_dir, generator_upside_down)
    for sequence in sequences:  # the decision is made by the end of the first pass
        corrector.upright(sequence)
    demographics = pl.read_csv(
        tiny_raw_dir / "train_demographics.csv", schema=DEMOGRAPHICS_SCHEMA
    ).filter(pl.col("subject") == generator_upside_down)
    fake = SimpleNamespace(bundle=SimpleNamespace(extract=params))
    batch_seq = pl.read_parquet(paths.sequence_features)
    batch_frames = pl.read_parquet(paths.frame_features)
    for sequence in sequences:
        got = Predictor.features(fake, corrector.upright(sequence), demographics)
        ids = got.sequences["sequence_id"]
        assert got.sequence_features.equals(_rows_of(batch_seq, ids))
        assert got.frame_features.equals(_rows_of(batch_frames, ids))


@pytest.mark.slow
def test_predict_rotates_a_flagged_subject_with_a_bundle(
    fixed_project: Path,
    tiny_raw_dir: Path,
    generator_upside_down: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A (fake-model) bundle built with the fix ships the detector, sealed; predict rotates
    the flagged subject's sequences back before the features, the others not."""
    from test_bundle import write_fake_models

    from cmi import inference
    from cmi.bundle import PostprocessSettings, load_bundle
    from cmi.bundle.builder import build_bundle

    models = write_fake_models(tmp_path / "m", n_folds=2, with_torch=False)
    wear_json = ProjectPaths(fixed_project).wear_model
    with pytest.raises(FileNotFoundError, match="fix_upside_down"):
        build_bundle(tmp_path / "x", models.lgbm_dir, None, None, FIX, wear_model=None)
    manifest = build_bundle(
        tmp_path / "bundle",
        models.lgbm_dir,
        None,
        None,
        FIX,
        postprocess=PostprocessSettings("none"),
        wear_model=wear_json,
    )
    assert manifest["wear"] == read_json(wear_json)["model"]
    assert load_bundle(tmp_path / "bundle").wear is not None

    seen: list[pl.DataFrame] = []
    real_features = Predictor.features

    def spy(self, sequence, demographics):  # type: ignore[no-untyped-def]
        seen.append(sequence)
        return real_features(self, sequence, demographics)

    monkeypatch.setattr(Predictor, "features", spy)
    monkeypatch.setenv("MODEL_PATH", str(tmp_path / "bundle"))
    inference.reset_cache()
    try:
        demographics = pl.read_csv(tiny_raw_dir / "train_demographics.csv")
        sequences = _subject_sequences(tiny_raw_dir, generator_upside_down)
        for sequence in sequences:
            assert inference.predict(sequence, demographics) in GESTURES
        sent = seen[-len(sequences) :]
        assert sent[-1].equals(rotate_back(sequences[-1]))
        assert inference.get_predictor().wear.is_upside_down(generator_upside_down)
        assert inference.warm_up().answers  # the strict path checks the detector too
    finally:
        inference.reset_cache()
