"""DVC stage `orientation`: the body-orientation classifier post-processing uses.

One small LightGBM model per fold on IMU sequence features (orientation is the target, never
a feature; ``cmi.orientation``); writes models/orientation/{fold_k.txt, meta.json},
data/oof/orientation.parquet (sequence_id, fold, o0..o3) and metrics/orientation.json.
Small enough to need no resume.
"""

from __future__ import annotations

import os

# Before lightgbm loads OpenMP: spinning worker threads waste shared cores (see train_lgbm).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import logging
import time
from pathlib import Path

from cmi import orientation
from cmi.params import load_params
from cmi.paths import ProjectPaths

log = logging.getLogger("cmi.stages.orientation")


def main(root: Path = Path(".")) -> None:
    started = time.perf_counter()
    paths = ProjectPaths(root)
    params = load_params(paths.params)
    data = orientation.read_orientation_set(paths, params.cv.n_splits)
    log.info(
        "%d sequences, %d IMU features, %d folds",
        len(data.sequence_ids),
        len(data.feature_names),
        data.n_folds,
    )
    results = orientation.run_orientation_cv(data, params.orientation)
    metrics = orientation.write_orientation_outputs(
        paths, data, results, params.orientation, started
    )
    log.info(
        "orientation OOF accuracy %.4f (majority %.4f), log loss %.4f (uniform %.4f) in %.1fs",
        metrics["accuracy"],
        metrics["majority_accuracy"],
        metrics["log_loss"],
        metrics["uniform_log_loss"],
        metrics["wall_time_s"],
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main()
