"""DVC stage `lgbm`: one LightGBM model per fold, out-of-fold probabilities in views, metrics.

Finished folds are checkpointed under checkpoints/lgbm/<fingerprint>/ (``cmi.lgbm.run_cv``),
so a killed run resumes at the first unfinished fold. Outputs (``cmi.lgbm.outputs``):
models/lgbm/{fold_k.txt, meta.json, feature_importance.csv}, data/oof/lgbm.parquet (both
views) and dvclive/lgbm/ (each fold's test_like score and inner-fold logloss curve as it
finishes, then the `full`, `imu_only` and `test_like` scores).

Test hook: CMI_TEST_SLOW_FOLD=k (CMI_TEST_SLOW_SECONDS) sleeps at the start of fold k.
"""

from __future__ import annotations

import os

# Before lightgbm loads OpenMP: spinning worker threads cost ~9x CPU per boosting round when
# the cores are shared (a dvc queue with -j 2, a busy CI box). Passive waiting avoids it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import logging
import time
from pathlib import Path

from cmi import lgbm
from cmi.params import load_params
from cmi.paths import ProjectPaths

log = logging.getLogger("cmi.stages.lgbm")


def main(root: Path = Path(".")) -> None:
    started = time.perf_counter()
    paths = ProjectPaths(root)
    params = load_params(paths.params)
    share = params.eval.imu_only_share
    data = lgbm.read_training_set(paths, params.cv.n_splits)
    store = lgbm.checkpoint_store(paths.checkpoints_dir / "lgbm", lgbm.input_files(paths), params)
    log.info(
        "%d sequences, %d features, %d folds; checkpoints in %s",
        len(data.sequence_ids),
        len(data.feature_names),
        data.n_folds,
        store.root,
    )
    with lgbm.live_run(paths) as live:
        results = lgbm.run_cv(
            data,
            params.lgbm,
            store,
            on_fold_start=lgbm.slow_fold_hook(os.environ),
            imu_only_share=share,
            on_fold_end=lgbm.fold_logger(live, data, share),
        )
        wall_time_s = time.perf_counter() - started
        metrics = lgbm.write_lgbm_outputs(paths, live, data, results, params, wall_time_s)
    for old in store.prune_others():
        log.info("removed stale checkpoints %s", old)
    test_like = metrics["test_like"]
    log.info(
        "OOF test_like %.4f (binary F1 %.4f, macro F1 %.4f); full %.4f, imu_only %.4f; "
        "%.1fs; reused folds %s",
        test_like["score"],
        test_like["binary_f1"],
        test_like["macro_f1"],
        metrics["full"]["score"],
        metrics["imu_only"]["score"],
        metrics["wall_time_s"],
        [r.fold for r in results if r.reused],
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main()
