"""A loaded bundle and the models it holds, turning one sequence into probabilities.

``cmi.inference`` builds one ``Predictor`` per process (cached) and answers through it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from cmi.bundle import Bundle, BundleError, TorchFold, TorchPart
from cmi.fallback import ANSWERS
from cmi.inference_settings import InferenceSettings
from cmi.schema import N_CLASSES
from cmi.weights import BlendWeights

if TYPE_CHECKING:
    from cmi.subjects import SubjectPostprocessor

log = logging.getLogger("cmi.inference")


class TorchUnavailableError(BundleError):
    """The Torch part is missing or failed and FAIL_IF_TORCH_MISSING asks for an error."""


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
        postprocess: SubjectPostprocessor | None = None,
    ) -> None:
        if bundle.lgbm is None:
            raise BundleError(f"{bundle.root}: the bundle has no LightGBM part")
        self.bundle = bundle
        self.lgbm = bundle.lgbm
        self.weights = weights
        self.settings = settings
        self.torch_part = torch_part
        self.torch_problem = torch_problem  # why Torch is off, for logs and reports
        # Subject-level post-processing (None: the plain argmax, e.g. it failed to set up).
        self.postprocess = postprocess
        self.postprocess_problem: str | None = None  # why post-processing is off, if it is
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

    def features(self, sequence: Any, demographics: Any) -> Any:
        """cmi.features.FeatureSet of one sequence (the training code path); polars or pandas."""
        from cmi.features import compute_features, prepare_sensor_frame

        sensor = prepare_sensor_frame(as_polars(sequence, "sequence"))
        demographics = None if demographics is None else as_polars(demographics, "demographics")
        if sensor.height == 0:
            raise ValueError("the sequence has no rows")
        # Several ids in one call would make several feature rows; one call is one sequence.
        first = sensor.get_column("sequence_id")[0]
        sensor = sensor.with_columns(pl.lit(first, dtype=pl.String).alias("sequence_id"))
        return compute_features(sensor, demographics, self.bundle.extract)

    # ---------------------------------------------------------------- models

    def lgbm_fold_probas(self, features: Any) -> np.ndarray:
        """(n_folds, 18): each LightGBM fold model on the sequence's feature row."""
        x = feature_row(features.sequence_features, self.lgbm.feature_names, self.bundle.root)
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
        from cmi.nn.predict import network_proba

        assert self.torch_part is not None
        part = self.torch_part
        matrix = frame_matrix(features.frame_features, part.channels)  # once, not per fold
        rows = []
        with _single_torch_thread():
            for item in self._torch_folds:
                x, mask = pad_frames(matrix, item.scaler, item.fold.pad_len, part.keep)
                model = item.model if item.model is not None else self._make_model(item.fold)
                rows.append(network_proba(model, x, mask)[0])
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
            ANSWERS.torch_failed(err)
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
        postprocess = (
            self.postprocess.describe() if self.postprocess is not None else "no post-processing"
        )
        return (
            f"bundle {self.bundle.root}: {len(self.lgbm.boosters)} LightGBM folds, {torch}, "
            f"weights {self.weights.to_json()}, {postprocess}"
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


def feature_row(frame: pl.DataFrame, names: list[str], bundle_root: Any = "bundle") -> np.ndarray:
    """(1, len(names)) float32 from a one-row sequence-feature frame, columns in ``names``
    order, null and non-finite values as NaN (LightGBM's "missing"), as in training."""
    present = set(frame.columns)
    missing = [c for c in names if c not in present]
    if missing:
        raise BundleError(
            f"{bundle_root}: features {missing[:5]} of the bundle are not computed by this cmi "
            "version; rebuild the bundle"
        )
    if frame.height != 1:
        raise ValueError(f"expected one feature row, got {frame.height}")
    # One row of ~1,500 columns: reading it as a tuple is ~100x faster than to_numpy().
    row = frame.row(0)
    if frame.columns[1:] == names:  # the gesture models' usual case
        values = row[1:]
    else:
        position = {name: i for i, name in enumerate(frame.columns)}
        values = tuple(row[position[name]] for name in names)
    x = np.array(values, dtype=np.float64).astype(np.float32)[None, :]
    x[~np.isfinite(x)] = np.nan
    return x


def _check_proba(proba: np.ndarray, what: str) -> np.ndarray:
    proba = np.asarray(proba, dtype=np.float64).reshape(-1)
    if proba.shape != (N_CLASSES,) or not np.isfinite(proba).all() or proba.sum() <= 0:
        raise ValueError(f"{what} produced invalid probabilities {proba!r}")
    return proba / proba.sum()


def as_polars(frame: Any, what: str) -> pl.DataFrame:
    """A polars DataFrame from polars or pandas input (older notebooks pass pandas)."""
    if isinstance(frame, pl.DataFrame):
        return frame
    if type(frame).__module__.split(".")[0] == "pandas" and hasattr(frame, "columns"):
        return pl.from_pandas(frame)
    raise TypeError(f"{what}: expected a polars or pandas DataFrame, got {type(frame).__name__}")
