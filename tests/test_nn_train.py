"""Per-fold training on random tensors: resume is bit-identical, bad checkpoints are not used."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from cmi.checkpoint import CheckpointStore
from cmi.nn import checkpoint as ckpt
from cmi.nn.cv import TorchTrainingData, run_torch_fold
from cmi.nn.data import Scaler
from cmi.nn.fold_data import FoldInputs, PaddedPart, labeled_sequences, prepare_fold
from cmi.nn.model import TimeSeriesNet, architecture_kwargs, load_state_dict_file
from cmi.nn.predict import network_proba
from cmi.nn.runtime import Distributed, Runtime, derive_seed
from cmi.nn.train import (
    apply_modality_dropout,
    epoch_batches,
    new_run,
    steps_per_epoch,
    train_torch_fold,
)
from cmi.params import Params, TorchParams

CHANNELS = ["acc_x", "acc_y", "acc_z", "thm_1", "tof_1_mean", "tof_1_min"]
PARAMS = TorchParams(
    epochs=3,
    batch_size=8,
    conv_channels=(8, 8),
    lstm_hidden=8,
    gru_hidden=8,
    lr=5e-3,
    modality_dropout=0.5,
)
CPU = torch.device("cpu")
CPU_RUNTIME = Runtime(CPU, Distributed(), threads=1)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: fast and steady on a small, busy machine (no OpenMP spinning)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_inputs(fold: int = 0, n_train: int = 30, n_val: int = 10, t: int = 13) -> FoldInputs:
    """Training, inner validation and scored parts of random sequences (a quarter IMU-only)."""
    rng = np.random.default_rng(fold)

    def part(n: int, prefix: str) -> PaddedPart:
        y = rng.integers(0, 18, size=n)
        x = rng.normal(size=(n, t, len(CHANNELS))).astype(np.float32)
        x[:, :, 0] += y[:, None] / 6.0  # something to learn
        lengths = rng.integers(1, t + 1, size=n)
        mask = np.arange(t)[None, :] >= (t - lengths)[:, None]
        x[~mask] = 0.0
        groups = np.where(np.arange(n) % 4 == 0, "imu_only", "full")
        x[groups == "imu_only", :, 3:] = 0.0
        ids = [f"{prefix}{i:03d}" for i in range(n)]
        orientation = (np.arange(n) * 7 + y) % 4  # some of everything, no extra draw
        return PaddedPart(ids, x, mask, y.astype(np.int64), groups, orientation.astype(np.int64))

    scaler = Scaler(tuple(CHANNELS), np.zeros(len(CHANNELS)), np.ones(len(CHANNELS)))
    return FoldInputs(
        fold, (fold + 1) % 3, part(n_train, "T"), part(n_val, "I"), part(n_val, "S"),
        np.array([3, 4, 5]), scaler, t,
    )  # fmt: skip


def arch() -> dict:
    return architecture_kwargs(len(CHANNELS), PARAMS.conv_channels, 8, 8, PARAMS.dropout)


def store_at(path: Path, key: str = "fp") -> CheckpointStore:
    return CheckpointStore(path, key)


def last_file(store: CheckpointStore, fold: int = 0) -> Path:
    return store.unit_dir(ckpt.fold_unit(fold)) / ckpt.LAST_NAME


class Crash(RuntimeError):
    pass


def crash_at(fold: int, epoch: int, batch: int):
    def hook(f: int, e: int, b: int) -> None:
        if (f, e, b) == (fold, epoch, batch):
            raise Crash(f"crash at {(f, e, b)}")

    return hook


def assert_same_result(a, b) -> None:
    assert a.best_epoch == b.best_epoch
    assert a.best_score == b.best_score
    assert a.curves == b.curves
    assert a.predictions.keys() == b.predictions.keys()
    for view in a.predictions:
        assert a.predictions[view].ids == b.predictions[view].ids
        np.testing.assert_array_equal(a.predictions[view].proba, b.predictions[view].proba)
    assert a.best_state.keys() == b.best_state.keys()
    for key in a.best_state:
        assert torch.equal(a.best_state[key], b.best_state[key]), key


def test_training_writes_weights_only_checkpoints(tmp_path: Path) -> None:
    inputs = random_inputs()
    store = store_at(tmp_path)
    result = train_torch_fold(inputs, arch(), PARAMS, device=CPU, store=store)
    assert 1 <= result.best_epoch <= PARAMS.epochs
    assert [row[0] for row in result.curves] == [1, 2, 3]
    assert result.predictions["imu_only"].proba.shape == (10, 18)
    assert result.predictions["full"].ids == [f"S{i:03d}" for i in range(10) if i % 4]
    payload = torch.load(last_file(store), weights_only=True)
    assert payload["version"] == ckpt.CHECKPOINT_VERSION and payload["epoch"] == 3
    for key in ("model", "optimizer", "scheduler", "grad_scaler", "best_state", "rng", "curves"):
        assert key in payload
    net = TimeSeriesNet(**arch())
    net.load_state_dict(result.best_state)
    full = inputs.scored.sensor_group == "full"
    proba = network_proba(net, inputs.scored.x[full], inputs.scored.mask[full])
    np.testing.assert_allclose(proba, result.predictions["full"].proba, atol=1e-12)


def test_best_epoch_is_chosen_on_the_inner_fold_by_test_like(tmp_path: Path) -> None:
    result = train_torch_fold(random_inputs(), arch(), PARAMS, device=CPU, imu_only_share=0.5)
    inner_test_like = [row[-1] for row in result.curves]
    assert result.best_score == max(inner_test_like)
    assert result.best_epoch == 1 + inner_test_like.index(max(inner_test_like))


def test_resume_after_crash_is_bit_identical(tmp_path: Path, caplog) -> None:
    inputs = random_inputs()
    straight = train_torch_fold(inputs, arch(), PARAMS, device=CPU, store=store_at(tmp_path / "a"))
    store = store_at(tmp_path / "b")
    with pytest.raises(Crash):
        train_torch_fold(
            inputs, arch(), PARAMS, device=CPU, store=store, on_batch=crash_at(0, 3, 1)
        )  # fmt: skip
    assert torch.load(last_file(store), weights_only=True)["epoch"] == 2
    torch.manual_seed(1234)  # a resumed process starts from other global RNG states
    np.random.seed(99)
    replayed = []
    with caplog.at_level(logging.INFO, logger="cmi.nn.train"):
        resumed = train_torch_fold(
            inputs, arch(), PARAMS, device=CPU, store=store,
            on_epoch=lambda fold, row: replayed.append(row),
        )  # fmt: skip
    assert "fold 0: resuming from epoch 3" in caplog.text
    assert resumed.resumed_from == 2
    assert_same_result(straight, resumed)
    assert replayed == straight.curves  # restored epochs' curves are handed on, not lost


def test_truncated_checkpoint_is_reported_and_fold_restarts(tmp_path: Path, caplog) -> None:
    inputs = random_inputs()
    fresh = train_torch_fold(inputs, arch(), PARAMS, device=CPU, store=store_at(tmp_path / "a"))
    damaged = store_at(tmp_path / "b")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    last = last_file(damaged)
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.INFO):
        again = train_torch_fold(inputs, arch(), PARAMS, device=CPU, store=damaged)
    assert "is unreadable" in caplog.text and "restarting the fold" in caplog.text
    assert "resuming" not in caplog.text
    assert again.resumed_from == 0
    assert_same_result(fresh, again)


def test_checkpoint_of_another_fingerprint_is_ignored(tmp_path: Path, caplog) -> None:
    inputs = random_inputs()
    short = replace(PARAMS, epochs=1)
    old, new = store_at(tmp_path, "old"), store_at(tmp_path, "new")
    train_torch_fold(inputs, arch(), short, device=CPU, store=old)
    # A unit of another run where this run looks (e.g. a folder copied by hand).
    shutil.copytree(old.unit_dir("fold_0"), new.unit_dir("fold_0"))
    with caplog.at_level(logging.INFO):
        result = train_torch_fold(inputs, arch(), short, device=CPU, store=new)
    assert "ignoring checkpoint" in caplog.text and "resuming" not in caplog.text
    assert result.resumed_from == 0


def test_unfinished_unit_is_ignored(tmp_path: Path, caplog) -> None:
    """A last.pt without the store's marker (never completed by save) is not loaded."""
    inputs = random_inputs()
    short = replace(PARAMS, epochs=1)
    store = store_at(tmp_path)
    train_torch_fold(inputs, arch(), short, device=CPU, store=store)
    (store.unit_dir("fold_0") / "done.json").unlink()
    with caplog.at_level(logging.INFO):
        result = train_torch_fold(inputs, arch(), short, device=CPU, store=store)
    assert "fold 0: ignoring checkpoint" in caplog.text and "not finished" in caplog.text
    assert result.resumed_from == 0


def test_epoch_randomness_depends_only_on_seed_fold_epoch() -> None:
    def draw(seed: int, fold: int, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(derive_seed(seed, fold, epoch, "data"))
        return torch.cat(epoch_batches(20, 6, gen)).tolist()

    torch.manual_seed(0)
    first = draw(42, 1, 3)
    torch.manual_seed(1)
    assert draw(42, 1, 3) == first
    assert draw(42, 1, 4) != first and draw(42, 2, 3) != first
    assert sorted(first) == list(range(20))


def test_batches_give_every_rank_a_row() -> None:
    gen = torch.Generator().manual_seed(0)
    batches = epoch_batches(17, 8, gen, world_size=2)  # last batch of 1 row is dropped
    assert [len(b) for b in batches] == [8, 8]
    assert steps_per_epoch(17, 8, 2) == 2 and steps_per_epoch(17, 8, 1) == 3
    assert steps_per_epoch(16, 8, 2) == 2


def test_bucketed_batches_hold_similar_lengths_and_every_row_once() -> None:
    lengths = torch.from_numpy(np.random.default_rng(0).integers(20, 130, size=203))

    def draw(bucket: int, world_size: int = 1) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(7)
        return epoch_batches(203, 16, gen, world_size, lengths, bucket_batches=bucket)

    plain, bucketed = draw(0), draw(4)
    assert [len(b) for b in bucketed] == [len(b) for b in plain]  # same steps per epoch
    assert len(bucketed) == steps_per_epoch(203, 16)
    assert sorted(torch.cat(bucketed).tolist()) == list(range(203))
    longest = {name: np.mean([int(lengths[b].max()) for b in batches])
               for name, batches in (("plain", plain), ("bucketed", bucketed))}  # fmt: skip
    assert longest["bucketed"] < 0.85 * longest["plain"]  # the network computes less
    assert draw(4)[0].tolist() == bucketed[0].tolist()  # seeded: a resumed epoch draws the same
    assert torch.equal(torch.cat(draw(0)), torch.cat(plain))  # off: the plain shuffle, unchanged
    assert len(draw(4, world_size=13)[-1]) >= 13  # a last batch too small for the ranks is dropped
    # the bucketed order is not the same every epoch
    other = epoch_batches(203, 16, torch.Generator().manual_seed(8), 1, lengths, 4)
    assert [b.tolist() for b in other] != [b.tolist() for b in bucketed]


def test_modality_dropout_fills_only_modality_channels_of_dropped_rows() -> None:
    x = torch.ones(3, 4, len(CHANNELS))
    out = apply_modality_dropout(x, torch.tensor([True, False, True]), torch.tensor([3, 4, 5]))
    assert torch.all(out[[0, 2]][:, :, 3:] == 0) and torch.all(out[[0, 2]][:, :, :3] == 1)
    assert torch.all(out[1] == 1) and torch.all(x == 1)


def frame_features(n_seq: int = 24, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    rows, seqs = [], []
    for i in range(n_seq):
        sid, label, n = f"SEQ_{i:04d}", i % 18, int(rng.integers(4, 30))
        imu_only = i % 4 == 0
        for t in range(n):
            values = rng.normal(size=len(CHANNELS)) + label / 5
            if imu_only:
                values[3:] = np.nan
            rows.append((sid, t, *[None if np.isnan(v) else float(v) for v in values]))
        seqs.append((sid, label, "imu_only" if imu_only else "full", i % 3))
    frames = pl.DataFrame(
        rows,
        schema={"sequence_id": pl.Utf8, "sequence_counter": pl.Int32}
        | {c: pl.Float32 for c in CHANNELS},
        orient="row",
    )
    table = pl.DataFrame(
        seqs,
        schema={"sequence_id": pl.Utf8, "label": pl.Int32, "sensor_group": pl.Utf8,
                "fold": pl.Int32},
        orient="row",
    )  # fmt: skip
    return frames, table


def test_prepare_fold_uses_training_part_only() -> None:
    frames, table = frame_features()
    labeled = labeled_sequences(table.drop("fold"), table.select("sequence_id", "fold"))
    inputs = prepare_fold(frames, labeled, 1, CHANNELS, PARAMS)
    assert inputs.inner_fold == 2  # (k + 1) % n_folds
    train_ids = table.filter(~pl.col("fold").is_in([1, 2]))["sequence_id"]
    train_frames = frames.filter(pl.col("sequence_id").is_in(train_ids.implode()))
    assert inputs.scaler.mean[0] == pytest.approx(train_frames["acc_x"].mean(), rel=1e-6)
    lengths = train_frames.group_by("sequence_id").len()["len"].to_numpy()
    assert inputs.pad_len == int(np.ceil(np.percentile(lengths, 95)))
    assert inputs.scored.ids == sorted(table.filter(pl.col("fold") == 1)["sequence_id"])
    assert inputs.inner.ids == sorted(table.filter(pl.col("fold") == 2)["sequence_id"])
    assert len(inputs.scored) == 8 and inputs.train.x.shape == (8, inputs.pad_len, 6)
    assert np.isfinite(inputs.train.x).all()
    assert list(inputs.scored.sensor_group[:2]) == ["full", "imu_only"]  # SEQ_0001, SEQ_0004


def test_fewer_than_three_folds_is_a_clear_error() -> None:
    frames, table = frame_features()
    two = table.with_columns(pl.col("fold") % 2)
    labeled = labeled_sequences(two.drop("fold"), two.select("sequence_id", "fold"))
    with pytest.raises(ValueError, match=r"cv\.n_splits=2"):
        prepare_fold(frames, labeled, 0, CHANNELS, PARAMS)


def test_labeled_sequences_names_missing_labels() -> None:
    _, table = frame_features()
    ghost = pl.DataFrame(
        {"sequence_id": ["GHOST"], "fold": [0]}, schema={"sequence_id": pl.Utf8, "fold": pl.Int32}
    )
    folds = pl.concat([table.select("sequence_id", "fold"), ghost])
    with pytest.raises(ValueError, match="GHOST"):
        labeled_sequences(table.drop("fold"), folds)


def training_data(table: pl.DataFrame, frames: pl.DataFrame) -> TorchTrainingData:
    labeled = labeled_sequences(table.drop("fold"), table.select("sequence_id", "fold"))
    return TorchTrainingData(frames, labeled, list(CHANNELS))


def test_run_fold_skips_a_finished_fold(tmp_path: Path, caplog) -> None:
    frames, table = frame_features()
    data = training_data(table, frames)
    params = Params(torch=replace(PARAMS, epochs=1))
    store = store_at(tmp_path)
    first = run_torch_fold(data, 0, params, CPU_RUNTIME, store)
    done = store.unit_dir("fold_0") / ckpt.DONE_NAME
    assert done.exists() and not done.with_name(ckpt.LAST_NAME).exists()
    torch.load(done, weights_only=True)
    with caplog.at_level(logging.INFO):
        again = run_torch_fold(data, 0, params, CPU_RUNTIME, store, on_batch=crash_at(0, 1, 0))
    assert "finished earlier" in caplog.text
    [member] = again.members
    assert member.member is not None and member.member.name == "fold_0"
    assert_same_result(first.primary, again.primary)
    assert again.scaler.to_json() == first.scaler.to_json() and again.pad_len == first.pad_len


def test_scored_fold_labels_do_not_reach_its_model(tmp_path: Path) -> None:
    """Honest selection: fold k's labels choose nothing for fold k, so shuffling them leaves
    fold k's saved weights byte-identical; shuffling a training fold's labels does not."""
    from cmi.nn.model import save_state_dict

    frames, table = frame_features(n_seq=36, seed=3)
    params = Params(torch=replace(PARAMS, epochs=3))
    fold, inner = 0, 1

    def fold_weights(shuffled_fold: int | None, name: str) -> bytes:
        values = table["label"].to_numpy().copy()
        if shuffled_fold is not None:
            rows = (table["fold"] == shuffled_fold).to_numpy()
            # Shuffled, then shifted so that every label of the fold really changes.
            values[rows] = (np.random.default_rng(7).permutation(values[rows]) + 5) % 18
        labels = table.with_columns(pl.Series("label", values, dtype=pl.Int32))
        result = run_torch_fold(training_data(labels, frames), fold, params, CPU_RUNTIME).primary
        assert result.inner_fold == inner
        return save_state_dict(result.best_state, tmp_path / f"{name}.pt").read_bytes()

    reference = fold_weights(None, "reference")
    assert fold_weights(fold, "scored_shuffled") == reference
    assert fold_weights(2, "training_shuffled") != reference


# ----------------------------------------------------------------------------- DDP (CPU, gloo)
def _ddp_worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    try:
        dist = Distributed(rank, world_size, rank)
        result = train_torch_fold(random_inputs(), arch(), replace(PARAMS, epochs=2), device=CPU,
                                  dist=dist)  # fmt: skip
        if rank == 0:
            torch.save(result.best_state, out)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_on_cpu_give_plain_weights(tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(2, port, str(out)), nprocs=2, join=True)
    state = load_state_dict_file(out)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in state)
    net = TimeSeriesNet(**arch())
    net.load_state_dict(state)
    inputs = random_inputs()
    proba = network_proba(net, inputs.scored.x, inputs.scored.mask)
    assert proba.shape == (10, 18) and np.isfinite(proba).all()


# ----------------------------------------------------------------------------- techniques
EVERY_TECHNIQUE = replace(
    PARAMS,
    mixup_alpha=0.4,
    mixup_same_orientation=True,
    rotate_deg=10.0,
    time_stretch=0.2,
    time_shift=2,
    aux_orientation_weight=0.5,
)


def head_arch() -> dict:
    return architecture_kwargs(
        len(CHANNELS), PARAMS.conv_channels, 8, 8, PARAMS.dropout, n_orientations=4
    )


def test_resume_with_augmentation_and_aux_head_is_bit_identical(tmp_path: Path) -> None:
    inputs = random_inputs()
    x_before = inputs.train.x.copy()
    straight = train_torch_fold(
        inputs, head_arch(), EVERY_TECHNIQUE, device=CPU, store=store_at(tmp_path / "a")
    )
    np.testing.assert_array_equal(inputs.train.x, x_before)  # batches are augmented copies
    store = store_at(tmp_path / "b")
    with pytest.raises(Crash):
        train_torch_fold(inputs, head_arch(), EVERY_TECHNIQUE, device=CPU, store=store,
                         on_batch=crash_at(0, 3, 1))  # fmt: skip
    torch.manual_seed(99)
    np.random.seed(3)
    resumed = train_torch_fold(inputs, head_arch(), EVERY_TECHNIQUE, device=CPU, store=store)
    assert resumed.resumed_from == 2
    assert_same_result(straight, resumed)
    for view in ("full", "imu_only"):
        orientation = straight.predictions[view].orientation
        assert orientation is not None and orientation.shape[1] == 4
        np.testing.assert_array_equal(orientation, resumed.predictions[view].orientation)
    # the training really differed from plain training (augmentation and head are wired)
    plain = train_torch_fold(inputs, arch(), PARAMS, device=CPU)
    assert not torch.equal(plain.best_state["lstm_forward.weight_ih_l0"],
                           straight.best_state["lstm_forward.weight_ih_l0"])  # fmt: skip


def test_each_augmentation_changes_training() -> None:
    inputs = random_inputs()
    short = replace(PARAMS, epochs=1)
    reference = train_torch_fold(inputs, arch(), short, device=CPU).best_state
    for change in ({"mixup_alpha": 0.4}, {"rotate_deg": 10.0}, {"time_stretch": 0.3},
                   {"time_shift": 2}):  # fmt: skip
        state = train_torch_fold(inputs, arch(), replace(short, **change), device=CPU).best_state
        assert not torch.equal(state["blocks.0.conv.weight"], reference["blocks.0.conv.weight"])


def test_imu_only_model_never_sees_thm_or_tof(tmp_path: Path) -> None:
    """Garbage in every thm/ToF channel leaves the IMU-only members' weights and predictions
    unchanged (the full-input members do see it)."""
    frames, table = frame_features()
    params = Params(torch=replace(PARAMS, epochs=1, imu_only_model=True, seeds=(1, 2)))
    garbage = frames.with_columns(
        (pl.col(c) * 1000 + 77).alias(c) for c in ("thm_1", "tof_1_mean", "tof_1_min")
    )
    fold = run_torch_fold(training_data(table, frames), 0, params, CPU_RUNTIME)
    other = run_torch_fold(training_data(table, garbage), 0, params, CPU_RUNTIME)
    names = [m.member.name for m in fold.members]
    assert names == ["fold_0", "fold_0_seed_2", "fold_0_imu", "fold_0_imu_seed_2"]
    for a, b in zip(fold.members, other.members, strict=True):
        same = all(torch.equal(a.best_state[k], b.best_state[k]) for k in a.best_state)
        assert same == (a.member.kind == "imu"), a.member.name
        if a.member.kind == "imu":
            assert a.best_state["blocks.0.conv.weight"].shape[1] == 3  # acc_x..z only
            assert list(a.scaler.channels) == ["acc_x", "acc_y", "acc_z"]
    imu = [m.predictions["imu_only"].proba for m in fold.of_kind("imu")]
    np.testing.assert_allclose(fold.predictions["imu_only"].proba, np.mean(imu, axis=0))
    np.testing.assert_array_equal(
        fold.predictions["imu_only"].proba, other.predictions["imu_only"].proba
    )
    full = [m.predictions["full"].proba for m in fold.of_kind("full")]
    np.testing.assert_allclose(fold.predictions["full"].proba, np.mean(full, axis=0))


def test_seeds_list_of_the_seed_equals_the_single_model() -> None:
    frames, table = frame_features()
    data = training_data(table, frames)
    single = run_torch_fold(data, 1, Params(torch=replace(PARAMS, epochs=1)), CPU_RUNTIME)
    listed = run_torch_fold(
        data, 1, Params(torch=replace(PARAMS, epochs=1, seeds=(PARAMS.seed,))), CPU_RUNTIME
    )
    assert_same_result(single.primary, listed.primary)
    other = run_torch_fold(
        data, 1, Params(torch=replace(PARAMS, epochs=1, seeds=(PARAMS.seed, 5))), CPU_RUNTIME
    )
    assert_same_result(single.primary, other.primary)  # the first seed's member is the same
    assert not np.array_equal(other.predictions["full"].proba, single.predictions["full"].proba)


def test_orientation_head_learns_from_its_loss() -> None:
    inputs = random_inputs()
    params = replace(PARAMS, aux_orientation_weight=1.0)
    steps = steps_per_epoch(len(inputs.train), params.batch_size)
    init = new_run(head_arch(), params, 0, steps, CPU).model.state_dict()
    result = train_torch_fold(inputs, head_arch(), params, device=CPU)
    assert not torch.equal(result.best_state["orientation_head.1.weight"],
                           init["orientation_head.1.weight"])  # fmt: skip
    orientation = result.predictions["imu_only"].orientation
    np.testing.assert_allclose(orientation.sum(axis=1), 1.0)


def test_orientation_target_missing_is_a_clear_error() -> None:
    frames, table = frame_features()  # a sequences table without orientation
    labeled = labeled_sequences(table.drop("fold"), table.select("sequence_id", "fold"))
    for change in ({"aux_orientation_weight": 0.3},
                   {"mixup_alpha": 0.4, "mixup_same_orientation": True}):  # fmt: skip
        with pytest.raises(ValueError, match="no column orientation"):
            prepare_fold(frames, labeled, 0, CHANNELS, replace(PARAMS, **change))
    known = table.with_columns(
        pl.Series("orientation", ["Lie on Back"] * (table.height - 1) + ["Upside down"])
    )
    labeled = labeled_sequences(known.drop("fold"), known.select("sequence_id", "fold"))
    assert labeled["orientation"].to_list()[:2] == [2, 2] and labeled["orientation"][-1] == -1
    with pytest.raises(ValueError, match="SEQ_0023"):  # fold 23 % 3 = 2: a training fold of 0
        prepare_fold(frames, labeled, 0, CHANNELS, replace(PARAMS, aux_orientation_weight=0.3))
