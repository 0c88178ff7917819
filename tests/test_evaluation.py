"""The OOF view contract and the leaderboard-like scores (cmi.evaluation)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from cmi.evaluation import (
    OOF_COLUMNS,
    OOF_KEY,
    check_oof,
    check_share,
    concat_oof,
    per_fold_test_like,
    view_oof_frame,
    view_scores,
    view_weights,
)
from cmi.metrics import competition_scores
from cmi.schema import N_CLASSES, PROBA_COLUMNS

T0, T1, N0 = 0, 1, 9  # two target gestures and a non-target one


def _oof(rows: list[tuple[str, int, int, str, str, int]]) -> pl.DataFrame:
    """rows of (sequence_id, fold, y_true, sensor_group, view, predicted class)."""
    proba = np.full((len(rows), N_CLASSES), 0.01)
    proba[np.arange(len(rows)), [r[5] for r in rows]] = 1.0
    proba /= proba.sum(axis=1, keepdims=True)
    ids, folds, y_true, groups, views = ([r[i] for r in rows] for i in range(5))
    return view_oof_frame(ids, folds, y_true, groups, views, proba)


@pytest.fixture
def oof() -> pl.DataFrame:
    # a, b: full-sensor sequences (two views each); c: natively IMU-only (one row).
    # The model is right on every full view, wrong on b's and c's IMU-only views.
    return _oof(
        [
            ("a", 0, T0, "full", "full", T0),
            ("a", 0, T0, "full", "imu_only", T0),
            ("b", 1, T1, "full", "full", T1),
            ("b", 1, T1, "full", "imu_only", N0),
            ("c", 1, N0, "imu_only", "imu_only", T1),
        ]
    )


def test_view_weights_give_each_view_its_share() -> None:
    views = np.array(["full", "imu_only", "imu_only", "full", "imu_only"])
    weights = view_weights(views, 0.5)
    assert weights[views == "full"].sum() == pytest.approx(0.5)
    assert weights[views == "imu_only"].sum() == pytest.approx(0.5)
    assert len(set(weights[views == "imu_only"])) == 1  # equal within a view
    assert view_weights(views, 0.8)[views == "imu_only"].sum() == pytest.approx(0.8)
    # A view that is absent hands its share to the other.
    only_full = np.array(["full", "full"])
    assert view_weights(only_full, 0.5) == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match=r"unknown view 'tof'"):
        view_weights(np.array(["full", "tof"]), 0.5)
    with pytest.raises(ValueError, match=r"eval\.imu_only_share must be in \[0, 1\]"):
        check_share(1.5)


def test_view_scores_by_hand(oof: pl.DataFrame) -> None:
    scores = view_scores(oof, 0.5)
    assert scores["full"] == dict(competition_scores([T0, T1], [T0, T1]), n_rows=2)
    assert scores["full"]["score"] == 1.0
    assert scores["imu_only"] == dict(competition_scores([T0, T1, N0], [T0, N0, T1]), n_rows=3)
    # test_like: full rows weigh 1/4 each, imu_only rows 1/6 each.
    weights = np.array([1 / 4, 1 / 6, 1 / 4, 1 / 6, 1 / 6])
    expected = competition_scores([T0, T0, T1, T1, N0], [T0, T0, T1, N0, T1], weights)
    assert scores["test_like"] == pytest.approx(dict(expected, n_rows=5))
    assert scores["imu_only"]["score"] < scores["test_like"]["score"] < scores["full"]["score"]
    # share 0 / 1: test_like is the full / imu_only score.
    assert view_scores(oof, 0.0)["test_like"]["score"] == pytest.approx(1.0)
    assert view_scores(oof, 1.0)["test_like"]["score"] == pytest.approx(scores["imu_only"]["score"])
    # Post-processed answers override the argmax.
    fixed = view_scores(oof, 0.5, pred=np.array([T0, T0, T1, T1, N0]))
    assert fixed["test_like"]["score"] == pytest.approx(1.0)


def test_per_fold_test_like(oof: pl.DataFrame) -> None:
    per_fold = per_fold_test_like(oof, 0.5)
    assert list(per_fold) == ["0", "1"]
    assert per_fold["0"] == pytest.approx(1.0)
    assert per_fold["1"] == view_scores(oof.filter(pl.col("fold") == 1), 0.5)["test_like"]["score"]


def test_check_oof_accepts_the_contract(oof: pl.DataFrame) -> None:
    check_oof(oof, "x.parquet")
    check_oof(oof.reverse(), "x.parquet")  # row order is free


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (lambda f: f.drop("fold"), r"x\.parquet: missing column\(s\) \['fold'\]"),
        (lambda f: f.drop("p17"), r"missing column\(s\) \['p17'\]"),
        (lambda f: f.with_columns(view=pl.lit("both")), r"column view not in"),
        (lambda f: f.with_columns(sensor_group=pl.lit(None, pl.String)), "column sensor_group"),
        (
            lambda f: pl.concat([f, f.tail(1)]),
            r"duplicate \(sequence_id, view\) row \(sequence 'c'",
        ),
        (
            lambda f: f.filter(pl.col("view") == "imu_only"),
            r"lacks one of its two views \(sequence 'a'",
        ),
        (
            lambda f: f.with_columns(
                view=pl.when(pl.col("sequence_id") == "c").then(pl.lit("full")).otherwise("view")
            ),
            r"natively IMU-only sequence has a 'full' view row \(sequence 'c'",
        ),
        (
            lambda f: f.with_columns(
                y_true=pl.when(pl.col("view") == "full").then(5).otherwise("y_true")
            ),
            r"column y_true differs by view \(sequence 'a'",
        ),
        (
            lambda f: f.with_columns(
                p04=pl.when(pl.col("sequence_id") == "b").then(float("inf")).otherwise("p04")
            ),
            r"non-finite probability \(sequence 'b', view 'full'\)",
        ),
    ],
)
def test_check_oof_names_file_column_and_sequence(oof: pl.DataFrame, corrupt, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_oof(corrupt(oof), "x.parquet")


CONTRACT_SCHEMA = {
    "sequence_id": pl.String,
    "fold": pl.Int32,
    "y_true": pl.Int32,
    "sensor_group": pl.String,
    "view": pl.String,
    **dict.fromkeys(PROBA_COLUMNS, pl.Float64),
}


def test_view_oof_frame_builds_contract_rows_in_the_given_order() -> None:
    proba = np.random.default_rng(0).dirichlet(np.ones(N_CLASSES), size=3).astype(np.float32)
    groups = np.array(["full", "imu_only", "full"])  # numpy strings, as the lgbm arrays are
    rows = view_oof_frame(["b", "c", "a"], 4, np.array([3, 2, 1]), groups, "imu_only", proba)
    assert dict(rows.schema) == CONTRACT_SCHEMA
    assert rows.columns == [*OOF_COLUMNS, *PROBA_COLUMNS]
    assert rows["sequence_id"].to_list() == ["b", "c", "a"]
    assert rows["fold"].to_list() == [4, 4, 4] and rows["view"].to_list() == ["imu_only"] * 3
    assert rows["y_true"].to_list() == [3, 2, 1]
    assert rows["sensor_group"].to_list() == ["full", "imu_only", "full"]
    np.testing.assert_array_equal(rows.select(PROBA_COLUMNS).to_numpy(), proba.astype(np.float64))
    per_row = view_oof_frame(
        pl.Series(["a", "a"]), pl.Series([1, 1]), pl.Series([5, 5], dtype=pl.Int64),
        pl.Series(["full", "full"]), ["full", "imu_only"], proba[:2],
    )  # fmt: skip
    assert dict(per_row.schema) == CONTRACT_SCHEMA
    assert per_row["view"].to_list() == ["full", "imu_only"] and per_row["y_true"][0] == 5
    empty = view_oof_frame([], 0, [], [], "full", np.zeros((0, N_CLASSES)))
    assert empty.height == 0 and dict(empty.schema) == CONTRACT_SCHEMA
    with pytest.raises(ValueError, match=r"\(2, 17\) probabilities for 2 sequences"):
        view_oof_frame(["a", "b"], 0, [1, 2], ["full"] * 2, "full", np.ones((2, N_CLASSES - 1)))


def test_concat_oof_sorts_parts_by_sequence_then_view(oof: pl.DataFrame) -> None:
    shuffled = oof.sample(fraction=1.0, shuffle=True, seed=3)
    parts = [shuffled.head(2), shuffled.tail(shuffled.height - 2)]
    assert concat_oof(parts).equals(oof.sort(*OOF_KEY))
    check_oof(concat_oof(parts))
