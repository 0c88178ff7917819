"""What the lgbm stage writes: fold models, meta.json, importances, the OOF table, metrics.

``models/lgbm/``: ``fold_{k}.txt`` (LightGBM text model of fold k), ``meta.json``
(``model_meta``: what inference needs) and ``feature_importance.csv`` (gain per fold and its
mean). ``data/oof/lgbm.parquet``: the OOF contract with views (``cmi.evaluation``).
``dvclive/lgbm/``: after each fold its test_like score (``metrics.json``) and inner-fold
logloss curve (``plots/custom/``), so `dvc exp show`, `dvc plots` and the VS Code extension
see a run progress; at the end ``metrics.json`` holds ``lgbm_metrics``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl
from dvclive import Live

from cmi.evaluation import check_oof, concat_oof, per_fold_test_like, view_oof_frame, view_scores
from cmi.io import write_json, write_parquet, write_text, write_with
from cmi.lgbm.data import TrainingSet, is_modality_feature
from cmi.lgbm.train import FoldResult
from cmi.params import LgbmParams, Params, section_dict
from cmi.paths import ProjectPaths
from cmi.schema import GESTURES, N_CLASSES

STAGE_NAME = "lgbm"


def fold_oof_frame(data: TrainingSet, result: FoldResult) -> pl.DataFrame:
    """One fold's rows of the OOF contract (``cmi.evaluation``): the recorded view of its
    full-sensor sequences, the IMU-only view of all of them; sorted by (sequence_id, view)."""
    rows = data.valid_rows(result.fold)
    full = data.sensor_group[rows] == "full"

    def view_rows(subset: np.ndarray, view: str, proba: np.ndarray) -> pl.DataFrame:
        ids = [data.sequence_ids[i] for i in subset]
        y_true, group = data.y[subset], data.sensor_group[subset]
        return view_oof_frame(ids, data.fold[subset], y_true, group, view, proba)

    return concat_oof(
        [
            view_rows(rows[full], "full", result.proba_recorded[full]),
            view_rows(rows, "imu_only", result.proba_imu_only),
        ]
    )


def oof_frame(data: TrainingSet, results: Sequence[FoldResult]) -> pl.DataFrame:
    """The OOF table of every fold (``sequence_id, fold, y_true, sensor_group, view,
    p00..p17``), sorted by (sequence_id, view)."""
    folds = sorted(r.fold for r in results)
    if folds != list(range(data.n_folds)):
        raise ValueError(f"out-of-fold probabilities missing: have folds {folds}")
    return concat_oof([fold_oof_frame(data, r) for r in results])


def gain_importance(model_text: str) -> np.ndarray:
    return lgb.Booster(model_str=model_text).feature_importance(importance_type="gain")


def importance_frame(feature_names: Sequence[str], results: Sequence[FoldResult]) -> pl.DataFrame:
    """feature, gain (mean over folds), gain_fold_k ...; most important first."""
    per_fold = {f"gain_fold_{r.fold}": gain_importance(r.model_text) for r in results}
    gains = np.vstack(list(per_fold.values()))
    return pl.DataFrame(
        {"feature": list(feature_names), "gain": gains.mean(axis=0), **per_fold}
    ).sort(["gain", "feature"], descending=[True, False])


def model_meta(data: TrainingSet, results: Sequence[FoldResult], params: LgbmParams) -> dict:
    """models/lgbm/meta.json: what inference needs to use the fold models."""
    return {
        "n_folds": len(results),
        "feature_names": list(data.feature_names),
        "best_iterations": [r.best_iteration for r in results],
        "classes": list(GESTURES),
        "num_class": N_CLASSES,
        "modality_features": [n for n in data.feature_names if is_modality_feature(n)],
        "lightgbm_version": lgb.__version__,
        "params": section_dict(params),
    }


def write_fold_models(out: Path, model_texts: Mapping[int, str]) -> None:
    """``fold_{k}.txt`` in ``out`` for each fold k of ``model_texts`` (LightGBM text models);
    a ``fold_{k}.txt`` of any other fold (an earlier run with more folds) is removed, so the
    folder holds exactly these models."""
    for fold, text in model_texts.items():
        write_text(text, out / f"fold_{fold}.txt")
    for path in out.glob("fold_*.txt"):
        match = re.fullmatch(r"fold_(\d+)\.txt", path.name)
        if match and int(match.group(1)) not in model_texts:
            path.unlink()


def write_models(
    out: Path, data: TrainingSet, results: Sequence[FoldResult], params: LgbmParams
) -> None:
    """``fold_{k}.txt`` per fold, meta.json and feature_importance.csv in ``out``."""
    write_fold_models(out, {r.fold: r.model_text for r in results})
    write_json(model_meta(data, results, params), out / "meta.json")
    importance = importance_frame(data.feature_names, results)
    write_with(out / "feature_importance.csv", lambda tmp: importance.write_csv(tmp))


def live_run(paths: ProjectPaths) -> Live:
    """The dvclive run of dvclive/lgbm/. Inside `dvc repro` / `dvc exp run` dvclive never makes
    an experiment of its own, and dvc.yaml (not dvclive) declares the metrics and plots."""
    return Live(dir=str(paths.live_dir(STAGE_NAME)), save_dvc_exp=False, dvcyaml=None)


def fold_logger(
    live: Live, data: TrainingSet, imu_only_share: float
) -> Callable[[FoldResult], None]:
    """After each fold: its test_like score and inner logloss curve, written at once."""

    def log_fold(result: FoldResult) -> None:
        scores = view_scores(fold_oof_frame(data, result), imu_only_share)
        live.log_metric(
            f"per_fold_test_like/{result.fold}", scores["test_like"]["score"], plot=False
        )
        if result.inner_logloss:
            curve = [
                {"iteration": i + 1, "inner_logloss": value}
                for i, value in enumerate(result.inner_logloss)
            ]
            live.log_plot(
                f"inner_logloss_fold_{result.fold}", curve, x="iteration", y="inner_logloss"
            )
        live.make_summary()

    return log_fold


def lgbm_metrics(
    oof: pl.DataFrame, results: Sequence[FoldResult], imu_only_share: float, wall: float
) -> dict[str, Any]:
    """dvclive/lgbm/metrics.json: ``score`` (= test_like, what `dvc exp show` sorts on), the
    three views, per-fold test_like and the rounds each fold's model was given."""
    scores = view_scores(oof, imu_only_share)
    return {
        "score": scores["test_like"]["score"],
        **scores,
        "per_fold_test_like": per_fold_test_like(oof, imu_only_share),
        "best_iterations": [r.best_iteration for r in results],
        "imu_only_share": imu_only_share,
        "n_sequences": oof["sequence_id"].n_unique(),
        "wall_time_s": round(wall, 2),
    }


def write_lgbm_outputs(
    paths: ProjectPaths,
    live: Live,
    data: TrainingSet,
    results: Sequence[FoldResult],
    params: Params,
    wall_time_s: float,
) -> dict[str, Any]:
    """Write models/lgbm, the OOF table and the final dvclive metrics; return the metrics."""
    oof = oof_frame(data, results)
    check_oof(oof, str(paths.oof(STAGE_NAME)))
    write_models(paths.lgbm_dir, data, results, params.lgbm)
    write_parquet(oof, paths.oof(STAGE_NAME))
    metrics = lgbm_metrics(oof, results, params.eval.imu_only_share, wall_time_s)
    # The final summary replaces what the folds logged (the same per-fold keys, in order).
    live.summary.clear()
    live.summary.update(metrics)
    return metrics
