"""Real-shaped sequences for checking a bundle before serving (no data files needed).

A probe has every column of Kaggle's test.csv, a plausible length and plausible values
(gravity on the accelerometer, a unit quaternion that turns, warm thermopiles, ToF distances
with some "no reflection" -1s), so the whole feature and model path runs as on real input;
an all-zero sequence would skip branches real data takes.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from cmi.schema import (
    ACC_COLUMNS,
    DEMOGRAPHICS_COLUMNS,
    ROT_COLUMNS,
    TEST_COLUMNS,
    THM_COLUMNS,
    TOF_COLUMNS,
)

PROBE_SEQUENCE_ID = "SEQ_PROBE"
PROBE_SUBJECT = "SUBJ_PROBE"


def probe_sequence(length: int = 64, seed: int = 0) -> pl.DataFrame:
    """One full-sensor sequence in the Kaggle test layout (``TEST_COLUMNS``, test dtypes)."""
    rng = np.random.default_rng(seed)
    t = np.arange(length, dtype=np.float64)
    columns: dict[str, object] = {
        "row_id": [f"{PROBE_SEQUENCE_ID}_{i:06d}" for i in range(length)],
        "sequence_id": [PROBE_SEQUENCE_ID] * length,
        "sequence_counter": np.arange(length, dtype=np.int64),
        "subject": [PROBE_SUBJECT] * length,
    }
    # Gravity mostly on y, plus a hand movement in the second half (m/s^2).
    motion = np.where(t > length / 2, np.sin(t / 2.0), 0.0)
    acc = np.stack([0.8 + motion, 9.6 + 0.3 * motion, 1.5 - motion], axis=1)
    acc += rng.normal(scale=0.05, size=acc.shape)
    # A unit quaternion turning about a fixed axis (w, x, y, z).
    angle = 0.6 * np.sin(t / 12.0)
    axis = np.array([0.3, 0.5, 0.81]) / np.linalg.norm([0.3, 0.5, 0.81])
    rot = np.column_stack([np.cos(angle / 2), np.outer(np.sin(angle / 2), axis)])
    thm = 27.0 + np.linspace(0, 3, length)[:, None] + rng.normal(scale=0.1, size=(length, 5))
    tof = rng.integers(20, 250, size=(length, len(TOF_COLUMNS))).astype(np.float64)
    tof[rng.random(tof.shape) < 0.2] = -1.0
    for block, names in ((acc, ACC_COLUMNS), (rot, ROT_COLUMNS), (thm, THM_COLUMNS)):
        columns.update({name: block[:, i] for i, name in enumerate(names)})
    columns.update({name: tof[:, i] for i, name in enumerate(TOF_COLUMNS)})
    return pl.DataFrame(columns).select(TEST_COLUMNS)


def probe_demographics(subject: str = PROBE_SUBJECT) -> pl.DataFrame:
    """The probe subject's row in test_demographics.csv's layout."""
    values = (subject, 1, 25, 1, 1, 170.0, 55, 28.0)
    return pl.DataFrame([values], schema=list(DEMOGRAPHICS_COLUMNS), orient="row")


def imu_only_view(sequence: pl.DataFrame) -> pl.DataFrame:
    """The sequence as the hidden test presents IMU-only ones: thm and ToF all null."""
    nulled = [c for c in (*THM_COLUMNS, *TOF_COLUMNS) if c in sequence.columns]
    return sequence.with_columns(pl.lit(None, dtype=pl.Float64).alias(c) for c in nulled)
