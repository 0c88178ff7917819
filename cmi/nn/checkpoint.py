"""Torch fold checkpoints on the generic store (``cmi.checkpoint.CheckpointStore``).

Layout: ``checkpoints/torch/<fingerprint>/<member>/`` (``fold_{k}`` for a fold's single
model; ``cmi.nn.members`` names the others) is one store unit holding either ``last.pt``
(written after every epoch of a member in training) or ``done.pt`` (a finished member: best
weights, OOF probabilities, scaler, curves), plus the store's ``done.json`` marker with
checksums, so a damaged file is caught before ``torch.load``. Payloads load with
``torch.load(weights_only=True)`` and carry ``version``, ``fingerprint``, ``fold`` and
``unit``; one that does not match, does not verify, or does not load is reported and never
used. Log lines name the member by its label ("fold k", "fold k (fold_k_imu)").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from cmi.checkpoint import CheckpointError, CheckpointStore
from cmi.nn.members import Member
from cmi.nn.model import torch_save_writer

CHECKPOINT_VERSION = 3  # 2: units of the generic store, views; 3: one unit per member
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
    """The unit of a fold's single (first-seed, full-input) model."""
    return f"fold_{fold}"


def _header(store: CheckpointStore, member: Member) -> dict[str, Any]:
    return {
        "version": CHECKPOINT_VERSION,
        "fingerprint": store.key,
        "fold": member.fold,
        "unit": member.name,
    }


def save_member_checkpoint(
    store: CheckpointStore, member: Member, kind: Kind, payload: dict[str, Any]
) -> Path:
    """Replace ``member``'s unit by this payload (atomically, as the store does)."""
    body = {**_header(store, member), **payload}
    meta = {"kind": kind, "epoch": int(payload.get("epoch", payload.get("best_epoch", 0)))}
    return store.save(member.name, {_FILE_OF_KIND[kind]: torch_save_writer(body)}, meta=meta)


def load_member_checkpoint(store: CheckpointStore, member: Member) -> FoldCheckpoint | None:
    """``member``'s checkpoint if it verifies, loads and belongs to this run; else None.

    Every reason to ignore one is logged (the stage's log is how a user learns that a
    checkpoint was not used, and tests read it).
    """
    label, unit_name = member.label, member.name
    unit_dir = store.unit_dir(unit_name)
    if not unit_dir.exists():
        return None
    try:
        unit = store.load(unit_name)
    except CheckpointError as error:
        if not store.is_done(unit_name):
            log.warning("%s: ignoring checkpoint %s: %s", label, unit_dir, error)
        else:
            log.warning(
                "%s: checkpoint %s is unreadable (%s); restarting the fold",
                label,
                unit_dir,
                error,
            )
        return None
    kind = unit.meta.get("kind")
    if kind not in _FILE_OF_KIND:
        log.warning("%s: ignoring checkpoint %s: unknown kind %r", label, unit_dir, kind)
        return None
    path = unit.file(_FILE_OF_KIND[kind])
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any truncation/corruption shows up as some exception here
        first_line = str(error).splitlines()[0] if str(error) else ""
        log.warning(
            "%s: checkpoint %s is unreadable (%s: %s); restarting the fold",
            label,
            path,
            type(error).__name__,
            first_line,
        )
        return None
    expected = _header(store, member)
    found = {key: payload.get(key) for key in expected} if isinstance(payload, dict) else None
    if found != expected:
        log.warning(
            "%s: ignoring checkpoint %s: it is for %s, not %s", label, path, found, expected
        )
        return None
    return FoldCheckpoint(kind, path, payload)


def is_finished(store: CheckpointStore, member: Member) -> bool:
    """Whether ``member``'s unit says it holds a finished model (its marker's meta only, not
    verified: ``load_member_checkpoint`` verifies before anything is used)."""
    return store.peek_meta(member.name).get("kind") == "finished"


def discard_member(store: CheckpointStore, member: Member) -> None:
    store.discard(member.name)
