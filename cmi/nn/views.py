"""The two views of every scored sequence (``cmi.evaluation``): as recorded, and IMU-only.

A network scores ``full`` for sequences that have all sensors (their recorded input) and
``imu_only`` for every sequence (thm/ToF nulled as the hidden test presents half of its
sequences; natively IMU-only sequences are unchanged by that). ``views_frame`` builds the OOF
contract's rows from those predictions, plus ``o0..o3`` (orientation probabilities in
schema.ORIENTATIONS order) when the network has an orientation head.

An IMU-only member (``cmi.nn.members``) gets a part with IMU channels only: its ``full`` view
then sees the same input as its ``imu_only`` view, and only the latter is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
from torch import nn

from cmi.evaluation import concat_oof, view_oof_frame, view_scores
from cmi.nn.data import imu_only_inputs
from cmi.nn.fold_data import PaddedPart
from cmi.nn.model import N_ORIENTATIONS
from cmi.nn.predict import network_outputs

# Orientation probabilities (auxiliary head), as cmi.orientation names them.
ORIENTATION_COLUMNS: tuple[str, ...] = tuple(f"o{i}" for i in range(N_ORIENTATIONS))


@dataclass(frozen=True)
class ViewPredictions:
    """Probabilities of some sequences in one view."""

    ids: list[str]
    proba: np.ndarray  # (n, 18) float64, rows summing to 1
    orientation: np.ndarray | None = None  # (n, 4) float64 from an orientation head


def _predict(model: nn.Module, x: np.ndarray, mask: np.ndarray, ids: list[str]) -> ViewPredictions:
    proba, orientation = network_outputs(model, x, mask)
    return ViewPredictions(ids, proba, orientation)


def predict_views(
    model: nn.Module, part: PaddedPart, modality_idx: np.ndarray
) -> dict[str, ViewPredictions]:
    """``{"full": ..., "imu_only": ...}`` predictions of ``part`` (see the module docstring)."""
    full = np.flatnonzero(part.sensor_group == "full")
    imu_x = imu_only_inputs(part.x, modality_idx)
    return {
        "full": _predict(model, part.x[full], part.mask[full], [part.ids[i] for i in full]),
        "imu_only": _predict(model, imu_x, part.mask, list(part.ids)),
    }


def average_predictions(members: list[ViewPredictions]) -> ViewPredictions:
    """The mean of several members' predictions of the same rows (one member: itself)."""
    first = members[0]
    for other in members[1:]:
        if other.ids != first.ids:
            raise ValueError("average_predictions: members predicted different sequences")
    if len(members) == 1:
        return first
    orientation = None
    if all(m.orientation is not None for m in members):
        orientation = np.mean([m.orientation for m in members], axis=0)
    return ViewPredictions(
        list(first.ids), np.mean([m.proba for m in members], axis=0), orientation
    )


def recorded_proba(predictions: dict[str, ViewPredictions], part: PaddedPart) -> np.ndarray:
    """(N, 18) probabilities of each sequence as recorded (its native group's view)."""
    proba = np.array(predictions["imu_only"].proba, copy=True)
    proba[part.sensor_group == "full"] = predictions["full"].proba
    return proba


def views_frame(
    predictions: dict[str, ViewPredictions], labeled: pl.DataFrame, fold: int
) -> pl.DataFrame:
    """The OOF contract's rows for one fold (``cmi.evaluation.view_oof_frame``), sorted by
    (sequence_id, view).

    ``labeled`` gives y_true (``label``) and the native ``sensor_group`` of each sequence.
    """
    info = labeled.select(
        pl.col("sequence_id").cast(pl.Utf8),
        pl.col("label").alias("y_true"),
        pl.col("sensor_group").cast(pl.Utf8),
    )
    parts = []
    with_orientation = all(p.orientation is not None for p in predictions.values())
    for view, pred in predictions.items():
        ids = pl.DataFrame({"sequence_id": pred.ids}, schema={"sequence_id": pl.Utf8})
        rows = ids.join(info, on="sequence_id", how="left", maintain_order="left")
        part = view_oof_frame(
            pred.ids, fold, rows["y_true"], rows["sensor_group"], view, pred.proba
        )
        if with_orientation:
            orientation = np.asarray(pred.orientation, dtype=np.float64)
            part = part.with_columns(
                pl.Series(c, orientation[:, i]) for i, c in enumerate(ORIENTATION_COLUMNS)
            )
        parts.append(part)
    return concat_oof(parts)


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
