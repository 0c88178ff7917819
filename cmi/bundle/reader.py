"""Verify and load a bundle: the reader half, on the Kaggle path (no training code, no torch or
lightgbm import until a part is actually loaded).

``load_bundle`` checks, in order: the manifest's format and version, its seal (see
``cmi.bundle.seal``: any edit to the manifest after it was built is refused, naming the key),
optionally a pinned digest, that every file present is listed and nothing looks like a pickle,
and each model file's sha256 before parsing it from the bytes it has just verified.

Besides the gesture models, a bundle may hold the orientation classifier's fold models (for
subject-level post-processing) and always says which post-processing it was built for
(``postprocess``: method, mode, combine; ``none`` for bundles built before it existed).

The Torch part lists every member of every fold (``torch.members``: fold, kind, seed,
weights, scaler, pad_len), as the torch stage trained them (``cmi.nn.members``): kind
"full" members read ``torch.channels`` with ``torch.architecture``, kind "imu" members (the
IMU-only models) ``torch.imu_model``'s channels and architecture.
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmi.bundle.files import (
    MANIFEST_NAME,
    BundleError,
    check_tree,
    file_entry,
    read_verified,
    safe_relpath,
)
from cmi.bundle.seal import SealError, manifest_digest, verify_seal
from cmi.bundle.torch_part import TorchPart, load_torch
from cmi.io import read_json
from cmi.params import ExtractParams, check_postprocess
from cmi.schema import GESTURES, ORIENTATIONS
from cmi.wear.detect import WearModel
from cmi.weights import BlendError, BlendWeights

log = logging.getLogger("cmi.bundle")

FORMAT_NAME = "cmi-bundle"
# 2: the manifest carries a seal. 3: the Torch part lists members (several seeds per fold,
# IMU-only models) instead of one model per fold. Older bundles are refused: rebuild them.
FORMAT_VERSION = 3
PARTS: tuple[str, ...] = ("lgbm", "torch", "orientation")
VERSIONED_PACKAGES: tuple[str, ...] = (
    "cmi",
    "lightgbm",
    "torch",
    "polars",
    "numpy",
    "safetensors",
)


# --------------------------------------------------------------------------------------------
# Loaded form
# --------------------------------------------------------------------------------------------


@dataclass
class LgbmPart:
    feature_names: list[str]
    boosters: list[Any]  # lightgbm.Booster, one per fold
    best_iterations: list[int | None]


@dataclass
class OrientationPart:
    """The orientation classifier's fold models (IMU sequence features only)."""

    feature_names: list[str]
    boosters: list[Any]  # lightgbm.Booster, one per fold; 4 classes in ORIENTATIONS order


@dataclass(frozen=True)
class PostprocessSettings:
    """The subject-level post-processing a bundle was built for (``cmi.postprocess``)."""

    method: str = "none"
    mode: str = "resolve"
    combine: str = "max"

    def __post_init__(self) -> None:
        check_postprocess(self.method, self.mode, self.combine)

    def to_json(self) -> dict[str, str]:
        return {"method": self.method, "mode": self.mode, "combine": self.combine}


@dataclass
class Bundle:
    root: Path
    manifest: dict[str, Any]
    classes: list[str]
    extract: ExtractParams
    blend: BlendWeights
    lgbm: LgbmPart | None = None
    torch: TorchPart | None = None
    orientation: OrientationPart | None = None
    postprocess: PostprocessSettings = field(default_factory=PostprocessSettings)
    versions: dict[str, str] = field(default_factory=dict)
    wear: WearModel | None = None  # the upside-down detector (extract.fix_upside_down)

    @property
    def has_torch(self) -> bool:
        return self.torch is not None and bool(self.torch.members)

    @property
    def digest(self) -> str:
        """The sealed manifest's digest (``sha256:<hex>``): names this exact bundle."""
        return manifest_digest(self.manifest)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def check_classes(classes: Any, source: Path) -> None:
    if list(classes or []) != list(GESTURES):
        raise BundleError(f"{source}: 'classes' is not the 18 gestures in cmi.schema order")


# --------------------------------------------------------------------------------------------
# The manifest and the file tree
# --------------------------------------------------------------------------------------------


def read_manifest(root: Path, expected_digest: str | None = None) -> dict[str, Any]:
    """The verified manifest of the bundle at ``root``; BundleError names what failed."""
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
    try:
        digest = verify_seal(manifest)
    except SealError as err:
        raise BundleError(f"{path}: {err}") from err
    if expected_digest is not None and digest != expected_digest:
        raise BundleError(
            f"{path}: bundle digest {digest} is not the pinned {expected_digest}; this is not "
            "the bundle the submission was packaged with"
        )
    for key in ("classes", "extract", "lgbm", "files", "blend"):
        if key not in manifest:
            raise BundleError(f"{path}: missing key {key!r}")
    if not isinstance(manifest["files"], dict):
        raise BundleError(f"{path}: 'files' must map paths to checksums")
    check_classes(manifest["classes"], path)
    return manifest


# --------------------------------------------------------------------------------------------
# Model parts
# --------------------------------------------------------------------------------------------


def _load_booster(path: Path, data: bytes) -> Any:
    import lightgbm

    try:
        return lightgbm.Booster(model_str=data.decode("utf-8"))
    except (UnicodeDecodeError, lightgbm.basic.LightGBMError) as err:
        raise BundleError(f"{path}: not a LightGBM text model ({err})") from err


def _load_lgbm(root: Path, section: dict[str, Any], files: dict[str, Any]) -> LgbmPart:
    names = list(section["feature_names"])
    boosters, best = [], []
    for fold in section["folds"]:
        path, sha, size = file_entry(files, fold["model"], root)
        booster = _load_booster(path, read_verified(path, sha, size))
        if booster.num_feature() != len(names):
            raise BundleError(
                f"{path}: model has {booster.num_feature()} features, manifest lists {len(names)}"
            )
        boosters.append(booster)
        best.append(fold.get("best_iteration"))
    if not boosters:
        raise BundleError(f"{root / MANIFEST_NAME}: the LightGBM part has no folds")
    return LgbmPart(names, boosters, best)


def _load_orientation(
    root: Path, section: dict[str, Any], files: dict[str, Any]
) -> OrientationPart:
    if list(section.get("classes") or []) != list(ORIENTATIONS):
        raise BundleError(
            f"{root / MANIFEST_NAME}: orientation 'classes' is not cmi.schema.ORIENTATIONS"
        )
    names = list(section["feature_names"])
    boosters = []
    for fold in section["folds"]:
        path, sha, size = file_entry(files, fold["model"], root)
        booster = _load_booster(path, read_verified(path, sha, size))
        if booster.num_feature() != len(names):
            raise BundleError(
                f"{path}: model has {booster.num_feature()} features, manifest lists {len(names)}"
            )
        if booster.num_model_per_iteration() != len(ORIENTATIONS):
            raise BundleError(f"{path}: not a {len(ORIENTATIONS)}-class orientation model")
        boosters.append(booster)
    if not boosters:
        raise BundleError(f"{root / MANIFEST_NAME}: the orientation part has no folds")
    return OrientationPart(names, boosters)


def _postprocess_settings(manifest: dict[str, Any], source: Path) -> PostprocessSettings:
    section = manifest.get("postprocess")
    if section is None:  # built before post-processing existed: it answers the plain argmax
        return PostprocessSettings()
    try:
        return PostprocessSettings(**section)
    except (TypeError, ValueError) as err:
        raise BundleError(f"{source}: bad 'postprocess' section: {err}") from err


def _wear_model(manifest: dict[str, Any], extract: ExtractParams, source: Path) -> WearModel | None:
    """The upside-down detector: present exactly when the features were built with
    ``extract.fix_upside_down`` (inference must rotate back as training did)."""
    section = manifest.get("wear")
    if extract.fix_upside_down != (section is not None):
        raise BundleError(
            f"{source}: extract.fix_upside_down is {extract.fix_upside_down} but the 'wear' "
            f"section is {'absent' if section is None else 'present'}"
        )
    if section is None:
        return None
    try:
        return WearModel.from_dict(section)
    except (TypeError, ValueError, AttributeError) as err:
        raise BundleError(f"{source}: bad 'wear' section: {err}") from err


def load_bundle(
    root: Path | str,
    parts: Iterable[str] = PARTS,
    *,
    torch_in_memory: bool = True,
    expected_digest: str | None = None,
) -> Bundle:
    """Verify and load a bundle. Raises BundleError naming the offending file or key.

    ``parts`` limits which models are loaded (and whose files must be present); a bundle
    without a Torch part loads as LightGBM-only, one without orientation models with
    ``orientation=None``. ``expected_digest`` (``sha256:<hex>``, as
    the bundle stage prints it) refuses any other bundle, however valid.
    """
    root = Path(root)
    manifest = read_manifest(root, expected_digest)
    files = manifest["files"]
    parts = tuple(parts)
    check_tree(root, files)
    for rel in files:
        safe_relpath(rel, root)
    try:
        extract = ExtractParams(**manifest["extract"])
        blend = BlendWeights.from_json(manifest["blend"], str(root / MANIFEST_NAME))
    except (TypeError, BlendError) as err:
        raise BundleError(
            f"{root / MANIFEST_NAME}: bad 'extract' or 'blend' section: {err}"
        ) from err
    postprocess = _postprocess_settings(manifest, root / MANIFEST_NAME)
    wear = _wear_model(manifest, extract, root / MANIFEST_NAME)
    bundle = Bundle(
        root=root,
        manifest=manifest,
        classes=list(manifest["classes"]),
        extract=extract,
        blend=blend,
        postprocess=postprocess,
        versions=dict(manifest.get("versions", {})),
        wear=wear,
    )
    try:
        if "lgbm" in parts and manifest["lgbm"]:
            bundle.lgbm = _load_lgbm(root, manifest["lgbm"], files)
        if "torch" in parts and manifest.get("torch"):
            bundle.torch = load_torch(root, manifest["torch"], files, torch_in_memory)
        if "orientation" in parts and manifest.get("orientation"):
            bundle.orientation = _load_orientation(root, manifest["orientation"], files)
    except (KeyError, TypeError) as err:
        raise BundleError(f"{root / MANIFEST_NAME}: malformed model section ({err!r})") from err
    _warn_on_version_drift(bundle.versions)
    return bundle


def _warn_on_version_drift(built_with: dict[str, str]) -> None:
    here = library_versions()
    for name in ("lightgbm", "torch"):
        if built_with.get(name) and built_with[name] != here.get(name):
            log.warning("bundle built with %s %s, running %s", name, built_with[name], here[name])
