"""Is the device worn upside down? A per-sequence score from the IMU, a per-subject decision.

The signal is the direction of gravity in the device frame. The half turn about the forearm
(``cmi.wear.rotate``) maps it (gx, gy, gz) -> (gx, -gy, -gz): the forearm's tilt stays, the
wrist's roll about the forearm gains 180 degrees. A normal wearer's roll is not symmetric
under that (the device face mostly points up-ish at rest and at the targets), but it is far
from one-signed either: on the real sample (15 sequences, all normal wearers), 3 of the 6
sequences lying on the back or the side start with acc_z below -6 m/s^2, and 2 of them read
as upside down to a model fitted on synthetic data. So no fixed rule ("acc_z < 0 at rest")
is used; the score is learned from the training data's normal wearers, and the subject
decision pools every sequence seen so far.

Per sequence, six numbers: the mean unit gravity direction over the first third of the
frames (rest and reach) and over the last third (at the target). Gravity comes from the
quaternion (R(q)^T [0, 0, 1]) where the row has one, else from the accelerometer, which at
these speeds is gravity plus small motion.

The score is a logistic model with no intercept on terms that are odd under the half turn
(gy, gz, gx*gy, gx*gz and cubic terms of each third): score(flipped) == -score(original)
exactly, zero means "no evidence", positive means upside down (log-odds scale). It is fitted
on normal wearers against their flipped copies (``cmi.wear.fit``), so it needs no upside-down
examples and has no class prior built in.

A subject's decision uses every sequence of it seen so far: the mean of the scores, each
clipped to +-``score_clip`` so that one odd sequence cannot decide alone, must exceed
``threshold`` once at least ``min_sequences`` have been seen. Both are chosen on training
data by replaying random arrival orders (``cmi.wear.fit``). Kaggle path: numpy and polars.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from cmi import rotation as rot
from cmi.schema import ACC_COLUMNS, ROT_COLUMNS

FEATURE_NAMES: tuple[str, ...] = (
    "head_gx", "head_gy", "head_gz", "tail_gx", "tail_gy", "tail_gz",
)  # fmt: skip
# The half turn on the six features: the x parts stay, y and z change sign.
HALF_TURN_SIGNS = np.array([1.0, -1.0, -1.0, 1.0, -1.0, -1.0])
SEGMENT_SHARE = 3  # head and tail are each the first / last 1/3 of a sequence's frames
N_TERMS = 16
_IMU = list(ACC_COLUMNS + ROT_COLUMNS)


def unit_gravity(acc: np.ndarray, quat: np.ndarray) -> np.ndarray:
    """(n, 3) unit gravity direction in the device frame per frame; NaN rows where neither
    the quaternion nor the accelerometer gives one."""
    q_norm = np.linalg.norm(quat, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        g = rot.gravity_in_device_frame(quat / q_norm)
    from_acc = ~np.isfinite(g).all(axis=1)
    g[from_acc] = acc[from_acc]
    norm = np.linalg.norm(g, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        u = g / norm
    u[~np.isfinite(u).all(axis=1)] = np.nan
    return u


def segment_features(u: np.ndarray, seq_index: np.ndarray, position: np.ndarray) -> np.ndarray:
    """(n_sequences, 6) head and tail mean directions from per-frame unit vectors ``u``;
    ``seq_index`` numbers the sequences 0..k-1, ``position`` is each frame's index within its
    sequence (0, 1, ...). NaN where a segment has no usable frame."""
    n_seq = int(seq_index.max()) + 1 if len(seq_index) else 0
    length = np.bincount(seq_index, minlength=n_seq)
    k = np.maximum(1, length // SEGMENT_SHARE)[seq_index]
    usable = np.isfinite(u).all(axis=1)
    u0 = np.where(usable[:, None], u, 0.0)
    out = np.empty((n_seq, 6))
    for j, segment in enumerate((position < k, position >= length[seq_index] - k)):
        weight = (segment & usable).astype(float)
        count = np.bincount(seq_index, weights=weight, minlength=n_seq)
        for c in range(3):
            total = np.bincount(seq_index, weights=weight * u0[:, c], minlength=n_seq)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[:, 3 * j + c] = total / count
    return out


def _imu_arrays(frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    # Column by column: a select/cast expression costs ~10x more on a 60-row sequence.
    try:
        columns = [frame.get_column(c) for c in _IMU]
    except pl.exceptions.ColumnNotFoundError:
        missing = [c for c in _IMU if c not in frame.columns]
        raise ValueError(
            f"upside-down detection needs the IMU columns; missing {missing}"
        ) from None
    imu = np.column_stack([c.cast(pl.Float64).to_numpy() for c in columns])
    return imu[:, :3], imu[:, 3:]


def sequence_features(frame: pl.DataFrame) -> np.ndarray:
    """The six features of one sequence (all its rows; ordered by ``sequence_counter`` when
    that column is present)."""
    # ``frame.columns``, not ``frame.schema``: the schema of 341 columns costs ~0.15 ms.
    if "sequence_counter" in frame.columns and not frame["sequence_counter"].is_sorted():
        frame = frame.sort("sequence_counter")
    acc, quat = _imu_arrays(frame)
    n = len(acc)
    if n == 0:
        return np.full(6, np.nan)
    return segment_features(unit_gravity(acc, quat), np.zeros(n, np.int64), np.arange(n))[0]


def wear_features(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per sequence of a raw sensor frame: ``sequence_id``, ``subject`` and the six
    features, sorted by ``sequence_id``. The same numbers ``sequence_features`` gives each
    sequence alone."""
    for column in ("sequence_id", "subject", "sequence_counter"):
        if column not in frame.columns:
            raise ValueError(f"wear_features: the frame has no column {column!r}")
    frame = frame.select(["sequence_id", "subject", "sequence_counter", *_IMU]).sort(
        ["sequence_id", "sequence_counter"]
    )
    seq_index = frame["sequence_id"].rle_id().to_numpy().astype(np.int64)
    starts = np.flatnonzero(np.r_[True, seq_index[1:] != seq_index[:-1]])
    position = np.arange(len(seq_index)) - starts[seq_index]
    acc, quat = _imu_arrays(frame)
    x = segment_features(unit_gravity(acc, quat), seq_index, position)
    ids = frame.select("sequence_id", "subject").gather(starts)
    return ids.with_columns(pl.Series(name, x[:, j]) for j, name in enumerate(FEATURE_NAMES))


def odd_terms(x: np.ndarray) -> np.ndarray:
    """(n, 16) terms of the (n, 6) features that change sign under the half turn."""
    columns = []
    for gx, gy, gz in (x[:, 0:3].T, x[:, 3:6].T):
        columns += [gy, gz, gx * gy, gx * gz, gy**3, gz**3, gy * gz * gz, gy * gy * gz]
    return np.stack(columns, axis=1)


@dataclass(frozen=True)
class WearModel:
    """A fitted detector: the score's coefficients and the subject decision rule."""

    coef: tuple[float, ...]
    threshold: float
    min_sequences: int
    score_clip: float

    def __post_init__(self) -> None:
        if len(self.coef) != N_TERMS or not all(math.isfinite(c) for c in self.coef):
            raise ValueError(f"WearModel.coef must be {N_TERMS} finite numbers, got {self.coef}")
        if not (self.score_clip > 0 and 0 <= self.threshold < self.score_clip):
            raise ValueError(
                f"WearModel needs 0 <= threshold < score_clip, got {self.threshold}, "
                f"{self.score_clip}"
            )
        if self.min_sequences < 1:
            raise ValueError(f"WearModel.min_sequences must be >= 1, got {self.min_sequences}")

    def score_features(self, x: np.ndarray) -> np.ndarray:
        """Scores of (n, 6) feature rows; NaN where a feature is NaN."""
        return odd_terms(np.atleast_2d(x)) @ np.asarray(self.coef)

    def score(self, frame: pl.DataFrame) -> float:
        return float(self.score_features(sequence_features(frame))[0])

    def to_dict(self) -> dict:
        """JSON-safe, for a bundle manifest."""
        return {
            "coef": [float(c) for c in self.coef],
            "threshold": float(self.threshold),
            "min_sequences": int(self.min_sequences),
            "score_clip": float(self.score_clip),
        }

    @classmethod
    def from_dict(cls, data: dict) -> WearModel:
        expected = {"coef", "threshold", "min_sequences", "score_clip"}
        if set(data) != expected:
            raise ValueError(f"WearModel record needs keys {sorted(expected)}, got {sorted(data)}")
        return cls(
            coef=tuple(float(c) for c in data["coef"]),
            threshold=float(data["threshold"]),
            min_sequences=int(data["min_sequences"]),
            score_clip=float(data["score_clip"]),
        )


def upside_down_score(frame: pl.DataFrame, model: WearModel) -> float:
    """Evidence that one sequence was recorded upside down (log-odds scale, > 0 for upside
    down, 0 for none); NaN when the sequence has no usable IMU frame."""
    return model.score(frame)


def decide_subject(scores: Sequence[float] | np.ndarray, model: WearModel) -> bool:
    """True when a subject's sequence scores seen so far say it wears the device upside
    down. NaN scores (no usable IMU) carry no evidence and are ignored."""
    values = np.asarray(scores, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < model.min_sequences:
        return False
    clipped = np.clip(values, -model.score_clip, model.score_clip)
    return bool(clipped.mean() > model.threshold)


class SubjectWearDetector:
    """The subject decision at inference, where sequences arrive one at a time.

    ``observe(subject, sequence_id, frame)`` scores the sequence, remembers it (a sequence
    sent again replaces its earlier score rather than counting twice) and returns the
    subject's decision from everything seen so far. Memory is bounded: past ``max_subjects``
    subjects, the least recently seen one is forgotten; past ``max_sequences_per_subject``
    sequences of one subject, its earliest-seen one.
    """

    def __init__(
        self, model: WearModel, max_subjects: int = 4096, max_sequences_per_subject: int = 512
    ) -> None:
        if max_subjects < 1 or max_sequences_per_subject < 1:
            raise ValueError("SubjectWearDetector bounds must be >= 1")
        self.model = model
        self.max_subjects = max_subjects
        self.max_sequences_per_subject = max_sequences_per_subject
        self._scores: OrderedDict[str, dict[str, float]] = OrderedDict()

    def add_score(self, subject: str, sequence_id: str, score: float) -> bool:
        seen = self._scores.setdefault(subject, {})
        self._scores.move_to_end(subject)
        seen[sequence_id] = float(score)
        while len(seen) > self.max_sequences_per_subject:
            del seen[next(iter(seen))]
        while len(self._scores) > self.max_subjects:
            self._scores.popitem(last=False)
        return self.is_upside_down(subject)

    def clear(self) -> None:
        """Forget every subject."""
        self._scores.clear()

    def observe(self, subject: str, sequence_id: str, frame: pl.DataFrame) -> bool:
        return self.add_score(subject, sequence_id, self.model.score(frame))

    def is_upside_down(self, subject: str) -> bool:
        return decide_subject(list(self._scores.get(subject, {}).values()), self.model)

    def n_seen(self, subject: str) -> int:
        return len(self._scores.get(subject, {}))
