"""Epoch checkpoints that load with ``torch.load(weights_only=True)``, written atomically.

Layout: ``checkpoints/torch/<fingerprint>/fold_{k}/last.pt`` (after every epoch) and
``done.pt`` (a finished fold: best weights, validation probabilities, scaler, curves).
A payload carries ``version``, ``fingerprint`` and ``fold``; one that does not match, or
that does not load, is reported and ignored, never used.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmi.io import write_with

CHECKPOINT_VERSION = 1
LAST_NAME = "last.pt"
DONE_NAME = "done.pt"

log = logging.getLogger("cmi.nn.checkpoint")


def fold_dir(checkpoint_root: Path, fingerprint: str, fold: int) -> Path:
    return Path(checkpoint_root) / fingerprint / f"fold_{fold}"


def save_payload(payload: dict[str, Any], path: Path) -> None:
    """Atomically torch.save ``payload`` (temp file, fsync, os.replace: timm-style)."""
    _save_through_handle(payload, path)


def save_state_dict(state: dict[str, Any], path: Path) -> None:
    """Atomically write a state_dict whose bytes depend only on the tensors.

    torch.save given a path names its zip archive after the file, so writing through a random
    temp name made identical weights hash differently (DVC saw a change, tests saw a diff).
    Through a file handle the archive is always named "archive".
    """

    _save_through_handle(state, path)


def _save_through_handle(obj: dict[str, Any], path: Path) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)

    write_with(path, write)


def load_payload(path: Path, fingerprint: str, fold: int) -> dict[str, Any] | None:
    """The payload at ``path`` if it exists, loads and belongs to this run; else None (logged)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any truncation/corruption shows up as some exception here
        log.warning(
            "fold %d: checkpoint %s is unreadable (%s: %s); restarting the fold",
            fold,
            path,
            type(error).__name__,
            str(error).splitlines()[0] if str(error) else "",
        )
        return None
    expected = {"version": CHECKPOINT_VERSION, "fingerprint": fingerprint, "fold": fold}
    found = {key: payload.get(key) for key in expected} if isinstance(payload, dict) else None
    if found != expected:
        log.warning(
            "fold %d: ignoring checkpoint %s: it is for %s, not %s", fold, path, found, expected
        )
        return None
    return payload


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as weights_only-safe lists and tensors."""
    py_version, py_internal, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": [
            np_kind,
            torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            int(np_pos),
            int(np_has_gauss),
            float(np_gauss),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py_version, py_internal, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_internal), py_gauss))
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    keys = np.asarray(np_keys.numpy(), dtype=np.uint32)
    np.random.set_state((np_kind, keys, np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
