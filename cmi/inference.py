"""Predictions for one sequence at a time, as Kaggle's ``CMIInferenceServer`` asks for them.

The bundle loads once, lazily, on the first call (or on an explicit ``load()``, e.g. the
notebook's warm-up) and stays cached in this module. Settings come from environment
variables, read when the bundle first loads (never at import time):

- ``MODEL_PATH``: the bundle directory, or its ``lgbm/`` part, or the folder `cmi package`
  wrote (default ``models/bundle``);
- ``TORCH_BUNDLE_PATH``: a bundle (or its ``torch/`` part) to take the Torch models from;
  its blend weights then apply, since they were fitted with both models;
- ``ENSEMBLE_W_LGBM`` / ``ENSEMBLE_W_TORCH``: override the bundle's blend weights (all groups);
- ``LOAD_TORCH_FOLDS_IN_MEMORY``: ``0`` loads each Torch fold from disk on every call;
- ``FAIL_IF_TORCH_MISSING``: ``1`` makes a missing or failing Torch part an error; by
  default inference falls back to LightGBM alone and logs why.

Features come only from ``cmi.features`` (the training code path), Torch inputs only from
``cmi.nn.data.to_padded``. ``predict`` never raises: on any failure it logs and returns
``FALLBACK_GESTURE``.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from cmi.blend import BlendWeights, normalize_weights
from cmi.bundle import MANIFEST_NAME, Bundle, BundleError, TorchFold, TorchPart, load_bundle
from cmi.schema import GESTURES, N_CLASSES, SENSOR_COLUMNS

log = logging.getLogger(__name__)

DEFAULT_BUNDLE = Path("models/bundle")
# Answer when nothing can be computed. A target gesture: targets are about 60% of the
# training sequences, so this is right for the binary half of the metric more often than not.
FALLBACK_GESTURE = "Forehead - scratch"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class TorchUnavailableError(BundleError):
    """The Torch part is missing or failed and FAIL_IF_TORCH_MISSING asks for an error."""


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


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
        )


# --------------------------------------------------------------------------------------------
# The predictor
# --------------------------------------------------------------------------------------------


@dataclass
class _TorchFoldModel:
    fold: TorchFold
    scaler: Any  # cmi.nn.data.Scaler
    model: Any | None  # TimeSeriesNet when folds are kept in memory


class Predictor:
    """A loaded bundle plus everything needed to turn one sequence into probabilities."""

    def __init__(
        self,
        bundle: Bundle,
        torch_part: TorchPart | None,
        weights: BlendWeights,
        settings: InferenceSettings,
        torch_problem: str | None = None,
    ) -> None:
        if bundle.lgbm is None:
            raise BundleError(f"{bundle.root}: the bundle has no LightGBM part")
        self.bundle = bundle
        self.lgbm = bundle.lgbm
        self.weights = weights
        self.settings = settings
        self.torch_part = torch_part
        self.torch_problem = torch_problem  # why Torch is off, for logs and reports
        self._torch_folds = self._build_torch(torch_part) if torch_part else []

    @property
    def uses_torch(self) -> bool:
        return bool(self._torch_folds)

    def disable_torch(self, reason: str) -> None:
        self._torch_folds = []
        self.torch_problem = reason

    def _build_torch(self, part: TorchPart) -> list[_TorchFoldModel]:
        from cmi.nn.data import Scaler

        folds = []
        for fold in part.folds:
            model = self._make_model(fold) if self.settings.torch_folds_in_memory else None
            folds.append(_TorchFoldModel(fold, Scaler.from_json(fold.scaler), model))
        return folds

    def _make_model(self, fold: TorchFold) -> Any:
        from cmi.nn.model import TimeSeriesNet

        assert self.torch_part is not None
        model = TimeSeriesNet(**self.torch_part.architecture)
        model.load_state_dict(fold.load_state_dict())
        return model.eval()

    # ---------------------------------------------------------------- features

    def features(self, sequence: pl.DataFrame, demographics: pl.DataFrame | None) -> Any:
        """cmi.features.FeatureSet of one sequence (the training code path)."""
        from cmi.features import compute_features, prepare_sensor_frame

        sensor = prepare_sensor_frame(sequence)
        if sensor.height == 0:
            raise ValueError("the sequence has no rows")
        # Several ids in one call would make several feature rows; one call is one sequence.
        first = sensor.get_column("sequence_id")[0]
        sensor = sensor.with_columns(pl.lit(first, dtype=pl.String).alias("sequence_id"))
        return compute_features(sensor, demographics, self.bundle.extract)

    # ---------------------------------------------------------------- models

    def lgbm_fold_probas(self, features: Any) -> np.ndarray:
        """(n_folds, 18): each LightGBM fold model on the sequence's feature row."""
        frame = features.sequence_features
        present = set(frame.columns)
        missing = [c for c in self.lgbm.feature_names if c not in present]
        if missing:
            raise BundleError(
                f"{self.bundle.root}: features {missing[:5]} of the bundle are not computed by "
                "this cmi version; rebuild the bundle"
            )
        if frame.height != 1:
            raise ValueError(f"expected one feature row, got {frame.height}")
        # One row of ~1,500 columns: reading it as a tuple is ~100x faster than to_numpy().
        row = frame.row(0)
        if frame.columns[1:] == self.lgbm.feature_names:  # the usual case
            values = row[1:]
        else:
            position = {name: i for i, name in enumerate(frame.columns)}
            values = tuple(row[position[name]] for name in self.lgbm.feature_names)
        # None (null) -> NaN, LightGBM's "missing"; float32 as in training.
        x = np.array(values, dtype=np.float64).astype(np.float32)[None, :]
        x[~np.isfinite(x)] = np.nan
        rows = []
        for booster in self.lgbm.boosters:
            # As cmi.lgbm.predict_proba (which made the OOF), but on one thread: for one row,
            # waking a thread pool costs more than the trees.
            proba = np.asarray(booster.predict(x, num_threads=1), dtype=np.float64)
            proba = proba.reshape(N_CLASSES)
            rows.append(proba / proba.sum())
        return np.vstack(rows)

    def lgbm_proba(self, features: Any) -> np.ndarray:
        return _check_proba(self.lgbm_fold_probas(features).mean(axis=0), "LightGBM")

    def torch_fold_probas(self, features: Any) -> np.ndarray:
        """(n_folds, 18): each Torch fold model on the sequence, with that fold's scaler."""
        if not self._torch_folds:
            raise TorchUnavailableError(self.torch_problem or "the bundle has no Torch part")
        from cmi.nn.data import frame_matrix, pad_frames
        from cmi.nn.predict import predict_proba

        assert self.torch_part is not None
        part = self.torch_part
        matrix = frame_matrix(features.frame_features, part.channels)  # once, not per fold
        rows = []
        with _single_torch_thread():
            for item in self._torch_folds:
                x, mask = pad_frames(matrix, item.scaler, item.fold.pad_len, part.keep)
                model = item.model if item.model is not None else self._make_model(item.fold)
                rows.append(predict_proba(model, x, mask)[0])
        return np.vstack(rows)

    def torch_proba(self, features: Any) -> np.ndarray:
        return _check_proba(self.torch_fold_probas(features).mean(axis=0), "Torch")

    def ensemble_proba(self, features: Any) -> np.ndarray:
        """Blend by the sequence's sensor group; LightGBM alone if Torch is off or fails."""
        p_lgbm = self.lgbm_proba(features)
        if not self._torch_folds:
            if self.settings.fail_if_torch_missing:
                raise TorchUnavailableError(self.torch_problem or "no Torch part")
            return p_lgbm
        try:
            p_torch = self.torch_proba(features)
        except Exception as err:
            if self.settings.fail_if_torch_missing:
                raise
            log.warning("Torch failed on this sequence, using LightGBM alone: %r", err)
            return p_lgbm
        group = str(features.sequences.get_column("sensor_group")[0])
        weights = self.weights.for_group(group)
        return _check_proba(weights["lgbm"] * p_lgbm + weights["torch"] * p_torch, "ensemble")

    def describe(self) -> str:
        torch = (
            f"{len(self._torch_folds)} Torch folds "
            f"({'in memory' if self.settings.torch_folds_in_memory else 'on demand'})"
            if self._torch_folds
            else f"no Torch ({self.torch_problem})"
        )
        return (
            f"bundle {self.bundle.root}: {len(self.lgbm.boosters)} LightGBM folds, {torch}, "
            f"weights {self.weights.to_json()}"
        )


@contextmanager
def _single_torch_thread() -> Iterator[None]:
    """Run Torch on one thread for one sequence: the tensors are tiny, and a thread pool on a
    busy CPU costs far more than it saves. A process that set one thread already pays nothing.
    """
    import torch

    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_proba(proba: np.ndarray, what: str) -> np.ndarray:
    proba = np.asarray(proba, dtype=np.float64).reshape(-1)
    if proba.shape != (N_CLASSES,) or not np.isfinite(proba).all() or proba.sum() <= 0:
        raise ValueError(f"{what} produced invalid probabilities {proba!r}")
    return proba / proba.sum()


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _load_torch_part(
    main: Bundle, settings: InferenceSettings
) -> tuple[TorchPart | None, BlendWeights, str | None]:
    """The Torch part, the blend weights that go with it, and why Torch is off (if it is)."""
    if settings.torch_path is not None:
        root = resolve_bundle_root(settings.torch_path, "torch")
    elif main.manifest.get("torch"):
        root = main.root
    else:
        return None, main.blend, f"{main.root} has no Torch part (LightGBM-only bundle)"
    source = load_bundle(root, parts=("torch",), torch_in_memory=settings.torch_folds_in_memory)
    if source.torch is None:
        return None, main.blend, f"{root} has no Torch part"
    if source.extract != main.extract:
        raise BundleError(
            f"{root / MANIFEST_NAME}: built with extract params {source.extract}, but "
            f"{main.root} with {main.extract}; features must match"
        )
    return source.torch, source.blend, None


def _override_weights(weights: BlendWeights, settings: InferenceSettings) -> BlendWeights:
    if settings.w_lgbm is None and settings.w_torch is None:
        return weights
    w_lgbm = weights.default["lgbm"] if settings.w_lgbm is None else settings.w_lgbm
    w_torch = weights.default["torch"] if settings.w_torch is None else settings.w_torch
    pair = normalize_weights(w_lgbm, w_torch, "ENSEMBLE_W_LGBM/ENSEMBLE_W_TORCH")
    return BlendWeights(pair, None, "env")


def build_predictor(settings: InferenceSettings, *, strict: bool = False) -> Predictor:
    """Load and verify the bundle(s) named by ``settings``.

    A bad LightGBM part always raises BundleError. A Torch part that is declared but broken
    raises when ``strict`` or FAIL_IF_TORCH_MISSING; otherwise inference goes on with
    LightGBM alone and logs why. A bundle built without Torch raises only with
    FAIL_IF_TORCH_MISSING.
    """
    started = time.perf_counter()
    fail_on_torch = strict or settings.fail_if_torch_missing
    main = load_bundle(resolve_bundle_root(settings.model_path, "lgbm"), parts=("lgbm",))
    try:
        torch_part, weights, problem = _load_torch_part(main, settings)
    except Exception as err:
        if fail_on_torch:
            raise
        torch_part, weights, problem = None, main.blend, f"Torch part failed to load: {err}"
    if torch_part is None and settings.fail_if_torch_missing:
        raise TorchUnavailableError(f"FAIL_IF_TORCH_MISSING=1 and {problem}")
    weights = _override_weights(weights, settings)
    try:
        predictor = Predictor(main, torch_part, weights, settings, problem)
    except Exception as err:
        if fail_on_torch or torch_part is None:
            raise
        predictor = Predictor(main, None, weights, settings, f"Torch models failed to build: {err}")
    _self_check(predictor, fail_on_torch)
    if predictor.torch_problem:
        log.warning("using LightGBM alone: %s", predictor.torch_problem)
    log.info("loaded %s in %.2fs", predictor.describe(), time.perf_counter() - started)
    return predictor


def probe_sequence(length: int = 8) -> pl.DataFrame:
    """A still, full-sensor sequence in the Kaggle test layout."""
    columns: dict[str, list] = {
        "sequence_id": ["SEQ_PROBE"] * length,
        "sequence_counter": list(range(length)),
        "subject": ["SUBJ_PROBE"] * length,
    }
    for name in SENSOR_COLUMNS:
        columns[name] = [1.0 if name == "rot_w" else 0.0] * length
    return pl.DataFrame(columns)


def _self_check(predictor: Predictor, fail_on_torch: bool) -> None:
    """Run every model once on a probe: a bundle whose feature names this cmi no longer
    computes fails at load time instead of on every call (and the first call is warm)."""
    features = predictor.features(probe_sequence(), None)
    predictor.lgbm_proba(features)
    if predictor.uses_torch:
        try:
            predictor.torch_proba(features)
        except Exception as err:
            if fail_on_torch:
                raise
            predictor.disable_torch(f"Torch part fails on a probe sequence: {err}")


# --------------------------------------------------------------------------------------------
# The module-level cache and the public API
# --------------------------------------------------------------------------------------------


@dataclass
class _Cache:
    predictor: Predictor | None = None
    error: BaseException | None = None


_cache: _Cache | None = None
_lock = threading.Lock()


def load(
    settings: InferenceSettings | None = None,
    *,
    bundle_dir: Path | None = None,
    strict: bool = False,
) -> Predictor:
    """Load (or reload) the bundle now and cache it; raises on failure.

    The Kaggle notebook calls this right after start, so a broken bundle fails loudly at
    startup instead of turning every answer into the fallback.
    """
    global _cache
    settings = settings or InferenceSettings.from_env(bundle_dir=bundle_dir)
    with _lock:
        try:
            predictor = build_predictor(settings, strict=strict)
        except BaseException as err:
            _cache = _Cache(error=err)
            raise
        _cache = _Cache(predictor=predictor)
        return predictor


def get_predictor() -> Predictor:
    """The cached predictor, loading it from the environment on first use."""
    global _cache
    with _lock:
        if _cache is None:
            try:
                _cache = _Cache(predictor=build_predictor(InferenceSettings.from_env()))
            except Exception as err:
                _cache = _Cache(error=err)
                log.exception("could not load the bundle; every answer will be the fallback")
        cache = _cache
    if cache.predictor is None:
        assert cache.error is not None
        raise cache.error
    return cache.predictor


def reset_cache() -> None:
    """Forget the loaded bundle (tests, or after changing the environment)."""
    global _cache
    with _lock:
        _cache = None


def predict_lgbm_proba(sequence: pl.DataFrame, demographics: pl.DataFrame) -> np.ndarray:
    """(18,) LightGBM probabilities (mean over folds) in ``GESTURES`` order."""
    predictor = get_predictor()
    return predictor.lgbm_proba(predictor.features(sequence, demographics))


def predict_torch_proba(sequence: pl.DataFrame, demographics: pl.DataFrame) -> np.ndarray:
    """(18,) Torch probabilities (mean over folds); raises if the bundle has no Torch part."""
    predictor = get_predictor()
    return predictor.torch_proba(predictor.features(sequence, demographics))


def predict_ensemble(sequence: pl.DataFrame, demographics: pl.DataFrame) -> np.ndarray:
    """(18,) blended probabilities, weights by sensor group when the bundle has them."""
    predictor = get_predictor()
    return predictor.ensemble_proba(predictor.features(sequence, demographics))


def predict(sequence: pl.DataFrame, demographics: pl.DataFrame) -> str:
    """The gesture of one sequence; one of the 18 exact strings, whatever happens."""
    try:
        predictor = get_predictor()
    except Exception:  # already logged once, when loading failed
        return FALLBACK_GESTURE
    try:
        proba = predictor.ensemble_proba(predictor.features(sequence, demographics))
        gesture = GESTURES[int(np.argmax(proba))]
    except Exception:
        log.exception("predict failed on this sequence; answering %r", FALLBACK_GESTURE)
        return FALLBACK_GESTURE
    return gesture if gesture in GESTURES else FALLBACK_GESTURE
