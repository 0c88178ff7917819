"""The names of what the feature path computes: frame channels and sequence features.

Everything here is a pure function of ``ExtractParams``, so the extract stage, the models and
the bundle agree on the column order without computing anything.
"""

from __future__ import annotations

from functools import lru_cache

from cmi.params import ExtractParams
from cmi.schema import ACC_COLUMNS, DEMOGRAPHICS_COLUMNS, N_TOF_SENSORS, ROT_COLUMNS, THM_COLUMNS

IMU_CHANNELS: tuple[str, ...] = (
    *ACC_COLUMNS,
    *ROT_COLUMNS,
    "linear_acc_x",
    "linear_acc_y",
    "linear_acc_z",
    "angular_vel_x",
    "angular_vel_y",
    "angular_vel_z",
    "angular_distance",
    "acc_mag",
    "linear_acc_mag",
    "acc_mag_jerk",
)
QUANTILES: dict[str, float] = {"q10": 0.1, "q50": 0.5, "q90": 0.9}
WHOLE_STATS: tuple[str, ...] = (
    "mean",
    "std",
    "min",
    "max",
    *QUANTILES,
    "range",
    "first",
    "last",
    "slope",
    "energy",
)
SEGMENT_STATS: tuple[str, ...] = ("mean", "std", "min", "max", "slope")
DEMOGRAPHIC_FEATURES: tuple[str, ...] = tuple(c for c in DEMOGRAPHICS_COLUMNS if c != "subject")
# The columns of FeatureSet.sequences (no labels; the extract stage joins those).
SEQUENCE_TABLE_COLUMNS: tuple[str, ...] = (
    "sequence_id",
    "subject",
    "sensor_group",
    "length",
    "handedness",
)
N_TOF_REGIONS = 4  # the four 4x4 quadrants of a ToF image: r0 r1 (top), r2 r3 (bottom)
TOF_PER_FRAME: tuple[str, ...] = ("mean", "min", "invalid")


def is_modality_channel(name: str) -> bool:
    """thm/tof channels and the sequence features built from them: null for IMU-only data."""
    return name.startswith(("thm", "tof"))


def tof_channel_names(sensor: int, tof_regions: bool) -> tuple[str, ...]:
    """One ToF sensor's frame channels, in output order."""
    per_sensor = [*TOF_PER_FRAME, *(f"r{k}" for k in range(N_TOF_REGIONS) if tof_regions)]
    return tuple(f"tof_{sensor}_{name}" for name in per_sensor)


@lru_cache(maxsize=8)
def channel_names(tof_regions: bool) -> tuple[str, ...]:
    """Frame channel names (cached: the single-sequence path asks on every call)."""
    tof = (n for s in range(1, N_TOF_SENSORS + 1) for n in tof_channel_names(s, tof_regions))
    return (*IMU_CHANNELS, *THM_COLUMNS, *tof)


def frame_channels(params: ExtractParams) -> list[str]:
    """Torch input channels, in frame_features column order."""
    return list(channel_names(params.tof_regions))


def n_segments(params: ExtractParams) -> int:
    """Segments per sequence; one segment would repeat the whole-sequence statistics."""
    return params.n_segments if params.n_segments > 1 else 0


@lru_cache(maxsize=8)
def feature_names(tof_regions: bool, segments: int) -> tuple[str, ...]:
    """Sequence feature names (cached, as ``channel_names``)."""
    names: list[str] = []
    for channel in channel_names(tof_regions):
        names += [f"{channel}__{stat}" for stat in WHOLE_STATS]
        for k in range(segments):
            names += [f"{channel}__seg{k}_{stat}" for stat in SEGMENT_STATS]
    return (*names, "length", *DEMOGRAPHIC_FEATURES)


def sequence_feature_names(params: ExtractParams) -> list[str]:
    """LightGBM features, in sequence_features column order (without sequence_id)."""
    return list(feature_names(params.tof_regions, n_segments(params)))
