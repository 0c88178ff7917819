"""Typed views of params.yaml: one frozen dataclass per section.

Each stage reads only its own sections; ``section_dict`` gives the exact dict a stage's
checkpoint fingerprint covers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml


@dataclass(frozen=True)
class ExtractParams:
    sampling_rate_hz: float = 10.0
    n_segments: int = 3
    tof_regions: bool = True
    # Left-handed subjects (demographics handedness == 0) as their right-handed mirror image.
    mirror_left_handed: bool = False
    # Subjects wearing the device upside down rotated back before features (cmi.wear):
    # training fits the detector on train.csv, inference decides per subject as it goes.
    fix_upside_down: bool = False
    # Training subjects known to wear it upside down; empty: the fit finds them.
    upside_down_subjects: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # A bundle manifest gives a JSON list back: keep the field a tuple (hashable, equal).
        object.__setattr__(self, "upside_down_subjects", tuple(self.upside_down_subjects))


@dataclass(frozen=True)
class CVParams:
    n_splits: int = 5
    seed: int = 42


@dataclass(frozen=True)
class LgbmParams:
    n_estimators: int = 1000
    learning_rate: float = 0.1
    num_leaves: int = 31
    min_child_samples: int = 10
    feature_fraction: float = 0.25
    bagging_fraction: float = 0.8
    bagging_freq: int = 1
    lambda_l2: float = 1.0
    early_stopping_rounds: int = 50
    # After early stopping on the inner fold, retrain on every training fold for that many rounds.
    refit_full: bool = True
    modality_dropout: float = 0.3
    n_jobs: int = 2
    seed: int = 42


@dataclass(frozen=True)
class TorchParams:
    pad_percentile: float = 95.0
    keep: Literal["end", "start"] = "end"
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-2
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    conv_channels: tuple[int, ...] = (64, 128)
    lstm_hidden: int = 64
    gru_hidden: int = 64
    dropout: float = 0.3
    modality_dropout: float = 0.3
    seed: int = 42
    # Members per fold (cmi.nn.members): one model per seed, probabilities averaged; empty =
    # (seed,). The first seed's model keeps the plain file names (fold_k.pt).
    seeds: tuple[int, ...] = ()
    # Training-only augmentation (cmi.nn.augment); 0 / false = off.
    mixup_alpha: float = 0.0
    mixup_same_orientation: bool = False
    rotate_deg: float = 0.0
    time_stretch: float = 0.0
    time_shift: int = 0
    # Per fold also an IMU-only model (IMU channels only) for the IMU-only inputs.
    imu_only_model: bool = False
    # Loss weight of an orientation head on the pooled representation; 0 = no head.
    aux_orientation_weight: float = 0.0
    # Batches of similar length (cmi.nn.batches.epoch_batches): rows sorted by length within
    # chunks of this many batches; 0 = plain shuffle.
    bucket_batches: int = 0
    # The sequence's length as an input of the heads (TimeSeriesNet.length_input).
    length_input: bool = False
    # CPU: members trained side by side in this many processes (cmi.nn.parallel), one
    # thread each; 0 = one per usable core. Result-neutral.
    cpu_processes: int = 0
    num_workers: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for key in ("bucket_batches", "cpu_processes"):
            if getattr(self, key) < 0:
                raise ValueError(f"params.yaml: torch.{key} must be >= 0, got {getattr(self, key)}")


@dataclass(frozen=True)
class EnsembleParams:
    w_lgbm: float = 0.4
    w_torch: float = 0.6
    optimize: Literal["none", "grid", "nelder_mead"] = "none"
    by_sensor_group: bool = False


@dataclass(frozen=True)
class EvalParams:
    # Share of IMU-only sequences in the hidden test; weighs the two views in `test_like`.
    imu_only_share: float = 0.5


@dataclass(frozen=True)
class OrientationParams:
    """The small orientation classifier post-processing uses (IMU features only)."""

    n_estimators: int = 300
    learning_rate: float = 0.1
    num_leaves: int = 15
    min_child_samples: int = 10
    feature_fraction: float = 0.25
    bagging_fraction: float = 0.8
    bagging_freq: int = 1
    lambda_l2: float = 1.0
    early_stopping_rounds: int = 30
    refit_full: bool = True
    n_jobs: int = 2
    seed: int = 42


# The choices of each postprocess key (cmi.postprocess re-exports them; here so that the
# bundle reader and inference settings can check them without importing scipy).
POSTPROCESS_METHODS: tuple[str, ...] = ("none", "gesture_counts", "assignment")
POSTPROCESS_MODES: tuple[str, ...] = ("resolve", "pinned")
POSTPROCESS_COMBINES: tuple[str, ...] = ("max", "product", "bayes")


def check_postprocess(method: str, mode: str, combine: str, where: str = "postprocess") -> None:
    """ValueError naming ``where`` (e.g. params.yaml's section, a manifest, an env var)."""
    for key, value, allowed in (
        ("method", method, POSTPROCESS_METHODS),
        ("mode", mode, POSTPROCESS_MODES),
        ("combine", combine, POSTPROCESS_COMBINES),
    ):
        if value not in allowed:
            raise ValueError(f"{where}.{key} must be one of {allowed}, got {value!r}")


@dataclass(frozen=True)
class PostprocessParams:
    """Subject-level post-processing (cmi.postprocess) and its gateway replay.

    ``method`` is what the bundle ships (the oof_blend stage replays every method, so it does
    not read it); ``n_orders`` and ``seed`` only drive the replay."""

    method: Literal["assignment", "gesture_counts", "none"] = "assignment"
    mode: Literal["resolve", "pinned"] = "resolve"
    combine: Literal["max", "product", "bayes"] = "max"
    n_orders: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        check_postprocess(self.method, self.mode, self.combine, "params.yaml: postprocess")
        if self.n_orders < 1:
            raise ValueError(f"params.yaml: postprocess.n_orders must be >= 1, got {self.n_orders}")


@dataclass(frozen=True)
class Params:
    extract: ExtractParams = field(default_factory=ExtractParams)
    cv: CVParams = field(default_factory=CVParams)
    lgbm: LgbmParams = field(default_factory=LgbmParams)
    torch: TorchParams = field(default_factory=TorchParams)
    ensemble: EnsembleParams = field(default_factory=EnsembleParams)
    eval: EvalParams = field(default_factory=EvalParams)
    orientation: OrientationParams = field(default_factory=OrientationParams)
    postprocess: PostprocessParams = field(default_factory=PostprocessParams)


T = TypeVar("T")


class ParamsError(ValueError):
    """params.yaml has an unknown key or a value of the wrong type."""


def _build(cls: type[T], section: str, raw: dict[str, Any] | None) -> T:
    raw = dict(raw or {})
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ParamsError(f"params.yaml: unknown key(s) {unknown} in section '{section}'")
    for name, value in list(raw.items()):
        if isinstance(value, list):
            raw[name] = tuple(value)
        default = known[name].default
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            raw[name] = float(value)
    return cls(**raw)


def params_from_dict(raw: dict[str, Any]) -> Params:
    sections = {f.name: f.type for f in dataclasses.fields(Params)}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ParamsError(f"params.yaml: unknown section(s) {unknown}")
    classes = {
        "extract": ExtractParams,
        "cv": CVParams,
        "lgbm": LgbmParams,
        "torch": TorchParams,
        "ensemble": EnsembleParams,
        "eval": EvalParams,
        "orientation": OrientationParams,
        "postprocess": PostprocessParams,
    }
    return Params(**{name: _build(cls, name, raw.get(name)) for name, cls in classes.items()})


def load_params(path: Path | str = "params.yaml") -> Params:
    path = Path(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else {}
    return params_from_dict(raw or {})


def section_dict(section: Any) -> dict[str, Any]:
    """Plain dict of one section, for fingerprints and manifests: JSON-shaped (tuples as
    lists), so it equals what a manifest reads back."""
    return {
        name: list(value) if isinstance(value, tuple) else value
        for name, value in dataclasses.asdict(section).items()
    }
