"""Torch fold checkpoints on the generic store (``cmi.checkpoint.CheckpointStore``).

Layout: ``checkpoints/torch/<fingerprint>/fold_{k}/`` is one store unit holding either
``last.pt`` (written after every epoch of a fold in training) or ``done.pt`` (a finished
fold: best weights, OOF probabilities, scaler, curves), plus the store's ``done.json`` marker
with checksums, so a damaged file is caught before ``torch.load``. Payloads load with
``torch.load(weights_only=True)`` and carry ``version``, ``fingerprint`` and ``fold``; one
that does not match, does not verify, or does not load is reported and never used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from cmi.checkpoint import CheckpointError, CheckpointStore
from cmi.nn.model import torch_save_writer

CHECKPOINT_VERSION = 2  # 2: units of the generic store; OOF probabilities per view
LAST_NAME = "last.pt"
DONE_NAME = "done.pt"
Kind = Literal["epoch", "finished"]
_FILE_OF_KIND: dict[str, str] = {"epoch": LAST_NAME, "finished": DONE_NAME}

log = logging.getLogger("cmi.nn.checkpoint")


@dataclass(frozen=True)
class FoldCheckpoint:
    """A verified payload of one fold: an epoch snapshot or a finished fold."""

    kind: Kind
    path: Path
    payload: dict[str, Any]


def fold_unit(fold: int) -> str:
    return f"fold_{fold}"


def _header(store: CheckpointStore, fold: int) -> dict[str, Any]:
    return {"version": CHECKPOINT_VERSION, "fingerprint": store.key, "fold": fold}


def save_fold_checkpoint(
    store: CheckpointStore, fold: int, kind: Kind, payload: dict[str, Any]
) -> Path:
    """Replace fold ``fold``'s unit by this payload (atomically, as the store does)."""
    body = {**_header(store, fold), **payload}
    meta = {"kind": kind, "epoch": int(payload.get("epoch", payload.get("best_epoch", 0)))}
    return store.save(fold_unit(fold), {_FILE_OF_KIND[kind]: torch_save_writer(body)}, meta=meta)


def load_fold_checkpoint(store: CheckpointStore, fold: int) -> FoldCheckpoint | None:
    """Fold ``fold``'s checkpoint if it verifies, loads and belongs to this run; else None.

    Every reason to ignore one is logged (the stage's log is how a user learns that a
    checkpoint was not used, and tests read it).
    """
    unit_dir = store.unit_dir(fold_unit(fold))
    if not unit_dir.exists():
        return None
    try:
        unit = store.load(fold_unit(fold))
    except CheckpointError as error:
        if not store.is_done(fold_unit(fold)):
            log.warning("fold %d: ignoring checkpoint %s: %s", fold, unit_dir, error)
        else:
            log.warning(
                "fold %d: checkpoint %s is unreadable (%s); restarting the fold",
                fold,
                unit_dir,
                error,
            )
        return None
    kind = unit.meta.get("kind")
    if kind not in _FILE_OF_KIND:
        log.warning("fold %d: ignoring checkpoint %s: unknown kind %r", fold, unit_dir, kind)
        return None
    path = unit.file(_FILE_OF_KIND[kind])
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any truncation/corruption shows up as some exception here
        first_line = str(error).splitlines()[0] if str(error) else ""
        log.warning(
            "fold %d: checkpoint %s is unreadable (%s: %s); restarting the fold",
            fold,
            path,
            type(error).__name__,
            first_line,
        )
        return None
    expected = _header(store, fold)
    found = {key: payload.get(key) for key in expected} if isinstance(payload, dict) else None
    if found != expected:
        log.warning(
            "fold %d: ignoring checkpoint %s: it is for %s, not %s", fold, path, found, expected
        )
        return None
    return FoldCheckpoint(kind, path, payload)


def discard_fold(store: CheckpointStore, fold: int) -> None:
    store.discard(fold_unit(fold))
