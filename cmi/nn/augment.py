"""Augmentation of training batches: time stretch and shift, IMU-frame rotation, mixup.

Only training batches are augmented (never the inner or scored folds, never inference). A
batch is padded and standardized (``cmi.nn.data``): geometry is done on the raw values
(``x * std + mean``) of the channels it touches and written back standardized; padded steps
stay ``FILL_VALUE`` with a False mask. The parameters come from ``params.torch``:

- ``time_stretch`` s: each sequence's real frames are resampled (linear interpolation, the
  quaternion renormalized) to ``round(L * f)`` frames, f uniform in [1 - s, 1 + s], and put
  back in the window as ``keep`` puts them (at the end or the start). Every channel is
  resampled as is: a slower gesture also has smaller rates, which real data covers as well.
- ``time_shift`` k: the real frames then move by d steps in the window, d uniform in
  {-k..k} (positive = later); frames pushed out of the window are lost and the steps left
  empty become padding; at least one frame always stays.
- ``rotate_deg`` a: the device frame is turned by a random rotation R (uniform axis, angle
  uniform in [0, a] degrees), as if the watch sat slightly differently on the wrist. Device-
  frame vectors map to ``R v`` (acc, linear acc, angular velocity), the device->world
  quaternion to ``q * r^-1`` (r the quaternion of R, so ``q' (R v) = q v``: the world sees the
  same motion and gravity), magnitudes and angles are unchanged, and so are thm/ToF, which
  are the device's own readings. That is what recomputing the features from rotated raw
  acc and quaternion gives (tests check it). A channel of unknown geometry is an error.
- ``mixup_alpha`` alpha: each row is mixed with a partner row of the batch (a random
  permutation; with ``mixup_same_orientation`` only within the same body orientation) with a
  weight lambda ~ Beta(alpha, alpha); its targets become lambda * own + (1 - lambda) *
  partner's. Where only one of the two has a real frame, that frame is kept whole (no mixing
  with padding), and the mixed quaternion is renormalized. Mixing comes before modality
  dropout (``cmi.nn.train``), so a dropped row's thm/ToF are exactly what a real IMU-only
  sequence gives; a full row mixed with a natively IMU-only one gets weakened thm/ToF.

Every draw comes from a generator seeded by (member seed, fold, epoch, rank, batch), so an
epoch is the same whatever ran before it, whether it was resumed, and in whichever DataLoader
worker the batch was made.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmi import rotation
from cmi.nn.data import FILL_VALUE, Scaler, is_modality_channel
from cmi.params import TorchParams

VECTOR_TRIPLETS: tuple[tuple[str, str, str], ...] = (
    ("acc_x", "acc_y", "acc_z"),
    ("linear_acc_x", "linear_acc_y", "linear_acc_z"),
    ("angular_vel_x", "angular_vel_y", "angular_vel_z"),
)
QUATERNION: tuple[str, str, str, str] = ("rot_w", "rot_x", "rot_y", "rot_z")
# IMU channels that a rotation of the device frame leaves unchanged (norms and angles).
ROTATION_INVARIANT: frozenset[str] = frozenset(
    {"angular_distance", "acc_mag", "linear_acc_mag", "acc_mag_jerk"}
)
MAX_ROTATE_DEG = 180.0


@dataclass(frozen=True)
class ImuLayout:
    """Where the geometric channels sit, and the scaler that standardized them."""

    vectors: np.ndarray  # (k, 3) channel indices of device-frame vectors
    quaternion: np.ndarray | None  # (4,) channel indices of rot_w..z, or None
    mean: np.ndarray  # (C,) float64
    std: np.ndarray  # (C,) float64


def imu_layout(scaler: Scaler, check_rotation: bool) -> ImuLayout:
    """The layout of ``scaler.channels``; with ``check_rotation`` every IMU channel must be a
    known vector, the quaternion or rotation-invariant (a rotation would garble any other)."""
    channels = list(scaler.channels)
    position = {c: i for i, c in enumerate(channels)}
    for triplet in VECTOR_TRIPLETS:
        present = [c in position for c in triplet]
        if any(present) and not all(present):
            raise ValueError(f"channels: {triplet} only partly present ({present})")
    vectors = [[position[c] for c in t] for t in VECTOR_TRIPLETS if t[0] in position]
    has_quat = [c in position for c in QUATERNION]
    if any(has_quat) and not all(has_quat):
        raise ValueError(f"channels: {QUATERNION} only partly present")
    if check_rotation:
        known = {c for t in VECTOR_TRIPLETS for c in t} | set(QUATERNION) | ROTATION_INVARIANT
        unknown = [c for c in channels if not is_modality_channel(c) and c not in known]
        if unknown:
            raise ValueError(
                f"torch.rotate_deg > 0: no rule to rotate channel(s) {unknown}; add them to "
                "cmi.nn.augment (VECTOR_TRIPLETS or ROTATION_INVARIANT)"
            )
    return ImuLayout(
        vectors=np.array(vectors, dtype=np.int64).reshape(-1, 3),
        quaternion=np.array([position[c] for c in QUATERNION]) if all(has_quat) else None,
        mean=np.asarray(scaler.mean, dtype=np.float64),
        std=np.asarray(scaler.std, dtype=np.float64),
    )


def _raw(x: np.ndarray, layout: ImuLayout, idx: np.ndarray) -> np.ndarray:
    return x[..., idx].astype(np.float64) * layout.std[idx] + layout.mean[idx]


def _write(x: np.ndarray, layout: ImuLayout, idx: np.ndarray, raw: np.ndarray) -> None:
    x[..., idx] = ((raw - layout.mean[idx]) / layout.std[idx]).astype(np.float32)


def _unit_canonical(quat: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(quat, axis=-1, keepdims=True)
    quat = np.where(norm > 1e-12, quat / np.maximum(norm, 1e-12), (1.0, 0.0, 0.0, 0.0))
    return np.where(quat[..., :1] < 0, -quat, quat)


# ----------------------------------------------------------------------------- rotation
def random_rotations(n: int, max_deg: float, rng: np.random.Generator) -> np.ndarray:
    """(n, 4) unit quaternions: uniform random axis, angle uniform in [0, max_deg] degrees."""
    axis = rng.normal(size=(n, 3))
    axis /= np.maximum(np.linalg.norm(axis, axis=1, keepdims=True), 1e-12)
    angle = np.deg2rad(rng.uniform(0.0, max_deg, size=(n, 1)))
    return rotation.from_rotation_vector(axis * angle)


def rotation_matrices(quat: np.ndarray) -> np.ndarray:
    """(n, 3, 3) matrices R with R v == rotation.rotate(quat, v)."""
    eye = np.broadcast_to(np.eye(3), (quat.shape[0], 3, 3))
    columns = rotation.rotate(quat[:, None, :], eye.transpose(0, 2, 1))  # rotated basis e_j
    return columns.transpose(0, 2, 1)


def rotate_frames(
    x: np.ndarray, mask: np.ndarray, layout: ImuLayout, quat: np.ndarray
) -> np.ndarray:
    """The batch as if each row's device frame were turned by ``quat[row]`` (module doc)."""
    out = np.array(x, dtype=np.float32, copy=True)
    matrices = rotation_matrices(quat)
    for idx in layout.vectors:
        _write(out, layout, idx, np.einsum("bij,btj->bti", matrices, _raw(x, layout, idx)))
    if layout.quaternion is not None:
        idx = layout.quaternion
        turned = rotation.multiply(_raw(x, layout, idx), rotation.conjugate(quat)[:, None, :])
        _write(out, layout, idx, _unit_canonical(turned))
    out[~mask] = FILL_VALUE
    return out


# ----------------------------------------------------------------------------- time
def warp_time(
    x: np.ndarray,
    mask: np.ndarray,
    factor: np.ndarray,
    shift: np.ndarray,
    keep: str,
    layout: ImuLayout,
) -> tuple[np.ndarray, np.ndarray]:
    """Resample each row's real frames by ``factor[row]`` and move them by ``shift[row]``
    steps (module doc); rows without a real frame are left as they are."""
    n, steps, _ = x.shape
    lengths = mask.sum(axis=1)
    first = np.where(lengths > 0, mask.argmax(axis=1), 0)
    new_len = np.maximum(1, np.rint(lengths * factor)).astype(np.int64)
    start = (steps - new_len if keep == "end" else np.zeros(n, dtype=np.int64)) + shift
    start = np.clip(start, 1 - new_len, steps - 1)  # at least one frame stays in the window
    v = np.arange(steps)[None, :] - start[:, None]  # position in the resampled sequence
    valid = (v >= 0) & (v < new_len[:, None]) & (lengths > 0)[:, None]
    scale = np.where(new_len > 1, (lengths - 1) / np.maximum(new_len - 1, 1), 0.0)
    u = np.clip(v * scale[:, None], 0.0, np.maximum(lengths - 1, 0)[:, None])
    lo = np.floor(u).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(lengths - 1, 0)[:, None])
    weight = (u - lo)[..., None]
    src_lo = np.clip(first[:, None] + lo, 0, steps - 1)[..., None]
    src_hi = np.clip(first[:, None] + hi, 0, steps - 1)[..., None]
    x_lo = np.take_along_axis(x, src_lo, axis=1)
    x_hi = np.take_along_axis(x, src_hi, axis=1)
    out = (x_lo * (1 - weight) + x_hi * weight).astype(np.float32)
    if layout.quaternion is not None:
        idx = layout.quaternion
        q_lo, q_hi = _raw(x_lo, layout, idx), _raw(x_hi, layout, idx)
        q_hi = np.where((q_lo * q_hi).sum(-1, keepdims=True) < 0, -q_hi, q_hi)
        _write(out, layout, idx, _unit_canonical(q_lo * (1 - weight) + q_hi * weight))
    out[~valid] = FILL_VALUE
    empty = lengths == 0
    out[empty], valid[empty] = x[empty], mask[empty]
    return out, valid


# ----------------------------------------------------------------------------- mixup
def mixup_partners(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """partner[i]: a random row of the same group as row i (a random permutation within
    each group; a row may draw itself)."""
    n = len(groups)
    first = np.lexsort((rng.random(n), groups))
    second = np.lexsort((rng.random(n), groups))
    partner = np.empty(n, dtype=np.int64)
    partner[first] = second
    return partner


def soft_targets(a: np.ndarray, b: np.ndarray, lam: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, n_classes) lam * onehot(a) + (1 - lam) * onehot(b): each row sums to 1."""
    eye = np.eye(n_classes)
    return lam[:, None] * eye[a] + (1 - lam[:, None]) * eye[b]


def mix_frames(
    x: np.ndarray, mask: np.ndarray, partner: np.ndarray, lam: np.ndarray, layout: ImuLayout
) -> tuple[np.ndarray, np.ndarray]:
    """Row i becomes lam[i] * row i + (1 - lam[i]) * its partner where both have a real
    frame, the one real frame where only one has; the mask is their union."""
    other, other_mask = x[partner], mask[partner]
    weight = np.where(mask & other_mask, lam[:, None], mask.astype(np.float64))[..., None]
    out = (x * weight + other * (1 - weight)).astype(np.float32)
    if layout.quaternion is not None:
        idx = layout.quaternion
        q_a, q_b = _raw(x, layout, idx), _raw(other, layout, idx)
        q_b = np.where((q_a * q_b).sum(-1, keepdims=True) < 0, -q_b, q_b)
        _write(out, layout, idx, _unit_canonical(q_a * weight + q_b * (1 - weight)))
    union = mask | other_mask
    out[~union] = FILL_VALUE
    return out, union


# ----------------------------------------------------------------------------- batches
@dataclass(frozen=True)
class AugmentedBatch:
    """A training batch after augmentation: targets are (a, b, lam) pairs (b = a and lam = 1
    without mixup); orientation -1 = unknown."""

    x: np.ndarray
    mask: np.ndarray
    y_a: np.ndarray
    y_b: np.ndarray
    orientation_a: np.ndarray
    orientation_b: np.ndarray
    lam: np.ndarray


@dataclass(frozen=True)
class Augmenter:
    """The augmentations ``params.torch`` switches on, for one member's channels."""

    layout: ImuLayout
    keep: str
    mixup_alpha: float = 0.0
    same_orientation: bool = False
    rotate_deg: float = 0.0
    time_stretch: float = 0.0
    time_shift: int = 0

    @property
    def mixes(self) -> bool:
        return self.mixup_alpha > 0

    def __call__(
        self,
        rng: np.random.Generator,
        x: np.ndarray,
        mask: np.ndarray,
        y: np.ndarray,
        orientation: np.ndarray,
    ) -> AugmentedBatch:
        """Time warp, then rotation, then mixup, drawing in that order from ``rng``."""
        n = x.shape[0]
        if self.time_stretch > 0 or self.time_shift > 0:
            factor = 1 + rng.uniform(-self.time_stretch, self.time_stretch, size=n)
            shift = rng.integers(-self.time_shift, self.time_shift + 1, size=n)
            x, mask = warp_time(x, mask, factor, shift, self.keep, self.layout)
        if self.rotate_deg > 0:
            x = rotate_frames(x, mask, self.layout, random_rotations(n, self.rotate_deg, rng))
        lam = np.ones(n)
        partner = np.arange(n)
        if self.mixes:
            groups = orientation if self.same_orientation else np.zeros(n, dtype=np.int64)
            partner = mixup_partners(groups, rng)
            lam = rng.beta(self.mixup_alpha, self.mixup_alpha, size=n)
            x, mask = mix_frames(x, mask, partner, lam, self.layout)
        return AugmentedBatch(
            x, mask, y, y[partner], orientation, orientation[partner], lam.astype(np.float32)
        )


def check_augment_params(params: TorchParams) -> None:
    """Clear errors for values no augmentation can use."""
    checks = (
        ("mixup_alpha", params.mixup_alpha >= 0),
        ("rotate_deg", 0 <= params.rotate_deg <= MAX_ROTATE_DEG),
        ("time_stretch", 0 <= params.time_stretch < 1),
        ("time_shift", params.time_shift >= 0),
        ("aux_orientation_weight", params.aux_orientation_weight >= 0),
    )
    for name, ok in checks:
        if not ok:
            raise ValueError(
                f"params.yaml: torch.{name}={getattr(params, name)!r} is out of range "
                "(mixup_alpha >= 0, 0 <= rotate_deg <= 180, 0 <= time_stretch < 1, "
                "time_shift >= 0, aux_orientation_weight >= 0)"
            )


def build_augmenter(params: TorchParams, scaler: Scaler) -> Augmenter | None:
    """The member's augmenter, or None when every augmentation is off (the batches are then
    exactly the unaugmented ones)."""
    check_augment_params(params)
    on = (
        params.mixup_alpha > 0
        or params.rotate_deg > 0
        or params.time_stretch > 0
        or params.time_shift > 0
    )
    if not on:
        return None
    return Augmenter(
        layout=imu_layout(scaler, check_rotation=params.rotate_deg > 0),
        keep=params.keep,
        mixup_alpha=params.mixup_alpha,
        same_orientation=params.mixup_same_orientation,
        rotate_deg=params.rotate_deg,
        time_stretch=params.time_stretch,
        time_shift=params.time_shift,
    )
