"""The bundle's Torch part: every member of every fold (``cmi.nn.members``), loaded from the
manifest's ``torch`` section: ``channels``, ``architecture`` (the full-input members'),
``imu_model`` (``channels`` and ``architecture`` of the IMU-only members, or null), and
``members`` (fold, kind, seed, weights, scaler, pad_len).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmi.bundle.files import (
    MANIFEST_NAME,
    BundleError,
    file_entry,
    load_safetensors,
    read_verified,
)

# The kinds of Torch members (cmi.nn.members.KINDS): full input, IMU channels only.
TORCH_KINDS: tuple[str, ...] = ("full", "imu")


@dataclass
class TorchMember:
    """One Torch model of outer fold ``fold``: ``kind`` "full" (every channel) or "imu" (IMU
    channels only), trained with ``seed``."""

    fold: int
    kind: str
    seed: int | None
    scaler: dict[str, Any]  # its scaler json ({"channels", "mean", "std", ...})
    pad_len: int
    path: Path
    sha256: str
    size: int
    state_dict: dict[str, Any] | None = None  # None when members load on demand

    def load_state_dict(self) -> dict[str, Any]:
        """The member's weights: from memory, or re-read and re-verified from disk."""
        if self.state_dict is not None:
            return self.state_dict
        return load_safetensors(self.path, read_verified(self.path, self.sha256, self.size))


@dataclass
class TorchPart:
    channels: list[str]  # the full members' input channels
    pad_len: int
    keep: str
    architecture: dict[str, Any]  # the full members' TimeSeriesNet kwargs
    members: list[TorchMember]
    n_folds: int
    imu_channels: list[str] | None = None  # the IMU-only members' (None: there are none)
    imu_architecture: dict[str, Any] | None = None

    def channels_of(self, kind: str) -> list[str]:
        if kind == "imu":
            assert self.imu_channels is not None  # checked when the part was loaded
            return self.imu_channels
        return self.channels

    def architecture_of(self, kind: str) -> dict[str, Any]:
        if kind == "imu":
            assert self.imu_architecture is not None
            return self.imu_architecture
        return self.architecture


def _imu_model(section: dict[str, Any], manifest_path: Path) -> tuple[list[str], dict] | None:
    imu = section.get("imu_model")
    if imu is None:
        return None
    channels = list(imu["channels"])
    if not channels or not set(channels) <= set(section["channels"]):
        raise BundleError(
            f"{manifest_path}: torch.imu_model channels must be a non-empty subset of "
            "torch.channels"
        )
    return channels, dict(imu["architecture"])


def _check_members(members: list[TorchMember], n_folds: int, manifest_path: Path) -> None:
    """Every fold 0..n_folds-1 has a full-input member; no member is listed twice (it would
    weigh double in the average)."""
    keys = [(m.fold, m.kind, m.seed) for m in members]
    twice = sorted({k for k in keys if keys.count(k) > 1}, key=str)
    if twice:
        raise BundleError(
            f"{manifest_path}: Torch member(s) (fold, kind, seed) {twice} listed twice"
        )
    paths = [m.path for m in members]
    if len(set(paths)) != len(paths):
        raise BundleError(f"{manifest_path}: a Torch weights file is listed for two members")
    has_full = {m.fold for m in members if m.kind == "full"}
    without = [k for k in range(n_folds) if k not in has_full]
    if without:
        raise BundleError(f"{manifest_path}: Torch fold(s) {without} have no full-input member")


def load_torch(
    root: Path, section: dict[str, Any], files: dict[str, Any], in_memory: bool
) -> TorchPart:
    manifest_path = root / MANIFEST_NAME
    channels = list(section["channels"])
    n_folds = int(section["n_folds"])
    imu = _imu_model(section, manifest_path)
    members = []
    for entry in section["members"]:
        fold, kind = int(entry["fold"]), str(entry["kind"])
        if kind not in TORCH_KINDS or not 0 <= fold < n_folds:
            raise BundleError(
                f"{manifest_path}: Torch member {entry['weights']!r}: kind {kind!r} fold {fold} "
                f"(expected a kind in {TORCH_KINDS} and a fold in 0..{n_folds - 1})"
            )
        if kind == "imu" and imu is None:
            raise BundleError(
                f"{manifest_path}: IMU-only member {entry['weights']!r} but no torch.imu_model"
            )
        path, sha, size = file_entry(files, entry["weights"], root)
        # Verified (and parsed) even when members load on demand, so a bad file fails now.
        state = load_safetensors(path, read_verified(path, sha, size))
        scaler = dict(entry["scaler"])
        expected = imu[0] if kind == "imu" and imu is not None else channels
        if list(scaler.get("channels", [])) != expected:
            raise BundleError(
                f"{manifest_path}: scaler channels of Torch member {entry['weights']!r} are not "
                f"the {kind} model's channels"
            )
        seed = entry.get("seed")
        members.append(
            TorchMember(
                fold=fold,
                kind=kind,
                seed=None if seed is None else int(seed),
                scaler=scaler,
                pad_len=int(entry.get("pad_len", section["pad_len"])),
                path=path,
                sha256=sha,
                size=size,
                state_dict=state if in_memory else None,
            )
        )
    _check_members(members, n_folds, manifest_path)
    # A shipped member that no entry uses would silently drop out of the average.
    used = {str(entry["weights"]) for entry in section["members"]}
    unused = sorted(rel for rel in files if rel.startswith("torch/") and rel not in used)
    if unused:
        raise BundleError(f"{manifest_path}: Torch file(s) {unused[:5]} are used by no member")
    return TorchPart(
        channels=channels,
        pad_len=int(section["pad_len"]),
        keep=str(section["keep"]),
        architecture=dict(section["architecture"]),
        members=members,
        n_folds=n_folds,
        imu_channels=imu[0] if imu else None,
        imu_architecture=imu[1] if imu else None,
    )
