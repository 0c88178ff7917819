"""A fold's members (cmi.nn.members): names, seeds, the IMU-only model's inputs, the
orientation head, and averaging."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from cmi.nn.data import Scaler
from cmi.nn.fold_data import FoldInputs, PaddedPart
from cmi.nn.members import (
    Member,
    fold_members,
    imu_channels,
    member_inputs,
    member_seeds,
    network_architecture,
)
from cmi.nn.model import TimeSeriesNet
from cmi.nn.predict import network_outputs, network_proba
from cmi.nn.views import ViewPredictions, average_predictions, predict_views
from cmi.params import TorchParams

CHANNELS = ("acc_x", "acc_y", "acc_z", "rot_w", "thm_1", "tof_1_mean", "acc_mag")


def test_member_names_keep_the_single_model_name() -> None:
    assert Member(3, 42).name == "fold_3" and Member(3, 42).label == "fold 3"
    assert Member(3, 7, index=1).name == "fold_3_seed_7"
    assert Member(3, 42, kind="imu").name == "fold_3_imu"
    assert Member(3, 7, index=1, kind="imu").name == "fold_3_imu_seed_7"
    assert Member(3, 7, index=1).label == "fold 3 (fold_3_seed_7)"
    assert Member(0, 1).selected_by == "inner_test_like"
    assert Member(0, 1, kind="imu").selected_by == "inner_imu_only"


def test_seeds_fall_back_to_seed() -> None:
    assert member_seeds(TorchParams(seed=5)) == (5,)
    assert member_seeds(TorchParams(seed=5, seeds=(1, 2, 3))) == (1, 2, 3)
    with pytest.raises(ValueError, match="repeats"):
        member_seeds(TorchParams(seeds=(1, 1)))
    assert [m.name for m in fold_members(2, TorchParams(seed=9))] == ["fold_2"]
    both = fold_members(2, TorchParams(seeds=(1, 2), imu_only_model=True))
    assert [m.name for m in both] == ["fold_2", "fold_2_seed_2", "fold_2_imu", "fold_2_imu_seed_2"]


def part(n: int, rng: np.random.Generator, prefix: str) -> PaddedPart:
    x = rng.normal(size=(n, 9, len(CHANNELS))).astype(np.float32)
    groups = np.array(["full", "imu_only"] * (n // 2))
    ids = [f"{prefix}{i}" for i in range(n)]
    return PaddedPart(ids, x, np.ones((n, 9), bool), rng.integers(0, 18, n), groups)


def fold_inputs() -> FoldInputs:
    rng = np.random.default_rng(0)
    scaler = Scaler(CHANNELS, np.arange(7.0), np.arange(1.0, 8.0))
    return FoldInputs(0, 1, part(8, rng, "T"), part(4, rng, "I"), part(4, rng, "S"),
                      np.array([4, 5]), scaler, 9)  # fmt: skip


def test_imu_member_inputs_hold_no_thm_or_tof_channel() -> None:
    inputs = fold_inputs()
    assert member_inputs(inputs, "full") is inputs
    imu = member_inputs(inputs, "imu")
    kept = ["acc_x", "acc_y", "acc_z", "rot_w", "acc_mag"]
    assert list(imu.scaler.channels) == kept == imu_channels(CHANNELS)
    assert imu.modality_idx.size == 0
    for name in ("train", "inner", "scored"):
        full_part, imu_part = getattr(inputs, name), getattr(imu, name)
        assert imu_part.x.shape[2] == len(kept)
        np.testing.assert_array_equal(imu_part.x, full_part.x[:, :, [0, 1, 2, 3, 6]])
    np.testing.assert_array_equal(imu.scaler.mean, [0, 1, 2, 3, 6])
    with pytest.raises(ValueError, match="IMU channel"):
        imu_channels(["thm_1", "tof_2_min"])


def test_orientation_head_leaves_the_gesture_net_unchanged() -> None:
    params = TorchParams(conv_channels=(4, 4), lstm_hidden=4, gru_hidden=4)
    plain_arch = network_architecture(5, params)
    head_arch = network_architecture(5, replace(params, aux_orientation_weight=0.5))
    assert "n_orientations" not in plain_arch and head_arch["n_orientations"] == 4
    torch.manual_seed(0)
    plain = TimeSeriesNet(**plain_arch).eval()
    torch.manual_seed(0)
    headed = TimeSeriesNet(**head_arch).eval()
    shared = plain.state_dict()
    assert set(headed.state_dict()) - set(shared) == {
        "orientation_head.1.weight",
        "orientation_head.1.bias",
    }
    for key, value in shared.items():  # the same seeded initial weights
        assert torch.equal(headed.state_dict()[key], value), key
    x = np.random.default_rng(0).normal(size=(3, 10, 5)).astype(np.float32)
    mask = np.ones((3, 10), dtype=bool)
    mask[0, :4] = False
    proba, orientation = network_outputs(headed, x, mask)
    assert orientation is not None and orientation.shape == (3, 4)
    np.testing.assert_allclose(orientation.sum(axis=1), 1.0)
    np.testing.assert_array_equal(proba, network_proba(plain, x, mask))
    assert network_outputs(plain, x, mask)[1] is None
    with pytest.raises(ValueError, match="no orientation head"):
        plain.forward_heads(torch.from_numpy(x), torch.from_numpy(mask))
    views = predict_views(headed, fold_inputs_part(), np.array([3, 4]))
    assert all(v.orientation is not None for v in views.values())


def fold_inputs_part() -> PaddedPart:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 10, 5)).astype(np.float32)
    groups = np.array(["full", "imu_only", "full", "full"])
    return PaddedPart(list("ABCD"), x, np.ones((4, 10), bool), np.arange(4), groups)


def test_average_predictions() -> None:
    a = ViewPredictions(["x", "y"], np.array([[0.2, 0.8], [1.0, 0.0]]), np.ones((2, 4)) / 4)
    b = ViewPredictions(["x", "y"], np.array([[0.6, 0.4], [0.0, 1.0]]), np.eye(4)[:2])
    assert average_predictions([a]) is a
    mean = average_predictions([a, b])
    np.testing.assert_allclose(mean.proba, [[0.4, 0.6], [0.5, 0.5]])
    np.testing.assert_allclose(mean.orientation, (np.ones((2, 4)) / 4 + np.eye(4)[:2]) / 2)
    with pytest.raises(ValueError, match="different sequences"):
        average_predictions([a, ViewPredictions(["y", "x"], a.proba)])
