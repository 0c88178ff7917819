"""The shared CV split (grouped by subject, stratified by gesture, deterministic) and the one
check of the folds table against the sequences table (``labeled_folds``)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from cmi.folds import assign_folds
from cmi.params import CVParams
from cmi.sequences import labeled_folds


def _sequences(n_subjects: int, per_subject: int = 12, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [
        (f"SEQ_{s:03d}_{j:03d}", f"SUBJ_{s:03d}", int(rng.integers(0, 18)))
        for s in range(n_subjects)
        for j in range(per_subject)
    ]
    return pl.DataFrame(
        rows,
        schema={"sequence_id": pl.String, "subject": pl.String, "label": pl.Int32},
        orient="row",
    )


def _subject_folds(sequences: pl.DataFrame, folds: pl.DataFrame) -> pl.DataFrame:
    return (
        sequences.join(folds, on="sequence_id").group_by("subject").agg(pl.col("fold").n_unique())
    )


def test_every_sequence_gets_one_fold_and_no_subject_spans_two() -> None:
    sequences = _sequences(n_subjects=20)
    folds = assign_folds(sequences, CVParams(n_splits=5, seed=42))
    assert folds.columns == ["sequence_id", "fold"]
    assert folds.schema["fold"] == pl.Int32
    assert folds.height == sequences.height
    assert folds["sequence_id"].n_unique() == sequences.height
    assert sorted(folds["fold"].unique().to_list()) == [0, 1, 2, 3, 4]
    assert _subject_folds(sequences, folds)["fold"].max() == 1


def test_deterministic_for_a_seed_and_independent_of_row_order() -> None:
    sequences = _sequences(n_subjects=20)
    cv = CVParams(n_splits=5, seed=7)
    first = assign_folds(sequences, cv)
    assert first.equals(assign_folds(sequences, cv))
    shuffled = sequences.sample(fraction=1.0, shuffle=True, seed=3)
    assert first.equals(assign_folds(shuffled, cv))
    assert first["sequence_id"].is_sorted()
    # Another seed gives another split (not a guarantee in general, but true here).
    assert not first.equals(assign_folds(sequences, CVParams(n_splits=5, seed=8)))


def test_works_when_a_class_has_fewer_members_than_folds() -> None:
    sequences = _sequences(n_subjects=10).with_columns(
        # class 17 only twice, class 16 once: fewer members than the 5 folds
        label=pl.when(pl.col("label") >= 16).then(0).otherwise(pl.col("label")).cast(pl.Int32)
    )
    rare = pl.DataFrame(
        {"sequence_id": ["R1", "R2", "R3"], "subject": ["SUBJ_000", "SUBJ_001", "SUBJ_002"]}
    ).with_columns(label=pl.Series([17, 17, 16], dtype=pl.Int32))
    sequences = pl.concat([sequences, rare])
    folds = assign_folds(sequences, CVParams(n_splits=5, seed=1))
    assert folds.height == sequences.height
    assert folds["fold"].n_unique() == 5
    assert _subject_folds(sequences, folds)["fold"].max() == 1


def test_as_many_subjects_as_folds_gives_one_subject_per_fold() -> None:
    sequences = _sequences(n_subjects=5)
    folds = assign_folds(sequences, CVParams(n_splits=5, seed=0))
    per_fold = (
        sequences.join(folds, on="sequence_id").group_by("fold").agg(pl.col("subject").n_unique())
    )
    assert sorted(per_fold["fold"].to_list()) == [0, 1, 2, 3, 4]
    assert per_fold["subject"].to_list() == [1] * 5


def test_fewer_subjects_than_folds_raises_clearly() -> None:
    with pytest.raises(ValueError, match=r"n_splits=5 but only 4 subjects.*params.yaml"):
        assign_folds(_sequences(n_subjects=4), CVParams(n_splits=5, seed=0))


def _ghost_fold(folds: pl.DataFrame) -> pl.DataFrame:
    """``folds`` with one more sequence, which the sequences table does not have."""
    ghost = pl.DataFrame({"sequence_id": ["GHOST"], "fold": [0]}, schema=folds.schema)
    return pl.concat([folds, ghost])


def _labeled_inputs() -> tuple[pl.DataFrame, pl.DataFrame]:
    sequences = _sequences(n_subjects=6, per_subject=3).with_columns(
        sensor_group=pl.when(pl.int_range(pl.len()) % 4 == 0)
        .then(pl.lit("imu_only"))
        .otherwise(pl.lit("full")),
        orientation=pl.lit("Seated Straight"),
    )
    folds = assign_folds(sequences, CVParams(n_splits=3, seed=0))
    return sequences.reverse(), folds.reverse()  # row order must not matter


def test_labeled_folds_joins_labels_to_folds_sorted_by_id() -> None:
    sequences, folds = _labeled_inputs()
    table = labeled_folds(sequences, folds, ["orientation"])
    assert table.columns == ["sequence_id", "fold", "label", "sensor_group", "orientation"]
    assert table["sequence_id"].to_list() == sorted(sequences["sequence_id"].to_list())
    expected = sequences.join(folds, on="sequence_id").sort("sequence_id")
    assert table.equals(expected.select(table.columns))
    assert labeled_folds(sequences, folds).columns == table.columns[:4]


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda s, k: (s.drop("sensor_group"), k), r"sequences.parquet: missing column.*sensor_"),
        (lambda s, k: (s, k.rename({"fold": "k"})), r"folds.parquet: missing column.*fold"),
        (lambda s, k: (pl.concat([s, s.head(1)]), k), r"sequences.parquet: duplicate sequence_id"),
        (lambda s, k: (s, pl.concat([k, k.head(1)])), r"folds.parquet: duplicate sequence_id"),
        (lambda s, k: (s, k.head(10)), r"folds.parquet: no row for 8 sequence\(s\) of sequences"),
        (
            lambda s, k: (s, _ghost_fold(k)),
            r"sequences.parquet: no row for 1 sequence\(s\) of folds.parquet, e.g. \['GHOST'\]",
        ),
        (lambda s, k: (s.with_columns(label=pl.lit(18, pl.Int32)), k), r"label null or outside"),
        (lambda s, k: (s.with_columns(label=pl.lit(None, pl.Int32)), k), r"label null or outside"),
        (lambda s, k: (s.with_columns(sensor_group=pl.lit("tof")), k), r"sensor_group not in"),
        (lambda s, k: (s, k.with_columns(fold=pl.lit(None, pl.Int32))), r"fold null or negative"),
        (lambda s, k: (s, k.with_columns(fold=pl.col("fold") * 2)), r"folds \[0, 2, 4\] are not"),
        (lambda s, k: (s.head(0), k.head(0)), r"folds.parquet: no sequences"),
    ],
)
def test_labeled_folds_rejects_bad_tables(corrupt, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        labeled_folds(*corrupt(*_labeled_inputs()))
