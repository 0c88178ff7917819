"""What the torch stage writes: weights and scaler per fold, meta.json, OOF table, metrics.

``models/torch/``: ``fold_{k}.pt`` (state_dict, loads with ``weights_only=True``),
``fold_{k}_scaler.json`` (scaler stats and the fold's ``pad_len``) and ``meta.json`` (below).
``data/oof/torch.parquet``: the OOF contract with views (``cmi.evaluation``).
``metrics/torch.json``: ``full``, ``imu_only``, ``test_like`` (each score, binary_f1,
macro_f1, n_rows); top-level ``score``/``binary_f1``/``macro_f1`` repeat ``test_like``, the
figure to compare with the leaderboard; ``per_fold`` (test_like per fold),
``per_sensor_group`` (each sequence as recorded, by native group), the epoch choice
(``selection``, ``inner_folds``, ``best_epochs``, ``best_inner_scores``) and ``wall_time_s``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from cmi.evaluation import check_oof, view_scores
from cmi.io import write_json, write_parquet
from cmi.metrics import summarize_oof
from cmi.nn.model import architecture_kwargs, save_state_dict
from cmi.nn.train import SELECTED_BY, TorchFoldResult
from cmi.nn.views import views_frame
from cmi.params import Params, TorchParams
from cmi.paths import ProjectPaths
from cmi.schema import GESTURES

SELECTION = (
    f"best epoch by {SELECTED_BY} on the inner fold (k + 1) % n_folds; the model of fold k "
    "trains on the other folds and never sees fold k"
)


def curves_dir(paths: ProjectPaths) -> Path:
    """The dvclive folder of the per-epoch curves (dvc.yaml's torch plots/metrics entries)."""
    return paths.root / "dvclive" / "torch"


def oof_frame(results: Sequence[TorchFoldResult], labeled: pl.DataFrame) -> pl.DataFrame:
    """Every fold's scored sequences in both views, sorted by (sequence_id, view)."""
    parts = [views_frame(r.predictions, labeled, r.fold) for r in results]
    return pl.concat(parts).sort("sequence_id", "view")


def torch_meta(
    results: Sequence[TorchFoldResult], channels: Sequence[str], params: TorchParams
) -> dict[str, Any]:
    """meta.json: what inference (``cmi.nn.predict.load_fold_model``, the bundle) reads."""
    pad_lens = [r.pad_len for r in results]
    return {
        "n_folds": len(results),
        "channels": list(channels),
        # One value for code that wants one; each fold's own is in fold_{k}_scaler.json.
        "pad_len": max(pad_lens),
        "pad_len_per_fold": pad_lens,
        "keep": params.keep,
        "architecture": architecture_kwargs(
            len(channels),
            params.conv_channels,
            params.lstm_hidden,
            params.gru_hidden,
            params.dropout,
        ),
        "classes": list(GESTURES),
        "selection": SELECTION,
        "inner_folds": [r.inner_fold for r in results],
        "best_epochs": [r.best_epoch for r in results],
    }


def torch_metrics(
    oof: pl.DataFrame, results: Sequence[TorchFoldResult], imu_only_share: float
) -> dict[str, Any]:
    views = view_scores(oof, imu_only_share)
    recorded = oof.filter(pl.col("view") == pl.col("sensor_group"))
    per_fold = {
        str(fold): view_scores(part, imu_only_share)["test_like"]
        for (fold,), part in oof.sort("fold").group_by(["fold"], maintain_order=True)
    }
    return {
        **{key: views["test_like"][key] for key in ("score", "binary_f1", "macro_f1")},
        **views,
        "imu_only_share": imu_only_share,
        "n_sequences": int(oof["sequence_id"].n_unique()),
        "per_fold": per_fold,
        "per_sensor_group": summarize_oof(recorded)["per_sensor_group"],
        "selection": SELECTION,
        "inner_folds": [r.inner_fold for r in results],
        "best_epochs": [r.best_epoch for r in results],
        "best_inner_scores": [r.best_score for r in results],
        "pad_len_per_fold": [r.pad_len for r in results],
    }


def write_torch_outputs(
    paths: ProjectPaths,
    results: Sequence[TorchFoldResult],
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
    for result in results:
        save_state_dict(result.best_state, out_dir / f"fold_{result.fold}.pt")
        write_json(
            {**result.scaler.to_json(), "pad_len": result.pad_len},
            out_dir / f"fold_{result.fold}_scaler.json",
        )
    write_json(torch_meta(results, channels, params.torch), out_dir / "meta.json")
    oof = oof_frame(results, labeled)
    check_oof(oof, str(paths.oof("torch")))
    write_parquet(oof, paths.oof("torch"))
    metrics = torch_metrics(oof, results, params.eval.imu_only_share)
    metrics["wall_time_s"] = round(wall_time_s, 2)
    write_json(metrics, paths.metrics("torch"))
    return metrics
