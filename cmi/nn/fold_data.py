"""One outer fold's data for the network, split so that nothing chosen sees the scored fold.

Honest selection: outer fold ``k`` is scored by a model that never saw it. The model trains
on every fold except ``k`` and its *inner* fold ``(k + 1) % n_folds`` (the rule LightGBM
uses too), and the inner fold (whole subjects, as every fold) alone chooses the best epoch.
The scaler and ``pad_len`` come from the training part only. Fold ``k``'s labels therefore
reach nothing that is saved for fold ``k``; they are used only to score it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from cmi.nn.data import Scaler, modality_indices, pad_length, sequence_lengths, to_padded
from cmi.params import TorchParams
from cmi.schema import ORIENTATIONS
from cmi.sequences import labeled_folds

MIN_FOLDS = 3  # a training part, an inner validation fold and the scored fold


@dataclass(frozen=True)
class PaddedPart:
    """Standardized, padded sequences of one part of a fold, sorted by sequence_id."""

    ids: list[str]
    x: np.ndarray  # (N, T, C) float32
    mask: np.ndarray  # (N, T) bool, True = real frame
    y: np.ndarray  # (N,) int64 class index
    sensor_group: np.ndarray  # (N,) native group: "full" | "imu_only"
    # (N,) int64 index into schema.ORIENTATIONS, -1 unknown; a training-only target (the
    # auxiliary head, same-orientation mixup), never an input.
    orientation: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class FoldInputs:
    """Outer fold ``fold``: its training part, inner validation fold and scored fold."""

    fold: int
    inner_fold: int
    train: PaddedPart
    inner: PaddedPart
    scored: PaddedPart
    modality_idx: np.ndarray
    scaler: Scaler
    pad_len: int


def inner_fold_of(fold: int, n_folds: int) -> int:
    """The fold that chooses the epoch of outer fold ``fold``'s model (shared with LightGBM)."""
    if n_folds < MIN_FOLDS:
        raise ValueError(
            f"params.yaml: cv.n_splits={n_folds}; honest epoch choice needs at least "
            f"{MIN_FOLDS} folds (train, inner validation, scored)"
        )
    return (fold + 1) % n_folds


def labeled_sequences(sequences: pl.DataFrame, folds: pl.DataFrame) -> pl.DataFrame:
    """sequence_id, fold, label, sensor_group (checked by ``cmi.sequences.labeled_folds``) and,
    when the sequences table has it, orientation as an index into schema.ORIENTATIONS or -1,
    sorted by sequence_id."""
    extra = ["orientation"] if "orientation" in sequences.columns else []
    table = labeled_folds(sequences, folds, extra)
    if extra:
        index = {name: i for i, name in enumerate(ORIENTATIONS)}
        table = table.with_columns(
            pl.col("orientation")
            .cast(pl.Utf8)
            .replace_strict(index, default=-1, return_dtype=pl.Int64)
            .fill_null(-1)
        )
    return table


def _frames_of(frame_features: pl.DataFrame, ids: pl.Series) -> pl.DataFrame:
    return frame_features.filter(pl.col("sequence_id").is_in(ids.implode()))


def _padded_part(
    frames: pl.DataFrame,
    table: pl.DataFrame,
    channels: Sequence[str],
    scaler: Scaler,
    pad_len: int,
    keep: str,
    what: str,
) -> PaddedPart:
    x, mask, ids = to_padded(frames, channels, scaler, pad_len, keep)
    missing = sorted(set(table["sequence_id"].to_list()) - set(ids))
    if missing:
        raise ValueError(
            f"frame_features.parquet: no frames for {len(missing)} {what} sequence(s), "
            f"e.g. {missing[:3]}"
        )
    rows = pl.DataFrame({"sequence_id": ids}).join(table, on="sequence_id", how="left")
    orientation = (
        rows["orientation"].to_numpy().astype(np.int64)
        if "orientation" in rows.columns
        else np.full(len(ids), -1, dtype=np.int64)
    )
    return PaddedPart(
        ids=ids,
        x=x,
        mask=mask,
        y=rows["label"].to_numpy().astype(np.int64),
        sensor_group=rows["sensor_group"].cast(pl.Utf8).to_numpy().astype(str),
        orientation=orientation,
    )


def needs_orientation(params: TorchParams) -> bool:
    """Whether training reads the orientation target (auxiliary head, same-orientation mixup)."""
    return params.aux_orientation_weight > 0 or (
        params.mixup_alpha > 0 and params.mixup_same_orientation
    )


def check_orientation(table: pl.DataFrame, what: str) -> None:
    """Every sequence of ``table`` (a labeled_sequences part) has a known orientation."""
    if "orientation" not in table.columns:
        raise ValueError(
            "sequences.parquet: no column orientation, which torch.aux_orientation_weight > 0 "
            "or torch.mixup_same_orientation need; rerun the extract stage"
        )
    bad = table.filter(pl.col("orientation") < 0)
    if bad.height:
        raise ValueError(
            f"sequences.parquet: column orientation null or not one of schema.ORIENTATIONS for "
            f"{bad.height} {what} sequence(s), e.g. {bad['sequence_id'].head(3).to_list()}"
        )


def prepare_fold(
    frame_features: pl.DataFrame,
    labeled: pl.DataFrame,
    fold: int,
    channels: Sequence[str],
    params: TorchParams,
) -> FoldInputs:
    """Split by fold, fit scaler and pad_len on the training part only, pad all three parts."""
    n_folds = labeled["fold"].n_unique()
    inner = inner_fold_of(fold, n_folds)
    tables = {
        "training": labeled.filter(~pl.col("fold").is_in([fold, inner])),
        "inner validation": labeled.filter(pl.col("fold") == inner),
        "scored": labeled.filter(pl.col("fold") == fold),
    }
    for what, table in tables.items():
        if table.height == 0:
            raise ValueError(f"fold {fold}: empty {what} part (inner fold {inner})")
    if needs_orientation(params):
        check_orientation(tables["training"], f"training (fold {fold})")
    frames = {what: _frames_of(frame_features, t["sequence_id"]) for what, t in tables.items()}
    scaler = Scaler.fit(frames["training"], channels)
    lengths = sequence_lengths(frames["training"])["length"].to_numpy()
    pad_len = pad_length(lengths, params.pad_percentile)
    parts = {
        what: _padded_part(
            frames[what], tables[what], channels, scaler, pad_len, params.keep,
            f"{what} (fold {fold})",
        )
        for what in tables
    }  # fmt: skip
    return FoldInputs(
        fold=fold,
        inner_fold=inner,
        train=parts["training"],
        inner=parts["inner validation"],
        scored=parts["scored"],
        modality_idx=modality_indices(channels),
        scaler=scaler,
        pad_len=pad_len,
    )
