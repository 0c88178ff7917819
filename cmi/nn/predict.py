"""Class probabilities from a trained TimeSeriesNet, and loading one fold's files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cmi.io import read_json
from cmi.nn.data import Scaler
from cmi.nn.model import TimeSeriesNet, load_state_dict_file


@torch.no_grad()
def network_proba(
    model: nn.Module, x: np.ndarray, mask: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """Softmax probabilities (N, 18) float64, rows summing to 1, in eval mode."""
    if x.ndim != 3 or mask.shape != x.shape[:2]:
        raise ValueError(f"network_proba: x {x.shape} and mask {mask.shape} do not match")
    was_training = model.training
    if was_training:  # eval() walks every module: skip it for a model already in eval mode
        model.eval()
    device = next(model.parameters()).device
    chunks = []
    try:
        for start in range(0, x.shape[0], batch_size):
            xb = torch.as_tensor(x[start : start + batch_size], dtype=torch.float32, device=device)
            mb = torch.as_tensor(mask[start : start + batch_size], dtype=torch.bool, device=device)
            logits = model(xb, mb).double()
            chunks.append(torch.softmax(logits, dim=1).cpu().numpy())
    finally:
        if was_training:
            model.train()
    if not chunks:
        return np.zeros((0, _n_classes(model)), dtype=np.float64)
    proba = np.concatenate(chunks)
    return proba / proba.sum(axis=1, keepdims=True)


def _n_classes(model: nn.Module) -> int:
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


def load_fold_model(torch_dir: Path | str, fold: int, device: str = "cpu") -> FoldModel:
    """Load models/torch/{meta.json, fold_{k}.pt, fold_{k}_scaler.json} (no unpickling).

    The fold's own pad_len (from its scaler json) is used; meta's "pad_len" is only the
    largest over folds.
    """
    torch_dir = Path(torch_dir)
    meta = read_json(torch_dir / "meta.json")
    scaler_json = read_json(torch_dir / f"fold_{fold}_scaler.json")
    model = TimeSeriesNet(**meta["architecture"])
    model.load_state_dict(load_state_dict_file(torch_dir / f"fold_{fold}.pt"))
    model.to(device).eval()
    pad_len = int(scaler_json.get("pad_len", meta["pad_len"]))
    return FoldModel(model, Scaler.from_json(scaler_json), pad_len, meta["keep"], meta["channels"])
