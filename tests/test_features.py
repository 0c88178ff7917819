"""cmi.features: quaternion math, ToF statistics, routing on nulls, odd inputs, and the key
parity check that one sequence through the inference path gives the batch's features."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy.spatial.transform import Rotation

from cmi.features import (
    DEMOGRAPHIC_FEATURES,
    IMU_CHANNELS,
    PREPARED_SCHEMA,
    TOF_NO_REFLECTION,
    FeatureSet,
    compute_features,
    frame_channels,
    is_modality_channel,
    prepare_sensor_frame,
    sequence_feature_names,
)
from cmi.features.channels import SensorBlock
from cmi.features.groups import Groups
from cmi.params import ExtractParams
from cmi.rotation import gravity_in_device_frame, relative_rotation_vectors
from cmi.schema import (
    ACC_COLUMNS,
    DEMOGRAPHICS_SCHEMA,
    ROT_COLUMNS,
    SENSOR_COLUMNS,
    TEST_COLUMNS,
    THM_COLUMNS,
    TOF_COLUMNS,
    TRAIN_ONLY_COLUMNS,
    TRAIN_SCHEMA,
)

PARAMS = ExtractParams(sampling_rate_hz=10.0, n_segments=3, tof_regions=True)
MIRRORED = ExtractParams(
    sampling_rate_hz=10.0, n_segments=3, tof_regions=True, mirror_left_handed=True
)
MODALITY_COLUMNS = (*THM_COLUMNS, *TOF_COLUMNS)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def real_train(real_sample) -> pl.DataFrame:
    return pl.read_csv(real_sample / "train_sample.csv", schema=TRAIN_SCHEMA)


@pytest.fixture(scope="module")
def demographics(real_sample) -> pl.DataFrame:
    frames = [
        pl.read_csv(real_sample / name, schema=DEMOGRAPHICS_SCHEMA)
        for name in ("train_demographics.csv", "test_demographics.csv")
    ]
    return pl.concat(frames).unique("subject", keep="first", maintain_order=True)


@pytest.fixture(scope="module")
def roles(real_train: pl.DataFrame) -> dict[str, list[str]]:
    """Which real sequences ``mixed_train`` reworks, and how."""
    ids = sorted(real_train["sequence_id"].unique().to_list())
    return {"imu_only": ids[:3], "no_rot": [ids[2], ids[3]], "gaps": [ids[4]], "last": [ids[-1]]}


@pytest.fixture(scope="module")
def mixed_train(real_sample, real_train: pl.DataFrame, roles: dict[str, list[str]]) -> pl.DataFrame:
    """The 15 real sequences, reworked to cover every route, + the 2 real test sequences
    (labelled arbitrarily) + 3 very short ones: 20 sequences in all.

    - 3 IMU-only (all thm/tof null), one of which also lacks the quaternion;
    - 1 with no quaternion at all, 1 with a few null quaternion rows and an acc gap;
    - lengths 1, 2 and 3 (empty segments, undefined slope/std).
    """
    imu_only, no_rot, gaps = roles["imu_only"], roles["no_rot"], roles["gaps"][0]
    seq = pl.col("sequence_id")
    frame = real_train.with_columns(
        *(
            pl.when(seq.is_in(imu_only)).then(None).otherwise(pl.col(c)).alias(c)
            for c in MODALITY_COLUMNS
        ),
        *(pl.when(seq.is_in(no_rot)).then(None).otherwise(pl.col(c)).alias(c) for c in ROT_COLUMNS),
    )
    counter = pl.col("sequence_counter")
    frame = frame.with_columns(
        *(
            pl.when((seq == gaps) & counter.is_in([0, 5, 6, 20]))
            .then(None)
            .otherwise(pl.col(c))
            .alias(c)
            for c in ROT_COLUMNS
        ),
        pl.when((seq == gaps) & (counter == 7))
        .then(None)
        .otherwise(pl.col("acc_y"))
        .alias("acc_y"),
    )
    test = pl.read_csv(real_sample / "test.csv", schema={c: TRAIN_SCHEMA[c] for c in TEST_COLUMNS})
    test = test.with_columns(
        *(
            pl.lit(value).alias(c)
            for c, value in zip(
                TRAIN_ONLY_COLUMNS,
                ("Target", "Seated Straight", "Performs gesture", "Gesture", "Neck - scratch"),
                strict=True,
            )
        )
    ).select(frame.columns)
    short = []
    source = real_train.filter(seq == roles["last"][0])
    for length in (1, 2, 3):
        part = source.head(length).with_columns(
            pl.lit(f"SEQ_9{length:05d}").alias("sequence_id"),
            (pl.lit(f"SEQ_9{length:05d}_") + counter.cast(pl.String)).alias("row_id"),
        )
        short.append(part)
    return pl.concat([frame, test, *short])


@pytest.fixture(scope="module")
def batch(mixed_train: pl.DataFrame, demographics: pl.DataFrame) -> FeatureSet:
    return compute_features(prepare_sensor_frame(mixed_train), demographics, PARAMS)


def one_sequence(length: int = 20, **columns: np.ndarray) -> pl.DataFrame:
    """A test.csv-like frame of one sequence: still device, quaternion identity, no thm/tof."""
    data: dict[str, object] = {
        "row_id": [f"SEQ_1_{i}" for i in range(length)],
        "sequence_id": ["SEQ_1"] * length,
        "sequence_counter": list(range(length)),
        "subject": ["SUBJ_1"] * length,
        "acc_x": np.zeros(length),
        "acc_y": np.zeros(length),
        "acc_z": np.full(length, 9.81),
        "rot_w": np.ones(length),
        "rot_x": np.zeros(length),
        "rot_y": np.zeros(length),
        "rot_z": np.zeros(length),
    }
    data.update(columns)
    frame = pl.DataFrame(data)
    return frame.with_columns(
        pl.lit(None, dtype=pl.Float64).alias(c) for c in MODALITY_COLUMNS if c not in data
    )


def frame_values(features: FeatureSet, columns: list[str] | tuple[str, ...]) -> np.ndarray:
    return features.frame_features.select(columns).to_numpy().astype(np.float64)


# ----------------------------------------------------------------------------- quaternion math


def test_gravity_matches_scipy_inverse_rotation() -> None:
    rng = np.random.default_rng(0)
    quat = rng.normal(size=(50, 4))
    quat /= np.linalg.norm(quat, axis=1, keepdims=True)
    expected = Rotation.from_quat(quat[:, [1, 2, 3, 0]]).apply([0, 0, 9.81], inverse=True)
    np.testing.assert_allclose(gravity_in_device_frame(quat), expected, atol=1e-12)


def test_linear_acceleration_of_known_rotation() -> None:
    """Device rolled 90 deg about x and pushed 2 m/s^2 along its own x: gravity shows on +y."""
    half = np.sqrt(0.5)
    n = 10
    sequence = one_sequence(
        n,
        acc_x=np.full(n, 2.0),
        acc_y=np.full(n, 9.81),
        acc_z=np.zeros(n),
        rot_w=np.full(n, half),
        rot_x=np.full(n, half),
    )
    features = compute_features(prepare_sensor_frame(sequence), None, PARAMS)
    linear = frame_values(features, ["linear_acc_x", "linear_acc_y", "linear_acc_z"])
    np.testing.assert_allclose(linear, np.tile([2.0, 0.0, 0.0], (n, 1)), atol=1e-5)
    np.testing.assert_allclose(frame_values(features, ["linear_acc_mag"]), 2.0, atol=1e-5)


def _spin_about_body_z(n: int, omega: float, rate: float) -> np.ndarray:
    """q_t = q0 * rot_z(omega t): a constant body-frame angular velocity (0, 0, omega)."""
    q0 = Rotation.from_euler("xyz", [0.3, -0.7, 1.1])
    turns = Rotation.from_rotvec(np.outer(np.arange(n) / rate * omega, [0.0, 0.0, 1.0]))
    xyzw = (q0 * turns).as_quat()
    return xyzw[:, [3, 0, 1, 2]]


def test_angular_velocity_of_known_spin_and_sign_flips() -> None:
    n, omega, rate = 12, 1.5, 10.0
    quat = _spin_about_body_z(n, omega, rate)
    flipped = quat * np.where(np.arange(n) % 2 == 0, 1.0, -1.0)[:, None]  # q and -q alternate
    results = []
    for q in (quat, flipped):
        sequence = one_sequence(n, **{c: q[:, i] for i, c in enumerate(ROT_COLUMNS)})
        features = compute_features(prepare_sensor_frame(sequence), None, PARAMS)
        results.append(frame_values(features, ["angular_vel_x", "angular_vel_y", "angular_vel_z"]))
        distance = frame_values(features, ["angular_distance"])[:, 0]
        # the last frame has no next one and repeats the previous frame's value
        np.testing.assert_allclose(distance, omega / rate, atol=1e-5)
        # stored quaternions are canonical: w >= 0 even where the input had w < 0
        assert (frame_values(features, ["rot_w"]) >= 0).all()
    expected = np.tile([0.0, 0.0, omega], (n, 1))
    np.testing.assert_allclose(results[0], expected, atol=1e-5)
    np.testing.assert_allclose(results[1], results[0], atol=1e-6)


def test_jerk_is_the_rate_of_change_of_acc_magnitude() -> None:
    n = 6
    sequence = one_sequence(n, acc_z=9.81 + np.arange(n, dtype=np.float64))
    features = compute_features(prepare_sensor_frame(sequence), None, PARAMS)
    # |acc| grows by 1 per frame at 10 Hz; the first frame repeats the second's value
    np.testing.assert_allclose(frame_values(features, ["acc_mag_jerk"])[:, 0], 10.0, rtol=1e-5)
    one = compute_features(prepare_sensor_frame(sequence.head(1)), None, PARAMS)
    assert frame_values(one, ["acc_mag_jerk", "angular_distance"]).tolist() == [[0.0, 0.0]]


def test_relative_rotation_is_sign_invariant_and_small_angle_safe() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(20, 4))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b = rng.normal(size=(20, 4))
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    reference = relative_rotation_vectors(a, b)
    np.testing.assert_allclose(relative_rotation_vectors(-a, b), reference, atol=1e-12)
    np.testing.assert_allclose(relative_rotation_vectors(a, -b), reference, atol=1e-12)
    expected = (
        Rotation.from_quat(a[:, [1, 2, 3, 0]]).inv() * Rotation.from_quat(b[:, [1, 2, 3, 0]])
    ).as_rotvec()
    np.testing.assert_allclose(reference, expected, atol=1e-9)
    np.testing.assert_allclose(relative_rotation_vectors(a, a), 0.0, atol=1e-12)
    assert np.isfinite(relative_rotation_vectors(a, a + 1e-15)).all()


# ----------------------------------------------------------------------------- ToF and routing


def test_tof_statistics_of_valid_pixels() -> None:
    n = 3
    pixels = np.full((n, 64), -1.0)
    pixels[0, :32] = np.arange(32) + 10.0  # rows 0-3 valid: quadrants r0, r1
    pixels[1, :] = 50.0
    pixels[1, 0] = 5.0
    # row 2: every pixel -1 (nothing in range)
    columns = {f"tof_1_v{p}": pixels[:, p] for p in range(64)}
    columns.update({f"thm_{i}": np.full(n, 30.0) for i in range(1, 6)})
    features = compute_features(prepare_sensor_frame(one_sequence(n, **columns)), None, PARAMS)
    got = frame_values(
        features,
        ["tof_1_mean", "tof_1_min", "tof_1_invalid", "tof_1_r0", "tof_1_r1", "tof_1_r2"],
    )
    r0 = np.mean([r * 8 + c + 10.0 for r in range(4) for c in range(4)])
    r1 = np.mean([r * 8 + c + 10.0 for r in range(4) for c in range(4, 8)])
    np.testing.assert_allclose(
        got[0], [np.mean(np.arange(32) + 10.0), 10.0, 0.5, r0, r1, TOF_NO_REFLECTION], rtol=1e-6
    )
    np.testing.assert_allclose(
        got[1], [(63 * 50 + 5) / 64, 5.0, 0.0, (15 * 50 + 5) / 16, 50, 50], rtol=1e-6
    )
    np.testing.assert_allclose(got[2], [TOF_NO_REFLECTION] * 2 + [1.0] + [TOF_NO_REFLECTION] * 3)
    # sensors 2..5 never reported in this sequence: their channels are null, not 0
    assert features.frame_features.select(pl.col("^tof_[2-5]_.*$").is_null().all()).row(0) == (
        (True,) * 28
    )
    assert features.sequences["sensor_group"].to_list() == ["full"]


@pytest.mark.parametrize("negative_zero", [False, True])
def test_nearest_valid_pixel_as_a_masked_min(negative_zero: bool) -> None:
    """channels._valid_minimum (on the bits) is the minimum of the valid pixels, bit for
    bit, wherever a frame has one: among -1, NaN, +inf and huge values; with a -0.0 too."""
    from cmi.features.channels import _valid_minimum

    rng = np.random.default_rng(11)
    pixels = rng.integers(0, 250, size=(2, 64, 500)).astype(np.float32)
    pixels[rng.random(pixels.shape) < 0.6] = -1.0
    pixels[rng.random(pixels.shape) < 0.05] = np.nan
    pixels[rng.random(pixels.shape) < 0.02] = np.inf
    pixels[0, :, :7] = -1.0  # frames with no valid pixel
    pixels[1, 3, 9] = 3e38
    pixels[0, 5, 20] = 0.0
    if negative_zero:
        pixels[0, 7, 20] = -0.0
        pixels[1, 2, 30] = -0.0
    valid = (pixels >= 0) & (pixels < np.inf)
    expected = np.where(valid, pixels, np.float32(np.inf)).min(axis=1)
    got = _valid_minimum(pixels, valid)
    some = valid.any(axis=1)
    assert some.sum() > 900 and not some.all()
    np.testing.assert_array_equal(got[some].view(np.uint32), expected[some].view(np.uint32))


def test_imu_only_routes_on_nulls(batch: FeatureSet, roles: dict[str, list[str]]) -> None:
    sequences = batch.sequences
    imu_only = roles["imu_only"]
    groups = dict(zip(sequences["sequence_id"], sequences["sensor_group"], strict=True))
    assert {s for s, g in groups.items() if g == "imu_only"} == set(imu_only)

    frames = batch.frame_features.filter(pl.col("sequence_id").is_in(imu_only))
    modality = [c for c in frames.columns if is_modality_channel(c)]
    assert modality and frames.select(pl.col(modality).is_null().all()).row(0) == (
        (True,) * len(modality)
    )
    assert frames.select(pl.col(IMU_CHANNELS).null_count().sum()).row(0) == (0,) * len(IMU_CHANNELS)
    full_frames = batch.frame_features.filter(~pl.col("sequence_id").is_in(imu_only))
    assert full_frames.select(pl.sum_horizontal(pl.all().null_count())).item() == 0

    seq = batch.sequence_features.filter(pl.col("sequence_id").is_in(imu_only))
    mod_features = [c for c in seq.columns if is_modality_channel(c)]
    assert seq.select(pl.col(mod_features).is_null().all()).row(0) == (True,) * len(mod_features)
    assert not seq.select(pl.col(mod_features).fill_null(1.0) == 0.0).to_numpy().any()


def test_missing_quaternion_is_filled(batch: FeatureSet, roles: dict[str, list[str]]) -> None:
    no_rot, gaps = roles["no_rot"][1], roles["gaps"][0]
    frames = batch.frame_features
    assert frames.select(pl.col(IMU_CHANNELS).null_count().sum()).row(0) == (0,) * len(IMU_CHANNELS)
    whole = frames.filter(pl.col("sequence_id") == no_rot)
    np.testing.assert_array_equal(
        whole.select(ROT_COLUMNS).to_numpy(), [[1, 0, 0, 0]] * whole.height
    )
    acc = whole.select(ACC_COLUMNS).to_numpy().astype(np.float64)
    linear = whole.select("linear_acc_x", "linear_acc_y", "linear_acc_z").to_numpy()
    np.testing.assert_allclose(linear, acc - acc.mean(axis=0), atol=1e-4)

    gap = frames.filter(pl.col("sequence_id") == gaps).sort("sequence_counter")
    rot = gap.select(ROT_COLUMNS).to_numpy()
    np.testing.assert_allclose(rot[0], rot[1])  # leading gap: backward fill
    np.testing.assert_allclose(rot[5], rot[4])  # inner gap: forward fill
    np.testing.assert_allclose(rot[6], rot[4])
    assert gap["acc_y"][7] == gap["acc_y"][6]


def test_feature_names_and_types(batch: FeatureSet) -> None:
    channels = frame_channels(PARAMS)
    names = sequence_feature_names(PARAMS)
    assert batch.frame_features.columns == ["sequence_id", "sequence_counter", *channels]
    assert batch.sequence_features.columns == ["sequence_id", *names]
    assert len(names) == len(set(names))
    assert names[-len(DEMOGRAPHIC_FEATURES) - 1 :] == ["length", *DEMOGRAPHIC_FEATURES]
    assert set(batch.frame_features.dtypes[2:]) == {pl.Float32}
    assert set(batch.sequence_features.dtypes[1:]) == {pl.Float32}
    assert batch.frame_features["sequence_counter"].dtype == pl.Int32
    assert batch.sequences.columns == [
        "sequence_id",
        "subject",
        "sensor_group",
        "length",
        "handedness",
    ]
    assert batch.sequences["length"].dtype == pl.Int32
    assert batch.sequences["handedness"].dtype == pl.Int32
    assert batch.frame_features.equals(batch.frame_features.sort("sequence_id", "sequence_counter"))
    assert batch.sequences["sequence_id"].to_list() == sorted(batch.sequences["sequence_id"])
    # every IMU frame channel is non-modality, every thm/tof one is
    assert not any(is_modality_channel(c) for c in IMU_CHANNELS)
    assert all(is_modality_channel(c) for c in channels if c not in IMU_CHANNELS)
    smaller = ExtractParams(n_segments=1, tof_regions=False)
    assert len(sequence_feature_names(smaller)) < len(names)
    assert not any("seg" in n or "_r0" in n for n in sequence_feature_names(smaller))


def test_sequence_statistics_of_a_ramp() -> None:
    n = 9
    sequence = one_sequence(n, acc_x=np.arange(n, dtype=np.float64))
    row = compute_features(prepare_sensor_frame(sequence), None, PARAMS).sequence_features
    got = {
        k: row[f"acc_x__{k}"][0]
        for k in (
            "mean",
            "std",
            "min",
            "max",
            "q10",
            "q50",
            "q90",
            "range",
            "first",
            "last",
            "slope",
            "energy",
        )
    }
    x = np.arange(n, dtype=np.float64)
    expected = {
        "mean": 4.0,
        "std": x.std(),
        "min": 0.0,
        "max": 8.0,
        "q10": np.quantile(x, 0.1),
        "q50": 4.0,
        "q90": np.quantile(x, 0.9),
        "range": 8.0,
        "first": 0.0,
        "last": 8.0,
        "slope": 10.0,
        "energy": np.mean(x**2),
    }
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key
    assert row["acc_x__seg0_mean"][0] == pytest.approx(1.0)
    assert row["acc_x__seg2_max"][0] == pytest.approx(8.0)
    assert row["length"][0] == n


@pytest.mark.parametrize("slots", [16, 2_048])
def test_group_quantiles_are_numpys(slots: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Per group, np.quantile of each channel: groups of every length (1 frame; longer than
    a chunk's slots), in any order, a channel missing (NaN) in a group, chunked or not."""
    from cmi.features import stats

    monkeypatch.setattr(stats, "_QUANTILE_SLOTS", slots)
    rng = np.random.default_rng(5)
    counts = np.array([1, 2, 40, 3, 7, 7, 120, 5, 1, 64])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    groups = Groups(starts, counts, int(counts.sum()))
    channels = rng.normal(size=(3, groups.n_rows))
    channels[1, starts[4] : starts[4] + counts[4]] = np.nan  # channel 1 missing in group 4
    quantiles = [0.1, 0.5, 0.9]
    got = stats.group_quantiles(channels, groups, quantiles)
    for g, (start, count) in enumerate(zip(starts, counts, strict=True)):
        values = channels[:, start : start + count]
        for result, q in zip(got, quantiles, strict=True):
            np.testing.assert_allclose(
                result[:, g], np.quantile(values, q, axis=1), rtol=0, atol=1e-12
            )


# ----------------------------------------------------------------------------- train-only columns


def test_train_only_columns_are_never_features(
    batch: FeatureSet, mixed_train: pl.DataFrame, demographics: pl.DataFrame
) -> None:
    forbidden = [*TRAIN_ONLY_COLUMNS, "label", "target", "gesture"]
    for frame in (batch.sequences, batch.sequence_features, batch.frame_features):
        for column in frame.columns:
            assert not any(word in column.lower() for word in forbidden), column
        # no value of a train-only column leaks in either
        assert "Seated Straight" not in frame.select(pl.col(pl.String)).to_numpy()

    rng = np.random.default_rng(0)
    permuted = mixed_train.with_columns(
        pl.Series(c, rng.permutation(mixed_train[c].to_numpy())) for c in TRAIN_ONLY_COLUMNS
    )
    again = compute_features(prepare_sensor_frame(permuted), demographics, PARAMS)
    assert again.sequence_features.equals(batch.sequence_features)
    assert again.frame_features.equals(batch.frame_features)
    dropped = compute_features(mixed_train.drop(TRAIN_ONLY_COLUMNS), demographics, PARAMS)
    assert dropped.sequence_features.equals(batch.sequence_features)


# ----------------------------------------------------------------------------- odd inputs


def assert_training_shaped(features: FeatureSet, n_sequences: int = 1) -> None:
    assert features.sequence_features.columns == ["sequence_id", *sequence_feature_names(PARAMS)]
    assert features.frame_features.columns == [
        "sequence_id",
        "sequence_counter",
        *frame_channels(PARAMS),
    ]
    assert set(features.sequence_features.dtypes[1:]) == {pl.Float32}
    assert set(features.frame_features.dtypes[2:]) == {pl.Float32}
    assert features.sequence_features.height == n_sequences
    values = features.sequence_features.drop("sequence_id").to_numpy()
    assert not np.isinf(values).any()
    assert not np.isnan(
        features.frame_features.drop("sequence_id")
        .to_numpy()[:, 1:]
        .astype(np.float64)[:, : len(IMU_CHANNELS)]
    ).any()


def test_odd_inputs_never_crash(real_train: pl.DataFrame, demographics: pl.DataFrame) -> None:
    sequence = real_train.filter(pl.col("sequence_id") == real_train["sequence_id"][0]).drop(
        TRAIN_ONLY_COLUMNS
    )
    subject = sequence["subject"][0]
    demo = demographics.filter(pl.col("subject") == subject)
    reference = compute_features(prepare_sensor_frame(sequence), demo, PARAMS)
    cases = {
        "length 1": sequence.head(1),
        "all sensors null": sequence.with_columns(
            pl.lit(None, pl.Float64).alias(c) for c in SENSOR_COLUMNS
        ),
        "strings": sequence.with_columns(pl.col(SENSOR_COLUMNS).cast(pl.String)),
        "garbage strings": sequence.with_columns(pl.lit("n/a").alias("acc_x")),
        "extra columns": sequence.with_columns(
            pl.lit("x").alias("gesture"), pl.lit(1).alias("something_else")
        ),
        "shuffled columns": sequence.select(sorted(sequence.columns, reverse=True)),
        "missing column": sequence.drop("rot_w", "thm_3", "tof_2_v17"),
        "missing ids": sequence.drop("row_id", "sequence_id", "sequence_counter", "subject"),
        "nan and inf": sequence.with_columns(
            pl.when(pl.col("sequence_counter") % 3 == 0)
            .then(float("nan"))
            .otherwise(pl.col("acc_x"))
            .alias("acc_x"),
            pl.when(pl.col("sequence_counter") % 4 == 0)
            .then(float("inf"))
            .otherwise(pl.col("rot_x"))
            .alias("rot_x"),
            pl.lit(float("-inf")).alias("thm_1"),
        ),
        "shuffled rows": sequence.sample(fraction=1.0, shuffle=True, seed=1),
        "absurd values": sequence.with_columns(
            pl.lit(1e300).alias("acc_x"),
            pl.lit(-1e300).alias("rot_y"),
            pl.lit(1e300).alias("thm_2"),
            pl.lit(1e300).alias("tof_1_v0"),
        ),
        "integer sensors": sequence.with_columns(pl.col(TOF_COLUMNS).cast(pl.Int64)),
    }
    for name, frame in cases.items():
        for demo_case in (
            demo,
            pl.DataFrame(),
            None,
            demo.drop("handedness"),
            demo.with_columns(pl.lit("?").alias("age")),
        ):
            features = compute_features(prepare_sensor_frame(frame), demo_case, PARAMS)
            assert_training_shaped(features)
            # a raw (unprepared) frame goes through the same path
            raw = compute_features(frame, demo_case, PARAMS)
            assert raw.sequence_features.equals(features.sequence_features), name
            known = demo_case is not None and "handedness" in demo_case.columns
            known = known and name != "missing ids"  # no subject -> unknown subject
            assert (features.sequences["handedness"][0] is not None) == known, name

    shuffled = compute_features(prepare_sensor_frame(cases["shuffled rows"]), demo, PARAMS)
    assert shuffled.sequence_features.equals(reference.sequence_features)
    assert shuffled.frame_features.equals(reference.frame_features)
    unknown = compute_features(prepare_sensor_frame(sequence), demographics.head(0), PARAMS)
    assert unknown.sequence_features.select(DEMOGRAPHIC_FEATURES).null_count().row(0) == (
        (1,) * len(DEMOGRAPHIC_FEATURES)
    )
    nulls = compute_features(prepare_sensor_frame(cases["all sensors null"]), demo, PARAMS)
    assert nulls.sequences["sensor_group"].to_list() == ["imu_only"]
    assert nulls.sequence_features["handedness"][0] == demo["handedness"][0]
    empty = compute_features(prepare_sensor_frame(sequence.head(0)), demo, PARAMS)
    assert_training_shaped(empty, n_sequences=0)


def test_prepare_sensor_frame_coerces() -> None:
    frame = pl.DataFrame(
        {
            "acc_x": ["1.5", "bad", None],
            "rot_w": [float("inf"), float("nan"), 1.0],
            "gesture": ["a", "b", "c"],
            "sequence_id": [7, 7, 7],
        }
    )
    prepared = prepare_sensor_frame(frame)
    assert prepared.schema == pl.Schema(PREPARED_SCHEMA)
    assert prepared["acc_x"].to_list() == [1.5, None, None]
    assert prepared["rot_w"].to_list() == [None, None, 1.0]
    assert prepared["sequence_id"].to_list() == ["7"] * 3
    assert prepared["sequence_counter"].to_list() == [0, 1, 2]
    assert prepared["tof_5_v63"].null_count() == 3


# ----------------------------------------------------------------------------- layout and size


def assert_same_features(got: FeatureSet, expected: FeatureSet, what: str) -> None:
    assert got.sequences.equals(expected.sequences), what
    assert got.sequence_features.equals(expected.sequence_features), what
    assert got.frame_features.equals(expected.frame_features), what


def test_row_layout_changes_nothing(
    mixed_train: pl.DataFrame, demographics: pl.DataFrame, batch: FeatureSet
) -> None:
    """Whole sequences in any order are used in place; a sequence split in two runs, or frames
    out of counter order, make the table sorted first. Either way: the same features."""
    ids = batch.sequences["sequence_id"].to_list()
    runs = {sid: mixed_train.filter(pl.col("sequence_id") == sid) for sid in ids}
    order = np.random.default_rng(3).permutation(len(ids))
    first = runs[ids[0]]
    layouts = {
        "sequences shuffled": pl.concat([runs[ids[i]] for i in order]),
        "sequence split": pl.concat([first.head(10), *(runs[s] for s in ids[1:]), first[10:]]),
        "frames reversed": mixed_train.reverse(),
    }
    for name, frame in layouts.items():
        got = compute_features(prepare_sensor_frame(frame), demographics, PARAMS)
        assert_same_features(got, batch, name)


ODD_VALUES = {
    "nan": {"acc_x": float("nan")},
    "-inf": {"rot_y": float("-inf")},
    "inf": {"thm_2": float("inf"), "tof_3_v9": float("inf")},
    "overflows float32": {"tof_1_v0": 1e300},
}


@pytest.mark.parametrize("kinds", [list(ODD_VALUES), ["overflows float32"], ["inf"]])
def test_non_finite_values_left_to_compute_features_give_the_same_features(
    kinds: list[str], mixed_train: pl.DataFrame, demographics: pl.DataFrame
) -> None:
    """prepare_sensor_frame(non_finite_to_null=False), as the extract stage calls it, leaves
    NaN/inf in the table; compute_features then gives exactly what it gives on the nulled
    table (also for a value that overflows float32, which is not infinite before the cast)."""
    counter = pl.col("sequence_counter")
    changes = [(column, value) for kind in kinds for column, value in ODD_VALUES[kind].items()]
    odd = mixed_train.with_columns(
        pl.when(counter == 3 + i).then(value).otherwise(pl.col(column)).alias(column)
        for i, (column, value) in enumerate(changes)
    )
    kept = prepare_sensor_frame(odd, non_finite_to_null=False)
    expected = compute_features(prepare_sensor_frame(odd), demographics, MIRRORED)
    assert_same_features(compute_features(kept, demographics, MIRRORED), expected, str(kinds))
    assert not kept.equals(prepare_sensor_frame(odd)) or kinds == ["overflows float32"]


def test_large_table_paths_change_nothing(
    mixed_train: pl.DataFrame,
    demographics: pl.DataFrame,
    batch: FeatureSet,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The paths only big tables take (blocks of sequences on threads, ToF sensors one per
    call, the column-sum NaN/inf check, column-by-column outputs), forced on small data."""
    from cmi.features import channels, compute, prepare, tables

    counter = pl.col("sequence_counter")
    odd = mixed_train.with_columns(
        pl.when(counter == 3).then(float("nan")).otherwise(pl.col("acc_x")).alias("acc_x"),
        pl.when(counter == 5).then(float("inf")).otherwise(pl.col("thm_2")).alias("thm_2"),
    )
    odd_prepared = prepare_sensor_frame(odd)
    odd_expected = compute_features(odd_prepared, demographics, PARAMS)

    monkeypatch.setattr(compute, "_BLOCK_ROWS", 60)
    monkeypatch.setattr(compute, "_workers", lambda: 3)
    monkeypatch.setattr(channels, "_TOF_CALL_VALUES", 64)
    monkeypatch.setattr(prepare, "LARGE_TABLE_VALUES", 1_000)
    monkeypatch.setattr(tables, "_SMALL_TABLE_VALUES", 100)
    assert prepare_sensor_frame(odd).equals(odd_prepared)
    assert odd_prepared["acc_x"].null_count() > 0 and odd_prepared["thm_2"].null_count() > 0
    got = compute_features(prepare_sensor_frame(mixed_train), demographics, PARAMS)
    assert_same_features(got, batch, "large-table paths")
    assert_same_features(compute_features(odd, demographics, PARAMS), odd_expected, "NaN/inf")


# ----------------------------------------------------------------------------- handedness


def on_the_other_wrist(frame: pl.DataFrame) -> pl.DataFrame:
    """The same recording by the device worn on the other wrist, written out column by
    column (independently of cmi.features): acc_x, rot_y, rot_z change sign, thermopiles and
    ToF sensors 3 and 5 trade places (cmi.synth's MIRRORED_VIEWS), and every 8x8 ToF image
    (pixel v{row * 8 + column}) is flipped left to right."""
    other = {3: 5, 5: 3}
    exprs = [(-pl.col(c)).alias(c) for c in ("acc_x", "rot_y", "rot_z")]
    exprs += [pl.col(f"thm_{other[s]}").alias(f"thm_{s}") for s in other]
    for sensor in range(1, 6):
        source = other.get(sensor, sensor)
        exprs += [
            pl.col(f"tof_{source}_v{row * 8 + 7 - column}").alias(
                f"tof_{sensor}_v{row * 8 + column}"
            )
            for row in range(8)
            for column in range(8)
        ]
    return frame.with_columns(exprs)


def test_mirroring_makes_a_left_handed_twin_right_handed(
    real_train: pl.DataFrame, demographics: pl.DataFrame
) -> None:
    """A right-handed sequence and its twin recorded on the left wrist by a left-handed
    subject: with mirror_left_handed every feature but handedness is the same, in one table
    or one at a time; without it they differ; right-handed subjects are never touched."""
    right_handed = demographics.filter(pl.col("handedness") == 1)["subject"]
    sequence = real_train.filter(pl.col("subject").is_in(right_handed.implode()))
    sequence = sequence.filter(pl.col("sequence_id") == sequence["sequence_id"][0])
    sequence = sequence.drop(TRAIN_ONLY_COLUMNS)
    demo = demographics.filter(pl.col("subject") == sequence["subject"][0])
    twin = on_the_other_wrist(sequence).with_columns(
        pl.lit("SEQ_TWIN").alias("sequence_id"), pl.lit("SUBJ_LEFT").alias("subject")
    )
    twin_demo = demo.with_columns(
        pl.lit("SUBJ_LEFT").alias("subject"),
        pl.lit(0, dtype=demo["handedness"].dtype).alias("handedness"),
    )

    right = compute_features(prepare_sensor_frame(sequence), demo, MIRRORED)
    left = compute_features(prepare_sensor_frame(twin), twin_demo, MIRRORED)
    same = [c for c in right.sequence_features.columns if c not in ("sequence_id", "handedness")]
    assert left.sequence_features.select(same).equals(right.sequence_features.select(same))
    assert left.frame_features.drop("sequence_id").equals(right.frame_features.drop("sequence_id"))
    assert left.sequences["handedness"].to_list() == [0]

    plain = compute_features(prepare_sensor_frame(twin), twin_demo, PARAMS)
    assert not plain.sequence_features.select(same).equals(right.sequence_features.select(same))
    unmirrored = compute_features(prepare_sensor_frame(sequence), demo, PARAMS)
    assert_same_features(right, unmirrored, "a right-handed subject")

    both = compute_features(
        prepare_sensor_frame(pl.concat([sequence, twin])), pl.concat([demo, twin_demo]), MIRRORED
    )
    for single in (right, left):
        sequence_id = single.sequences["sequence_id"][0]
        for table in ("sequence_features", "frame_features"):
            rows = getattr(both, table).filter(pl.col("sequence_id") == sequence_id)
            assert rows.equals(getattr(single, table)), (sequence_id, table)


def test_mirrored_block_in_place_and_copied_agree(real_train: pl.DataFrame) -> None:
    """SensorBlock.mirrored touches only the masked rows; by default the block it was called
    on is unchanged, in_place=True changes its writable arrays (a read-only one is copied)
    to the same values, and mirroring twice gives the input back."""
    sensor = prepare_sensor_frame(real_train.head(300)).select(SENSOR_COLUMNS)
    rows = np.zeros(sensor.height, dtype=bool)
    rows[40:170] = True
    rows[250] = True
    recorded = SensorBlock.from_frame(sensor)
    twin = prepare_sensor_frame(on_the_other_wrist(real_train.head(300)))
    expected = SensorBlock.from_frame(twin.select(SENSOR_COLUMNS))

    def same(a: SensorBlock, b: SensorBlock, mask: np.ndarray) -> bool:
        pairs = [(a.acc[mask], b.acc[mask]), (a.rot[mask], b.rot[mask])]
        pairs += [(a.thm[mask], b.thm[mask]), (a.tof[:, mask], b.tof[:, mask])]
        return all(np.array_equal(x, y, equal_nan=True) for x, y in pairs)

    copied = recorded.mirrored(rows)
    assert same(recorded, SensorBlock.from_frame(sensor), np.ones_like(rows))  # untouched
    assert same(copied, expected, rows) and same(copied, recorded, ~rows)
    assert same(copied.mirrored(rows), recorded, np.ones_like(rows))

    block = SensorBlock.from_frame(sensor)
    block.thm.flags.writeable = False
    in_place = block.mirrored(rows, in_place=True)
    assert in_place.acc is block.acc and in_place.tof is block.tof and in_place.thm is not block.thm
    assert same(in_place, copied, np.ones_like(rows))


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("params", [PARAMS, MIRRORED], ids=["plain", "mirror_left_handed"])
def test_single_sequence_path_matches_batch(
    mixed_train: pl.DataFrame, demographics: pl.DataFrame, params: ExtractParams
) -> None:
    """Each sequence alone, as Kaggle hands it to predict() (test columns only, rows in file
    order, that subject's demographics row), gives exactly the batch's features."""
    batch = compute_features(prepare_sensor_frame(mixed_train), demographics, params)
    test_like = mixed_train.drop(TRAIN_ONLY_COLUMNS).select(TEST_COLUMNS)
    sequence_ids = batch.sequences["sequence_id"].to_list()
    assert len(sequence_ids) == 20
    for sequence_id in sequence_ids:
        sequence = test_like.filter(pl.col("sequence_id") == sequence_id)
        demo = demographics.filter(pl.col("subject") == sequence["subject"][0])
        single = compute_features(prepare_sensor_frame(sequence), demo, params)

        expected_seq = batch.sequence_features.filter(pl.col("sequence_id") == sequence_id)
        assert single.sequence_features.columns == expected_seq.columns
        assert_close(single.sequence_features, expected_seq, sequence_id)
        expected_frames = batch.frame_features.filter(pl.col("sequence_id") == sequence_id)
        assert single.frame_features.columns == expected_frames.columns
        assert single.frame_features["sequence_counter"].equals(expected_frames["sequence_counter"])
        assert_close(single.frame_features, expected_frames, sequence_id)
        assert single.sequences.equals(batch.sequences.filter(pl.col("sequence_id") == sequence_id))


def assert_close(got: pl.DataFrame, expected: pl.DataFrame, what: str) -> None:
    a = got.select(pl.col(pl.Float32)).to_numpy().astype(np.float64)
    b = expected.select(pl.col(pl.Float32)).to_numpy().astype(np.float64)
    assert a.shape == b.shape
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=what)
    both = ~np.isnan(a)
    diff = np.abs(a[both] - b[both]).max(initial=0.0)
    assert diff <= 1e-5, f"{what}: max abs diff {diff}"
