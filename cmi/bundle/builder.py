"""Build a bundle from the training stages' outputs: the builder half (not on the Kaggle path:
it reads the torch stage's ``.pt`` state_dicts, with ``weights_only=True``).

Layout written::

    manifest.json                 format, classes, extract params, models, blend, versions,
                                  sha256 + size of every other file, and the seal
    lgbm/fold_{k}.txt             LightGBM text models
    torch/fold_{k}.safetensors    TimeSeriesNet state_dicts (optional part)
    orientation/fold_{k}.txt      the orientation classifier's LightGBM text models (optional
                                  part; post-processing's "assignment" method needs it)

The manifest's ``postprocess`` section (method, mode, combine) says which subject-level
post-processing inference applies (SUBJECT_POSTPROCESS can override it at load time).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from cmi.bundle.reader import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    BundleError,
    PostprocessSettings,
    check_classes,
    library_versions,
    load_bundle,
)
from cmi.bundle.seal import seal_manifest
from cmi.io import read_json, sha256_file, write_json
from cmi.params import ExtractParams, section_dict
from cmi.schema import GESTURES, ORIENTATIONS
from cmi.weights import BlendWeights


def _copy_lgbm(lgbm_dir: Path, staging: Path) -> dict[str, Any]:
    meta_path = lgbm_dir / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: not found; run the lgbm stage first")
    meta = read_json(meta_path)
    check_classes(meta.get("classes"), meta_path)
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


def _copy_orientation(orientation_dir: Path, staging: Path) -> dict[str, Any]:
    meta_path = orientation_dir / "meta.json"
    meta = read_json(meta_path)
    if list(meta.get("classes") or []) != list(ORIENTATIONS):
        raise BundleError(f"{meta_path}: 'classes' is not cmi.schema.ORIENTATIONS in order")
    n_folds = int(meta["n_folds"])
    best = list(meta.get("best_iterations") or [None] * n_folds)
    folds = []
    (staging / "orientation").mkdir(exist_ok=True)
    for k in range(n_folds):
        source = orientation_dir / f"fold_{k}.txt"
        if not source.exists():
            raise FileNotFoundError(f"{source}: orientation model of fold {k} not found")
        rel = f"orientation/fold_{k}.txt"
        shutil.copyfile(source, staging / rel)
        folds.append({"fold": k, "model": rel, "best_iteration": best[k]})
    return {
        "n_folds": n_folds,
        "feature_names": list(meta["feature_names"]),
        "classes": list(ORIENTATIONS),
        "folds": folds,
    }


def _convert_torch(torch_dir: Path, staging: Path) -> dict[str, Any]:
    import safetensors.torch

    from cmi.nn.model import TimeSeriesNet, load_state_dict_file

    meta_path = torch_dir / "meta.json"
    meta = read_json(meta_path)
    check_classes(meta.get("classes"), meta_path)
    # The bundle ships one full-input model per fold (fold_k.pt). Extra members (torch.seeds,
    # torch.imu_only_model) would be left out, and inference would silently differ from the
    # OOF that scored them: refuse instead.
    extra = [m["weights"] for m in meta.get("models", []) if m["weights"] != f"fold_{m['fold']}.pt"]
    if extra:
        raise BundleError(
            f"{meta_path}: {len(extra)} Torch member(s) beyond one model per fold (e.g. "
            f"{extra[:3]}; torch.seeds / torch.imu_only_model); the bundle does not ship them yet"
        )
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
    orientation: dict[str, Any] | None = None,
    postprocess: PostprocessSettings | None = None,
) -> dict[str, Any]:
    """The sealed manifest of the files in ``staging`` (write it last, beside them)."""
    return seal_manifest(
        {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "classes": list(GESTURES),
            "extract": section_dict(extract),
            "lgbm": lgbm,
            "torch": torch,
            "blend": blend.to_json(),
            "orientation": orientation,
            "postprocess": (postprocess or PostprocessSettings()).to_json(),
            "versions": library_versions(),
            "files": _file_table(staging),
        }
    )


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
    orientation_dir: Path | None = None,
    postprocess: PostprocessSettings | None = None,
) -> dict[str, Any]:
    """Write the bundle to ``out_dir`` atomically; returns its sealed manifest
    (``manifest["seal"]["digest"]`` names it).

    ``torch_dir=None`` (or one without meta.json) builds a LightGBM-only bundle.
    ``orientation_dir`` (the orientation stage's models; None or without meta.json: none)
    ships the orientation models, which ``postprocess.method == "assignment"`` requires.
    ``postprocess`` defaults to none (the plain argmax).
    """
    postprocess = postprocess or PostprocessSettings()
    has_orientation = orientation_dir is not None and (Path(orientation_dir) / "meta.json").exists()
    if postprocess.method == "assignment" and not has_orientation:
        raise FileNotFoundError(
            f"{orientation_dir}/meta.json: postprocess.method 'assignment' needs the orientation "
            "models; run the orientation stage (or set postprocess.method)"
        )
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        lgbm = _copy_lgbm(Path(lgbm_dir), staging)
        has_torch = torch_dir is not None and (Path(torch_dir) / "meta.json").exists()
        torch = _convert_torch(Path(torch_dir), staging) if has_torch else None
        blend = _read_blend(blend_weights, has_torch)
        orientation = (
            _copy_orientation(Path(orientation_dir), staging)  # type: ignore[arg-type]
            if has_orientation
            else None
        )
        manifest = build_manifest(staging, lgbm, torch, blend, extract, orientation, postprocess)
        write_json(manifest, staging / MANIFEST_NAME)
        load_bundle(staging)  # never ship a bundle that does not load
        swap_directory(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return manifest
