"""Upside-down wearers: rotating a recording back, and detecting who wore it so (cmi.wear)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from cmi import rotation as rot
from cmi.schema import ACC_COLUMNS, IMU_COLUMNS, ROT_COLUMNS, TEST_SCHEMA, TRAIN_SCHEMA
from cmi.synth import generate, subject_table
from cmi.synth.sensors import UPSIDE_DOWN_VIEWS, imu_readings
from cmi.wear import (
    AWAY_COLUMNS,
    COLUMN_SOURCES,
    FEATURE_NAMES,
    HALF_TURN_SIGNS,
    SubjectWearDetector,
    WearFitParams,
    WearModel,
    decide_subject,
    fit_wear_model,
    rotate_back,
    sequence_features,
    upside_down_score,
    wear_features,
)
from cmi.wear.fit import choose_decision_rule


def _tof(sensor: int) -> list[str]:
    return [f"tof_{sensor}_v{p}" for p in range(64)]


def _tof_mean_distance(frame: pl.DataFrame, sensor: int) -> np.ndarray:
    """Per-frame mean of the valid (not -1) pixels: blind to the image's orientation."""
    pixels = frame.select(_tof(sensor)).to_numpy()
    pixels = np.where(pixels < 0, np.nan, pixels)
    valid = np.isfinite(pixels).any(axis=1)
    out = np.full(len(pixels), np.nan)
    out[valid] = np.nanmean(pixels[valid], axis=1)
    return out


# ---------------------------------------------------------------- rotating back: exact maps


class _NoNoise:
    """Stands in for the generator's RNG: every noise draw is zero."""

    def normal(self, loc=0.0, scale=1.0, size=None) -> np.ndarray:
        return np.zeros(size)


def _synth_imu(upside_down: bool, n: int = 3000) -> pl.DataFrame:
    rng = np.random.default_rng(7)
    motion = {"force": rng.normal(0, 6, (n, 3)), "quat": rot.canonical(rng.normal(size=(n, 4)))}
    worn = {
        "upside_down": np.full(n, upside_down),
        "acc_bias": np.zeros((n, 3)),
        "left": rng.random(n) < 0.5,  # the correction must commute with handedness
    }
    acc, quat = imu_readings(motion, worn, _NoNoise())
    values = np.concatenate([acc, quat], axis=1)
    return pl.DataFrame({c: values[:, j] for j, c in enumerate(IMU_COLUMNS)})


def test_rotate_back_inverts_the_generators_imu_map_exactly() -> None:
    # The generator's own upside-down map (noise off): rotated back, the readings are the
    # upright ones to the last bit, for right- and left-handed wearers alike.
    upright, upside_down = _synth_imu(False), _synth_imu(True)
    assert np.abs(upside_down["acc_z"] - upright["acc_z"]).max() > 5  # the map does change them
    back = rotate_back(upside_down)
    for column in IMU_COLUMNS:
        np.testing.assert_allclose(back[column], upright[column], rtol=0, atol=1e-12)
    assert (back["rot_w"] >= 0).all()


def test_sensor_map_is_the_inverse_of_the_generators_views() -> None:
    # Upside down, sensor i shows view UPSIDE_DOWN_VIEWS[i - 1]; after rotate_back, column
    # thm_j must hold the sensor that showed view j - 1 (sensors 2..5; sensor 1 has none).
    for sensor in range(2, 6):
        source = int(COLUMN_SOURCES[f"thm_{sensor}"].removeprefix("thm_"))
        assert UPSIDE_DOWN_VIEWS[source - 1] == sensor - 1
    assert COLUMN_SOURCES["thm_1"] == "thm_1"
    assert not any(
        source in AWAY_COLUMNS for dst, source in COLUMN_SOURCES.items() if dst != source
    )


def test_tof_images_swap_and_turn_by_180_degrees() -> None:
    # Pixel p of each side sensor holds a marker: sensor * 1000 + p.
    row = {f"tof_{s}_v{p}": float(s * 1000 + p) for s in range(1, 6) for p in range(64)}
    row |= {f"thm_{s}": float(s) for s in range(1, 6)}
    row |= dict.fromkeys(IMU_COLUMNS, 0.5)
    back = rotate_back(pl.DataFrame([row])).row(0, named=True)
    assert [back[f"thm_{s}"] for s in range(1, 6)] == [1.0, 4.0, 3.0, 2.0, 5.0]
    assert [back[c] for c in _tof(1)] == [1000.0 + p for p in range(64)]  # sensor 1 as recorded
    for sensor, source in ((2, 4), (3, 3), (4, 2), (5, 5)):
        assert [back[c] for c in _tof(sensor)] == [source * 1000.0 + 63 - p for p in range(64)]
    # Reversing the flat order reverses rows and columns alike (row-major and column-major).
    image = np.array([back[c] for c in _tof(3)]).reshape(8, 8)
    original = np.array([row[c] for c in _tof(3)]).reshape(8, 8)
    assert np.array_equal(image, original[::-1, ::-1])


# ---------------------------------------------------------------- rotating back: twin data


@pytest.fixture(scope="module")
def tiny_twins() -> dict[str, pl.DataFrame]:
    """tiny's upside-down subject as generated, and its upright twin (same draws)."""
    upside = generate("tiny", 0)
    upright = generate("tiny", 0, upside_down=False)
    table = subject_table("tiny", 0)
    flagged = table.filter(pl.col("upside_down"))["subject"].to_list()
    assert len(flagged) == 1
    pick = pl.col("subject").is_in(flagged)
    return {
        "upside_down": upside["train.csv"].filter(pick),
        "upright": upright["train.csv"].filter(pick),
        "train": upside["train.csv"],
        "test": upside["test.csv"],
    }


def test_rotated_back_twin_matches_its_upright_twin(tiny_twins: dict) -> None:
    upside, upright = tiny_twins["upside_down"], tiny_twins["upright"]
    back = rotate_back(upside)
    # acc_x is untouched by the half turn and by the correction: identical.
    assert back["acc_x"].equals(upright["acc_x"])
    # acc_y/z: the device's own bias and noise stay with the device, so the rotated-back
    # values differ from the twin's by -2 x (bias + noise): small, where uncorrected they
    # differ by twice the gravity component.
    for column in ACC_COLUMNS[1:]:
        diff = (back[column] - upright[column]).to_numpy()
        assert np.abs(diff).mean() < 0.6
        assert np.abs((upside[column] - upright[column]).to_numpy()).mean() > 4
    # Quaternions: the same orientation up to the device's noise (degrees), not 180 deg.
    q_back, q_up, q_raw = (f.select(ROT_COLUMNS).to_numpy() for f in (back, upright, upside))
    ok = np.isfinite(q_up).all(axis=1)
    assert np.array_equal(np.isfinite(q_back), np.isfinite(q_up))
    angle = np.linalg.norm(rot.relative_rotation_vectors(q_back[ok], q_up[ok]), axis=1)
    raw_angle = np.linalg.norm(rot.relative_rotation_vectors(q_raw[ok], q_up[ok]), axis=1)
    assert angle.max() < 0.05
    assert raw_angle.min() > 3.0
    # Sensors 3 and 5 keep their views and the device's biases: after undoing the image
    # turn they equal the twin's exactly.
    for sensor in (3, 5):
        assert back[f"thm_{sensor}"].equals(upright[f"thm_{sensor}"])
        turned = back.select(_tof(sensor)).to_numpy()[:, ::-1]
        reference = upright.select(_tof(sensor)).to_numpy()
        assert np.array_equal(turned, reference, equal_nan=True)
    # Sensors 2 and 4: the swapped-back view matches up to each sensor's own bias (constant)
    # and noise; left swapped they follow a different view.
    for sensor in (2, 4):
        diff = (back[f"thm_{sensor}"] - upright[f"thm_{sensor}"]).drop_nulls().to_numpy()
        unswapped = (upside[f"thm_{sensor}"] - upright[f"thm_{sensor}"]).drop_nulls().to_numpy()
        assert diff.std() < 0.2 < 1.0 < unswapped.std()
        near = np.abs(_tof_mean_distance(back, sensor) - _tof_mean_distance(upright, sensor))
        far = np.abs(_tof_mean_distance(upside, sensor) - _tof_mean_distance(upright, sensor))
        assert 2 * np.nanmedian(near) < np.nanmedian(far)


def test_sensor_1_faces_away_and_cannot_be_restored(tiny_twins: dict) -> None:
    # Upside down, sensor 1 looks into open space: no other sensor ever saw the normal
    # wearer's surface view, so no exact match exists. What can be tested: it is kept as
    # recorded (or nulled on request), and it is what an away view looks like: farther than
    # the upright twin's sensor 1, with more pixels out of range.
    upside, upright = tiny_twins["upside_down"], tiny_twins["upright"]
    kept = rotate_back(upside)
    for column in sorted(AWAY_COLUMNS):
        assert kept[column].equals(upside[column])
    nulled = rotate_back(upside, null_away_sensor=True)
    assert all(nulled[c].null_count() == nulled.height for c in AWAY_COLUMNS)
    assert nulled.drop(sorted(AWAY_COLUMNS)).equals(kept.drop(sorted(AWAY_COLUMNS)))
    sensor_1 = _tof(1)
    has_tof = upright["tof_1_v0"].is_not_null()
    no_return_away = (upside.filter(has_tof).select(sensor_1).to_numpy() < 0).mean()
    no_return_upright = (upright.filter(has_tof).select(sensor_1).to_numpy() < 0).mean()
    assert no_return_away > no_return_upright + 0.2


def test_rotate_back_is_its_own_inverse_and_keeps_nulls(real_sample: Path) -> None:
    frame = pl.read_csv(real_sample / "train_sample.csv", schema=TRAIN_SCHEMA)
    # Null a sensor in some rows, a quaternion in others, as the hidden test does.
    frame = frame.with_columns(
        pl.when(pl.col("sequence_counter") < 10).then(None).otherwise(pl.col(c)).alias(c)
        for c in ["thm_2", *_tof(4), *ROT_COLUMNS]
    )
    back = rotate_back(frame)
    assert back.columns == frame.columns and back.schema == frame.schema
    assert rotate_back(back).equals(frame)
    for destination, source in COLUMN_SOURCES.items():
        assert back[destination].null_count() == frame[source].null_count()
    assert back["rot_x"].null_count() == frame["rot_w"].null_count()
    # Ids, labels and row order untouched.
    assert back.select("row_id", "gesture", "sequence_counter").equals(
        frame.select("row_id", "gesture", "sequence_counter")
    )


def test_rotate_back_where_changes_only_selected_rows(real_sample: Path) -> None:
    frame = pl.read_csv(real_sample / "test.csv", schema=TEST_SCHEMA)
    first = frame["sequence_id"][0]
    chosen = pl.col("sequence_id") == first
    partly = rotate_back(frame, where=chosen)
    assert partly.filter(chosen).equals(rotate_back(frame.filter(chosen)))
    assert partly.filter(~chosen).equals(frame.filter(~chosen))
    assert rotate_back(frame, where=pl.lit(True)).equals(rotate_back(frame))


def test_rotate_back_names_missing_columns() -> None:
    frame = pl.DataFrame({c: [0.0] for c in IMU_COLUMNS})
    assert rotate_back(frame).columns == list(IMU_COLUMNS)  # no thm/ToF at all is fine
    with pytest.raises(ValueError, match="'rot_z'"):
        rotate_back(frame.drop("rot_z"))
    with pytest.raises(ValueError, match="'thm_4'"):
        rotate_back(frame.with_columns(thm_2=pl.lit(30.0)))


# ---------------------------------------------------------------- detection


def test_features_batch_equals_one_sequence_at_a_time(tiny_twins: dict) -> None:
    train = tiny_twins["train"]
    batch = wear_features(train)
    some = batch["sequence_id"].to_list()[:25]
    for sequence_id in some:
        alone = sequence_features(train.filter(pl.col("sequence_id") == sequence_id))
        row = batch.filter(pl.col("sequence_id") == sequence_id).select(FEATURE_NAMES).to_numpy()
        np.testing.assert_allclose(alone, row[0], rtol=0, atol=1e-12)
    # A shuffled sequence is put back in counter order first.
    one = train.filter(pl.col("sequence_id") == some[0])
    np.testing.assert_array_equal(
        sequence_features(one.sample(fraction=1.0, shuffle=True, seed=3)), sequence_features(one)
    )


def test_half_turn_negates_the_score(tiny_twins: dict) -> None:
    train = tiny_twins["train"]
    model = fit_wear_model(train).model
    for sequence_id in train["sequence_id"].unique(maintain_order=True).to_list()[:20]:
        sequence = train.filter(pl.col("sequence_id") == sequence_id)
        x, x_back = sequence_features(sequence), sequence_features(rotate_back(sequence))
        np.testing.assert_allclose(x_back, x * HALF_TURN_SIGNS, atol=1e-9)
        assert upside_down_score(rotate_back(sequence), model) == pytest.approx(
            -upside_down_score(sequence, model), abs=1e-7
        )


def test_imu_only_and_quaternion_free_sequences_still_score(tiny_twins: dict) -> None:
    train = tiny_twins["train"]
    model = fit_wear_model(train).model
    sequence = train.filter(pl.col("sequence_id") == train["sequence_id"][0])
    no_rot = sequence.with_columns(pl.lit(None, dtype=pl.Float64).alias(c) for c in ROT_COLUMNS)
    with_rot, acc_only = upside_down_score(sequence, model), upside_down_score(no_rot, model)
    assert np.isfinite(acc_only) and np.sign(acc_only) == np.sign(with_rot)
    empty = sequence.with_columns(pl.lit(None, dtype=pl.Float64).alias(c) for c in IMU_COLUMNS)
    assert np.isnan(upside_down_score(empty, model))


def test_fit_finds_the_upside_down_subject_without_labels(tiny_twins: dict) -> None:
    train, test = tiny_twins["train"], tiny_twins["test"]
    table = subject_table("tiny", 0)
    fit = fit_wear_model(train)
    expected = tuple(table.filter(pl.col("upside_down"))["subject"].to_list())
    assert fit.upside_down_subjects == expected
    assert fit.model.score_clip > fit.model.threshold >= 0
    by_subject = fit.sequences.group_by("subject").agg(
        pl.col("oof_score").mean(), pl.col("upside_down").first()
    )
    assert (by_subject.filter("upside_down")["oof_score"] > 0).all()
    assert (by_subject.filter(~pl.col("upside_down"))["oof_score"] < 0).all()
    # New subjects (the test split, all upright) and their half-turned twins.
    for frame, expect in ((test, False), (rotate_back(test), True)):
        features = wear_features(frame)
        scores = fit.model.score_features(features.select(FEATURE_NAMES).to_numpy())
        for subject in features["subject"].unique().to_list():
            mine = (features["subject"] == subject).to_numpy()
            assert decide_subject(scores[mine], fit.model) is expect


def test_no_body_orientation_alone_flags_a_normal_wearer(tiny_twins: dict) -> None:
    # Lying on the back, face down, ...: a subject whose first ~25 sequences all come from
    # one orientation must not be flagged, and its half-turned twin must be.
    train = tiny_twins["train"]
    fit = fit_wear_model(train)
    orientation = train.group_by("sequence_id").agg(pl.col("orientation").first())
    scored = fit.sequences.join(orientation, on="sequence_id")
    normal = scored.filter(~pl.col("upside_down"))
    groups = normal.group_by("subject", "orientation").agg(pl.col("oof_score"), pl.len())
    groups = groups.filter(pl.col("len") >= 20)
    assert groups["orientation"].n_unique() == 4
    for scores in groups["oof_score"].to_list():
        assert not decide_subject(scores, fit.model)
        assert decide_subject(-np.asarray(scores), fit.model)


def test_known_labels_skip_self_training(tiny_twins: dict) -> None:
    train = tiny_twins["train"]
    fit = fit_wear_model(train, known_upside_down=[])
    assert fit.upside_down_subjects == ()
    assert not fit.sequences["upside_down"].any()


def test_decision_rule_follows_the_evidence() -> None:
    rng = np.random.default_rng(0)
    params = WearFitParams(n_orders=10)
    clear = [rng.normal(-3.0, 0.5, 100) for _ in range(10)]
    threshold, min_sequences, error = choose_decision_rule(clear, params)
    assert error == 0 and min_sequences == 1 and threshold < 2.5
    # Normal wearers with noisy, sometimes positive scores: a higher bar or more sequences.
    noisy = [rng.normal(-0.5, 2.5, 100) for _ in range(10)]
    threshold_n, min_n, error_n = choose_decision_rule(noisy, params)
    assert error_n > 0 and (min_n > 1 or threshold_n > threshold)


def test_subject_detector_counts_each_sequence_once_and_forgets_oldest() -> None:
    model = WearModel(tuple([0.0] * 16), threshold=1.0, min_sequences=2, score_clip=4.0)
    detector = SubjectWearDetector(model, max_subjects=2)
    assert detector.add_score("A", "s1", 10.0) is False  # one sequence is not enough
    assert detector.add_score("A", "s1", 10.0) is False  # the same sequence again
    assert detector.n_seen("A") == 1
    assert detector.add_score("A", "s2", 0.0) is True  # mean of clipped (4, 0) = 2 > 1
    assert detector.add_score("A", "s3", -4.0) is False  # (4 + 0 - 4) / 3 = 0
    assert detector.add_score("A", "s4", float("nan")) is False  # no evidence, ignored
    assert detector.n_seen("A") == 4
    detector.add_score("B", "b1", 0.0)
    detector.add_score("C", "c1", 0.0)
    assert detector.n_seen("A") == 0  # A was least recently seen


def test_subject_detector_observe_matches_decide_subject(tiny_twins: dict) -> None:
    # Sequences arriving one by one (the test split half-turned, subjects interleaved): each
    # answer is decide_subject over that subject's scores so far; all end up flagged.
    model = fit_wear_model(tiny_twins["train"]).model
    detector = SubjectWearDetector(model)
    flipped = rotate_back(tiny_twins["test"])
    seen: dict[str, list[float]] = {}
    for (sequence_id, subject), sequence in flipped.group_by(
        "sequence_id", "subject", maintain_order=True
    ):
        seen.setdefault(subject, []).append(upside_down_score(sequence, model))
        assert detector.observe(subject, sequence_id, sequence) == decide_subject(
            seen[subject], model
        )
    assert len(seen) == 2
    assert all(detector.is_upside_down(subject) for subject in seen)


def test_wear_model_round_trips_and_rejects_bad_records() -> None:
    model = WearModel(tuple(np.linspace(-1, 1, 16)), threshold=0.5, min_sequences=3, score_clip=4)
    assert WearModel.from_dict(model.to_dict()) == model
    with pytest.raises(ValueError, match="16 finite"):
        WearModel((1.0,), 0.5, 1, 4.0)
    with pytest.raises(ValueError, match="threshold"):
        WearModel(model.coef, 5.0, 1, 4.0)
    with pytest.raises(ValueError, match="keys"):
        WearModel.from_dict({"coef": list(model.coef)})
