"""The upside-down correction as the pipeline applies it (``extract.fix_upside_down``).

One raw-frame transform, before ``prepare_sensor_frame``/``compute_features``, on both sides:
- training (``cmi.extract``): ``fit_for_extract`` fits the detector on the raw train table and
  names the training subjects who wear the device upside down; ``rotate_subjects`` rotates
  their rows back; ``wear_record`` is what ``data/features/wear_model.json`` holds, and what
  the bundle ships;
- inference (``cmi.wear.online``): the subject decision from the sequences seen so far, and
  ``rotate_back`` of a flagged subject's sequence.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import polars as pl

from cmi.params import ExtractParams
from cmi.wear.detect import WearModel
from cmi.wear.fit import WearFit, fit_wear_model
from cmi.wear.rotate import rotate_back

RECORD_VERSION = 1


def fit_for_extract(train: pl.DataFrame, params: ExtractParams) -> WearFit | None:
    """The detector fitted on the raw train table (``sequence_id``, ``subject``,
    ``sequence_counter`` and the IMU columns), or None when ``fix_upside_down`` is off.

    ``params.upside_down_subjects`` names known upside-down training subjects (the fit then
    takes them as labels); empty, the fit finds them by self-training.
    """
    if not params.fix_upside_down:
        return None
    known = tuple(params.upside_down_subjects)
    if known:
        present = set(train.get_column("subject").unique().to_list())
        absent = sorted(set(known) - present)
        if absent:
            raise ValueError(
                f"params extract.upside_down_subjects: {absent} not in train.csv's subject column"
            )
    return fit_wear_model(train, known_upside_down=known or None)


def rotate_subjects(raw: pl.DataFrame, subjects: Collection[str]) -> pl.DataFrame:
    """``raw`` with the rows of ``subjects`` rotated back (``cmi.wear.rotate_back``); the
    frame itself when there are none."""
    if not subjects:
        return raw
    return rotate_back(raw, where=pl.col("subject").is_in(sorted(subjects)))


def upside_down_column(subjects: pl.Series, fit: WearFit) -> pl.Series:
    """The sequences table's ``upside_down`` column: the subject-level decision used."""
    return subjects.is_in(list(fit.upside_down_subjects)).alias("upside_down")


def wear_record(fit: WearFit | None) -> dict[str, Any]:
    """JSON for ``wear_model.json``: ``{"enabled": false}`` when the correction is off."""
    if fit is None:
        return {"version": RECORD_VERSION, "enabled": False}
    return {
        "version": RECORD_VERSION,
        "enabled": True,
        "model": fit.model.to_dict(),
        "upside_down_subjects": list(fit.upside_down_subjects),
        "decision_error": float(fit.decision_error),
    }


def model_from_record(record: dict[str, Any], where: str = "wear_model.json") -> WearModel | None:
    """The detector of a ``wear_record`` (None when it was off); ValueError naming ``where``
    if the record is malformed."""
    if not isinstance(record, dict) or record.get("version") != RECORD_VERSION:
        raise ValueError(f"{where}: not a wear record of version {RECORD_VERSION}: {record!r}")
    if not record.get("enabled"):
        return None
    try:
        return WearModel.from_dict(record["model"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{where}: bad wear model: {err}") from err
