"""DVC stage `orientation`: the body-orientation classifier post-processing uses.

One small LightGBM model per fold on IMU sequence features (orientation is the target, never
a feature); writes models/orientation/{fold_k.txt, meta.json}, data/oof/orientation.parquet
(sequence_id, fold, o0..o3) and metrics/orientation.json. Small enough to need no resume.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

# Before lightgbm loads OpenMP: spinning worker threads waste shared cores (see train_lgbm).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import polars as pl

from cmi import orientation
from cmi.io import write_json, write_parquet, write_text
from cmi.params import load_params
from cmi.paths import ProjectPaths

log = logging.getLogger("cmi.stages.orientation")


def _read_inputs(paths: ProjectPaths) -> list[pl.DataFrame]:
    frames = []
    for path in (paths.sequences, paths.sequence_features, paths.folds):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run the extract and folds stages first")
        frames.append(pl.read_parquet(path))
    return frames


def _write_models(out: Path, results: list[orientation.OrientationFold], meta: dict) -> None:
    for result in results:
        write_text(result.model_text, out / f"fold_{result.fold}.txt")
    # A run with fewer folds than an earlier one must not leave extra fold models behind.
    for stale in out.glob("fold_*.txt"):
        match = re.fullmatch(r"fold_(\d+)\.txt", stale.name)
        if match and int(match.group(1)) >= len(results):
            stale.unlink()
    write_json(meta, out / "meta.json")


def main(root: Path = Path(".")) -> None:
    started = time.perf_counter()
    paths = ProjectPaths(root)
    params = load_params(paths.params)
    data = orientation.build_orientation_set(*_read_inputs(paths))
    if data.n_folds != params.cv.n_splits:
        raise ValueError(
            f"{paths.folds}: {data.n_folds} folds but cv.n_splits={params.cv.n_splits}; "
            "rerun the folds stage"
        )
    log.info(
        "%d sequences, %d IMU features, %d folds",
        len(data.sequence_ids),
        len(data.feature_names),
        data.n_folds,
    )
    results = orientation.run_orientation_cv(data, params.orientation)
    oof = orientation.orientation_oof_frame(data, results)
    _write_models(
        paths.orientation_dir,
        results,
        orientation.orientation_meta(data, results, params.orientation),
    )
    write_parquet(oof, paths.oof("orientation"))
    metrics = orientation.orientation_metrics(data, oof)
    metrics["best_iterations"] = [r.best_iteration for r in results]
    metrics["wall_time_s"] = round(time.perf_counter() - started, 2)
    write_json(metrics, paths.metrics("orientation"))
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
