"""Subject-level post-processing: the assignment, its stateful twin and the gateway replay."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest

from cmi.evaluation import view_scores
from cmi.orientation import ORIENTATION_COLUMNS
from cmi.postprocess import (
    COMBINES,
    METHODS,
    MODES,
    SubjectMemory,
    answer_newest,
    assign_capacitated,
    excess_answers,
    gesture_slots,
    pair_gesture,
    pair_orientation,
    pair_proba,
    pair_slots,
    replay_subject,
)
from cmi.postprocess.gateway import compare_postprocessing, present, simulate_gateway
from cmi.protocol import protocol_slots
from cmi.schema import GESTURE_INDEX, N_CLASSES, ORIENTATIONS, PROBA_COLUMNS

POSTPROCESSING = [(method, mode) for method in METHODS if method != "none" for mode in MODES]


def _random_proba(rng: np.random.Generator, n: int, width: int, concentration: float = 0.3):
    return rng.dirichlet(np.full(width, concentration), size=n)


# ----------------------------------------------------------------------------- the solver


def _brute_force_cost(cost: np.ndarray, capacity: np.ndarray, allowed: np.ndarray) -> float:
    best = np.inf
    m, n_kinds = cost.shape
    for kinds in itertools.product(range(n_kinds), repeat=m):
        counts = np.bincount(kinds, minlength=n_kinds)
        if (counts > capacity).any() or not allowed[np.arange(m), kinds].all():
            continue
        best = min(best, cost[np.arange(m), kinds].sum())
    return best


def test_assignment_equals_brute_force_optimum_on_small_random_cases() -> None:
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(150):
        n_kinds = int(rng.integers(1, 5))
        capacity = rng.integers(0, 3, size=n_kinds)
        if capacity.sum() == 0:
            continue
        m = int(rng.integers(1, min(capacity.sum(), 5) + 1))
        cost = rng.exponential(size=(m, n_kinds))
        use_mask = rng.random() < 0.5
        allowed = rng.random((m, n_kinds)) < 0.7 if use_mask else np.ones((m, n_kinds), bool)
        expected = _brute_force_cost(cost, capacity, allowed)
        if not np.isfinite(expected):
            continue  # no feasible assignment under this mask
        kinds = assign_capacitated(cost, capacity, allowed if use_mask else None)
        assert (np.bincount(kinds, minlength=n_kinds) <= capacity).all()
        assert allowed[np.arange(m), kinds].all()
        assert cost[np.arange(m), kinds].sum() == pytest.approx(expected, abs=1e-9)
        checked += 1
    assert checked > 80


def test_capacities_are_never_exceeded() -> None:
    rng = np.random.default_rng(1)
    table = pair_slots()
    # Everyone prefers the same pair: 100 sequences still get at most 2 per pair.
    cost = rng.exponential(size=(100, table.n_kinds))
    cost[:, 7] -= 50
    kinds = assign_capacitated(cost, table.capacity)
    assert (np.bincount(kinds, minlength=table.n_kinds) <= table.capacity).all()
    with pytest.raises(ValueError, match="slots"):
        assign_capacitated(rng.random((103, table.n_kinds)), table.capacity)


@pytest.mark.parametrize("method", ["gesture_counts", "assignment"])
def test_pinned_answers_always_fit_the_protocol(method: str) -> None:
    rng = np.random.default_rng(2)
    p = _random_proba(rng, 102, N_CLASSES)
    p[:, GESTURE_INDEX["Wave hello"]] += 3.0  # the favourite of every sequence
    p /= p.sum(axis=1, keepdims=True)
    answers = replay_subject(p, _random_proba(rng, 102, 4), method, "pinned")
    assert excess_answers(np.zeros(102), answers) == 0
    assert excess_answers(np.zeros(102), p.argmax(axis=1)) > 0


@pytest.mark.parametrize(("method", "mode"), [("none", "resolve"), *POSTPROCESSING])
def test_one_sequence_subject_gets_the_plain_argmax(method: str, mode: str) -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        p = _random_proba(rng, 1, N_CLASSES)
        q = _random_proba(rng, 1, 4)
        assert replay_subject(p, q, method, mode)[0] == p.argmax()
        assert SubjectMemory(method, mode).answer("s", "seq", p[0], q[0]) == p.argmax()


def test_more_sequences_than_slots_fall_back_to_the_argmax() -> None:
    rng = np.random.default_rng(4)
    p = _random_proba(rng, 110, N_CLASSES)
    for method, mode in POSTPROCESSING:
        answers = replay_subject(p, None, method, mode)
        np.testing.assert_array_equal(answers[102:], p[102:].argmax(axis=1))
        assert (answers[:102] != p[:102].argmax(axis=1)).any()


def test_a_full_pair_sends_the_next_sequence_to_its_next_best_pair() -> None:
    """Three confident 'Neck - scratch' sequences, all clearly seated straight: the pair holds
    two, so the third becomes its second gesture; per-gesture counts (8) cannot see that."""
    scratch, pinch = GESTURE_INDEX["Neck - scratch"], GESTURE_INDEX["Neck - pinch skin"]
    p = np.full((3, N_CLASSES), 1e-4)
    p[:, scratch] = [0.9, 0.9, 0.6]
    p[2, pinch] = 0.4
    q = np.tile([0.97, 0.01, 0.01, 0.01], (3, 1))
    assert replay_subject(p, q, "assignment", "resolve").tolist() == [scratch, scratch, pinch]
    assert replay_subject(p, q, "assignment", "pinned").tolist() == [scratch, scratch, pinch]
    assert replay_subject(p, q, "gesture_counts", "resolve").tolist() == [scratch] * 3


def test_resolve_may_revise_earlier_sequences_pinned_may_not() -> None:
    """Capacity 2 for 'Glasses on/off': an early weak claim is displaced by two strong ones
    under resolve (the third answer is still Glasses), but not when pinned."""
    glasses, drink = GESTURE_INDEX["Glasses on/off"], GESTURE_INDEX["Drink from bottle/cup"]
    p = np.full((3, N_CLASSES), 1e-4)
    p[0, [glasses, drink]] = [0.55, 0.45]
    p[1:, glasses] = 0.95
    table = gesture_slots()
    assert answer_newest(p, table, "resolve") == glasses
    assert answer_newest(p, table, "pinned", answered=np.array([glasses, glasses])) != glasses


# ----------------------------------------------------------------------------- pair scores


def test_pair_proba_rows_and_combines() -> None:
    rng = np.random.default_rng(5)
    p, q = _random_proba(rng, 40, N_CLASSES), _random_proba(rng, 40, 4)
    gesture, orientation = pair_gesture(), pair_orientation()
    assert len(gesture) == 51
    for combine in COMBINES:
        scores = pair_proba(p, q, combine)
        assert scores.shape == (40, 51)
        np.testing.assert_allclose(scores.sum(axis=1), 1.0)
    # max: the best pair of a gesture is proportional to the gesture's probability, so the
    # best pair overall is the plain argmax.
    best = np.zeros((40, N_CLASSES))
    np.maximum.at(best.T, gesture, pair_proba(p, q, "max").T)
    np.testing.assert_allclose(
        best / best.sum(axis=1, keepdims=True), p / p.sum(axis=1, keepdims=True)
    )
    # product: plain p(g) q(o) on the allowed pairs; bayes divides by the pair's priors.
    product = p[:, gesture] * q[:, orientation]
    np.testing.assert_allclose(pair_proba(p, q, "product"), product / product.sum(1, keepdims=True))
    prior = np.bincount(gesture)[gesture] * np.array([30, 24, 24, 24])[orientation] / 102
    bayes = product / prior
    np.testing.assert_allclose(pair_proba(p, q, "bayes"), bayes / bayes.sum(1, keepdims=True))
    with pytest.raises(ValueError, match="combine"):
        pair_proba(p, q, "sum")
    with pytest.raises(ValueError, match="orientation_proba"):
        pair_proba(p, q[:, :3])


def test_without_orientation_the_pair_assignment_is_the_gesture_count_assignment() -> None:
    rng = np.random.default_rng(6)
    p = _random_proba(rng, 102, N_CLASSES)
    for mode in MODES:
        np.testing.assert_array_equal(
            replay_subject(p, None, "assignment", mode),
            replay_subject(p, None, "gesture_counts", mode),
        )


# ----------------------------------------------------------------------------- stateful memory


def _interleaved(rng: np.random.Generator, n_per_subject: dict[str, int]):
    """(subject, index) in a random interleaving that keeps each subject's own order."""
    calls = [s for s, n in n_per_subject.items() for _ in range(n)]
    rng.shuffle(calls)
    seen = dict.fromkeys(n_per_subject, 0)
    for subject in calls:
        yield subject, seen[subject]
        seen[subject] += 1


@pytest.mark.parametrize(("method", "mode"), POSTPROCESSING)
def test_memory_gives_the_replay_answers_for_the_same_arrival_order(method: str, mode: str) -> None:
    rng = np.random.default_rng(7)
    sizes = {"A": 60, "B": 30, "C": 1, "D": 105}
    p = {s: _random_proba(rng, n, N_CLASSES) for s, n in sizes.items()}
    q = {s: _random_proba(rng, n, 4) for s, n in sizes.items()}
    memory = SubjectMemory(method, mode)
    got = {s: [] for s in sizes}
    for subject, i in _interleaved(rng, sizes):
        got[subject].append(memory.answer(subject, f"{subject}{i}", p[subject][i], q[subject][i]))
    for subject in sizes:
        expected = replay_subject(p[subject], q[subject], method, mode)
        assert got[subject] == expected.tolist(), subject


def test_answers_do_not_depend_on_other_subjects() -> None:
    rng = np.random.default_rng(8)
    p_a, p_b = _random_proba(rng, 80, N_CLASSES), _random_proba(rng, 80, N_CLASSES)
    alone = SubjectMemory("assignment")
    answers_alone = [alone.answer("A", f"a{i}", p_a[i]) for i in range(80)]
    mixed = SubjectMemory("assignment")
    answers_mixed = []
    for i in range(80):
        mixed.answer("B", f"b{i}", p_b[i])
        answers_mixed.append(mixed.answer("A", f"a{i}", p_a[i]))
    assert answers_alone == answers_mixed


def test_a_sequence_sent_twice_counts_once() -> None:
    rng = np.random.default_rng(9)
    p = _random_proba(rng, 40, N_CLASSES)
    memory = SubjectMemory("gesture_counts", "resolve")
    got = []
    for i in range(40):
        got.append(memory.answer("A", f"s{i}", p[i]))
        # Resent (even with other probabilities): the first answer, nothing counted twice.
        assert memory.answer("A", f"s{i}", p[(i + 1) % 40]) == got[-1]
        assert memory.n_remembered("A") == i + 1
    assert got == replay_subject(p, None, "gesture_counts", "resolve").tolist()


def test_memory_is_bounded() -> None:
    rng = np.random.default_rng(10)
    memory = SubjectMemory("assignment", max_subjects=3, max_sequences_per_subject=110)
    for s in range(10):
        memory.answer(f"S{s}", "x", _random_proba(rng, 1, N_CLASSES)[0])
        assert len(memory) <= 3
    assert memory.n_remembered("S0") == 0  # least recently seen: forgotten
    assert memory.n_remembered("S9") == 1
    p = _random_proba(rng, 130, N_CLASSES)
    answers = [memory.answer("big", f"s{i}", p[i]) for i in range(130)]
    assert memory.n_remembered("big") == 110
    np.testing.assert_array_equal(answers[102:], p[102:].argmax(axis=1))
    with pytest.raises(ValueError, match="max_sequences_per_subject"):
        SubjectMemory("assignment", max_sequences_per_subject=50)


def test_memory_rejects_bad_settings_and_input() -> None:
    with pytest.raises(ValueError, match="method"):
        SubjectMemory("hungarian")
    with pytest.raises(ValueError, match="mode"):
        SubjectMemory("assignment", "greedy")
    with pytest.raises(ValueError, match="gesture_proba"):
        SubjectMemory().answer("A", "s", np.ones(17))


# ----------------------------------------------------------------------------- gateway replay


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def noisy_oof(
    n_subjects: int,
    seed: int,
    strength: float = 2.0,
    orientation_strength: float = 2.0,
    orientation_aware: float = 1.5,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """A protocol-shaped toy: every subject records all 102 slots (a few dropped, a few
    natively IMU-only); probabilities are the true labels plus Gaussian logit noise, weaker
    in the IMU-only view. Like a real IMU model, the gesture model partly knows the
    orientation: gestures never done in the true one lose ``orientation_aware`` logits.
    Returns (OOF with views, orientation OOF, sequences)."""
    rng = np.random.default_rng(seed)
    slots = protocol_slots()
    done_in = np.zeros((4, N_CLASSES))
    for g, o in zip(pair_gesture(), pair_orientation(), strict=True):
        done_in[o, g] = 1.0
    rows, orient_rows, seq_rows = [], [], []
    for s in range(n_subjects):
        keep = rng.permutation(len(slots))[: len(slots) - int(rng.integers(0, 4))]
        native_imu = rng.random(len(keep)) < 0.05
        for j, slot_index in enumerate(keep):
            gesture, orientation, _ = slots[slot_index]
            sid = f"SEQ_{s:02d}_{slot_index:03d}"
            y, o = GESTURE_INDEX[gesture], ORIENTATIONS.index(orientation)
            views = ["imu_only"] if native_imu[j] else ["full", "imu_only"]
            for view in views:
                gain = strength * (1.5 if view == "full" else 1.0)
                logits = rng.normal(size=N_CLASSES) + gain * np.eye(N_CLASSES)[y]
                proba = _softmax((logits - orientation_aware * (1 - done_in[o]))[None])[0]
                rows.append(
                    {
                        "sequence_id": sid,
                        "fold": s % 3,
                        "y_true": y,
                        "sensor_group": "imu_only" if native_imu[j] else "full",
                        "view": view,
                        **dict(zip(PROBA_COLUMNS, proba, strict=True)),
                    }
                )
            oq = _softmax((rng.normal(size=4) + orientation_strength * np.eye(4)[o])[None])[0]
            orient_rows.append(
                {
                    "sequence_id": sid,
                    "fold": s % 3,
                    **dict(zip(ORIENTATION_COLUMNS, oq, strict=True)),
                }
            )
            seq_rows.append({"sequence_id": sid, "subject": f"SUBJ_{s:02d}"})
    return pl.DataFrame(rows), pl.DataFrame(orient_rows), pl.DataFrame(seq_rows)


def test_gateway_presents_each_sequence_once_half_imu_only() -> None:
    oof, _, sequences = noisy_oof(3, seed=11)
    presented = present(oof, sequences, n_orders=3, seed=0, imu_only_share=0.5)
    native = set(oof.filter(pl.col("sensor_group") == "imu_only")["sequence_id"].to_list())
    for (_, subject), part in presented.group_by(["order", "subject"]):
        ids = part["sequence_id"].to_list()
        assert sorted(ids) == sorted(sequences.filter(pl.col("subject") == subject)["sequence_id"])
        assert part["arrival"].to_list() == list(range(len(ids)))
        assert (part["view"] == "imu_only").sum() == round(0.5 * len(ids))
        views = dict(zip(part["sequence_id"], part["view"], strict=True))
        assert all(views[sid] == "imu_only" for sid in native & set(ids))
    orders = [
        p["sequence_id"].to_list() for _, p in presented.group_by(["order"], maintain_order=True)
    ]
    assert orders[0] != orders[1]  # different arrival orders


def test_gateway_answers_each_sequence_from_its_prefix_and_per_subject() -> None:
    oof, orientation_oof, sequences = noisy_oof(3, seed=12)
    replayed = simulate_gateway(
        oof, orientation_oof, sequences, "assignment", "resolve", n_orders=2
    )
    first = replayed.filter((pl.col("order") == 1) & (pl.col("subject") == "SUBJ_01"))
    q = (
        first.join(orientation_oof, on="sequence_id", how="left", maintain_order="left")
        .select(ORIENTATION_COLUMNS)
        .to_numpy()
    )
    expected = replay_subject(first.select(PROBA_COLUMNS).to_numpy(), q, "assignment", "resolve")
    np.testing.assert_array_equal(first["pred"].to_numpy(), expected)
    # The same subject replayed without the others: the same presentations and answers.
    ids = sequences.filter(pl.col("subject") == "SUBJ_01")["sequence_id"]
    alone = simulate_gateway(
        oof.filter(pl.col("sequence_id").is_in(ids.implode())),
        orientation_oof,
        sequences,
        "assignment",
        "resolve",
        n_orders=2,
    ).filter(pl.col("order") == 1)
    assert alone.select("sequence_id", "view", "pred").equals(
        first.select("sequence_id", "view", "pred")
    )
    # view_scores scores the replay's answers.
    scores = view_scores(first, 0.5, pred=first["pred"].to_numpy())
    assert 0.0 < scores["test_like"]["score"] <= 1.0


def test_gateway_rejects_an_oof_without_imu_only_rows() -> None:
    oof, _, sequences = noisy_oof(1, seed=13)
    with pytest.raises(ValueError, match="imu_only"):
        present(oof.filter(pl.col("view") == "full"), sequences, 1, 0, 0.5)


def test_on_noisy_protocol_data_assignment_beats_gesture_counts_beats_none() -> None:
    oof, orientation_oof, sequences = noisy_oof(10, seed=14)
    result = compare_postprocessing(oof, orientation_oof, sequences, n_orders=3, modes=("resolve",))
    none = result["none"]["test_like"]
    counts = result["gesture_counts"]["resolve"]["test_like"]
    assignment = result["assignment"]["resolve"]["test_like"]
    assert assignment > counts > none, (none, counts, assignment)
    assert result["none"]["excess_answers"] > result["assignment"]["resolve"]["excess_answers"]
