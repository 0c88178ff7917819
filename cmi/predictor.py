"""A loaded bundle and the models it holds, turning one sequence into probabilities.

``cmi.inference`` builds one ``Predictor`` per process (cached) and answers through it.

Torch, as the torch stage's OOF (``cmi.nn.cv.TorchFold.predictions``): a full-sensor input
gets, per fold, the mean of the fold's full-input members; an IMU-only input (every thm/ToF
value null: ``sensor_group`` "imu_only", never -1 "no reflection") the mean of the fold's
IMU-only members, or of its full-input members where the fold has none. Folds are then
averaged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from cmi.bundle import Bundle, BundleError, TorchMember, TorchPart
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
class _TorchInput:
    """How a member's input is made from the sequence's frame matrix: its channels (columns
    of the full channel list), scaler and pad_len. Members sharing one (a fold's seeds share
    the fold's scaler) share the padded array within a call."""

    columns: np.ndarray | None  # indices into TorchPart.channels; None: all of them
    channels: tuple[str, ...]
    scaler: Any  # cmi.nn.data.Scaler
    pad_len: int


@dataclass
class _TorchMemberModel:
    member: TorchMember
    input_key: tuple[str, int, int]  # (kind, fold, pad_len): the _TorchInput it reads
    model: Any | None  # TimeSeriesNet when members are kept in memory


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
        self.wear: Any = None  # cmi.wear.online.WearCorrector: upside-down fix (build_predictor)
        self._torch_inputs: dict[tuple[str, int, int], _TorchInput] = {}
        # sensor group -> per fold (in fold order) the members that serve it
        self._serving: dict[str, list[list[_TorchMemberModel]]] = {}
        if torch_part is not None:
            self._build_torch(torch_part)

    @property
    def uses_torch(self) -> bool:
        return bool(self._serving)

    def disable_torch(self, reason: str) -> None:
        self._serving = {}
        self._torch_inputs = {}
        self.torch_problem = reason

    def _build_torch(self, part: TorchPart) -> None:
        from cmi.nn.data import Scaler

        models: list[_TorchMemberModel] = []
        for member in part.members:
            key = (member.kind, member.fold, member.pad_len)
            scaler = Scaler.from_json(member.scaler)
            known = self._torch_inputs.get(key)
            if known is None:
                self._torch_inputs[key] = _TorchInput(
                    _columns(part, member.kind), scaler.channels, scaler, member.pad_len
                )
            elif not _same_scaler(known.scaler, scaler):
                raise BundleError(
                    f"{member.path}: fold {member.fold} {member.kind} members have different "
                    "scalers (the torch stage writes one per fold and kind)"
                )
            model = self._make_model(member) if self.settings.torch_folds_in_memory else None
            models.append(_TorchMemberModel(member, key, model))
        by_fold = [[m for m in models if m.member.fold == k] for k in range(part.n_folds)]
        full = [[m for m in fold if m.member.kind == "full"] for fold in by_fold]
        imu = [[m for m in fold if m.member.kind == "imu"] for fold in by_fold]
        self._serving = {
            "full": full,
            # as the OOF's imu_only view: the fold's IMU-only members, else its full ones
            "imu_only": [i or f for i, f in zip(imu, full, strict=True)],
        }

    def _make_model(self, member: TorchMember) -> Any:
        from cmi.nn.model import TimeSeriesNet

        assert self.torch_part is not None
        model = TimeSeriesNet(**self.torch_part.architecture_of(member.kind))
        model.load_state_dict(member.load_state_dict())
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

    def torch_members(self, group: str) -> list[list[TorchMember]]:
        """Per fold (in fold order), the members that serve inputs of sensor ``group``."""
        return [[m.member for m in fold] for fold in self._serving_fold_models(group)]

    def _serving_fold_models(self, group: str) -> list[list[_TorchMemberModel]]:
        if not self._serving:
            raise TorchUnavailableError(self.torch_problem or "the bundle has no Torch part")
        if group not in self._serving:
            raise ValueError(f"unknown sensor group {group!r}")
        return self._serving[group]

    def torch_fold_probas(self, features: Any) -> np.ndarray:
        """(n_folds, 18): per fold, the mean of the members serving the sequence's sensor
        group (each with its own channels, scaler and pad_len), as the fold's OOF."""
        folds = self._serving_fold_models(sensor_group(features))
        from cmi.nn.data import frame_matrix
        from cmi.nn.predict import network_proba

        assert self.torch_part is not None
        matrix = frame_matrix(features.frame_features, self.torch_part.channels)  # once
        padded: dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray]] = {}
        rows = []
        with _single_torch_thread():
            for fold in folds:
                probas = []
                for item in fold:
                    if item.input_key not in padded:  # a fold's seeds share their input
                        padded[item.input_key] = self._member_input(matrix, item.input_key)
                    model = item.model if item.model is not None else self._make_model(item.member)
                    probas.append(network_proba(model, *padded[item.input_key])[0])
                rows.append(np.mean(probas, axis=0))
        return np.vstack(rows)

    def _member_input(
        self, matrix: Any, key: tuple[str, int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The padded (1, T, C) input and mask of the members reading ``key``'s input."""
        from cmi.nn.data import FrameMatrix, pad_frames

        assert self.torch_part is not None
        spec = self._torch_inputs[key]
        if spec.columns is not None:  # an IMU-only member: its channels of the full matrix
            matrix = FrameMatrix(
                matrix.values[:, spec.columns], matrix.lengths, matrix.ids, spec.channels
            )
        return pad_frames(matrix, spec.scaler, spec.pad_len, self.torch_part.keep)

    def torch_proba(self, features: Any) -> np.ndarray:
        return _check_proba(self.torch_fold_probas(features).mean(axis=0), "Torch")

    def ensemble_proba(self, features: Any) -> np.ndarray:
        """Blend by the sequence's sensor group; LightGBM alone if Torch is off or fails."""
        p_lgbm = self.lgbm_proba(features)
        if not self._serving:
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
        weights = self.weights.for_group(sensor_group(features))
        return _check_proba(weights["lgbm"] * p_lgbm + weights["torch"] * p_torch, "ensemble")

    def describe(self) -> str:
        if self._serving:
            part = self.torch_part
            assert part is not None
            imu = sum(m.kind == "imu" for m in part.members)
            torch = (
                f"{len(part.members)} Torch members over {part.n_folds} folds "
                f"({len(part.members) - imu} full-input, {imu} IMU-only; "
                f"{'in memory' if self.settings.torch_folds_in_memory else 'on demand'})"
            )
        else:
            torch = f"no Torch ({self.torch_problem})"
        postprocess = (
            self.postprocess.describe() if self.postprocess is not None else "no post-processing"
        )
        return (
            f"bundle {self.bundle.root}: {len(self.lgbm.boosters)} LightGBM folds, {torch}, "
            f"weights {self.weights.to_json()}, {postprocess}"
        )


def sensor_group(features: Any) -> str:
    """The sequence's sensor group as the feature code found it: "imu_only" when every
    thm/ToF value is null (a -1 ToF pixel is a reading: "no reflection"), else "full"."""
    return str(features.sequences.get_column("sensor_group")[0])


def _columns(part: TorchPart, kind: str) -> np.ndarray | None:
    """Where a ``kind`` member's channels sit among the part's (full) channels."""
    channels = part.channels_of(kind)
    if channels == part.channels:
        return None
    position = {name: i for i, name in enumerate(part.channels)}
    return np.array([position[name] for name in channels], dtype=np.int64)


def _same_scaler(a: Any, b: Any) -> bool:
    return (
        a.channels == b.channels and np.array_equal(a.mean, b.mean) and np.array_equal(a.std, b.std)
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
