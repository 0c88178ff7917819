"""The bundle's files: which may be in one, and reading each only after checking its sha256
(the low level under ``cmi.bundle.reader``; no torch or lightgbm import until a file is
parsed)."""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath
from typing import Any

MANIFEST_NAME = "manifest.json"
# Only these file types may be part of a bundle: both parse without executing anything.
# (LightGBM text models: the gesture models in lgbm/, the orientation models in orientation/.)
ALLOWED_SUFFIXES: dict[str, str] = {".txt": "lightgbm", ".safetensors": "torch"}
# Named explicitly so the error says why such a file is refused.
PICKLE_SUFFIXES: frozenset[str] = frozenset(
    {".pkl", ".pickle", ".joblib", ".pt", ".pth", ".ckpt", ".bin", ".npy", ".npz", ".dill", ".sav"}
)


class BundleError(ValueError):
    """A bundle is missing, malformed, tampered with, or unsafe; the message names the file."""


def check_tree(root: Path, files: dict[str, Any]) -> None:
    """Every file present must be listed, and nothing may look like a pickle."""
    for path in sorted(root.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST_NAME:
            continue
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise BundleError(f"{path}: refusing a pickle-like file ({path.suffix}) in a bundle")
        if rel not in files:
            raise BundleError(f"{path}: file is not listed in {root / MANIFEST_NAME}")


def safe_relpath(rel: str, root: Path) -> Path:
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise BundleError(f"{root / MANIFEST_NAME}: unsafe file path {rel!r}")
    suffix = pure.suffix.lower()
    if suffix in PICKLE_SUFFIXES or suffix not in ALLOWED_SUFFIXES:
        raise BundleError(
            f"{root / rel}: refusing file type {suffix or '(none)'!r}; a bundle holds only "
            f"{sorted(ALLOWED_SUFFIXES)}"
        )
    return root.joinpath(*pure.parts)


def read_verified(path: Path, sha256: str, size: int) -> bytes:
    if not path.is_file():
        raise BundleError(f"{path}: listed in the manifest but missing")
    data = path.read_bytes()
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
        raise BundleError(f"{path}: checksum mismatch (the file was modified or corrupted)")
    return data


def file_entry(files: dict[str, Any], rel: str, root: Path) -> tuple[Path, str, int]:
    if rel not in files:
        raise BundleError(f"{root / MANIFEST_NAME}: {rel!r} is used but has no checksum entry")
    info = files[rel]
    return safe_relpath(rel, root), str(info["sha256"]), int(info["size"])


def load_safetensors(path: Path, data: bytes) -> dict[str, Any]:
    import safetensors.torch

    try:
        return safetensors.torch.load(data)
    except Exception as err:  # safetensors raises its own error type for any bad header
        raise BundleError(f"{path}: not a valid safetensors file ({err})") from err
