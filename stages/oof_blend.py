"""DVC stage `oof_blend`: blend weights, nested blended OOF (in views), metrics and plots,
and the gateway replay of subject-level post-processing on that blended OOF.

models/blend/weights.json (what the bundle ships) is fitted on every OOF row;
data/oof/blend.parquet and metrics/blend.json use, for fold k, weights fitted on the other
folds only. The plots are of that nested blend on both views' rows (the test_like pool).
metrics/blend.json's ``postprocess`` section scores every post-processing method (none,
gesture_counts, assignment) on the same replayed arrival orders, so the stage does not read
``postprocess.method`` (only the bundle does).
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from cmi.blend import (
    blend_metrics,
    blend_oof_frame,
    confusion_frame,
    fit_blend,
    nested_blend,
    normalize_weights,
    per_class_f1_frame,
    read_oof_pair,
)
from cmi.evaluation import check_share
from cmi.io import write_json, write_parquet, write_text
from cmi.params import load_params
from cmi.paths import ProjectPaths
from cmi.postprocess.gateway import postprocess_report

log = logging.getLogger("cmi.stages.oof_blend")


def _read_table(path: Path, stage: str) -> pl.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run the {stage} stage first")
    return pl.read_parquet(path)


def main(root: Path = Path(".")) -> None:
    paths = ProjectPaths(root)
    params = load_params(paths.params)
    ensemble, share, pp = (
        params.ensemble,
        check_share(params.eval.imu_only_share),
        params.postprocess,
    )
    # Validate the weights before reading anything, so a bad params.yaml fails fast.
    normalize_weights(ensemble.w_lgbm, ensemble.w_torch, str(paths.params))
    inputs = read_oof_pair(paths.oof("lgbm"), paths.oof("torch"))
    orientation_oof = _read_table(paths.oof("orientation"), "orientation")
    sequences = _read_table(paths.sequences, "extract")
    weights = fit_blend(inputs, ensemble, share)  # on every row: what the bundle ships
    nested = nested_blend(inputs, ensemble, share)  # fold k scored with weights fitted without it
    blended = blend_oof_frame(inputs, nested[0])

    metrics = blend_metrics(inputs, ensemble, weights, nested, share)
    # Replayed on the nested blended OOF: post-processing sees what the blend's scores describe.
    metrics["postprocess"] = postprocess_report(
        blended,
        orientation_oof,
        sequences,
        mode=pp.mode,
        combine=pp.combine,
        n_orders=pp.n_orders,
        seed=pp.seed,
        imu_only_share=share,
    )
    write_json(weights.to_json(), paths.blend_dir / "weights.json")
    write_parquet(blended, paths.oof("blend"))
    write_json(metrics, paths.metrics("blend"))
    write_text(confusion_frame(inputs, nested[0]).write_csv(), paths.plots_dir / "confusion.csv")
    write_text(
        per_class_f1_frame(inputs, nested[0], share).write_csv(),
        paths.plots_dir / "per_class_f1.csv",
    )
    log.info(
        "test_like: blend %.4f (nested), lgbm %.4f, torch %.4f; weights for the bundle %s",
        metrics["blend"]["test_like"]["score"],
        metrics["lgbm"]["test_like"]["score"],
        metrics["torch"]["test_like"]["score"],
        weights.to_json(),
    )
    replay = metrics["postprocess"]
    log.info(
        "gateway replay (%d orders, %s): test_like none %.4f, gesture_counts %.4f (%+.4f), "
        "assignment %.4f (%+.4f); answers over the protocol's counts %g / %g / %g",
        pp.n_orders,
        pp.mode,
        replay["none"]["test_like"],
        replay["gesture_counts"]["test_like"],
        replay["gesture_counts"]["gain"],
        replay["assignment"]["test_like"],
        replay["assignment"]["gain"],
        replay["none"]["excess_answers"],
        replay["gesture_counts"]["excess_answers"],
        replay["assignment"]["excess_answers"],
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main()
