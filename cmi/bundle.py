"""The inference bundle: one self-describing, checksummed directory that never needs unpickling.

Layout::

    manifest.json                 format, classes, extract params, models, blend, versions,
                                  sha256 + size of every other file
    lgbm/fold_{k}.txt             LightGBM text models
    torch/fold_{k}.safetensors    TimeSeriesNet state_dicts (optional part)

``load_bundle`` verifies the format version and every checksum, refuses files the manifest
does not list and anything with a pickle-like extension, and parses models only from the
bytes it has just verified.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import shutil
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from cmi.blend import BlendError, BlendWeights
from cmi.io import read_json, sha256_file, write_json
from cmi.params import ExtractParams
from cmi.schema import GESTURES

log = logging.getLogger(__name__)

FORMAT_NAME = "cmi-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
PARTS: tuple[str, ...] = ("lgbm", "torch")
# Only these file types may be part of a bundle: both parse without executing anything.
ALLOWED_SUFFIXES: dict[str, str] = {".txt": "lgbm", ".safetensors": "torch"}
# Named explicitly so the error says why such a file is refused.
PICKLE_SUFFIXES: frozenset[str] = frozenset(
    {".pkl", ".pickle", ".joblib", ".pt", ".pth", ".ckpt", ".bin", ".npy", ".npz", ".dill", ".sav"}
)
VERSIONED_PACKAGES: tuple[str, ...] = (
    "cmi",
    "lightgbm",
    "torch",
    "polars",
    "numpy",
    "safetensors",
)


class BundleError(ValueError):
    """A bundle is missing, malformed, tampered with, or unsafe; the message names the file."""


# --------------------------------------------------------------------------------------------
# Loaded form
# --------------------------------------------------------------------------------------------


@dataclass
class LgbmPart:
    feature_names: list[str]
    boosters: list[Any]  # lightgbm.Booster, one per fold
    best_iterations: list[int | None]


@dataclass
class TorchFold:
    fold: int
    scaler: dict[str, Any]  # the fold's scaler json ({"channels", "mean", "std", ...})
    pad_len: int
    path: Path
    sha256: str
    size: int
    state_dict: dict[str, Any] | None = None  # None when folds load on demand

    def load_state_dict(self) -> dict[str, Any]:
        """The fold's weights: from memory, or re-read and re-verified from disk."""
        if self.state_dict is not None:
            return self.state_dict
        return _load_safetensors(self.path, _read_verified(self.path, self.sha256, self.size))


@dataclass
class TorchPart:
    channels: list[str]
    pad_len: int
    keep: str
    architecture: dict[str, Any]
    folds: list[TorchFold]


@dataclass
class Bundle:
    root: Path
    manifest: dict[str, Any]
    classes: list[str]
    extract: ExtractParams
    blend: BlendWeights
    lgbm: LgbmPart | None = None
    torch: TorchPart | None = None
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def has_torch(self) -> bool:
        return self.torch is not None and bool(self.torch.folds)


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def _check_classes(classes: Any, source: Path) -> None:
    if list(classes or []) != list(GESTURES):
        raise BundleError(f"{source}: 'classes' is not the 18 gestures in cmi.schema order")


def _copy_lgbm(lgbm_dir: Path, staging: Path) -> dict[str, Any]:
    meta_path = lgbm_dir / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: not found; run the lgbm stage first")
    meta = read_json(meta_path)
    _check_classes(meta.get("classes"), meta_path)
    n_folds = int(meta["n_folds"])
    best = list(meta.get("best_iterations") or [None] * n_folds)
    folds = []
    for k in range(n_folds):
        source = lgbm_dir / f"fold_{k}.txt"
        if not source.exists():
            raise FileNotFoundError(f"{source}: LightGBM model of fold {k} not found")
        rel = f"lgbm/fold_{k}.txt"
        (staging / "lgbm").mkdir(exist_ok=True)
        shutil.copyfile(source, staging / rel)
        folds.append({"fold": k, "model": rel, "best_iteration": best[k]})
    return {"n_folds": n_folds, "feature_names": list(meta["feature_names"]), "folds": folds}


def _convert_torch(torch_dir: Path, staging: Path) -> dict[str, Any]:
    import safetensors.torch

    from cmi.nn.model import TimeSeriesNet, load_state_dict_file

    meta_path = torch_dir / "meta.json"
    meta = read_json(meta_path)
    _check_classes(meta.get("classes"), meta_path)
    architecture = dict(meta["architecture"])
    probe = TimeSeriesNet(**architecture)
    folds = []
    (staging / "torch").mkdir(exist_ok=True)
    for k in range(int(meta["n_folds"])):
        weights = torch_dir / f"fold_{k}.pt"
        scaler_path = torch_dir / f"fold_{k}_scaler.json"
        for path in (weights, scaler_path):
            if not path.exists():
                raise FileNotFoundError(f"{path}: Torch file of fold {k} not found")
        state = load_state_dict_file(weights)  # weights_only=True: never unpickles code
        try:
            probe.load_state_dict(state)  # strict: a mismatch fails now, not on Kaggle
        except RuntimeError as err:
            raise BundleError(f"{weights}: does not fit meta.json's architecture: {err}") from err
        tensors = {name: t.detach().cpu().contiguous().clone() for name, t in state.items()}
        rel = f"torch/fold_{k}.safetensors"
        safetensors.torch.save_file(tensors, str(staging / rel))
        scaler = read_json(scaler_path)
        pad_len = int(scaler.get("pad_len", meta["pad_len"]))
        folds.append({"fold": k, "weights": rel, "scaler": scaler, "pad_len": pad_len})
    return {
        "n_folds": len(folds),
        "channels": list(meta["channels"]),
        "pad_len": int(meta["pad_len"]),
        "keep": str(meta["keep"]),
        "architecture": architecture,
        "folds": folds,
    }


def _file_table(staging: Path) -> dict[str, dict[str, Any]]:
    table = {}
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        rel = path.relative_to(staging).as_posix()
        table[rel] = {
            "sha256": sha256_file(path),
            "size": path.stat().st_size,
            "part": rel.split("/", 1)[0],
        }
    return table


def build_manifest(
    staging: Path,
    lgbm: dict[str, Any],
    torch: dict[str, Any] | None,
    blend: BlendWeights,
    extract: ExtractParams,
) -> dict[str, Any]:
    from cmi.params import section_dict

    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "classes": list(GESTURES),
        "extract": section_dict(extract),
        "lgbm": lgbm,
        "torch": torch,
        "blend": blend.to_json(),
        "versions": library_versions(),
        "files": _file_table(staging),
    }


def _read_blend(path: Path | None, has_torch: bool) -> BlendWeights:
    if not has_torch:
        return BlendWeights({"lgbm": 1.0, "torch": 0.0}, None, "none")
    if path is None or not Path(path).exists():
        raise FileNotFoundError(f"{path}: blend weights not found; run the oof_blend stage first")
    return BlendWeights.from_json(read_json(path), str(path))


def swap_directory(staging: Path, target: Path) -> None:
    """Replace ``target`` by ``staging`` (same parent): a reader sees the old or the new tree,
    and a crash at worst leaves the old tree beside it under a hidden name."""
    old = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()


def build_bundle(
    out_dir: Path,
    lgbm_dir: Path,
    torch_dir: Path | None,
    blend_weights: Path | None,
    extract: ExtractParams,
) -> dict[str, Any]:
    """Write the bundle to ``out_dir`` atomically; returns its manifest.

    ``torch_dir=None`` (or one without meta.json) builds a LightGBM-only bundle.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        lgbm = _copy_lgbm(Path(lgbm_dir), staging)
        has_torch = torch_dir is not None and (Path(torch_dir) / "meta.json").exists()
        torch = _convert_torch(Path(torch_dir), staging) if has_torch else None
        blend = _read_blend(blend_weights, has_torch)
        manifest = build_manifest(staging, lgbm, torch, blend, extract)
        write_json(manifest, staging / MANIFEST_NAME)
        load_bundle(staging)  # never ship a bundle that does not load
        swap_directory(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return manifest


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _read_manifest(root: Path) -> dict[str, Any]:
    if not root.is_dir():
        raise BundleError(f"{root}: bundle directory not found")
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{path}: not found; {root} is not a cmi bundle")
    try:
        manifest = read_json(path)
    except (ValueError, UnicodeDecodeError) as err:
        raise BundleError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise BundleError(f"{path}: not a {FORMAT_NAME} manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{path}: format_version {version!r} is not supported "
            f"(this cmi reads version {FORMAT_VERSION}); rebuild the bundle with this cmi"
        )
    for key in ("classes", "extract", "lgbm", "files", "blend"):
        if key not in manifest:
            raise BundleError(f"{path}: missing key {key!r}")
    if not isinstance(manifest["files"], dict):
        raise BundleError(f"{path}: 'files' must map paths to checksums")
    _check_classes(manifest["classes"], path)
    return manifest


def _check_tree(root: Path, files: dict[str, Any]) -> None:
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


def _safe_relpath(rel: str, root: Path) -> Path:
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


def _read_verified(path: Path, sha256: str, size: int) -> bytes:
    import hashlib

    if not path.is_file():
        raise BundleError(f"{path}: listed in the manifest but missing")
    data = path.read_bytes()
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
        raise BundleError(f"{path}: checksum mismatch (the file was modified or corrupted)")
    return data


def _load_safetensors(path: Path, data: bytes) -> dict[str, Any]:
    import safetensors.torch

    try:
        return safetensors.torch.load(data)
    except Exception as err:  # safetensors raises its own error type for any bad header
        raise BundleError(f"{path}: not a valid safetensors file ({err})") from err


def _load_booster(path: Path, data: bytes) -> Any:
    import lightgbm

    try:
        return lightgbm.Booster(model_str=data.decode("utf-8"))
    except (UnicodeDecodeError, lightgbm.basic.LightGBMError) as err:
        raise BundleError(f"{path}: not a LightGBM text model ({err})") from err


def _entry(files: dict[str, Any], rel: str, root: Path) -> tuple[Path, str, int]:
    if rel not in files:
        raise BundleError(f"{root / MANIFEST_NAME}: {rel!r} is used but has no checksum entry")
    info = files[rel]
    return _safe_relpath(rel, root), str(info["sha256"]), int(info["size"])


def _load_lgbm(root: Path, section: dict[str, Any], files: dict[str, Any]) -> LgbmPart:
    names = list(section["feature_names"])
    boosters, best = [], []
    for fold in section["folds"]:
        path, sha, size = _entry(files, fold["model"], root)
        booster = _load_booster(path, _read_verified(path, sha, size))
        if booster.num_feature() != len(names):
            raise BundleError(
                f"{path}: model has {booster.num_feature()} features, manifest lists {len(names)}"
            )
        boosters.append(booster)
        best.append(fold.get("best_iteration"))
    if not boosters:
        raise BundleError(f"{root / MANIFEST_NAME}: the LightGBM part has no folds")
    return LgbmPart(names, boosters, best)


def _load_torch(
    root: Path, section: dict[str, Any], files: dict[str, Any], in_memory: bool
) -> TorchPart:
    channels = list(section["channels"])
    folds = []
    for fold in section["folds"]:
        path, sha, size = _entry(files, fold["weights"], root)
        # Verified (and parsed) even when folds load on demand, so a bad file fails now.
        state = _load_safetensors(path, _read_verified(path, sha, size))
        scaler = dict(fold["scaler"])
        if list(scaler.get("channels", [])) != channels:
            raise BundleError(f"{root / MANIFEST_NAME}: fold {fold['fold']} scaler channels differ")
        folds.append(
            TorchFold(
                fold=int(fold["fold"]),
                scaler=scaler,
                pad_len=int(fold.get("pad_len", section["pad_len"])),
                path=path,
                sha256=sha,
                size=size,
                state_dict=state if in_memory else None,
            )
        )
    return TorchPart(
        channels=channels,
        pad_len=int(section["pad_len"]),
        keep=str(section["keep"]),
        architecture=dict(section["architecture"]),
        folds=folds,
    )


def load_bundle(
    root: Path | str,
    parts: Iterable[str] = PARTS,
    *,
    torch_in_memory: bool = True,
) -> Bundle:
    """Verify and load a bundle. Raises BundleError naming the offending file.

    ``parts`` limits which models are loaded (and whose files must be present); a bundle
    without a Torch part loads as LightGBM-only.
    """
    root = Path(root)
    manifest = _read_manifest(root)
    files = manifest["files"]
    parts = tuple(parts)
    _check_tree(root, files)
    for rel in files:
        _safe_relpath(rel, root)
    try:
        extract = ExtractParams(**manifest["extract"])
        blend = BlendWeights.from_json(manifest["blend"], str(root / MANIFEST_NAME))
    except (TypeError, BlendError) as err:
        raise BundleError(
            f"{root / MANIFEST_NAME}: bad 'extract' or 'blend' section: {err}"
        ) from err
    bundle = Bundle(
        root=root,
        manifest=manifest,
        classes=list(manifest["classes"]),
        extract=extract,
        blend=blend,
        versions=dict(manifest.get("versions", {})),
    )
    try:
        if "lgbm" in parts and manifest["lgbm"]:
            bundle.lgbm = _load_lgbm(root, manifest["lgbm"], files)
        if "torch" in parts and manifest.get("torch"):
            bundle.torch = _load_torch(root, manifest["torch"], files, torch_in_memory)
    except (KeyError, TypeError) as err:
        raise BundleError(f"{root / MANIFEST_NAME}: malformed model section ({err!r})") from err
    _warn_on_version_drift(bundle.versions)
    return bundle


def _warn_on_version_drift(built_with: dict[str, str]) -> None:
    here = library_versions()
    for name in ("lightgbm", "torch"):
        if built_with.get(name) and built_with[name] != here.get(name):
            log.warning("bundle built with %s %s, running %s", name, built_with[name], here[name])
