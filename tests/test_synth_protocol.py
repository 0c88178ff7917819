"""The synthetic data follows the study's protocol; left-handed and upside-down wearers.

The protocol checks run on the ``demo`` preset (generated once for the module, ~5 s); the
twin checks (the same seed with one switch off) run on ``tiny``.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from cmi import rotation as rot
from cmi.protocol import (
    INITIAL_BEHAVIORS,
    PROTOCOL_PAIRS,
    SLOTS_PER_SUBJECT,
    gesture_capacity,
)
from cmi.schema import GESTURES, THM_COLUMNS, TOF_COLUMNS
from cmi.synth import PRESETS, SplitSpec, generate, subject_table
from cmi.synth.subjects import MAX_MISSING_PER_SUBJECT, protocol_plan

ACC = ["acc_x", "acc_y", "acc_z"]
ROT = ["rot_w", "rot_x", "rot_y", "rot_z"]


def sequences(train: pl.DataFrame) -> pl.DataFrame:
    """One row per training sequence: subject, gesture, orientation, initial behaviour."""
    return train.group_by("sequence_id").agg(
        pl.col("subject", "gesture", "orientation").first(),
        pl.col("behavior").first().alias("initial_behavior"),
    )


@pytest.fixture(scope="module")
def demo() -> dict[str, pl.DataFrame]:
    return generate("demo", seed=0)


@pytest.fixture(scope="module")
def demo_subjects() -> pl.DataFrame:
    return subject_table("demo", seed=0)


@pytest.fixture(scope="module")
def demo_sequences(demo: dict[str, pl.DataFrame]) -> pl.DataFrame:
    return sequences(demo["train.csv"])


# --- the protocol on demo --------------------------------------------------------------------


def test_every_training_subject_does_each_pair_at_most_once_per_initial_behavior(
    demo_sequences: pl.DataFrame,
) -> None:
    seqs = demo_sequences
    assert seqs["subject"].n_unique() == PRESETS["demo"].train.n_subjects == 16
    pairs = set(zip(seqs["gesture"], seqs["orientation"], strict=True))
    assert pairs == set(PROTOCOL_PAIRS)
    assert set(seqs["initial_behavior"]) == set(INITIAL_BEHAVIORS)
    per_pair = seqs.group_by("subject", "gesture", "orientation").len()
    assert per_pair["len"].max() <= 2
    per_slot = seqs.group_by("subject", "gesture", "orientation", "initial_behavior").len()
    assert per_slot["len"].max() == 1


def test_at_least_98_percent_of_the_slots_are_present(demo_sequences: pl.DataFrame) -> None:
    per_subject = demo_sequences.group_by("subject").len()["len"]
    assert (per_subject >= 0.98 * SLOTS_PER_SUBJECT).all()
    assert (per_subject <= SLOTS_PER_SUBJECT).all()
    missing = 16 * SLOTS_PER_SUBJECT - demo_sequences.height
    assert 0 < missing <= 0.02 * 16 * SLOTS_PER_SUBJECT  # some dropped, about 1%


def test_class_counts_have_the_real_proportions(demo_sequences: pl.DataFrame) -> None:
    """DOMAIN.md: ~640 / ~480 / ~160 sequences (8 : 6 : 2 per subject), 9 / 3 / 6 gestures."""
    counts = dict(demo_sequences.group_by("gesture").len().iter_rows())
    capacity = gesture_capacity()
    for gesture in GESTURES:
        full = 16 * capacity[gesture]
        assert 0.95 * full <= counts[gesture] <= full, gesture
    tiers = {8: [], 6: [], 2: []}
    for gesture in GESTURES:
        tiers[capacity[gesture]].append(counts[gesture])
    assert [len(tiers[k]) for k in (8, 6, 2)] == [9, 3, 6]
    assert min(tiers[8]) > max(tiers[6]) and min(tiers[6]) > max(tiers[2])
    ratio = np.mean(tiers[8]) / np.mean(tiers[2])
    assert 3.8 <= ratio <= 4.2  # 640 / 160


def test_test_split_holds_other_whole_subjects_half_imu_only(
    demo: dict[str, pl.DataFrame], demo_subjects: pl.DataFrame
) -> None:
    test = demo["test.csv"]
    assert not set(test["subject"]) & set(demo["train.csv"]["subject"])
    per_subject = test.group_by("subject").agg(pl.col("sequence_id").n_unique())
    assert per_subject.height == PRESETS["demo"].test.n_subjects
    assert (per_subject["sequence_id"] >= 0.98 * SLOTS_PER_SUBJECT).all()
    sensors = list(THM_COLUMNS) + list(TOF_COLUMNS)
    imu_only = test.group_by("sequence_id").agg(
        pl.all_horizontal(pl.col(c).is_null() for c in sensors).all().alias("imu_only")
    )
    assert 0.45 <= imu_only["imu_only"].mean() <= 0.55
    table = demo_subjects.filter(pl.col("split") == "test")
    assert table["whole_protocol"].all() and not table["upside_down"].any()


def test_the_full_preset_plan_has_the_real_size() -> None:
    """Cheap: the plan only, no motion. 81 subjects, ~8,150 sequences, >= 100 each."""
    plan, thinned = protocol_plan(PRESETS["full"].train, np.random.default_rng(0))
    assert not thinned.any()
    per_subject = np.bincount(plan["subject"])
    assert len(per_subject) == 81
    assert 8100 <= len(plan["subject"]) <= 8200
    assert per_subject.min() >= SLOTS_PER_SUBJECT - MAX_MISSING_PER_SUBJECT
    slots = np.column_stack([plan[k] for k in ("subject", "gesture", "orientation", "relaxed")])
    assert len(np.unique(slots, axis=0)) == len(slots)


def test_thinned_subjects_record_distinct_slots() -> None:
    spec = SplitSpec(6, n_thinned=4, thinned_sequences=40)
    plan, thinned = protocol_plan(spec, np.random.default_rng(1))
    per_subject = np.bincount(plan["subject"], minlength=6)
    assert thinned.sum() == 4
    assert (per_subject[thinned] == 40).all()
    assert (per_subject[~thinned] >= SLOTS_PER_SUBJECT - MAX_MISSING_PER_SUBJECT).all()
    slots = np.column_stack([plan[k] for k in ("subject", "gesture", "orientation", "relaxed")])
    assert len(np.unique(slots, axis=0)) == len(slots)


def test_tiny_keeps_two_whole_protocol_subjects() -> None:
    table = subject_table("tiny", seed=0).filter(pl.col("split") == "train")
    whole = table.filter(pl.col("whole_protocol"))
    assert whole.height == 2
    assert (whole["n_sequences"] >= SLOTS_PER_SUBJECT - MAX_MISSING_PER_SUBJECT).all()
    # the oddities sit on thinned subjects, so the whole-protocol ones stay plain
    assert not (whole["upside_down"] | whole["imu_only"]).any()


def test_bad_split_spec_is_refused() -> None:
    with pytest.raises(ValueError, match="n_thinned"):
        SplitSpec(3, n_thinned=4)
    with pytest.raises(ValueError, match="normal one"):
        SplitSpec(2, n_upside_down=1, n_imu_only_subjects=1)


# --- who is left-handed or upside down -------------------------------------------------------


def test_demo_has_left_handed_and_upside_down_subjects(
    demo: dict[str, pl.DataFrame], demo_subjects: pl.DataFrame
) -> None:
    train = demo_subjects.filter(pl.col("split") == "train")
    assert train["left_handed"].sum() == 2  # 16 x 10/81, the real share
    assert train["upside_down"].sum() == 1
    assert train["imu_only"].sum() == 1
    assert not (train["upside_down"] & (train["left_handed"] | train["imu_only"])).any()
    handedness = dict(demo["train_demographics.csv"].select("subject", "handedness").iter_rows())
    for subject, left in train.select("subject", "left_handed").iter_rows():
        assert handedness[subject] == (0 if left else 1)
    counts = dict(
        demo["train.csv"].group_by("subject").agg(pl.col("sequence_id").n_unique()).iter_rows()
    )
    assert counts == dict(train.select("subject", "n_sequences").iter_rows())


def test_upside_down_wearer_sees_gravity_from_below(
    demo: dict[str, pl.DataFrame], demo_subjects: pl.DataFrame
) -> None:
    """At rest the device's z axis points up for everyone but the upside-down wearer, in every
    orientation; and the quaternion still explains the accelerometer (gravity up in world)."""
    flipped = demo_subjects.filter(pl.col("upside_down"))["subject"].to_list()
    train = demo["train.csv"].with_columns(flipped=pl.col("subject").is_in(flipped))
    rest = train.filter(pl.col("sequence_counter") < 3, pl.col("behavior") == INITIAL_BEHAVIORS[0])
    medians = rest.group_by("flipped", "orientation").agg(pl.col("acc_z").median())
    by_orientation: dict[str, dict[bool, float]] = {}
    for flipped_subject, orientation, acc_z in medians.iter_rows():
        by_orientation.setdefault(orientation, {})[flipped_subject] = acc_z
    assert len(by_orientation) == 4
    for orientation, acc_z in by_orientation.items():
        assert acc_z[True] < -3 < 2 < acc_z[False], orientation
    mine = train.filter(pl.col("flipped")).select(ROT + ACC).drop_nulls().to_numpy()
    world = rot.rotate(mine[:, :4], mine[:, 4:])
    assert 9.5 <= np.median(world[:, 2]) <= 10.1


# --- twins: the same seed with one switch off ------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> dict[str, pl.DataFrame]:
    return generate("tiny", seed=0)


@pytest.fixture(scope="module")
def tiny_subjects() -> pl.DataFrame:
    return subject_table("tiny", seed=0)


def split_by(train: pl.DataFrame, subjects: list[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    mask = pl.col("subject").is_in(subjects)
    return train.filter(mask), train.filter(~mask)


def values(frame: pl.DataFrame, columns: list[str]) -> np.ndarray:
    return frame.select(columns).to_numpy().astype(float)


def test_left_handed_twin_is_the_mirror_image(
    tiny: dict[str, pl.DataFrame], tiny_subjects: pl.DataFrame
) -> None:
    twin = generate("tiny", seed=0, mirror_left_handed=False)
    left = tiny_subjects.filter(pl.col("left_handed"))["subject"].to_list()
    thermopile_rows = 0
    for name in ("train.csv", "test.csv"):
        mirrored, others = split_by(tiny[name], left)
        plain, twin_others = split_by(twin[name], left)
        assert mirrored.height > 0, f"no left-handed subject in {name}"
        assert others.equals(twin_others)  # right-handed subjects are untouched
        negated = ["acc_x", "rot_y", "rot_z"]
        np.testing.assert_array_equal(values(mirrored, negated), -values(plain, negated))
        kept = ["acc_y", "acc_z", "rot_w", "rot_x", "thm_1", "thm_2", "thm_4"]
        np.testing.assert_array_equal(values(mirrored, kept), values(plain, kept))
        # sensors 3 and 5 (along the forearm) swap views: their readings follow each other
        # up to the sensor's own calibration offset and noise
        swapped = values(mirrored, ["thm_3"]) - values(plain, ["thm_5"])
        thermopile_rows += int(np.isfinite(swapped).sum())
        if np.isfinite(swapped).any():
            assert np.nanstd(swapped) < 0.2
            unswapped = values(mirrored, ["thm_3"]) - values(plain, ["thm_3"])
            assert np.nanstd(unswapped) > 2 * np.nanstd(swapped)
    assert thermopile_rows > 0


def test_upside_down_twin_is_rotated_about_the_forearm(
    tiny: dict[str, pl.DataFrame], tiny_subjects: pl.DataFrame
) -> None:
    twin = generate("tiny", seed=0, upside_down=False)
    flipped_subjects = tiny_subjects.filter(pl.col("upside_down"))["subject"].to_list()
    assert len(flipped_subjects) == 1
    flipped, others = split_by(tiny["train.csv"], flipped_subjects)
    upright, twin_others = split_by(twin["train.csv"], flipped_subjects)
    assert others.equals(twin_others)
    assert tiny["test.csv"].equals(twin["test.csv"])
    # acc: x kept; y and z negated (the device's bias and noise are the same in both)
    np.testing.assert_array_equal(values(flipped, ["acc_x"]), values(upright, ["acc_x"]))
    both = values(flipped, ["acc_y", "acc_z"]) + values(upright, ["acc_y", "acc_z"])
    assert np.percentile(np.abs(both), 99) < 0.8
    at_rest = pl.col("sequence_counter") < 3
    assert flipped.filter(at_rest)["acc_z"].mean() * upright.filter(at_rest)["acc_z"].mean() < 0
    # quaternion: q * q_x(180 deg), up to sign and the per-frame estimation noise
    q_flipped = values(flipped, ROT)
    expected = rot.multiply(values(upright, ROT), np.array([0.0, 1.0, 0.0, 0.0]))
    ok = np.isfinite(q_flipped).all(axis=1)
    dot = np.abs(np.sum(q_flipped[ok] * expected[ok], axis=1))
    assert ok.any() and dot.min() > 0.999
    # views: 2 and 4 (across the wrist) swap, 3 and 5 (along the forearm) keep theirs,
    # 1 looks away from the worked surface and reads near ambient
    swapped = values(flipped, ["thm_2"]) - values(upright, ["thm_4"])
    assert np.std(swapped) < 0.2
    np.testing.assert_array_equal(values(flipped, ["thm_3"]), values(upright, ["thm_3"]))
    np.testing.assert_array_equal(
        values(flipped, [f"tof_5_v{p}" for p in range(64)]),
        values(upright, [f"tof_5_v{p}" for p in range(64)]),
    )
    assert values(flipped, ["thm_1"]).mean() < values(upright, ["thm_1"]).mean() - 1.0
    away = values(flipped, [f"tof_1_v{p}" for p in range(64)])
    assert np.mean(away == -1) > 0.95  # nothing within the ToF's range
