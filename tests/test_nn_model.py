"""TimeSeriesNet masking, shapes, safe weight loading; Scaler and to_padded."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import polars as pl
import pytest
import torch
from torch import nn

from cmi.nn.data import FILL_VALUE, Scaler, modality_indices, pad_length, to_padded
from cmi.nn.model import (
    LOG_LENGTH_CENTER,
    TimeSeriesNet,
    architecture_kwargs,
    left_aligned,
    load_state_dict_file,
    masked_max_pool,
    plain_state_dict,
    pooled_mask,
    reversed_real_steps,
    strip_prefixes,
)
from cmi.nn.predict import network_proba

CHANNELS = ["acc_x", "acc_y", "rot_w", "thm_1", "tof_1_mean"]
PAD_LEN = 64


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: fast and steady on a small, busy machine (no OpenMP spinning)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_net(n_channels: int = len(CHANNELS)) -> TimeSeriesNet:
    torch.manual_seed(0)
    return TimeSeriesNet(n_channels, conv_channels=(8, 12), lstm_hidden=6, gru_hidden=5).eval()


def end_mask(lengths: list[int], pad_len: int) -> torch.Tensor:
    mask = torch.zeros(len(lengths), pad_len, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, pad_len - min(n, pad_len) :] = True
    return mask


LENGTHS = [1, 3, 5, 37, 50, PAD_LEN]


@pytest.mark.parametrize("keep_end", [True, False])
def test_padded_steps_get_zero_attention_and_do_not_change_output(keep_end: bool) -> None:
    net = tiny_net()
    mask = end_mask(LENGTHS, PAD_LEN)
    if not keep_end:
        mask = mask.flip(1)
    x = torch.randn(len(LENGTHS), PAD_LEN, len(CHANNELS))
    logits, weights, small_mask = net.forward_with_attention(x, mask)
    assert logits.shape == (len(LENGTHS), 18)
    assert weights.shape == small_mask.shape == (len(LENGTHS), PAD_LEN // 4)
    assert torch.all(weights[~small_mask] == 0.0)
    assert torch.allclose(weights.sum(dim=1), torch.ones(len(LENGTHS)))

    noisy = x.clone()
    noisy[~mask] = torch.randn(int((~mask).sum()), len(CHANNELS)) * 1e3
    noisy[0, ~mask[0]] = float("nan")
    with torch.no_grad():
        assert torch.equal(net(x, mask), net(noisy, mask))


@pytest.mark.parametrize("pad_len", [1, 3, 5, 37, 50, 127])
def test_odd_lengths_keep_features_and_mask_aligned(pad_len: int) -> None:
    net = tiny_net()
    lengths = sorted({1, max(1, pad_len // 2), pad_len})
    mask = end_mask(lengths, pad_len)
    x = torch.randn(len(lengths), pad_len, len(CHANNELS))
    logits, weights, small_mask = net.forward_with_attention(x, mask)
    expected = pad_len
    for _ in range(2):
        expected = -(-expected // 2)
    assert weights.shape == (len(lengths), expected)
    # the pooled mask is left-aligned: real steps first, whatever the padding was
    assert torch.equal(small_mask, pooled_mask(mask.flip(1), 2))
    assert torch.all(weights[~small_mask] == 0.0)
    assert torch.isfinite(logits).all()


def test_masked_max_pool_ignores_padded_steps() -> None:
    x = torch.tensor([[[5.0, -1.0, -2.0, 7.0, -3.0]]])
    mask = torch.tensor([[False, True, True, False, True]])
    pooled, pmask = masked_max_pool(x, mask)
    assert pmask.tolist() == [[True, True, True]]
    assert pooled.tolist() == [[[-1.0, -2.0, -3.0]]]
    _, empty = masked_max_pool(x, torch.zeros_like(mask))
    assert not empty.any()


def test_all_padded_row_gives_finite_output_and_gradients() -> None:
    net = tiny_net().train()
    mask = end_mask([0, 4], 8)
    x = torch.randn(2, 8, len(CHANNELS))
    logits, weights, _ = net.forward_with_attention(x, mask)
    assert torch.all(weights[0] == 0)
    logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_network_proba_rows_sum_to_one() -> None:
    net = tiny_net()
    x = np.random.default_rng(0).normal(size=(7, 20, len(CHANNELS))).astype(np.float32)
    mask = end_mask([1, 2, 3, 5, 8, 13, 20], 20).numpy()
    proba = network_proba(net, x, mask, batch_size=3)
    assert proba.shape == (7, 18) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    assert not net.training


def test_prefixed_state_dicts_load_into_plain_net(tmp_path) -> None:
    net = tiny_net()
    wrapped = nn.DataParallel(net)  # on CPU a thin wrapper; its keys start with `module.`
    assert all(k.startswith("module.") for k in wrapped.state_dict())
    compiled_like = {f"_orig_mod.{k}": v for k, v in net.state_dict().items()}
    both = {f"module._orig_mod.{k}": v for k, v in net.state_dict().items()}
    x = torch.randn(2, 16, len(CHANNELS))
    mask = end_mask([9, 16], 16)
    expected = net(x, mask)
    for i, state in enumerate([wrapped.state_dict(), compiled_like, both]):
        path = tmp_path / f"w{i}.pt"
        torch.save(state, path)
        fresh = tiny_net()
        for p in fresh.parameters():
            nn.init.zeros_(p)
        fresh.load_state_dict(load_state_dict_file(path))
        assert torch.equal(fresh.eval()(x, mask), expected)
    assert set(plain_state_dict(wrapped)) == set(net.state_dict())
    assert strip_prefixes({"module.a": 1}) == {"a": 1}


def test_load_state_dict_file_refuses_pickled_objects(tmp_path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "obj": Fraction(1, 3)}, path)
    with pytest.raises(Exception):  # noqa: B017 - weights_only refuses arbitrary classes
        load_state_dict_file(path)


# ----------------------------------------------------------------------------- data
def frame(lengths: dict[str, int], imu_only: set[str] = frozenset()) -> pl.DataFrame:
    rows = []
    for sid, n in lengths.items():
        for t in range(n):
            modality = None if sid in imu_only else float(t) + 0.5
            rows.append((sid, t, float(t), 2.0 * t, 1.0, modality, modality))
    return pl.DataFrame(
        rows,
        schema={
            "sequence_id": pl.Utf8,
            "sequence_counter": pl.Int32,
            **{c: pl.Float32 for c in CHANNELS},
        },
        orient="row",
    )


def test_scaler_ignores_nulls_and_roundtrips_json() -> None:
    data = frame({"A": 4, "B": 3}, imu_only={"B"})
    scaler = Scaler.fit(data, CHANNELS)
    assert scaler.mean[0] == pytest.approx(np.mean([0, 1, 2, 3, 0, 1, 2]))
    assert scaler.mean[3] == pytest.approx(np.mean([0.5, 1.5, 2.5, 3.5]))  # nulls ignored
    assert scaler.std[2] == 1.0  # constant channel
    again = Scaler.from_json(json.loads(json.dumps(scaler.to_json())))
    assert again.channels == scaler.channels
    np.testing.assert_array_equal(again.mean, scaler.mean)
    np.testing.assert_array_equal(again.std, scaler.std)
    with pytest.raises(ValueError, match="channels"):
        Scaler.from_json({"channels": ["a"], "mean": [0.0, 1.0], "std": [1.0]})


def test_to_padded_keep_end_and_start() -> None:
    data = frame({"B": 3, "A": 6}, imu_only={"B"})
    scaler = Scaler(tuple(CHANNELS), np.zeros(len(CHANNELS)), np.ones(len(CHANNELS)))
    x, mask, ids = to_padded(data, CHANNELS, scaler, pad_len=4, keep="end")
    assert ids == ["A", "B"]
    assert x.shape == (2, 4, len(CHANNELS)) and x.dtype == np.float32
    assert mask.tolist() == [[True] * 4, [False, True, True, True]]
    assert x[0, :, 0].tolist() == [2.0, 3.0, 4.0, 5.0]  # the last 4 of 6 frames
    assert x[1, 1:, 0].tolist() == [0.0, 1.0, 2.0]
    assert np.all(x[1, :, modality_indices(CHANNELS)] == FILL_VALUE)  # IMU-only fill
    assert np.all(x[1, 0] == FILL_VALUE)

    x, mask, _ = to_padded(data, CHANNELS, scaler, pad_len=4, keep="start")
    assert mask.tolist() == [[True] * 4, [True, True, True, False]]
    assert x[0, :, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="keep"):
        to_padded(data, CHANNELS, scaler, pad_len=4, keep="middle")


def test_to_padded_standardizes_and_reports_missing_columns() -> None:
    data = frame({"A": 5})
    scaler = Scaler.fit(data, CHANNELS)
    x, _, _ = to_padded(data, CHANNELS, scaler, pad_len=5, keep="end")
    np.testing.assert_allclose(x[0, :, 0].mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(x[0, :, 0].std(), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="tof_1_mean"):
        to_padded(data.drop("tof_1_mean"), CHANNELS, scaler, pad_len=5, keep="end")


def test_pad_length_is_a_rounded_up_percentile() -> None:
    assert pad_length([10, 20, 30, 40, 100], 50) == 30
    assert pad_length([10, 11], 95) == 11
    assert pad_length([1], 95) == 1


def test_saved_state_dict_bytes_depend_only_on_the_tensors(tmp_path) -> None:
    # Regression: torch.save(state, path) names its archive after the (random) temp file, so
    # the same weights hashed differently from run to run.
    from cmi.nn.model import load_state_dict_file, save_state_dict

    state = TimeSeriesNet(
        n_channels=4, conv_channels=(8, 8), lstm_hidden=4, gru_hidden=4
    ).state_dict()
    first, second = tmp_path / "a" / "fold_0.pt", tmp_path / "b" / "other_name.pt"
    save_state_dict(state, first)
    save_state_dict(state, second)
    assert first.read_bytes() == second.read_bytes()
    loaded = load_state_dict_file(first)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def one_sequence_padded(x: torch.Tensor, before: int, after: int) -> tuple[torch.Tensor, ...]:
    """x (T, C) with ``before`` / ``after`` padded steps of garbage around it, and its mask."""
    n, channels = x.shape
    padded = torch.randn(before + n + after, channels) * 100
    padded[before : before + n] = x
    mask = torch.zeros(before + n + after, dtype=torch.bool)
    mask[before : before + n] = True
    return padded, mask


@pytest.mark.parametrize("with_head", [False, True])
def test_output_depends_on_the_real_steps_only_not_on_padding(with_head: bool) -> None:
    """A sequence alone at its own length, front-padded, back-padded, padded on both sides,
    or in a batch with a longer sequence: the same logits. Before, the forward LSTM and the
    GRU ran over front padding and the pool windows shifted with the padding's parity.
    (The variant with the orientation head also has the length input.)"""
    torch.manual_seed(1)
    head = {"n_orientations": 4, "length_input": True} if with_head else {}
    net = TimeSeriesNet(len(CHANNELS), conv_channels=(8, 12), lstm_hidden=6, gru_hidden=5,
                        **head).eval()  # fmt: skip

    def outputs(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return net.forward_heads(x, mask) if with_head else (net(x, mask),)

    for seq in [torch.randn(n, len(CHANNELS)) for n in (1, 2, 5, 23, 37, 50)]:
        expected = outputs(seq[None], torch.ones(1, len(seq), dtype=torch.bool))
        for before, after in ((PAD_LEN - len(seq), 0), (0, 13), (3, 0), (7, 6), (1, 2)):
            x, mask = one_sequence_padded(seq, before, after)
            for got, want in zip(outputs(x[None], mask[None]), expected, strict=True):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        # beside a longer row in one batch, front-padded like the torch stage pads
        x, mask = one_sequence_padded(seq, PAD_LEN - len(seq), 0)
        x = torch.stack([x, torch.randn(PAD_LEN, len(CHANNELS))])
        mask = torch.stack([mask, torch.ones(PAD_LEN, dtype=torch.bool)])
        for got, want in zip(outputs(x, mask), expected, strict=True):
            torch.testing.assert_close(got[:1], want, rtol=1e-5, atol=1e-6)


def test_left_aligned_moves_real_steps_first_and_cuts_after_the_longest() -> None:
    x = torch.arange(2 * 6, dtype=torch.float32).reshape(2, 6, 1)
    mask = torch.tensor([[False, False, False, True, True, False],
                         [False, True, True, True, False, False]])  # fmt: skip
    moved, aligned = left_aligned(x, mask)
    assert aligned.tolist() == [[True, True, False], [True, True, True]]
    assert moved[0, :2, 0].tolist() == [3.0, 4.0]
    assert moved[1, :, 0].tolist() == [7.0, 8.0, 9.0]
    h = torch.randn(2, 5, 3)
    lengths = torch.tensor([3, 0])
    flipped = reversed_real_steps(h, lengths)
    assert torch.equal(flipped[0, :3], h[0, :3].flip(0))
    assert torch.equal(flipped[0, 3:], h[0, 3:]) and torch.equal(flipped[1], h[1])
    assert torch.equal(reversed_real_steps(flipped, lengths), h)


def test_length_input_gives_the_heads_the_number_of_real_steps() -> None:
    torch.manual_seed(2)
    net = TimeSeriesNet(len(CHANNELS), conv_channels=(8, 12), lstm_hidden=6, gru_hidden=5,
                        length_input=True).eval()  # fmt: skip
    assert net.head[1].in_features == 5 + 1
    x = torch.randn(1, 40, len(CHANNELS))
    mask = torch.ones(1, 40, dtype=torch.bool)
    with torch.no_grad():
        pooled, _, _ = net._pooled(x, mask)
    assert pooled.shape == (1, 6)
    assert float(pooled[0, -1]) == pytest.approx(np.log(40) - LOG_LENGTH_CENTER, abs=1e-6)
    padded = torch.cat([torch.zeros(1, 24, len(CHANNELS)), x], dim=1)
    pad_mask = torch.cat([torch.zeros(1, 24, dtype=torch.bool), mask], dim=1)
    with torch.no_grad():
        assert float(net._pooled(padded, pad_mask)[0][0, -1]) == float(pooled[0, -1])
    kwargs = architecture_kwargs(len(CHANNELS), (8, 12), 6, 5, 0.1, length_input=True)
    assert kwargs["length_input"] is True
    assert "length_input" not in architecture_kwargs(len(CHANNELS), (8, 12), 6, 5, 0.1)
    assert TimeSeriesNet(**kwargs).head[1].in_features == 6
