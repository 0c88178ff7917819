"""DVC stage `lgbm`: one LightGBM model per fold, out-of-fold probabilities in views, metrics.

Finished folds are checkpointed under checkpoints/lgbm/<fingerprint>/, so a killed run resumes
at the first unfinished fold. Metrics and curves go through dvclive (dvclive/lgbm/): after
each fold its test_like score is in dvclive/lgbm/metrics.json and its inner-fold logloss curve
in dvclive/lgbm/plots/custom/, so `dvc exp show`, `dvc plots` and the VS Code extension see a
run progress; the final metrics.json holds the `full`, `imu_only` and `test_like` scores.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# Before lightgbm loads OpenMP: spinning worker threads cost ~9x CPU per boosting round when
# the cores are shared (a dvc queue with -j 2, a busy CI box). Passive waiting avoids it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import polars as pl
from dvclive import Live

from cmi import lgbm
from cmi.evaluation import per_fold_test_like, view_scores
from cmi.io import write_json, write_parquet, write_text, write_with
from cmi.params import Params, load_params
from cmi.paths import ProjectPaths

log = logging.getLogger("cmi.stages.lgbm")


def _read_inputs(paths: ProjectPaths) -> list[pl.DataFrame]:
    frames = []
    for path in (paths.sequences, paths.sequence_features, paths.folds):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run the extract and folds stages first")
        frames.append(pl.read_parquet(path))
    return frames


def _slow_fold_hook() -> Callable[[int], None] | None:
    """Test hook: CMI_TEST_SLOW_FOLD=k sleeps at the start of fold k (so a kill lands there)."""
    slow_fold = os.environ.get("CMI_TEST_SLOW_FOLD")
    if not slow_fold:
        return None
    seconds = float(os.environ.get("CMI_TEST_SLOW_SECONDS", "60"))

    def hook(fold: int) -> None:
        if fold == int(slow_fold):
            log.info("fold %d: CMI_TEST_SLOW_FOLD set, sleeping %.0fs", fold, seconds)
            time.sleep(seconds)

    return hook


def _write_models(
    paths: ProjectPaths,
    data: lgbm.TrainingSet,
    results: Sequence[lgbm.FoldResult],
    params: Params,
) -> None:
    out = paths.lgbm_dir
    for result in results:
        write_text(result.model_text, out / f"fold_{result.fold}.txt")
    # A run with fewer folds than an earlier one must not leave extra fold models behind.
    for stale in out.glob("fold_*.txt"):
        match = re.fullmatch(r"fold_(\d+)\.txt", stale.name)
        if match and int(match.group(1)) >= len(results):
            stale.unlink()
    write_json(lgbm.model_meta(data, results, params.lgbm), out / "meta.json")
    importance = lgbm.importance_frame(data.feature_names, results)
    write_with(out / "feature_importance.csv", lambda tmp: importance.write_csv(tmp))


def _fold_logger(
    live: Live, data: lgbm.TrainingSet, imu_only_share: float
) -> Callable[[lgbm.FoldResult], None]:
    """After each fold: its test_like score and inner logloss curve, written at once."""

    def log_fold(result: lgbm.FoldResult) -> None:
        scores = view_scores(lgbm.fold_oof_frame(data, result), imu_only_share)
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


def stage_metrics(
    oof: pl.DataFrame, results: Sequence[lgbm.FoldResult], imu_only_share: float, wall: float
) -> dict:
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


def main(root: Path = Path(".")) -> None:
    started = time.perf_counter()
    paths = ProjectPaths(root)
    params = load_params(paths.params)
    share = params.eval.imu_only_share
    sequences, sequence_features, folds = _read_inputs(paths)
    data = lgbm.build_training_set(sequences, sequence_features, folds)
    if data.n_folds != params.cv.n_splits:
        raise ValueError(
            f"{paths.folds}: {data.n_folds} folds but cv.n_splits={params.cv.n_splits}; "
            "rerun the folds stage"
        )
    store = lgbm.checkpoint_store(
        paths.checkpoints_dir / "lgbm",
        [paths.sequences, paths.sequence_features, paths.folds],
        params,
    )
    log.info(
        "%d sequences, %d features, %d folds; checkpoints in %s",
        len(data.sequence_ids),
        len(data.feature_names),
        data.n_folds,
        store.root,
    )
    # Inside `dvc repro` / `dvc exp run` dvclive never makes an experiment of its own, and
    # dvc.yaml (not dvclive) declares the metrics and plots.
    with Live(dir=str(paths.live_dir("lgbm")), save_dvc_exp=False, dvcyaml=None) as live:
        results = lgbm.run_cv(
            data,
            params.lgbm,
            store,
            on_fold_start=_slow_fold_hook(),
            imu_only_share=share,
            on_fold_end=_fold_logger(live, data, share),
        )
        oof = lgbm.oof_frame(data, results)
        _write_models(paths, data, results, params)
        write_parquet(oof, paths.oof("lgbm"))
        metrics = stage_metrics(oof, results, share, time.perf_counter() - started)
        # The final summary replaces what the folds logged (the same per-fold keys, in order).
        live.summary.clear()
        live.summary.update(metrics)
    for old in store.prune_others():
        log.info("removed stale checkpoints %s", old)
    log.info(
        "OOF test_like %.4f (binary F1 %.4f, macro F1 %.4f); full %.4f, imu_only %.4f; "
        "%.1fs; reused folds %s",
        metrics["test_like"]["score"],
        metrics["test_like"]["binary_f1"],
        metrics["test_like"]["macro_f1"],
        metrics["full"]["score"],
        metrics["imu_only"]["score"],
        metrics["wall_time_s"],
        [r.fold for r in results if r.reused],
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main()
