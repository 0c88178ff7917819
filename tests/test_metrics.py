"""The competition metric on cases small enough to check by hand."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from cmi.metrics import N_TARGETS, competition_score, competition_scores, summarize_oof
from cmi.schema import (
    GESTURES,
    N_CLASSES,
    NON_TARGET_GESTURES,
    PROBA_COLUMNS,
    TARGET_GESTURES,
    TARGET_INDICES,
)

T0, T1, T2 = TARGET_GESTURES[:3]
N0, N1, N2 = NON_TARGET_GESTURES[:3]


def _check(truth: list[str], pred: list[str], binary: float, macro: float) -> None:
    scores = competition_scores(truth, pred)
    assert scores["binary_f1"] == pytest.approx(binary)
    assert scores["macro_f1"] == pytest.approx(macro)
    assert scores["score"] == pytest.approx(0.5 * binary + 0.5 * macro)


def test_all_correct_scores_one() -> None:
    _check(list(GESTURES), list(GESTURES), binary=1.0, macro=1.0)


def test_targets_confused_among_targets_keep_binary_f1() -> None:
    # Every target predicted as another target: binary F1 1, each target label's F1 0.
    shifted = [TARGET_GESTURES[(i + 1) % 8] for i in range(8)]
    _check(list(TARGET_GESTURES), shifted, binary=1.0, macro=0.0)


def test_partial_target_confusion_by_hand() -> None:
    # T0: tp 1, fn 1, fp 0 -> P 1, R 1/2, F1 2/3.  T1: tp 2, fp 1 -> P 2/3, R 1, F1 4/5.
    _check([T0, T0, T1, T1], [T0, T1, T1, T1], binary=1.0, macro=(2 / 3 + 4 / 5) / 2)


def test_non_targets_collapse_to_one_label() -> None:
    # A non-target predicted as another non-target counts as correct.
    _check([N0, N1, T0], [N1, N2, T0], binary=1.0, macro=1.0)


def test_class_absent_in_truth_but_predicted_counts_in_macro() -> None:
    # Labels {T0, T1, non_target}; T1 never true, predicted once: F1 0 but averaged in.
    # T0: tp 1, fn 1 -> 2/3. T1: 0. non_target: 1. macro = 5/9.
    _check([T0, T0, N0, N0], [T0, T1, N0, N0], binary=1.0, macro=5 / 9)


def test_target_and_non_target_mistakes_by_hand() -> None:
    truth = [T0, T1, N0, N1]
    pred = [T0, N0, N0, T2]
    # binary: truth [1,1,0,0], pred [1,0,0,1] -> tp 1, fp 1, fn 1 -> F1 1/2.
    # macro over {T0, T1, T2, non_target}: 1, 0, 0, non_target (tp 1, fp 1, fn 1) 1/2.
    _check(truth, pred, binary=0.5, macro=1.5 / 4)


def test_no_target_anywhere_gives_zero_binary_f1() -> None:
    # zero_division=0: no positives at all gives binary F1 0, as in scikit-learn.
    _check([N0, N1], [N2, N0], binary=0.0, macro=1.0)


def test_indices_and_strings_agree() -> None:
    truth = [T0, T1, N0, N1]
    pred = [T0, N0, N0, T2]
    as_index = {g: i for i, g in enumerate(GESTURES)}
    by_index = competition_scores(
        np.array([as_index[g] for g in truth]), np.array([as_index[g] for g in pred])
    )
    assert by_index == competition_scores(truth, pred)
    assert competition_score(truth, pred) == by_index["score"]


@pytest.mark.parametrize("bad", ["non_target", "wave hello", "", "Neck - Scratch"])
def test_unknown_gesture_string_raises(bad: str) -> None:
    with pytest.raises(ValueError, match="not one of the 18 gestures"):
        competition_scores([T0], [bad])
    with pytest.raises(ValueError, match="not one of the 18 gestures"):
        competition_scores([bad], [T0])


@pytest.mark.parametrize("bad", [-1, N_CLASSES, 99])
def test_out_of_range_class_index_raises(bad: int) -> None:
    # -1 used to wrap around silently to the last gesture.
    with pytest.raises(ValueError, match="not one of the 18"):
        competition_scores([0], [bad])


def test_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="2 true labels but 1 predictions"):
        competition_scores([T0, T1], [T0])


def test_empty_input_scores_zero() -> None:
    assert competition_scores([], []) == {"score": 0.0, "binary_f1": 0.0, "macro_f1": 0.0}


def test_summarize_oof_overall_per_fold_and_per_group() -> None:
    truth = [0, 1, 8, 9]
    pred = [0, 8, 8, 2]
    proba = np.full((4, N_CLASSES), 0.01)
    proba[np.arange(4), pred] = 1.0
    proba /= proba.sum(axis=1, keepdims=True)
    oof = pl.DataFrame(
        {
            "sequence_id": ["a", "b", "c", "d"],
            "fold": pl.Series([0, 0, 1, 1], dtype=pl.Int32),
            "y_true": pl.Series(truth, dtype=pl.Int32),
            "sensor_group": ["full", "imu_only", "full", "imu_only"],
            **{col: proba[:, i] for i, col in enumerate(PROBA_COLUMNS)},
        }
    )
    summary = summarize_oof(oof)
    assert summary["score"] == pytest.approx(0.5 * 0.5 + 0.5 * 1.5 / 4)
    assert summary["n_sequences"] == 4
    assert set(summary["per_fold"]) == {"0", "1"}
    assert set(summary["per_sensor_group"]) == {"full", "imu_only"}
    # fold 0: truth [T0, T1], pred [T0, N0] -> binary 2/3, macro over {T0, T1, non_target} 1/3.
    assert summary["per_fold"]["0"]["score"] == pytest.approx(0.5 * 2 / 3 + 0.5 / 3)
    assert summary["per_sensor_group"]["full"]["score"] == pytest.approx(1.0)
    assert summary["per_sensor_group"]["imu_only"]["n_sequences"] == 2


def _sklearn_scores(truth: np.ndarray, pred: np.ndarray, weight: np.ndarray | None) -> dict:
    """The competition's definition, spelled with scikit-learn (the reference)."""
    from sklearn.metrics import f1_score

    targets = set(range(len(TARGET_GESTURES)))
    binary = f1_score(
        [t in targets for t in truth],
        [p in targets for p in pred],
        zero_division=0,
        sample_weight=weight,
    )
    collapse = [g if g in targets else -1 for g in truth], [g if g in targets else -1 for g in pred]
    macro = f1_score(*collapse, average="macro", zero_division=0, sample_weight=weight)
    return {"score": 0.5 * binary + 0.5 * macro, "binary_f1": binary, "macro_f1": macro}


def test_targets_come_first_in_the_class_order() -> None:
    assert frozenset(range(N_TARGETS)) == TARGET_INDICES
    assert GESTURES[:N_TARGETS] == TARGET_GESTURES


@pytest.mark.parametrize("seed", range(12))
def test_numpy_metric_matches_scikit_learn_with_and_without_weights(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    # Few classes now and then, so labels absent from truth or prediction are exercised.
    classes = rng.choice(N_CLASSES, size=int(rng.integers(1, N_CLASSES + 1)), replace=False)
    truth = rng.choice(classes, n)
    pred = np.where(rng.random(n) < 0.6, truth, rng.choice(classes, n))
    weights = [None, rng.random(n), np.where(rng.random(n) < 0.3, 0.0, 1.0)]
    for weight in weights:
        ours = competition_scores(truth, pred, sample_weight=weight)
        reference = _sklearn_scores(truth, pred, weight)
        for key in ("score", "binary_f1", "macro_f1"):
            assert ours[key] == pytest.approx(reference[key], abs=1e-12), (key, weight)


def test_sample_weights_reweigh_rows() -> None:
    # Row weights 3:1 on the same labels equal repeating the first row three times.
    truth, pred = [T0, T1, N0], [T0, T0, N0]
    weighted = competition_scores(truth, pred, sample_weight=np.array([3.0, 1.0, 1.0]))
    assert weighted == pytest.approx(competition_scores([T0] * 3 + truth[1:], [T0] * 3 + pred[1:]))
    with pytest.raises(ValueError, match="2 sample weights for 3 labels"):
        competition_scores(truth, pred, sample_weight=np.ones(2))
