"""Per-fold training on random tensors: resume is bit-identical, bad checkpoints are not used."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from cmi.nn import checkpoint as ckpt
from cmi.nn.data import Scaler
from cmi.nn.model import TimeSeriesNet, architecture_kwargs, load_state_dict_file
from cmi.nn.predict import predict_proba
from cmi.nn.train import (
    FoldInputs,
    apply_modality_dropout,
    derive_seed,
    epoch_batches,
    labeled_sequences,
    prepare_fold,
    run_fold,
    steps_per_epoch,
    train_fold,
)
from cmi.params import TorchParams

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


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: fast and steady on a small, busy machine (no OpenMP spinning)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_inputs(fold: int = 0, n_train: int = 30, n_val: int = 10, t: int = 13) -> FoldInputs:
    rng = np.random.default_rng(fold)

    def part(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        y = rng.integers(0, 18, size=n)
        x = rng.normal(size=(n, t, len(CHANNELS))).astype(np.float32)
        x[:, :, 0] += y[:, None] / 6.0  # something to learn
        lengths = rng.integers(1, t + 1, size=n)
        mask = np.arange(t)[None, :] >= (t - lengths)[:, None]
        x[~mask] = 0.0
        return x, mask, y.astype(np.int64)

    x_tr, m_tr, y_tr = part(n_train)
    x_va, m_va, y_va = part(n_val)
    scaler = Scaler(tuple(CHANNELS), np.zeros(len(CHANNELS)), np.ones(len(CHANNELS)))
    return FoldInputs(
        fold, x_tr, m_tr, y_tr, x_va, m_va, y_va, [f"S{i:03d}" for i in range(n_val)],
        np.array([3, 4, 5]), scaler, t,
    )  # fmt: skip


def arch() -> dict:
    return architecture_kwargs(len(CHANNELS), PARAMS.conv_channels, 8, 8, PARAMS.dropout)


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
    np.testing.assert_array_equal(a.val_proba, b.val_proba)
    assert a.best_state.keys() == b.best_state.keys()
    for key in a.best_state:
        assert torch.equal(a.best_state[key], b.best_state[key]), key


def test_training_writes_weights_only_checkpoints(tmp_path: Path) -> None:
    inputs = random_inputs()
    result = train_fold(
        inputs, arch(), PARAMS, device=CPU, checkpoint_dir=tmp_path, fingerprint="fp"
    )
    assert 1 <= result.best_epoch <= PARAMS.epochs
    assert [row[0] for row in result.curves] == [1, 2, 3]
    assert result.val_proba.shape == (10, 18)
    payload = torch.load(tmp_path / ckpt.LAST_NAME, weights_only=True)
    assert payload["version"] == ckpt.CHECKPOINT_VERSION and payload["epoch"] == 3
    for key in ("model", "optimizer", "scheduler", "grad_scaler", "best_state", "rng", "curves"):
        assert key in payload
    net = TimeSeriesNet(**arch())
    net.load_state_dict(result.best_state)
    proba = predict_proba(net, inputs.x_val, inputs.mask_val)
    np.testing.assert_allclose(proba, result.val_proba, atol=1e-12)


def test_resume_after_crash_is_bit_identical(tmp_path: Path, caplog) -> None:
    inputs = random_inputs()
    straight = train_fold(
        inputs, arch(), PARAMS, device=CPU, checkpoint_dir=tmp_path / "a", fingerprint="fp"
    )
    with pytest.raises(Crash):
        train_fold(
            inputs, arch(), PARAMS, device=CPU, checkpoint_dir=tmp_path / "b",
            fingerprint="fp", on_batch=crash_at(0, 3, 1),
        )  # fmt: skip
    assert torch.load(tmp_path / "b" / ckpt.LAST_NAME, weights_only=True)["epoch"] == 2
    torch.manual_seed(1234)  # a resumed process starts from other global RNG states
    np.random.seed(99)
    with caplog.at_level(logging.INFO, logger="cmi.nn.train"):
        resumed = train_fold(
            inputs, arch(), PARAMS, device=CPU, checkpoint_dir=tmp_path / "b", fingerprint="fp"
        )
    assert "fold 0: resuming from epoch 3" in caplog.text
    assert resumed.resumed_from == 2
    assert_same_result(straight, resumed)


def test_truncated_checkpoint_is_reported_and_fold_restarts(tmp_path: Path, caplog) -> None:
    inputs = random_inputs()
    fresh = train_fold(inputs, arch(), PARAMS, device=CPU, checkpoint_dir=tmp_path / "a",
                       fingerprint="fp")  # fmt: skip
    last = tmp_path / "b" / ckpt.LAST_NAME
    last.parent.mkdir()
    data = (tmp_path / "a" / ckpt.LAST_NAME).read_bytes()
    last.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.INFO):
        again = train_fold(
            inputs, arch(), PARAMS, device=CPU, checkpoint_dir=last.parent, fingerprint="fp"
        )
    assert "is unreadable" in caplog.text and "restarting the fold" in caplog.text
    assert "resuming" not in caplog.text
    assert again.resumed_from == 0
    assert_same_result(fresh, again)


def test_checkpoint_of_another_fingerprint_is_ignored(tmp_path: Path, caplog) -> None:
    inputs = random_inputs()
    short = replace(PARAMS, epochs=1)
    train_fold(inputs, arch(), short, device=CPU, checkpoint_dir=tmp_path, fingerprint="old")
    with caplog.at_level(logging.INFO):
        result = train_fold(
            inputs, arch(), short, device=CPU, checkpoint_dir=tmp_path, fingerprint="new"
        )
    assert "ignoring checkpoint" in caplog.text and "resuming" not in caplog.text
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
    train_ids = table.filter(pl.col("fold") != 1)["sequence_id"]
    train_frames = frames.filter(pl.col("sequence_id").is_in(train_ids.implode()))
    assert inputs.scaler.mean[0] == pytest.approx(train_frames["acc_x"].mean(), rel=1e-6)
    lengths = train_frames.group_by("sequence_id").len()["len"].to_numpy()
    assert inputs.pad_len == int(np.ceil(np.percentile(lengths, 95)))
    assert len(inputs.val_ids) == 8 and inputs.x_train.shape == (16, inputs.pad_len, 6)
    assert np.isfinite(inputs.x_train).all()


def test_labeled_sequences_names_missing_labels() -> None:
    _, table = frame_features()
    ghost = pl.DataFrame(
        {"sequence_id": ["GHOST"], "fold": [0]}, schema={"sequence_id": pl.Utf8, "fold": pl.Int32}
    )
    folds = pl.concat([table.select("sequence_id", "fold"), ghost])
    with pytest.raises(ValueError, match="GHOST"):
        labeled_sequences(table.drop("fold"), folds)


def test_run_fold_skips_a_finished_fold(tmp_path: Path, caplog) -> None:
    frames, table = frame_features()
    labeled = labeled_sequences(table.drop("fold"), table.select("sequence_id", "fold"))
    short = replace(PARAMS, epochs=1)
    kwargs = dict(device=CPU, checkpoint_root=tmp_path, fingerprint="fp")
    first = run_fold(frames, labeled, 0, CHANNELS, short, **kwargs)
    done = ckpt.fold_dir(tmp_path, "fp", 0) / ckpt.DONE_NAME
    assert done.exists() and not done.with_name(ckpt.LAST_NAME).exists()
    torch.load(done, weights_only=True)
    with caplog.at_level(logging.INFO):
        again = run_fold(frames, labeled, 0, CHANNELS, short, **kwargs, on_batch=crash_at(0, 1, 0))
    assert "finished earlier" in caplog.text
    assert_same_result(first, again)
    assert again.scaler.to_json() == first.scaler.to_json() and again.pad_len == first.pad_len


# ----------------------------------------------------------------------------- DDP (CPU, gloo)
def _ddp_worker(rank: int, world_size: int, port: int, out: str) -> None:
    from cmi.nn.train import Distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    try:
        dist = Distributed(rank, world_size, rank)
        result = train_fold(random_inputs(), arch(), replace(PARAMS, epochs=2), device=CPU,
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
    proba = predict_proba(net, inputs.x_val, inputs.mask_val)
    assert proba.shape == (10, 18) and np.isfinite(proba).all()
