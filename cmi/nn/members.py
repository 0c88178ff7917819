"""The models of one outer fold ("members"): one per seed, for the full input and, optionally,
for IMU channels only; their probabilities are averaged per view.

A member is named after its files (``models/torch/<name>.pt``, checkpoint unit ``<name>``):
``fold_{k}`` for the full-input model of the first seed (the name a single model always
had), ``fold_{k}_seed_{s}`` for further seeds, and ``fold_{k}_imu`` /
``fold_{k}_imu_seed_{s}`` for the IMU-only model (``params.torch.imu_only_model``).

The IMU-only model sees only the IMU channels (``imu_channels``): it is used for IMU-only
inputs, where the full model would see thm/ToF filled with the training mean; its epoch is
chosen by the inner fold's ``imu_only`` score, the only view it will serve. The full model
keeps its modality dropout and serves the ``full`` view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from cmi.nn.data import Scaler, is_modality_channel, modality_indices
from cmi.nn.fold_data import FoldInputs, PaddedPart
from cmi.nn.model import N_ORIENTATIONS, architecture_kwargs
from cmi.params import TorchParams

Kind = Literal["full", "imu"]
KINDS: tuple[Kind, ...] = ("full", "imu")
# The curve column (cmi.nn.train.CURVE_COLUMNS) that chooses the epoch of each kind.
SELECTED_BY: dict[str, str] = {"full": "inner_test_like", "imu": "inner_imu_only"}


@dataclass(frozen=True)
class Member:
    """One model of outer fold ``fold``: its seed (``index`` in the seed list) and kind."""

    fold: int
    seed: int
    index: int = 0
    kind: Kind = "full"

    @property
    def name(self) -> str:
        """File stem and checkpoint unit: fold_{k}[_imu][_seed_{s}] (first seed: no suffix)."""
        imu = "_imu" if self.kind == "imu" else ""
        seed = f"_seed_{self.seed}" if self.index else ""
        return f"fold_{self.fold}{imu}{seed}"

    @property
    def label(self) -> str:
        """How logs name it: "fold k" for the plain model (the messages a single model
        always had), "fold k (name)" for the others."""
        plain = f"fold_{self.fold}"
        return f"fold {self.fold}" if self.name == plain else f"fold {self.fold} ({self.name})"

    @property
    def selected_by(self) -> str:
        return SELECTED_BY[self.kind]


def member_seeds(params: TorchParams) -> tuple[int, ...]:
    """``params.seeds`` if given, else ``(params.seed,)``; duplicates are an error."""
    seeds = tuple(int(s) for s in params.seeds) or (int(params.seed),)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"params.yaml: torch.seeds {list(seeds)} repeats a seed")
    return seeds


def fold_members(fold: int, params: TorchParams) -> list[Member]:
    """The members of ``fold`` in training order: every full model, then every IMU model."""
    kinds: tuple[Kind, ...] = KINDS if params.imu_only_model else ("full",)
    seeds = member_seeds(params)
    return [Member(fold, s, i, kind) for kind in kinds for i, s in enumerate(seeds)]


def imu_channels(channels: Sequence[str]) -> list[str]:
    """The channels the IMU-only model sees: every channel that is not thm/ToF."""
    kept = [c for c in channels if not is_modality_channel(c)]
    if not kept:
        raise ValueError("the IMU-only model needs at least one IMU channel; none found")
    return kept


def _imu_part(part: PaddedPart, keep: np.ndarray) -> PaddedPart:
    return replace(part, x=np.ascontiguousarray(part.x[:, :, keep]))


def member_inputs(inputs: FoldInputs, kind: Kind) -> FoldInputs:
    """The fold's inputs as ``kind`` sees them: unchanged for "full"; for "imu" only the IMU
    channels (and the scaler restricted to them), so no thm/ToF value can reach the model."""
    if kind == "full":
        return inputs
    channels = inputs.scaler.channels
    kept = imu_channels(channels)
    keep = np.array([channels.index(c) for c in kept], dtype=np.int64)
    scaler = Scaler(tuple(kept), inputs.scaler.mean[keep], inputs.scaler.std[keep])
    out = replace(
        inputs,
        train=_imu_part(inputs.train, keep),
        inner=_imu_part(inputs.inner, keep),
        scored=_imu_part(inputs.scored, keep),
        modality_idx=modality_indices(kept),
        scaler=scaler,
    )
    assert out.modality_idx.size == 0  # by construction of imu_channels
    return out


def network_architecture(n_channels: int, params: TorchParams) -> dict[str, Any]:
    """TimeSeriesNet kwargs for ``n_channels`` inputs under ``params`` (meta.json's
    "architecture"); an orientation head only when its loss weight is positive."""
    return architecture_kwargs(
        n_channels,
        params.conv_channels,
        params.lstm_hidden,
        params.gru_hidden,
        params.dropout,
        n_orientations=N_ORIENTATIONS if params.aux_orientation_weight > 0 else 0,
        length_input=params.length_input,
    )
