"""The two views of every scored sequence (``cmi.evaluation``): as recorded, and IMU-only.

A network scores ``full`` for sequences that have all sensors (their recorded input) and
``imu_only`` for every sequence (thm/ToF nulled as the hidden test presents half of its
sequences; natively IMU-only sequences are unchanged by that). ``views_frame`` builds the OOF
contract's rows from those predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
from torch import nn

from cmi.evaluation import OOF_COLUMNS as KEY_COLUMNS
from cmi.evaluation import view_scores
from cmi.nn.data import imu_only_inputs
from cmi.nn.fold_data import PaddedPart
from cmi.nn.predict import network_proba
from cmi.schema import N_CLASSES, PROBA_COLUMNS

OOF_COLUMNS: tuple[str, ...] = (*KEY_COLUMNS, *PROBA_COLUMNS)


@dataclass(frozen=True)
class ViewPredictions:
    """Probabilities of some sequences in one view."""

    ids: list[str]
    proba: np.ndarray  # (n, 18) float64, rows summing to 1


def predict_views(
    model: nn.Module, part: PaddedPart, modality_idx: np.ndarray
) -> dict[str, ViewPredictions]:
    """``{"full": ..., "imu_only": ...}`` predictions of ``part`` (see the module docstring)."""
    full = np.flatnonzero(part.sensor_group == "full")
    imu_x = imu_only_inputs(part.x, modality_idx)
    return {
        "full": ViewPredictions(
            [part.ids[i] for i in full], network_proba(model, part.x[full], part.mask[full])
        ),
        "imu_only": ViewPredictions(list(part.ids), network_proba(model, imu_x, part.mask)),
    }


def recorded_proba(predictions: dict[str, ViewPredictions], part: PaddedPart) -> np.ndarray:
    """(N, 18) probabilities of each sequence as recorded (its native group's view)."""
    proba = np.array(predictions["imu_only"].proba, copy=True)
    proba[part.sensor_group == "full"] = predictions["full"].proba
    return proba


def views_frame(
    predictions: dict[str, ViewPredictions], labeled: pl.DataFrame, fold: int
) -> pl.DataFrame:
    """The OOF contract's rows for one fold, sorted by (sequence_id, view).

    ``labeled`` gives y_true (``label``) and the native ``sensor_group`` of each sequence.
    """
    parts = []
    for view, pred in predictions.items():
        proba = np.asarray(pred.proba, dtype=np.float64).reshape(len(pred.ids), N_CLASSES)
        parts.append(
            pl.DataFrame({"sequence_id": pred.ids}, schema={"sequence_id": pl.Utf8}).with_columns(
                pl.lit(fold, dtype=pl.Int32).alias("fold"),
                pl.lit(view, dtype=pl.Utf8).alias("view"),
                *(pl.Series(name, proba[:, i]) for i, name in enumerate(PROBA_COLUMNS)),
            )
        )
    info = labeled.select(
        pl.col("sequence_id").cast(pl.Utf8),
        pl.col("label").cast(pl.Int32).alias("y_true"),
        pl.col("sensor_group").cast(pl.Utf8),
    )
    frame = pl.concat(parts).join(info, on="sequence_id", how="left")
    return frame.select(OOF_COLUMNS).sort("sequence_id", "view")


def part_view_scores(
    predictions: dict[str, ViewPredictions], part: PaddedPart, imu_only_share: float
) -> dict[str, float]:
    """``{"full", "imu_only", "test_like"}`` competition scores of ``part``'s predictions."""
    labeled = pl.DataFrame(
        {"sequence_id": part.ids, "label": part.y, "sensor_group": part.sensor_group},
        schema={"sequence_id": pl.Utf8, "label": pl.Int64, "sensor_group": pl.Utf8},
    )
    scores = view_scores(views_frame(predictions, labeled, fold=-1), imu_only_share)
    return {view: float(body["score"]) for view, body in scores.items()}
