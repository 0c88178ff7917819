"""Settings of ``cmi.inference``, read from environment variables when the bundle first loads
(never at import time):

- ``MODEL_PATH``: the bundle directory, or its ``lgbm/`` part, or the folder `cmi package`
  wrote (default ``models/bundle``);
- ``TORCH_BUNDLE_PATH``: a bundle (or its ``torch/`` part) to take the Torch models from;
  its blend weights then apply, since they were fitted with both models;
- ``ENSEMBLE_W_LGBM`` / ``ENSEMBLE_W_TORCH``: override the bundle's blend weights (all groups);
- ``LOAD_TORCH_FOLDS_IN_MEMORY``: ``0`` loads each Torch member (every seed and kind of every
  fold) from disk, re-verified, on every call that uses it;
- ``FAIL_IF_TORCH_MISSING``: ``1`` makes a missing or failing Torch part an error; by
  default inference falls back to LightGBM alone and logs why;
- ``BUNDLE_DIGEST``: refuse any bundle (at MODEL_PATH) whose sealed digest is not this one
  (the Kaggle notebook pins the digest `cmi package` wrote into it);
- ``SUBJECT_POSTPROCESS``: ``assignment``, ``gesture_counts`` or ``none``: the subject-level
  post-processing to apply instead of the one the bundle was built for.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cmi.bundle import MANIFEST_NAME
from cmi.params import POSTPROCESS_METHODS

DEFAULT_BUNDLE = Path("models/bundle")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _env_flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"environment variable {name}={raw!r}: expected 0 or 1")


def _env_float(environ: Mapping[str, str], name: str) -> float | None:
    raw = environ.get(name)
    if raw is None or not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r}: not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"environment variable {name}={raw!r}: must be a number >= 0")
    return value


def _env_choice(environ: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    raw = environ.get(name)
    if raw is None or not raw.strip():
        return None
    value = raw.strip().lower()
    if value not in choices:
        raise ValueError(f"environment variable {name}={raw!r}: expected one of {choices}")
    return value


def resolve_bundle_root(path: Path, part: str) -> Path:
    """A bundle root from a path to the bundle, its manifest, its ``part`` subfolder, or the
    folder `cmi package` wrote (which holds ``bundle/``)."""
    path = Path(path)
    if path.name == MANIFEST_NAME and path.is_file():
        return path.parent
    if not (path / MANIFEST_NAME).exists() and (path / "bundle" / MANIFEST_NAME).exists():
        return path / "bundle"
    is_part = path.name == part and not (path / MANIFEST_NAME).exists()
    if is_part and (path.parent / MANIFEST_NAME).exists():
        return path.parent
    return path


@dataclass(frozen=True)
class InferenceSettings:
    model_path: Path = DEFAULT_BUNDLE
    torch_path: Path | None = None
    w_lgbm: float | None = None
    w_torch: float | None = None
    torch_folds_in_memory: bool = True
    fail_if_torch_missing: bool = False
    expected_digest: str | None = None  # "sha256:<hex>" of the bundle at model_path
    postprocess_method: str | None = None  # None: the bundle's postprocess.method

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, bundle_dir: Path | None = None
    ) -> InferenceSettings:
        """Settings from the environment; ``bundle_dir`` (e.g. ``cmi predict --bundle``) wins
        over MODEL_PATH."""
        env = os.environ if environ is None else environ
        model_path = bundle_dir or Path(env.get("MODEL_PATH") or DEFAULT_BUNDLE)
        torch_path = env.get("TORCH_BUNDLE_PATH")
        return cls(
            model_path=Path(model_path),
            torch_path=Path(torch_path) if torch_path else None,
            w_lgbm=_env_float(env, "ENSEMBLE_W_LGBM"),
            w_torch=_env_float(env, "ENSEMBLE_W_TORCH"),
            torch_folds_in_memory=_env_flag(env, "LOAD_TORCH_FOLDS_IN_MEMORY", True),
            fail_if_torch_missing=_env_flag(env, "FAIL_IF_TORCH_MISSING", False),
            expected_digest=(env.get("BUNDLE_DIGEST") or "").strip() or None,
            postprocess_method=_env_choice(env, "SUBJECT_POSTPROCESS", POSTPROCESS_METHODS),
        )
