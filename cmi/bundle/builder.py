"""Build a bundle from the training stages' outputs: the builder half (not on the Kaggle path:
it reads the torch stage's ``.pt`` state_dicts, with ``weights_only=True``).

Layout written::

    manifest.json                 format, classes, extract params, models, blend, versions,
                                  sha256 + size of every other file, and the seal
    lgbm/fold_{k}.txt             LightGBM text models
    torch/<member>.safetensors    TimeSeriesNet state_dicts (optional part), one per member
                                  the torch stage trained: fold_{k} (first seed),
                                  fold_{k}_seed_{s}, fold_{k}_imu, fold_{k}_imu_seed_{s}
    orientation/fold_{k}.txt      the orientation classifier's LightGBM text models (optional
                                  part; post-processing's "assignment" method needs it)

The manifest's ``torch.members`` lists every member of meta.json's ``models`` (each with its
scaler and pad_len), so inference averages exactly the members the OOF averaged; a weights
file meta.json does not list is refused rather than left out.
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

from cmi.bundle.files import MANIFEST_NAME, BundleError
from cmi.bundle.reader import (
    FORMAT_NAME,
    FORMAT_VERSION,
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


def _member_entries(meta: dict[str, Any], meta_path: Path) -> list[dict[str, Any]]:
    """meta.json's ``models`` (one entry per member file); a meta.json written before members
    existed has one full-input model per fold (fold_{k}.pt, fold_{k}_scaler.json)."""
    if "models" not in meta:
        n_folds = int(meta["n_folds"])
        return [{"fold": k, "kind": "full", "weights": f"fold_{k}.pt"} for k in range(n_folds)]
    entries = [dict(entry) for entry in meta["models"]]
    for entry in entries:
        for key in ("weights", "scaler"):
            name = str(entry.get(key) or "")
            # Plain file names beside meta.json: nothing outside the torch stage's folder.
            if not name or Path(name).name != name:
                raise BundleError(f"{meta_path}: member {entry}: bad {key} file name {name!r}")
    return entries


def _check_listed(torch_dir: Path, entries: list[dict[str, Any]], meta_path: Path) -> None:
    """Every weights file of the torch stage is a listed member: one left out would make
    inference differ from the OOF, which averaged it."""
    listed = {entry["weights"] for entry in entries}
    unlisted = sorted(p.name for p in torch_dir.glob("fold_*.pt") if p.name not in listed)
    if unlisted:
        raise BundleError(
            f"{meta_path}: weights {unlisted[:5]} are not listed in 'models'; rerun the torch "
            "stage (meta.json and the weights come from different runs)"
        )


def _convert_member(
    torch_dir: Path, entry: dict[str, Any], spec: dict[str, Any], staging: Path, meta: dict
) -> dict[str, Any]:
    """One member's weights as safetensors in ``staging/torch`` and its manifest entry."""
    import safetensors.torch

    from cmi.nn.model import TimeSeriesNet, load_state_dict_file

    scaler_name = entry.get("scaler") or f"fold_{entry['fold']}_scaler.json"
    weights, scaler_path = torch_dir / entry["weights"], torch_dir / scaler_name
    for path in (weights, scaler_path):
        if not path.exists():
            raise FileNotFoundError(f"{path}: Torch file of fold {entry['fold']} not found")
    state = load_state_dict_file(weights)  # weights_only=True: never unpickles code
    try:
        # strict: a mismatch fails now, not on Kaggle
        TimeSeriesNet(**spec["architecture"]).load_state_dict(state)
    except RuntimeError as err:
        raise BundleError(
            f"{weights}: does not fit meta.json's {entry['kind']} architecture: {err}"
        ) from err
    scaler = read_json(scaler_path)
    if list(scaler.get("channels", [])) != list(spec["channels"]):
        raise BundleError(f"{scaler_path}: channels are not the {entry['kind']} model's")
    tensors = {name: t.detach().cpu().contiguous().clone() for name, t in state.items()}
    rel = f"torch/{Path(entry['weights']).stem}.safetensors"
    safetensors.torch.save_file(tensors, str(staging / rel))
    seed = entry.get("seed")
    return {
        "fold": int(entry["fold"]),
        "kind": str(entry["kind"]),
        "seed": None if seed is None else int(seed),
        "weights": rel,
        "scaler": scaler,
        "pad_len": int(scaler.get("pad_len", meta["pad_len"])),
    }


def _check_coverage(members: list[dict[str, Any]], n_folds: int, meta_path: Path) -> None:
    """Each fold has a full-input member (it serves full-sensor inputs), and no file is
    listed twice (it would weigh double in the average)."""
    names = [m["weights"] for m in members]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise BundleError(f"{meta_path}: 'models' lists {twice} more than once")
    has_full = {m["fold"] for m in members if m["kind"] == "full"}
    without = [k for k in range(n_folds) if k not in has_full]
    if without:
        raise BundleError(f"{meta_path}: fold(s) {without} have no full-input member")


def _convert_torch(torch_dir: Path, staging: Path) -> dict[str, Any]:
    meta_path = torch_dir / "meta.json"
    meta = read_json(meta_path)
    check_classes(meta.get("classes"), meta_path)
    n_folds = int(meta["n_folds"])
    entries = _member_entries(meta, meta_path)
    _check_listed(torch_dir, entries, meta_path)
    imu_model = meta.get("imu_model")
    specs: dict[str, dict[str, Any]] = {"full": meta}
    if imu_model is not None:
        specs["imu"] = imu_model
    (staging / "torch").mkdir(exist_ok=True)
    members = []
    for entry in entries:
        kind, fold = entry.get("kind"), int(entry["fold"])
        if kind not in specs or not 0 <= fold < n_folds:
            raise BundleError(
                f"{meta_path}: member {entry['weights']}: kind {kind!r} fold {fold} (kinds "
                f"with an architecture here: {sorted(specs)}; folds 0..{n_folds - 1})"
            )
        members.append(_convert_member(torch_dir, entry, specs[kind], staging, meta))
    _check_coverage(members, n_folds, meta_path)
    return {
        "n_folds": n_folds,
        "channels": list(meta["channels"]),
        "pad_len": int(meta["pad_len"]),
        "keep": str(meta["keep"]),
        "architecture": dict(meta["architecture"]),
        "imu_model": (
            {
                "channels": list(imu_model["channels"]),
                "architecture": dict(imu_model["architecture"]),
            }
            if imu_model is not None
            else None
        ),
        "members": members,
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
    wear: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The sealed manifest of the files in ``staging`` (write it last, beside them);
    ``wear`` is the upside-down detector (``WearModel.to_dict``) when the features used it."""
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
            "wear": wear,
            "versions": library_versions(),
            "files": _file_table(staging),
        }
    )


def _read_wear(path: Path | None, extract: ExtractParams) -> dict[str, Any] | None:
    """The detector to ship (``WearModel.to_dict``) when ``extract.fix_upside_down``."""
    if not extract.fix_upside_down:
        return None
    from cmi.wear.pipeline import model_from_record

    if path is None or not Path(path).is_file():
        raise FileNotFoundError(
            f"{path}: extract.fix_upside_down is on but there is no wear model; run extract"
        )
    model = model_from_record(read_json(path), str(path))
    if model is None:
        raise ValueError(
            f"{path}: extract.fix_upside_down is on but the file says it was off; rerun extract"
        )
    return model.to_dict()


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
    wear_model: Path | None = None,
) -> dict[str, Any]:
    """Write the bundle to ``out_dir`` atomically; returns its sealed manifest
    (``manifest["seal"]["digest"]`` names it).

    ``torch_dir=None`` (or one without meta.json) builds a LightGBM-only bundle.
    ``orientation_dir`` (the orientation stage's models; None or without meta.json: none)
    ships the orientation models, which ``postprocess.method == "assignment"`` requires.
    ``postprocess`` defaults to none (the plain argmax).
    ``wear_model`` (extract's wear_model.json) ships the upside-down detector; it must hold
    one exactly when ``extract.fix_upside_down`` is on.
    """
    postprocess = postprocess or PostprocessSettings()
    wear = _read_wear(wear_model, extract)
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
        manifest = build_manifest(
            staging, lgbm, torch, blend, extract, orientation, postprocess, wear
        )
        write_json(manifest, staging / MANIFEST_NAME)
        load_bundle(staging)  # never ship a bundle that does not load
        swap_directory(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return manifest
