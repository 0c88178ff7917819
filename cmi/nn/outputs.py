"""What the torch stage writes: weights and scalers per member, meta.json, OOF table, metrics.

``models/torch/``: per member (``cmi.nn.members``) ``<name>.pt`` (state_dict, loads with
``weights_only=True``): ``fold_{k}.pt`` is fold k's first-seed full-input model, further
seeds are ``fold_{k}_seed_{s}.pt``, IMU-only models ``fold_{k}_imu.pt`` /
``fold_{k}_imu_seed_{s}.pt``. Per fold ``fold_{k}_scaler.json`` (scaler stats and the fold's
``pad_len``; every full-input seed shares it) and, with IMU-only models,
``fold_{k}_imu_scaler.json`` (the same stats of the IMU channels only). ``meta.json``
(``torch_meta``) lists every file in ``models``.
``data/oof/torch.parquet``: the OOF contract with views (``cmi.evaluation``); the ``full``
view averages the full-input members, ``imu_only`` the IMU-only members if any (else the
full-input ones); with an orientation head also ``o0..o3`` (schema.ORIENTATIONS order).
``metrics/torch.json``: ``full``, ``imu_only``, ``test_like`` (each score, binary_f1,
macro_f1, n_rows); top-level ``score``/``binary_f1``/``macro_f1`` repeat ``test_like``, the
figure to compare with the leaderboard; ``per_fold`` (test_like per fold),
``per_sensor_group`` (each sequence as recorded, by native group), the epoch choice of each
fold's first full-input member (``selection``, ``inner_folds``, ``best_epochs``,
``best_inner_scores``) and ``wall_time_s``. Only when a technique is on: ``members`` (every
member's epoch choice), ``imu_only_by_full_model`` (the imu_only view scored with the
full-input members, to compare with the IMU-only models) and ``orientation_head``
(accuracy and log loss of o0..o3 per view).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from cmi.evaluation import VIEWS, check_oof, concat_oof, view_scores
from cmi.io import write_json, write_parquet
from cmi.metrics import summarize_oof
from cmi.nn.cv import TorchFold, member_of
from cmi.nn.members import imu_channels, member_seeds, network_architecture
from cmi.nn.model import save_state_dict
from cmi.nn.train import SELECTED_BY, TorchFoldResult
from cmi.nn.views import ORIENTATION_COLUMNS, ViewPredictions, average_predictions, views_frame
from cmi.params import Params, TorchParams
from cmi.paths import ProjectPaths
from cmi.schema import GESTURES, ORIENTATIONS

SELECTION = (
    f"best epoch by {SELECTED_BY} on the inner fold (k + 1) % n_folds; the model of fold k "
    "trains on the other folds and never sees fold k"
)
IMU_SELECTION = (
    "best epoch by inner_imu_only on the inner fold (k + 1) % n_folds; IMU channels only"
)


def curves_dir(paths: ProjectPaths) -> Path:
    """The dvclive folder of the per-epoch curves (dvc.yaml's torch plots/metrics entries)."""
    return paths.root / "dvclive" / "torch"


def oof_frame(folds: Sequence[TorchFold], labeled: pl.DataFrame) -> pl.DataFrame:
    """Every fold's scored sequences in both views, sorted by (sequence_id, view)."""
    return concat_oof([views_frame(f.predictions, labeled, f.fold) for f in folds])


def scaler_file(fold: int, kind: str) -> str:
    return f"fold_{fold}_imu_scaler.json" if kind == "imu" else f"fold_{fold}_scaler.json"


def _model_entry(result: TorchFoldResult) -> dict[str, Any]:
    member = member_of(result)
    return {
        "fold": member.fold,
        "kind": member.kind,
        "seed": member.seed,
        "weights": f"{member.name}.pt",
        "scaler": scaler_file(member.fold, member.kind),
        "best_epoch": result.best_epoch,
        "best_inner_score": result.best_score,
        "selected_by": member.selected_by,
    }


def torch_meta(
    folds: Sequence[TorchFold], channels: Sequence[str], params: TorchParams
) -> dict[str, Any]:
    """meta.json: what inference (``cmi.nn.predict``, the bundle) reads.

    The first keys describe each fold's first full-input member (``fold_{k}.pt``), as a
    single model always had them; ``models`` lists every member's files (kind "full" uses
    "channels"/"architecture", kind "imu" uses ``imu_model``'s); ``imu_model`` is present
    only with IMU-only members, ``orientation_classes`` only with an orientation head (its
    probabilities o0..o3 in that order).
    """
    pad_lens = [f.pad_len for f in folds]
    meta: dict[str, Any] = {
        "n_folds": len(folds),
        "channels": list(channels),
        # One value for code that wants one; each fold's own is in fold_{k}_scaler.json.
        "pad_len": max(pad_lens),
        "pad_len_per_fold": pad_lens,
        "keep": params.keep,
        "architecture": network_architecture(len(channels), params),
        "classes": list(GESTURES),
        "selection": SELECTION,
        "inner_folds": [f.inner_fold for f in folds],
        "best_epochs": [f.primary.best_epoch for f in folds],
        "seeds": list(member_seeds(params)),
        "imu_only_model": bool(params.imu_only_model),
        "models": [_model_entry(r) for f in folds for r in f.members],
    }
    if params.imu_only_model:
        imu = imu_channels(channels)
        meta["imu_model"] = {
            "channels": imu,
            "architecture": network_architecture(len(imu), params),
            "selection": IMU_SELECTION,
        }
    if params.aux_orientation_weight > 0:
        meta["orientation_classes"] = list(ORIENTATIONS)
    return meta


def _orientation_scores(oof: pl.DataFrame, labeled: pl.DataFrame) -> dict[str, Any]:
    """Accuracy and log loss of the orientation head's o0..o3, per view."""
    truth = labeled.select(pl.col("sequence_id").cast(pl.Utf8), pl.col("orientation"))
    rows = oof.join(truth, on="sequence_id", how="left").filter(pl.col("orientation") >= 0)
    out: dict[str, Any] = {}
    for view in VIEWS:
        part = rows.filter(pl.col("view") == view)
        proba = part.select(ORIENTATION_COLUMNS).to_numpy()
        y = part["orientation"].to_numpy()
        if len(y) == 0:
            continue
        picked = np.clip(proba[np.arange(len(y)), y], 1e-15, 1.0)
        out[view] = {
            "accuracy": float(np.mean(proba.argmax(axis=1) == y)),
            "log_loss": float(-np.mean(np.log(picked))),
            "n_rows": len(y),
        }
    return out


def torch_metrics(
    oof: pl.DataFrame,
    folds: Sequence[TorchFold],
    imu_only_share: float,
    labeled: pl.DataFrame | None = None,
) -> dict[str, Any]:
    views = view_scores(oof, imu_only_share)
    recorded = oof.filter(pl.col("view") == pl.col("sensor_group"))
    per_fold = {
        str(fold): view_scores(part, imu_only_share)["test_like"]
        for (fold,), part in oof.sort("fold").group_by(["fold"], maintain_order=True)
    }
    metrics: dict[str, Any] = {
        **{key: views["test_like"][key] for key in ("score", "binary_f1", "macro_f1")},
        **views,
        "imu_only_share": imu_only_share,
        "n_sequences": int(oof["sequence_id"].n_unique()),
        "per_fold": per_fold,
        "per_sensor_group": summarize_oof(recorded)["per_sensor_group"],
        "selection": SELECTION,
        "inner_folds": [f.inner_fold for f in folds],
        "best_epochs": [f.primary.best_epoch for f in folds],
        "best_inner_scores": [f.primary.best_score for f in folds],
        "pad_len_per_fold": [f.pad_len for f in folds],
    }
    if any(len(f.members) > 1 for f in folds):
        metrics["members"] = {
            member_of(r).name: {
                "best_epoch": r.best_epoch,
                "best_inner_score": r.best_score,
            }
            for f in folds
            for r in f.members
        }
    if any(f.of_kind("imu") for f in folds) and labeled is not None:
        by_full = [
            views_frame(
                {"full": f.predictions["full"], "imu_only": _full_members_imu_view(f)},
                labeled,
                f.fold,
            )
            for f in folds
        ]
        metrics["imu_only_by_full_model"] = view_scores(pl.concat(by_full), imu_only_share)[
            "imu_only"
        ]
    has_head = set(ORIENTATION_COLUMNS) <= set(oof.columns)
    if has_head and labeled is not None and "orientation" in labeled.columns:
        metrics["orientation_head"] = _orientation_scores(oof, labeled)
    return metrics


def _full_members_imu_view(fold: TorchFold) -> ViewPredictions:
    return average_predictions([r.predictions["imu_only"] for r in fold.of_kind("full")])


def write_torch_outputs(
    paths: ProjectPaths,
    folds: Sequence[TorchFold],
    labeled: pl.DataFrame,
    channels: Sequence[str],
    params: Params,
    wall_time_s: float,
) -> dict[str, Any]:
    """Write models/torch, the OOF table and metrics/torch.json; return the metrics."""
    out_dir = paths.torch_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("fold_*"):
        stale.unlink()  # a previous run with more folds must not leave extra weights behind
    for fold in folds:
        for result in fold.members:
            member = member_of(result)
            save_state_dict(result.best_state, out_dir / f"{member.name}.pt")
            write_json(
                {**result.scaler.to_json(), "pad_len": result.pad_len},
                out_dir / scaler_file(member.fold, member.kind),
            )
    write_json(torch_meta(folds, channels, params.torch), out_dir / "meta.json")
    oof = oof_frame(folds, labeled)
    check_oof(oof, str(paths.oof("torch")))
    write_parquet(oof, paths.oof("torch"))
    metrics = torch_metrics(oof, folds, params.eval.imu_only_share, labeled)
    metrics["wall_time_s"] = round(wall_time_s, 2)
    write_json(metrics, paths.metrics("torch"))
    return metrics
