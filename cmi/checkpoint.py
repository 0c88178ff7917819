"""Resumable work inside a stage: small checkpoint "units" under a fingerprinted folder.

Layout: ``<base>/<fingerprint>/<unit>/`` where the fingerprint covers a stage's input files and
params (``cmi.io.fingerprint``), so a checkpoint made from other inputs is never found. A unit
(e.g. ``fold_3`` or ``last_epoch``) is a few files plus a ``done.json`` marker written LAST;
the marker holds the unit's metadata and the sha256 of every file, so a unit killed half-way
has no marker and one with a damaged file fails to load. DVC never sees this folder (it is
undeclared), which is what lets it survive DVC's deletion of a stage's outputs before a rerun.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmi.io import fingerprint, read_json, sha256_file, write_json, write_with

DONE_MARKER = "done.json"
FORMAT_VERSION = 1

FileWriter = Callable[[Path], Any]


class CheckpointError(RuntimeError):
    """A checkpoint unit exists but cannot be used (missing marker, damaged file, bad json)."""


@dataclass(frozen=True)
class LoadedUnit:
    """A verified unit: its folder and the metadata saved with it."""

    path: Path
    meta: dict[str, Any]

    def file(self, name: str) -> Path:
        return self.path / name


@dataclass(frozen=True)
class CheckpointStore:
    """The checkpoints of one stage for one fingerprint: ``base / key``."""

    base: Path
    key: str

    @classmethod
    def for_inputs(
        cls, base: Path, files: Iterable[Path], params: Any, salt: str = ""
    ) -> CheckpointStore:
        return cls(Path(base), fingerprint(files, params, salt))

    @property
    def root(self) -> Path:
        return self.base / self.key

    def unit_dir(self, name: str) -> Path:
        return self.root / name

    def is_done(self, name: str) -> bool:
        return (self.unit_dir(name) / DONE_MARKER).is_file()

    def begin(self, name: str) -> Path:
        """Start (or restart) a unit: an empty folder, so leftovers of a killed run go away."""
        self.discard(name)
        path = self.unit_dir(name)
        path.mkdir(parents=True)
        return path

    def save(
        self, name: str, files: Mapping[str, FileWriter], meta: Mapping[str, Any] | None = None
    ) -> Path:
        """Write a unit: every file via ``writer(tmp_path)``, then the marker with checksums.

        Everything is written into a staging folder that then replaces the unit folder, so a
        kill at any point leaves either the previous complete unit or the new one (a unit
        without a marker is never loaded).
        """
        for file_name in files:
            if file_name == DONE_MARKER or Path(file_name).name != file_name:
                raise ValueError(f"checkpoint file name {file_name!r} is not allowed")
        staging = self.root / f".{name}.staging-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        checksums = {}
        for file_name, writer in files.items():
            write_with(staging / file_name, writer)
            checksums[file_name] = sha256_file(staging / file_name)
        marker = {"version": FORMAT_VERSION, "files": checksums, "meta": dict(meta or {})}
        write_json(marker, staging / DONE_MARKER)
        path = self.unit_dir(name)
        if path.exists():
            previous = self.root / f".{name}.previous-{os.getpid()}"
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(path, previous)
            os.replace(staging, path)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.replace(staging, path)
        return path

    def load(self, name: str) -> LoadedUnit:
        """A finished unit, verified against its checksums; CheckpointError if unusable."""
        path = self.unit_dir(name)
        marker_path = path / DONE_MARKER
        if not marker_path.is_file():
            raise CheckpointError(f"{path}: no {DONE_MARKER} (unit not finished)")
        try:
            marker = read_json(marker_path)
            version, checksums, meta = marker["version"], marker["files"], marker["meta"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{marker_path}: unreadable marker ({err})") from err
        if version != FORMAT_VERSION:
            raise CheckpointError(f"{marker_path}: format version {version}, need {FORMAT_VERSION}")
        for file_name, expected in checksums.items():
            file_path = path / file_name
            if not file_path.is_file():
                raise CheckpointError(f"{file_path}: missing")
            if sha256_file(file_path) != expected:
                raise CheckpointError(f"{file_path}: checksum mismatch (damaged file)")
        return LoadedUnit(path=path, meta=meta)

    def peek_meta(self, name: str) -> dict[str, Any]:
        """The ``meta`` a unit's marker records, unverified ({} if there is none or it is
        unreadable): a cheap look before ``load``, which verifies."""
        try:
            meta = read_json(self.unit_dir(name) / DONE_MARKER).get("meta", {})
        except (OSError, ValueError, AttributeError):
            return {}
        return dict(meta) if isinstance(meta, dict) else {}

    def discard(self, name: str) -> None:
        """Remove a unit and whatever a killed ``save`` of it left behind."""
        shutil.rmtree(self.unit_dir(name), ignore_errors=True)
        for leftover in self.root.glob(f".{name}.*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def prune_others(self) -> list[Path]:
        """Delete checkpoints of other fingerprints (they can never be used again)."""
        removed = []
        if not self.base.is_dir():
            return removed
        for child in sorted(self.base.iterdir()):
            if child.is_dir() and child.name != self.key:
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
        return removed


def write_json_file(payload: Any) -> FileWriter:
    """A FileWriter for ``CheckpointStore.save`` that dumps ``payload`` as json."""
    text = json.dumps(payload, indent=2)
    return lambda tmp: tmp.write_text(text, encoding="utf-8")


def write_text_file(text: str) -> FileWriter:
    return lambda tmp: tmp.write_text(text, encoding="utf-8")
