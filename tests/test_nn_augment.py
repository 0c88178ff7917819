"""Training augmentation (cmi.nn.augment): rotation of the IMU frame against features of
rotated raw data, time warp, mixup, and the batch loss with mixed targets."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import polars as pl
import pytest
import torch

from cmi import rotation
from cmi.features import compute_features, frame_channels
from cmi.nn.augment import (
    Augmenter,
    build_augmenter,
    check_augment_params,
    imu_layout,
    mix_frames,
    mixup_partners,
    random_rotations,
    rotate_frames,
    rotation_matrices,
    soft_targets,
    warp_time,
)
from cmi.nn.batches import mixed_cross_entropy
from cmi.nn.data import FILL_VALUE, Scaler, to_padded
from cmi.params import ExtractParams, TorchParams

EXTRACT = ExtractParams()
CHANNELS = frame_channels(EXTRACT)
ACC = [CHANNELS.index(c) for c in ("acc_x", "acc_y", "acc_z")]
QUAT = [CHANNELS.index(c) for c in ("rot_w", "rot_x", "rot_y", "rot_z")]
ACC_MAG = CHANNELS.index("acc_mag")


def raw_sequences(n_seq: int = 4, seed: int = 0) -> pl.DataFrame:
    """Smoothly turning devices: quaternion trajectories and acc = gravity + motion."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n_seq):
        n = int(rng.integers(15, 40))
        start = random_rotations(1, 180.0, rng)
        steps = rotation.from_rotation_vector(rng.normal(scale=0.08, size=(n, 3)))
        quat = [start[0]]
        for step in steps[1:]:
            quat.append(rotation.multiply(quat[-1], step))
        quat = np.array(quat) * np.where(rng.random((n, 1)) < 0.3, -1.0, 1.0)  # either sign
        acc = rotation.gravity_in_device_frame(quat) + rng.normal(scale=0.5, size=(n, 3))
        frames.append(
            pl.DataFrame(
                {
                    "sequence_id": [f"SEQ_{i:03d}"] * n,
                    "sequence_counter": np.arange(n),
                    "subject": [f"S{i}"] * n,
                    **{c: acc[:, k] for k, c in enumerate(("acc_x", "acc_y", "acc_z"))},
                    **{c: quat[:, k] for k, c in enumerate(("rot_w", "rot_x", "rot_y", "rot_z"))},
                }
            )
        )
    return pl.concat(frames)


def turned(raw: pl.DataFrame, quats: dict[str, np.ndarray]) -> pl.DataFrame:
    """The raw rows as a device turned by quats[sequence_id] would have recorded them."""
    parts = []
    for (sid,), part in raw.group_by(["sequence_id"], maintain_order=True):
        r = quats[sid]
        acc = rotation.rotate(r, part.select("acc_x", "acc_y", "acc_z").to_numpy())
        quat = rotation.multiply(
            part.select("rot_w", "rot_x", "rot_y", "rot_z").to_numpy(), rotation.conjugate(r)
        )
        parts.append(
            part.with_columns(
                *(pl.Series(c, acc[:, k]) for k, c in enumerate(("acc_x", "acc_y", "acc_z"))),
                *(
                    pl.Series(c, quat[:, k])
                    for k, c in enumerate(("rot_w", "rot_x", "rot_y", "rot_z"))
                ),
            )
        )
    return pl.concat(parts)


def padded(frames: pl.DataFrame, scaler: Scaler, pad_len: int = 48):
    return to_padded(frames, CHANNELS, scaler, pad_len, "end")


def test_rotation_equals_features_of_rotated_raw_data() -> None:
    """Rotating the frame-channel matrix gives what extract computes from rotated raw acc and
    quaternions: acc, linear acc, angular velocity, quaternion, magnitudes, jerk."""
    raw = raw_sequences()
    features = compute_features(raw, None, EXTRACT).frame_features
    scaler = Scaler.fit(features, CHANNELS)
    x, mask, ids = padded(features, scaler)
    quats = random_rotations(len(ids), 40.0, np.random.default_rng(5))
    rotated_raw = turned(raw, dict(zip(ids, quats, strict=True)))
    expected, expected_mask, expected_ids = padded(
        compute_features(rotated_raw, None, EXTRACT).frame_features, scaler
    )
    assert expected_ids == ids and np.array_equal(expected_mask, mask)
    out = rotate_frames(x, mask, imu_layout(scaler, check_rotation=True), quats)
    assert not np.allclose(out, x, atol=1e-2)  # it really turned something
    # float32 features of either side: agreement to float32 precision, in standardized units
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-4)


def test_rotation_keeps_unit_quaternions_and_gravity_magnitude() -> None:
    features = compute_features(raw_sequences(6, seed=1), None, EXTRACT).frame_features
    scaler = Scaler.fit(features, CHANNELS)
    x, mask, _ = padded(features, scaler)
    layout = imu_layout(scaler, check_rotation=True)
    quats = random_rotations(len(x), 15.0, np.random.default_rng(2))
    out = rotate_frames(x, mask, layout, quats)

    def raw(a: np.ndarray, idx: list[int]) -> np.ndarray:
        return a[..., idx] * scaler.std[idx] + scaler.mean[idx]

    q = raw(out, QUAT)[mask]
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    assert (q[:, 0] >= -1e-7).all()
    before, after = raw(x, ACC)[mask], raw(out, ACC)[mask]
    np.testing.assert_allclose(np.linalg.norm(after, axis=1), np.linalg.norm(before, axis=1), 1e-5)
    np.testing.assert_array_equal(out[..., ACC_MAG], x[..., ACC_MAG])  # invariant channel
    cos = (before * after).sum(1) / np.linalg.norm(before, axis=1) / np.linalg.norm(after, axis=1)
    assert np.degrees(np.arccos(np.clip(cos, -1, 1))).max() <= 15.0 + 1e-3
    assert (out[~mask] == FILL_VALUE).all()


def test_random_rotations_are_proper_and_bounded() -> None:
    quats = random_rotations(500, 10.0, np.random.default_rng(0))
    angles = np.degrees(np.linalg.norm(rotation.to_rotation_vector(quats), axis=1))
    assert angles.max() <= 10.0 + 1e-9 and angles.min() >= 0 and angles.mean() > 3
    matrices = rotation_matrices(quats)
    identity = np.broadcast_to(np.eye(3), matrices.shape)
    np.testing.assert_allclose(matrices @ matrices.transpose(0, 2, 1), identity, atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(matrices), 1.0, atol=1e-12)
    v = np.random.default_rng(1).normal(size=(500, 3))
    np.testing.assert_allclose(np.einsum("bij,bj->bi", matrices, v), rotation.rotate(quats, v))


def test_unknown_imu_channel_is_an_error_only_for_rotation() -> None:
    scaler = Scaler(("acc_x", "acc_y", "acc_z", "tilt", "thm_1"), np.zeros(5), np.ones(5))
    with pytest.raises(ValueError, match="tilt"):
        imu_layout(scaler, check_rotation=True)
    assert imu_layout(scaler, check_rotation=False).quaternion is None
    with pytest.raises(ValueError, match="partly"):
        imu_layout(Scaler(("acc_x", "acc_y"), np.zeros(2), np.ones(2)), check_rotation=False)


# ----------------------------------------------------------------------------- time warp
def ramp_batch(lengths: list[int], steps: int = 12) -> tuple[np.ndarray, np.ndarray, Scaler]:
    """Rows whose channel 0 counts the real frames 1, 2, ... (end-aligned), channels 1..4 a
    unit quaternion turning about z."""
    channels = ("a", "rot_w", "rot_x", "rot_y", "rot_z")
    x = np.zeros((len(lengths), steps, 5), dtype=np.float32)
    mask = np.zeros((len(lengths), steps), dtype=bool)
    for i, n in enumerate(lengths):
        mask[i, steps - n :] = True
        t = np.arange(1, n + 1)
        x[i, steps - n :, 0] = t
        angle = 0.2 * t
        x[i, steps - n :, 1], x[i, steps - n :, 4] = np.cos(angle / 2), np.sin(angle / 2)
    return x, mask, Scaler(channels, np.zeros(5), np.ones(5))


def test_time_shift_moves_the_frames_and_keeps_one() -> None:
    x, mask, scaler = ramp_batch([5, 12, 3])
    layout = imu_layout(scaler, check_rotation=False)
    out, out_mask = warp_time(x, mask, np.ones(3), np.array([-2, 3, 9]), "end", layout)
    # row 0: 5 frames moved 2 steps earlier, 2 padded steps at the end
    assert out_mask[0].tolist() == [False] * 5 + [True] * 5 + [False] * 2
    np.testing.assert_array_equal(out[0, 5:10, 0], [1, 2, 3, 4, 5])
    # row 1: 12 frames moved 3 later: the last 3 are lost
    assert out_mask[1].tolist() == [False] * 3 + [True] * 9
    np.testing.assert_array_equal(out[1, 3:, 0], np.arange(1, 10))
    # row 2: a shift past the end keeps the first frame
    assert out_mask[2].sum() == 1 and out[2, -1, 0] == 1
    assert (out[~out_mask] == FILL_VALUE).all()


def test_time_stretch_resamples_and_keeps_unit_quaternions() -> None:
    x, mask, scaler = ramp_batch([5, 5, 9])
    layout = imu_layout(scaler, check_rotation=False)
    out, out_mask = warp_time(x, mask, np.array([1.8, 0.6, 1.0]), np.zeros(3, int), "end", layout)
    assert out_mask.sum(axis=1).tolist() == [9, 3, 9]
    np.testing.assert_allclose(out[0, out_mask[0], 0], np.linspace(1, 5, 9), atol=1e-6)
    np.testing.assert_allclose(out[1, out_mask[1], 0], [1, 3, 5], atol=1e-6)
    np.testing.assert_allclose(out[2], x[2], atol=1e-6)  # factor 1: unchanged
    np.testing.assert_allclose(np.linalg.norm(out[..., 1:][out_mask], axis=1), 1.0, atol=1e-6)
    for row in out_mask:  # still one contiguous run of real frames at the end
        assert row[-1] and np.count_nonzero(np.diff(row.astype(int))) <= 1
    start_x, start_mask = x[:, ::-1].copy(), mask[:, ::-1].copy()  # start-aligned rows
    out_s, mask_s = warp_time(start_x, start_mask, np.array([1.8, 1, 1]), np.zeros(3, int),
                              "start", layout)  # fmt: skip
    assert mask_s[0, :9].all() and not mask_s[0, 9:].any()
    np.testing.assert_allclose(out_s[0, :9, 0], np.linspace(5, 1, 9), atol=1e-6)


# ----------------------------------------------------------------------------- mixup
def test_same_orientation_partners_never_cross_orientations() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        groups = rng.integers(0, 4, size=int(rng.integers(1, 40)))
        partner = mixup_partners(groups, rng)
        assert (groups[partner] == groups).all()
        assert sorted(partner) == list(range(len(groups)))  # a permutation
    partner = mixup_partners(np.zeros(64, dtype=int), rng)
    assert sorted(partner) == list(range(64)) and (partner != np.arange(64)).sum() > 50


def test_mixup_targets_sum_to_one_and_loss_matches_them() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 18, 32), rng.integers(0, 18, 32)
    lam = rng.beta(0.4, 0.4, 32)
    targets = soft_targets(a, b, lam, 18)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0)
    assert ((targets >= 0) & (targets <= 1)).all()
    logits = torch.from_numpy(rng.normal(size=(32, 18)))
    loss = mixed_cross_entropy(
        logits, torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(lam), 0.1
    )
    expected = torch.nn.functional.cross_entropy(
        logits, torch.from_numpy(targets), label_smoothing=0.1
    )
    assert torch.isclose(loss, expected)
    same = mixed_cross_entropy(
        logits, torch.from_numpy(a), torch.from_numpy(a), torch.ones(32, dtype=torch.float64), 0.1
    )
    hard = torch.nn.functional.cross_entropy(logits, torch.from_numpy(a), label_smoothing=0.1)
    assert torch.isclose(same, hard)
    unknown = torch.from_numpy(np.where(np.arange(32) < 8, -1, a))  # rows 0-7: no target
    part = mixed_cross_entropy(logits, unknown, unknown, torch.ones(32, dtype=torch.float64), 0)
    assert torch.isclose(part, torch.nn.functional.cross_entropy(logits[8:], unknown[8:]))


def test_mix_frames_keeps_lone_real_frames_and_unit_quaternions() -> None:
    x, mask, scaler = ramp_batch([4, 10])
    layout = imu_layout(scaler, check_rotation=False)
    out, out_mask = mix_frames(x, mask, np.array([1, 0]), np.array([0.3, 0.3]), layout)
    assert (out_mask == (mask[0] | mask[1])).all()
    # steps where only row 1 is real: row 0 takes row 1's frames whole
    np.testing.assert_array_equal(out[0, 2:8, 0], x[1, 2:8, 0])
    np.testing.assert_allclose(out[0, 8:, 0], 0.3 * x[0, 8:, 0] + 0.7 * x[1, 8:, 0], rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out[..., 1:][out_mask], axis=1), 1.0, atol=1e-6)


# ----------------------------------------------------------------------------- augmenter
def test_augmenter_is_off_by_default_and_deterministic_when_on() -> None:
    features = compute_features(raw_sequences(5, seed=2), None, EXTRACT).frame_features
    scaler = Scaler.fit(features, CHANNELS)
    assert build_augmenter(TorchParams(), scaler) is None
    params = TorchParams(
        mixup_alpha=0.4, mixup_same_orientation=True, rotate_deg=10, time_stretch=0.2,
        time_shift=3,
    )  # fmt: skip
    augmenter = build_augmenter(params, scaler)
    assert isinstance(augmenter, Augmenter) and augmenter.mixes
    x, mask, _ = padded(features, scaler)
    y, orientation = np.arange(5), np.array([0, 1, 0, 1, 2])

    def draw(seed: int):
        return augmenter(np.random.default_rng(seed), x, mask, y, orientation)

    first, again, other = draw(7), draw(7), draw(8)
    np.testing.assert_array_equal(first.x, again.x)
    np.testing.assert_array_equal(first.lam, again.lam)
    assert not np.array_equal(first.x, other.x)
    assert (first.orientation_a == first.orientation_b).all()  # same-orientation mixing
    assert (first.y_a == y).all() and set(first.y_b) <= set(y)
    assert not np.array_equal(x, draw(7).x) and np.isfinite(first.x).all()


def test_out_of_range_params_are_clear_errors() -> None:
    for key, value in (("mixup_alpha", -1.0), ("rotate_deg", 200.0), ("time_stretch", 1.0),
                       ("time_shift", -1), ("aux_orientation_weight", -0.1)):  # fmt: skip
        with pytest.raises(ValueError, match=f"torch.{key}"):
            check_augment_params(replace(TorchParams(), **{key: value}))
