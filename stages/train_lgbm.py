"""DVC stage `lgbm`: one LightGBM model per fold, out-of-fold probabilities, metrics.

Finished folds are checkpointed under checkpoints/lgbm/<fingerprint>/, so a killed run resumes
at the first unfinished fold.
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

from cmi import lgbm
from cmi.io import write_json, write_parquet, write_text, write_with
from cmi.metrics import summarize_oof
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


def main(root: Path = Path(".")) -> None:
    started = time.perf_counter()
    paths = ProjectPaths(root)
    params = load_params(paths.params)
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
    results = lgbm.run_cv(data, params.lgbm, store, on_fold_start=_slow_fold_hook())
    oof = lgbm.oof_frame(data, results)

    _write_models(paths, data, results, params)
    write_parquet(oof, paths.oof("lgbm"))
    metrics = summarize_oof(oof)
    metrics["best_iterations"] = [r.best_iteration for r in results]
    metrics["wall_time_s"] = round(time.perf_counter() - started, 2)
    write_json(metrics, paths.metrics("lgbm"))
    for old in store.prune_others():
        log.info("removed stale checkpoints %s", old)
    log.info(
        "OOF score %.4f (binary F1 %.4f, macro F1 %.4f) in %.1fs; reused folds %s",
        metrics["score"],
        metrics["binary_f1"],
        metrics["macro_f1"],
        metrics["wall_time_s"],
        [r.fold for r in results if r.reused],
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main()
