"""Predictions for one sequence at a time, as Kaggle's ``CMIInferenceServer`` asks for them.

The bundle loads once, lazily, on the first call (or on an explicit ``load()``, e.g. the
notebook's start) and stays cached in this module. Settings come from environment variables
read when the bundle first loads (see ``cmi.inference_settings``: MODEL_PATH,
TORCH_BUNDLE_PATH, ENSEMBLE_W_LGBM, ENSEMBLE_W_TORCH, LOAD_TORCH_FOLDS_IN_MEMORY,
FAIL_IF_TORCH_MISSING, BUNDLE_DIGEST, SUBJECT_POSTPROCESS).

``predict`` is stateful: it remembers each subject's earlier sequences (``cmi.subjects``,
bounded) and answers through the subject-level post-processing the bundle was built for
(or SUBJECT_POSTPROCESS's). A failure there answers the plain blend's argmax, is logged and
counted apart from fallbacks (``answer_stats().postprocess_failures``).

Features come only from ``cmi.features`` (the training code path), Torch inputs only from
``cmi.nn.data``. ``predict`` never raises: on any failure it logs, counts the failure
(``answer_stats()``) and returns ``FALLBACK_GESTURE``; ``guard_fallbacks`` wraps it for a
submission that must abort rather than answer the fallback for many sequences.
``warm_up`` runs the same path strictly (raising) before serving. Pandas input is converted.

This module is the Kaggle path: it imports neither training code, scikit-learn, tqdm, DVC
nor the bundle builder (tests/test_inference.py checks that in a fresh interpreter).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from cmi.bundle import (
    MANIFEST_NAME,
    Bundle,
    BundleError,
    PostprocessSettings,
    TorchPart,
    load_bundle,
)
from cmi.fallback import ANSWERS, AnswerStats, FallbackLimit, TooManyFallbacksError
from cmi.inference_settings import DEFAULT_BUNDLE, InferenceSettings, resolve_bundle_root
from cmi.predictor import Predictor, TorchUnavailableError, as_polars
from cmi.probe import imu_only_view, probe_demographics, probe_sequence
from cmi.schema import GESTURES, SENSOR_COLUMNS
from cmi.subjects import SubjectPostprocessor, build_wear_corrector
from cmi.weights import BlendWeights, normalize_weights

log = logging.getLogger(__name__)

# Answer when nothing can be computed. A target gesture: targets are about 60% of the
# training sequences, so this is right for the binary half of the metric more often than not.
FALLBACK_GESTURE = "Forehead - scratch"


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


def _build_postprocess(
    main: Bundle, settings: InferenceSettings, strict: bool
) -> tuple[SubjectPostprocessor | None, str | None]:
    """The bundle's post-processing, or SUBJECT_POSTPROCESS's method in its place; and why
    there is none (it failed to set up: raised when ``strict``)."""
    configured = main.postprocess
    source = "bundle"
    if settings.postprocess_method is not None:
        configured = PostprocessSettings(
            settings.postprocess_method, configured.mode, configured.combine
        )
        source = "SUBJECT_POSTPROCESS"
    try:
        return SubjectPostprocessor(configured, main.orientation, source), None
    except Exception as err:
        if strict:
            raise
        return None, f"post-processing {configured.method} failed to set up: {err!r}"


def build_predictor(settings: InferenceSettings, *, strict: bool = False) -> Predictor:
    """Load and verify the bundle(s) named by ``settings``.

    A bad LightGBM part always raises BundleError. A Torch part that is declared but broken
    raises when ``strict`` or FAIL_IF_TORCH_MISSING; otherwise inference goes on with
    LightGBM alone and logs why. A bundle built without Torch raises only with
    FAIL_IF_TORCH_MISSING.
    """
    started = time.perf_counter()
    fail_on_torch = strict or settings.fail_if_torch_missing
    main = load_bundle(
        resolve_bundle_root(settings.model_path, "lgbm"),
        parts=("lgbm", "orientation"),
        expected_digest=settings.expected_digest,
    )
    try:
        torch_part, weights, problem = _load_torch_part(main, settings)
    except Exception as err:
        if fail_on_torch:
            raise
        torch_part, weights, problem = None, main.blend, f"Torch part failed to load: {err}"
    if torch_part is None and settings.fail_if_torch_missing:
        raise TorchUnavailableError(f"FAIL_IF_TORCH_MISSING=1 and {problem}")
    weights = _override_weights(weights, settings)
    postprocess, postprocess_problem = _build_postprocess(main, settings, strict)
    try:
        predictor = Predictor(main, torch_part, weights, settings, problem, postprocess)
    except Exception as err:
        if fail_on_torch or torch_part is None:
            raise
        predictor = Predictor(
            main, None, weights, settings, f"Torch models failed to build: {err}", postprocess
        )
    predictor.wear = build_wear_corrector(main)  # the bundle's upside-down fix, if any
    _self_check(predictor, fail_on_torch, strict)
    if predictor.torch_problem:
        log.warning("using LightGBM alone: %s", predictor.torch_problem)
    if postprocess_problem:
        predictor.postprocess_problem = postprocess_problem
        log.warning("answering the plain argmax: %s", postprocess_problem)
    elif predictor.postprocess is not None and predictor.postprocess.problem:
        log.warning("%s", predictor.postprocess.problem)
    log.info("loaded %s in %.2fs", predictor.describe(), time.perf_counter() - started)
    return predictor


def _self_check(predictor: Predictor, fail_on_torch: bool, strict: bool = False) -> None:
    """Run every model once on a probe: a bundle whose feature names this cmi no longer
    computes fails at load time instead of on every call (and the first call is warm).
    Post-processing runs on a scratch memory: the probe is no subject's sequence."""
    features = predictor.features(probe_sequence(), probe_demographics())
    proba = predictor.lgbm_proba(features)
    if predictor.uses_torch:
        try:
            predictor.torch_proba(features)
            if predictor.torch_part is not None and any(
                m.kind == "imu" for m in predictor.torch_part.members
            ):  # the IMU-only members serve only IMU-only inputs: run them too
                imu_only = imu_only_view(probe_sequence())
                predictor.torch_proba(predictor.features(imu_only, probe_demographics()))
        except Exception as err:
            if fail_on_torch:
                raise
            predictor.disable_torch(f"Torch part fails on a probe sequence: {err}")
    if predictor.postprocess is not None:
        try:
            predictor.postprocess.check(features, proba)
        except Exception as err:
            if strict:
                raise
            predictor.postprocess.disable_orientation(
                f"the orientation models fail on a probe sequence: {err!r}"
            )


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


def reset_subject_memory() -> None:
    """Forget every subject's earlier sequences (keeps the loaded bundle)."""
    with _lock:
        cache = _cache
    if cache is not None and cache.predictor is not None and cache.predictor.postprocess:
        cache.predictor.postprocess.reset()
    if cache is not None and cache.predictor is not None and cache.predictor.wear is not None:
        cache.predictor.wear.reset()


def reset_cache() -> None:
    """Forget the loaded bundle and with it every subject's earlier sequences (tests, or
    after changing the environment)."""
    global _cache
    with _lock:
        _cache = None


def predict_lgbm_proba(sequence: pl.DataFrame, demographics: pl.DataFrame) -> np.ndarray:
    """(18,) LightGBM probabilities (mean over folds) in ``GESTURES`` order."""
    predictor = get_predictor()
    return predictor.lgbm_proba(predictor.features(sequence, demographics))


def predict_torch_proba(sequence: pl.DataFrame, demographics: pl.DataFrame) -> np.ndarray:
    """(18,) Torch probabilities: per fold the mean of the members serving the sequence's
    sensor group (IMU-only inputs: the IMU-only members, if any), then the mean over folds;
    raises if the bundle has no Torch part."""
    predictor = get_predictor()
    return predictor.torch_proba(predictor.features(sequence, demographics))


def predict_ensemble(sequence: pl.DataFrame, demographics: pl.DataFrame) -> np.ndarray:
    """(18,) blended probabilities, weights by sensor group when the bundle has them."""
    predictor = get_predictor()
    return predictor.ensemble_proba(predictor.features(sequence, demographics))


def predict_gesture(predictor: Predictor, sequence: Any, demographics: Any) -> str:
    """The plain gesture of one sequence by the full ensemble (its argmax, no subject-level
    post-processing, nothing remembered); raises on any failure (``warm_up`` uses it)."""
    proba = predictor.ensemble_proba(predictor.features(sequence, demographics))
    return GESTURES[int(np.argmax(proba))]


def _subject_answer(predictor: Predictor, features: Any, proba: np.ndarray) -> int:
    """The class index to answer: post-processed from the subject's sequences so far; the
    plain argmax when there is no post-processing or it fails (logged and counted)."""
    if predictor.postprocess is None:
        ANSWERS.answered()
        return int(np.argmax(proba))
    try:
        answer = predictor.postprocess.answer(features, proba)
    except Exception as err:
        log.warning("post-processing failed on this sequence (%r); answering the argmax", err)
        ANSWERS.postprocess_failed(err)
        return int(np.argmax(proba))
    ANSWERS.answered(answer.postprocessed, answer.gesture != answer.argmax)
    return answer.gesture


def predict(sequence: pl.DataFrame, demographics: pl.DataFrame) -> str:
    """The gesture of one sequence; one of the 18 exact strings, whatever happens.

    Stateful: the answer depends on the subject's earlier sequences (subject-level
    post-processing). A failure of the models answers ``FALLBACK_GESTURE``; a failure of the
    post-processing the blend's argmax; both are counted (``answer_stats()``).
    """
    try:
        predictor = get_predictor()
    except Exception as err:  # already logged once, when loading failed
        ANSWERS.fell_back(err)
        return FALLBACK_GESTURE
    if predictor.wear is not None:  # never raises: on failure, the sequence as sent
        sequence = predictor.wear.upright(sequence)
    try:
        features = predictor.features(sequence, demographics)
        proba = predictor.ensemble_proba(features)
    except Exception as err:
        log.exception("predict failed on this sequence; answering %r", FALLBACK_GESTURE)
        ANSWERS.fell_back(err)
        return FALLBACK_GESTURE
    return GESTURES[_subject_answer(predictor, features, proba)]


# --------------------------------------------------------------------------------------------
# Kaggle-day safety: input conversion, fallback accounting, warm-up
# --------------------------------------------------------------------------------------------


def answer_stats() -> AnswerStats:
    """How many answers ``predict`` gave since the start (or ``reset_answer_stats``), and how
    many of them were the fallback."""
    return ANSWERS.snapshot()


def reset_answer_stats() -> None:
    ANSWERS.reset()


def guard_fallbacks(
    predict_fn: Callable[[Any, Any], str] = predict, limit: FallbackLimit | None = None
) -> Callable[[Any, Any], str]:
    """``predict_fn`` that raises TooManyFallbacksError once more than ``limit`` of the answers
    so far were fallbacks: handed to Kaggle's server, it stops the run instead of submitting
    fallback answers. Keeps the name ``predict`` (the server routes calls by name)."""
    limit = limit or FallbackLimit()

    @functools.wraps(predict_fn)
    def guarded(sequence: Any, demographics: Any) -> str:
        answer = predict_fn(sequence, demographics)
        limit.check(answer_stats())
        return answer

    return guarded


class WarmUpError(RuntimeError):
    """The ensemble failed (or silently degraded) on a real-shaped sequence before serving."""


@dataclass(frozen=True)
class WarmUpReport:
    answers: dict[str, str]  # view ("full", "imu_only") -> gesture
    uses_torch: bool
    seconds: float
    postprocess: str = "none"  # the post-processing method predict applies


def _check_postprocess_is_on(predictor: Predictor) -> None:
    """WarmUpError when the post-processing asked for (bundle or SUBJECT_POSTPROCESS) is off,
    or runs without the bundle's orientation models."""
    wanted = predictor.settings.postprocess_method or predictor.bundle.postprocess.method
    postprocess = predictor.postprocess
    if wanted != "none" and postprocess is None:
        raise WarmUpError(f"post-processing {wanted} is off: {predictor.postprocess_problem}")
    if (
        postprocess is not None
        and postprocess.method == "assignment"
        and predictor.bundle.orientation is not None
        and postprocess.orientation is None
    ):
        raise WarmUpError(f"the bundle's orientation models are off: {postprocess.problem}")


def warm_up(
    sequence: Any = None, demographics: Any = None, predictor: Predictor | None = None
) -> WarmUpReport:
    """Run the full ensemble, strictly, on one real-shaped sequence as recorded and in its
    IMU-only view; WarmUpError says what failed. Not ``predict``: that one never raises.

    Without a sequence, a synthetic one in the test layout (``cmi.probe``) is used. A bundle
    that declares a Torch part must have it working: LightGBM alone is an error here.
    """
    started = time.perf_counter()
    predictor = predictor or get_predictor()
    if sequence is None:
        sequence, demographics = probe_sequence(), probe_demographics()
    sequence = as_polars(sequence, "warm-up sequence")
    missing = [c for c in SENSOR_COLUMNS if c not in sequence.columns]
    if missing or sequence.height < 2:
        raise WarmUpError(
            f"warm-up needs a real-shaped sequence: {sequence.height} rows, missing columns "
            f"{missing[:5]}"
        )
    wants_torch = bool(predictor.bundle.manifest.get("torch")) or bool(
        predictor.settings.torch_path
    )
    if wants_torch and not predictor.uses_torch:
        raise WarmUpError(f"the bundle's Torch part is off: {predictor.torch_problem}")
    _check_postprocess_is_on(predictor)
    answers = {}
    for view, frame in (("full", sequence), ("imu_only", imu_only_view(sequence))):
        try:
            features = predictor.features(frame, demographics)
            predictor.lgbm_proba(features)
            if predictor.uses_torch:
                predictor.torch_proba(features)  # raises, where ensemble_proba would fall back
            answers[view] = predict_gesture(predictor, frame, demographics)
            if predictor.wear is not None:  # scores and rotates; remembers nothing
                predictor.wear.check(frame)
            if predictor.postprocess is not None:  # on a scratch memory: nothing remembered
                predictor.postprocess.check(features, predictor.ensemble_proba(features))
        except Exception as err:
            raise WarmUpError(f"warm-up failed on the {view} view: {err!r}") from err
    method = predictor.postprocess.method if predictor.postprocess is not None else "none"
    return WarmUpReport(answers, predictor.uses_torch, time.perf_counter() - started, method)


__all__ = [
    "DEFAULT_BUNDLE",
    "FALLBACK_GESTURE",
    "MANIFEST_NAME",
    "AnswerStats",
    "BundleError",
    "FallbackLimit",
    "InferenceSettings",
    "Predictor",
    "TooManyFallbacksError",
    "TorchUnavailableError",
    "WarmUpError",
    "WarmUpReport",
    "answer_stats",
    "as_polars",
    "build_predictor",
    "get_predictor",
    "guard_fallbacks",
    "load",
    "predict",
    "predict_ensemble",
    "predict_gesture",
    "predict_lgbm_proba",
    "predict_torch_proba",
    "reset_answer_stats",
    "reset_cache",
    "reset_subject_memory",
    "resolve_bundle_root",
    "warm_up",
]
