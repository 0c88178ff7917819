"""The synthetic generator: exact real schema, realistic structure, physics, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from cmi.schema import (
    DEMOGRAPHICS_SCHEMA,
    GESTURES,
    NON_TARGET_GESTURES,
    ORIENTATIONS,
    TARGET_GESTURES,
    TEST_SCHEMA,
    THM_COLUMNS,
    TOF_COLUMNS,
    TRAIN_SCHEMA,
)
from cmi.synth import PRESETS, generate, subject_table, write_synthetic

REAL_FILES = {
    "train.csv": "train_sample.csv",
    "train_demographics.csv": "train_demographics.csv",
    "test.csv": "test.csv",
    "test_demographics.csv": "test_demographics.csv",
}
RARE_NON_TARGET = (
    "Write name on leg",
    "Glasses on/off",
    "Feel around in tray and pull out an object",
    "Scratch knee/leg skin",
    "Drink from bottle/cup",
    "Pinch knee/leg skin",
)
ROT = ["rot_w", "rot_x", "rot_y", "rot_z"]
ACC = ["acc_x", "acc_y", "acc_z"]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_synthetic("tiny", tmp_path_factory.mktemp("synth"), seed=0)


@pytest.fixture(scope="module")
def files(written: dict[str, Path]) -> dict[str, pl.DataFrame]:
    """The tiny files as a user would read them: plain ``pl.read_csv`` without a schema."""
    return {name: pl.read_csv(path) for name, path in written.items()}


@pytest.fixture(scope="module")
def train(files: dict[str, pl.DataFrame]) -> pl.DataFrame:
    return files["train.csv"]


@pytest.fixture(scope="module")
def test(files: dict[str, pl.DataFrame]) -> pl.DataFrame:
    return files["test.csv"]


def per_sequence(frame: pl.DataFrame, *aggs: pl.Expr) -> pl.DataFrame:
    return frame.group_by("sequence_id", maintain_order=True).agg(*aggs)


def sensors_null(columns: list[str] | tuple[str, ...]) -> pl.Expr:
    return pl.all_horizontal(pl.col(c).is_null() for c in columns)


# --- schema -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(REAL_FILES))
def test_written_files_read_like_the_real_sample(real_sample, files: dict, name: str) -> None:
    real = pl.read_csv(real_sample / REAL_FILES[name])
    assert list(files[name].schema.items()) == list(real.schema.items())


def test_generated_frames_have_the_schema_constants() -> None:
    frames = generate("tiny", seed=3)
    expected = {
        "train.csv": TRAIN_SCHEMA,
        "train_demographics.csv": DEMOGRAPHICS_SCHEMA,
        "test.csv": TEST_SCHEMA,
        "test_demographics.csv": DEMOGRAPHICS_SCHEMA,
    }
    for name, schema in expected.items():
        assert list(frames[name].schema.items()) == list(schema.items()), name


def test_write_leaves_only_the_four_csvs(written: dict[str, Path]) -> None:
    folder = next(iter(written.values())).parent
    assert sorted(p.name for p in folder.iterdir()) == sorted(written)


def test_presets_and_bad_preset() -> None:
    assert set(PRESETS) == {"tiny", "demo", "full"}
    assert PRESETS["full"].train.n_subjects == 81
    assert PRESETS["demo"].train.n_subjects == 16
    assert PRESETS["full"].train.n_upside_down == 2
    assert PRESETS["demo"].train.n_upside_down == 1
    with pytest.raises(ValueError, match="unknown preset"):
        generate("huge")


# --- ids ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["train.csv", "test.csv"])
def test_ids_and_counters(files: dict, name: str) -> None:
    frame = files[name]
    assert frame["sequence_id"].str.contains(r"^SEQ_\d{6}$").all()
    assert frame["subject"].str.contains(r"^SUBJ_\d{6}$").all()
    expected_row_id = pl.format(
        "{}_{}", "sequence_id", pl.col("sequence_counter").cast(pl.String).str.zfill(6)
    )
    assert (frame["row_id"] == frame.select(expected_row_id).to_series()).all()
    rank = pl.int_range(pl.len()).over("sequence_id")
    assert (frame["sequence_counter"] == frame.select(rank).to_series()).all()
    assert frame["row_id"].n_unique() == frame.height
    assert (frame["sequence_id"].to_list()) == sorted(frame["sequence_id"].to_list())
    one_subject = per_sequence(frame, pl.col("subject").n_unique().alias("n"))
    assert (one_subject["n"] == 1).all()


# --- sizes, lengths, classes --------------------------------------------------------------------


def test_tiny_sizes(train: pl.DataFrame, test: pl.DataFrame) -> None:
    subjects = subject_table("tiny", seed=0)
    for frame, split in ((train, "train"), (test, "test")):
        expected = subjects.filter(pl.col("split") == split)
        assert frame["sequence_id"].n_unique() == expected["n_sequences"].sum()
        assert frame["subject"].n_unique() == expected.height
    assert train["subject"].n_unique() == PRESETS["tiny"].train.n_subjects == 8
    assert 200 <= train["sequence_id"].n_unique() <= 260


def test_sequence_lengths(train: pl.DataFrame, test: pl.DataFrame) -> None:
    lengths = pl.concat([train.group_by("sequence_id").len(), test.group_by("sequence_id").len()])
    length = lengths["len"].to_numpy()
    assert length.min() >= 29
    assert length.max() <= 700
    assert 45 <= np.median(length) <= 75


def test_class_balance_and_labels(train: pl.DataFrame) -> None:
    seqs = per_sequence(
        train,
        pl.col("gesture").n_unique().alias("n_gestures"),
        pl.col("orientation").n_unique().alias("n_orientations"),
        pl.col("gesture").first(),
        pl.col("sequence_type").first(),
        pl.col("orientation").first(),
    )
    assert (seqs["n_gestures"] == 1).all() and (seqs["n_orientations"] == 1).all()
    counts = dict(seqs.group_by("gesture").len().iter_rows())
    assert set(counts) == set(GESTURES)
    assert min(counts[g] for g in TARGET_GESTURES) > max(counts[g] for g in RARE_NON_TARGET)
    expected_type = (
        seqs["gesture"]
        .is_in(list(TARGET_GESTURES))
        .replace_strict({True: "Target", False: "Non-Target"})
    )
    assert (seqs["sequence_type"] == expected_type).all()
    assert set(seqs["orientation"]) == set(ORIENTATIONS)
    assert set(NON_TARGET_GESTURES) <= set(counts)


def test_phases_and_behaviors(train: pl.DataFrame) -> None:
    transition = ("Relaxes and moves hand to target location", "Moves hand to target location")
    code = (
        pl.when(pl.col("behavior").is_in(list(transition)))
        .then(0)
        .when(pl.col("behavior") == "Hand at target location")
        .then(1)
        .otherwise(2)
    )
    phase = (pl.col("phase") == "Gesture").cast(pl.Int64)
    seqs = per_sequence(
        train,
        phase.diff().min().alias("phase_step"),
        phase.min().alias("first"),
        phase.max().alias("last"),
        code.diff().min().alias("behavior_step"),
        pl.col("behavior").filter(pl.col("phase") == "Gesture").unique().alias("gesture_rows"),
    )
    assert (seqs["phase_step"] >= 0).all(), "a Gesture row before a Transition row"
    assert (seqs["first"] == 0).all() and (seqs["last"] == 1).all()
    assert (seqs["behavior_step"] >= 0).all()
    assert all(rows.to_list() == ["Performs gesture"] for rows in seqs["gesture_rows"])
    assert train["behavior"].n_unique() == 4


# --- physics ------------------------------------------------------------------------------------


def rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """R(q) v for unit quaternions (w, x, y, z)."""
    w, u = q[:, :1], q[:, 1:]
    t = 2 * np.cross(u, v)
    return v + w * t + np.cross(u, t)


def test_gravity_magnitude(train: pl.DataFrame) -> None:
    acc = train.select(ACC).to_numpy()
    assert 9.3 <= np.median(np.linalg.norm(acc, axis=1)) <= 10.3
    rest = train.filter(pl.col("sequence_counter") < 3).select(ACC).to_numpy()
    assert 9.3 <= np.median(np.linalg.norm(rest, axis=1)) <= 10.3


def test_unit_quaternions(train: pl.DataFrame, test: pl.DataFrame) -> None:
    for frame in (train, test):
        q = frame.select(ROT).drop_nulls().to_numpy()
        assert len(q) > 0
        assert np.abs(np.linalg.norm(q, axis=1) - 1).max() < 1e-3
        assert (q[:, 0] >= 0).all()


def test_accelerometer_agrees_with_quaternion(train: pl.DataFrame) -> None:
    """R(q) acc is the world-frame specific force: gravity points up, the rest is motion."""
    both = train.select(ROT + ACC).drop_nulls().to_numpy()
    world = rotate(both[:, :4], both[:, 4:])
    assert 9.5 <= np.median(world[:, 2]) <= 10.1
    assert np.median(np.linalg.norm(world[:, :2], axis=1)) < 1.0


def test_quaternions_move_smoothly(train: pl.DataFrame) -> None:
    q = train.select(ROT).to_numpy()
    same = (train["sequence_id"][1:] == train["sequence_id"][:-1]).to_numpy()
    dot = np.abs(np.sum(q[1:] * q[:-1], axis=1))[same]
    angle = 2 * np.arccos(np.clip(dot[np.isfinite(dot)], 0, 1))
    assert np.percentile(angle, 99) < 0.6  # radians per frame


# --- thermopiles and time of flight -------------------------------------------------------------


def test_tof_values_and_missing_share(train: pl.DataFrame) -> None:
    tof = train.select(TOF_COLUMNS).to_numpy()
    present = tof[np.isfinite(tof)]
    assert set(np.unique(present[present < 0])) == {-1.0}
    assert present.max() <= 254 and (present == np.round(present)).all()
    assert 0.50 <= np.mean(present == -1) <= 0.68


def test_thermopiles_in_range(train: pl.DataFrame) -> None:
    thm = train.select(THM_COLUMNS).to_numpy()
    thm = thm[np.isfinite(thm)]
    assert thm.min() >= 20 and thm.max() <= 40
    assert 24 <= np.median(thm) <= 32


def test_tof_and_thermopiles_see_the_face(train: pl.DataFrame) -> None:
    """Near the face the ToF sees close surfaces and the thermopiles warm skin; waving, not."""
    tof = train.select(TOF_COLUMNS).to_numpy()
    # -1 (no reflection within range) counts as farther than any measured distance
    distance = np.where(tof >= 0, tof, 255.0).mean(axis=1)
    valid = (tof >= 0).mean(axis=1)
    gesture = (
        train.select("gesture", "phase", pl.mean_horizontal(THM_COLUMNS).alias("thm"))
        .with_columns(distance=pl.Series(distance, nan_to_null=True), valid=valid)
        .filter(pl.col("phase") == "Gesture")
    )
    face = gesture.filter(pl.col("gesture").is_in(list(TARGET_GESTURES)))
    wave = gesture.filter(pl.col("gesture") == "Wave hello")
    assert face["distance"].mean() < wave["distance"].mean() - 50
    assert face["valid"].mean() > wave["valid"].mean() + 0.2
    assert face["thm"].mean() > wave["thm"].mean() + 1.0


# --- missing sensors ----------------------------------------------------------------------------


def missing_flags(frame: pl.DataFrame) -> pl.DataFrame:
    sensors = list(THM_COLUMNS) + list(TOF_COLUMNS)
    return per_sequence(
        frame,
        pl.col("subject").first(),
        sensors_null(sensors).all().alias("imu_only"),
        sensors_null(sensors).any().alias("any_missing"),
        sensors_null(ROT).all().alias("no_rot"),
        sensors_null(ROT).any().alias("any_rot_missing"),
    )


def test_missing_sensors_are_whole_sequences(train: pl.DataFrame, test: pl.DataFrame) -> None:
    for frame in (train, test):
        flags = missing_flags(frame)
        assert (flags["imu_only"] == flags["any_missing"]).all()
        assert (flags["no_rot"] == flags["any_rot_missing"]).all()
        assert frame.select(ACC).null_count().sum_horizontal().item() == 0


def test_imu_only_share(train: pl.DataFrame, test: pl.DataFrame) -> None:
    assert 0.4 <= missing_flags(test)["imu_only"].mean() <= 0.6
    flags = missing_flags(train)
    by_subject = flags.group_by("subject").agg(pl.col("imu_only").mean())
    imu_subjects = by_subject.filter(pl.col("imu_only") > 0)
    assert (imu_subjects["imu_only"] == 1.0).all(), "IMU-only is a property of the subject"
    assert 1 <= imu_subjects.height <= max(1, by_subject.height // 4)


def test_some_sequences_miss_the_quaternion(train: pl.DataFrame, test: pl.DataFrame) -> None:
    for frame in (train, test):
        no_rot = missing_flags(frame)["no_rot"]
        assert 1 <= no_rot.sum() <= max(1, 0.1 * len(no_rot))


# --- subjects and demographics ------------------------------------------------------------------


def test_subjects_and_demographics(files: dict) -> None:
    train_subjects = set(files["train.csv"]["subject"])
    test_subjects = set(files["test.csv"]["subject"])
    assert not train_subjects & test_subjects
    assert set(files["train_demographics.csv"]["subject"]) == train_subjects
    assert set(files["test_demographics.csv"]["subject"]) == test_subjects


def test_demographics_are_plausible(files: dict) -> None:
    demo = pl.concat([files["train_demographics.csv"], files["test_demographics.csv"]])
    adults = demo.filter(pl.col("adult_child") == 1)
    children = demo.filter(pl.col("adult_child") == 0)
    assert adults["age"].is_between(18, 55).all() and children["age"].is_between(10, 17).all()
    for column in ("adult_child", "sex", "handedness"):
        assert set(demo[column]) <= {0, 1}
    assert demo["height_cm"].is_between(130, 200).all()
    assert demo["shoulder_to_wrist_cm"].is_between(35, 75).all()
    assert demo["elbow_to_wrist_cm"].is_between(15, 40).all()
    assert demo["subject"].n_unique() == demo.height
    assert 1 <= (files["train_demographics.csv"]["handedness"] == 0).sum() < demo.height / 2


# --- determinism --------------------------------------------------------------------------------


def test_same_seed_same_frames_other_seed_differs() -> None:
    first, again, other = generate("tiny", 7), generate("tiny", 7), generate("tiny", 8)
    for name in first:
        assert first[name].equals(again[name]), name
    assert not first["train.csv"].equals(other["train.csv"])
    assert not first["test.csv"].equals(other["test.csv"])
