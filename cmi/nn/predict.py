"""Class probabilities from a trained TimeSeriesNet, and loading a fold's member files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cmi.io import read_json
from cmi.nn.data import Scaler
from cmi.nn.model import N_ORIENTATIONS, TimeSeriesNet, load_state_dict_file


def network_proba(
    model: nn.Module, x: np.ndarray, mask: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """Softmax probabilities (N, 18) float64, rows summing to 1, in eval mode."""
    return network_outputs(model, x, mask, batch_size, with_orientation=False)[0]


@torch.no_grad()
def network_outputs(
    model: nn.Module,
    x: np.ndarray,
    mask: np.ndarray,
    batch_size: int = 256,
    with_orientation: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Gesture probabilities (N, 18) and, for a net with an orientation head (and
    ``with_orientation``), orientation probabilities (N, 4), else None; float64, in eval mode,
    rows summing to 1."""
    if x.ndim != 3 or mask.shape != x.shape[:2]:
        raise ValueError(f"network_proba: x {x.shape} and mask {mask.shape} do not match")
    heads = with_orientation and getattr(model, "orientation_head", None) is not None
    was_training = model.training
    if was_training:  # eval() walks every module: skip it for a model already in eval mode
        model.eval()
    device = next(model.parameters()).device
    chunks: list[np.ndarray] = []
    orientation_chunks: list[np.ndarray] = []
    # Batches of similar length: the network cuts each batch after its longest sequence.
    order = np.argsort(mask.sum(axis=1), kind="stable")
    try:
        for start in range(0, x.shape[0], batch_size):
            rows = order[start : start + batch_size]
            xb = torch.as_tensor(x[rows], dtype=torch.float32, device=device)
            mb = torch.as_tensor(mask[rows], dtype=torch.bool, device=device)
            if heads:
                logits, orientation = model.forward_heads(xb, mb)
                orientation_chunks.append(_softmax(orientation))
            else:
                logits = model(xb, mb)
            chunks.append(_softmax(logits))
    finally:
        if was_training:
            model.train()
    back = np.argsort(order, kind="stable")  # the rows in the caller's order again
    proba = _stack(chunks, _n_classes(model))[back]
    orientation_proba = _stack(orientation_chunks, N_ORIENTATIONS)[back] if heads else None
    return proba, orientation_proba


def _softmax(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits.double(), dim=1).cpu().numpy()


def _stack(chunks: list[np.ndarray], width: int) -> np.ndarray:
    if not chunks:
        return np.zeros((0, width), dtype=np.float64)
    proba = np.concatenate(chunks)
    return proba / proba.sum(axis=1, keepdims=True)


def _n_classes(model: nn.Module) -> int:
    if isinstance(getattr(model, "n_classes", None), int):
        return int(model.n_classes)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    return int(last.out_features)


@dataclass(frozen=True)
class FoldModel:
    """Everything one fold needs at inference."""

    model: TimeSeriesNet
    scaler: Scaler
    pad_len: int
    keep: str
    channels: list[str]


def member_entries(torch_dir: Path | str) -> list[dict[str, Any]]:
    """meta.json's ``models`` (every member: fold, kind "full"/"imu", seed, weights, scaler,
    ...); for a meta.json written before members existed, one full model per fold."""
    meta = read_json(Path(torch_dir) / "meta.json")
    if "models" in meta:
        return [dict(entry) for entry in meta["models"]]
    return [
        {"fold": k, "kind": "full", "weights": f"fold_{k}.pt", "scaler": f"fold_{k}_scaler.json"}
        for k in range(int(meta["n_folds"]))
    ]


def load_member_model(
    torch_dir: Path | str, entry: dict[str, Any], device: str = "cpu"
) -> FoldModel:
    """Load one member (an entry of ``member_entries``): an IMU-only member ("imu") reads
    meta.json's ``imu_model`` architecture and channels, a full one the top-level ones."""
    torch_dir = Path(torch_dir)
    meta = read_json(torch_dir / "meta.json")
    spec = meta["imu_model"] if entry["kind"] == "imu" else meta
    scaler_json = read_json(torch_dir / entry["scaler"])
    model = TimeSeriesNet(**spec["architecture"])
    model.load_state_dict(load_state_dict_file(torch_dir / entry["weights"]))
    model.to(device).eval()
    scaler = Scaler.from_json(scaler_json)
    if list(scaler.channels) != list(spec["channels"]):
        raise ValueError(f"{torch_dir / entry['scaler']}: channels differ from meta.json's")
    pad_len = int(scaler_json.get("pad_len", meta["pad_len"]))
    return FoldModel(model, scaler, pad_len, meta["keep"], list(spec["channels"]))


def load_fold_model(torch_dir: Path | str, fold: int, device: str = "cpu") -> FoldModel:
    """Load models/torch/{meta.json, fold_{k}.pt, fold_{k}_scaler.json} (no unpickling): the
    fold's first-seed full-input member (its single model by default).

    The fold's own pad_len (from its scaler json) is used; meta's "pad_len" is only the
    largest over folds.
    """
    entry = {"fold": fold, "kind": "full", "weights": f"fold_{fold}.pt"}
    return load_member_model(torch_dir, {**entry, "scaler": f"fold_{fold}_scaler.json"}, device)
