"""DVC stage `oof_blend`: blend weights, nested blended OOF (in views), metrics and plots.

models/blend/weights.json (what the bundle ships) is fitted on every OOF row;
data/oof/blend.parquet and metrics/blend.json use, for fold k, weights fitted on the other
folds only. The plots are of that nested blend on both views' rows (the test_like pool).
"""

from __future__ import annotations

import logging
from pathlib import Path

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

log = logging.getLogger("cmi.stages.oof_blend")


def main(root: Path = Path(".")) -> None:
    paths = ProjectPaths(root)
    params = load_params(paths.params)
    ensemble, share = params.ensemble, check_share(params.eval.imu_only_share)
    # Validate the weights before reading anything, so a bad params.yaml fails fast.
    normalize_weights(ensemble.w_lgbm, ensemble.w_torch, str(paths.params))
    inputs = read_oof_pair(paths.oof("lgbm"), paths.oof("torch"))
    weights = fit_blend(inputs, ensemble, share)  # on every row: what the bundle ships
    nested = nested_blend(inputs, ensemble, share)  # fold k scored with weights fitted without it

    write_json(weights.to_json(), paths.blend_dir / "weights.json")
    write_parquet(blend_oof_frame(inputs, nested[0]), paths.oof("blend"))
    metrics = blend_metrics(inputs, ensemble, weights, nested, share)
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


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main()
