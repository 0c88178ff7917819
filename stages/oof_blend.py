"""DVC stage `oof_blend`: blend weights, blended OOF table, metrics and plots."""

from __future__ import annotations

import logging
from pathlib import Path

from cmi.blend import (
    apply_weights,
    blend_metrics,
    blend_oof_frame,
    confusion_frame,
    fit_blend,
    normalize_weights,
    per_class_f1_frame,
    read_oof_pair,
)
from cmi.io import write_json, write_parquet, write_text
from cmi.params import load_params
from cmi.paths import ProjectPaths

log = logging.getLogger("cmi.stages.oof_blend")


def main(root: Path = Path(".")) -> None:
    paths = ProjectPaths(root)
    ensemble = load_params(paths.params).ensemble
    # Validate the weights before reading anything, so a bad params.yaml fails fast.
    fixed = normalize_weights(ensemble.w_lgbm, ensemble.w_torch, str(paths.params))
    inputs = read_oof_pair(paths.oof("lgbm"), paths.oof("torch"))
    weights = fit_blend(inputs, ensemble)
    proba = apply_weights(inputs, weights)

    write_json(weights.to_json(), paths.blend_dir / "weights.json")
    write_parquet(blend_oof_frame(inputs, proba), paths.oof("blend"))
    metrics = blend_metrics(inputs, fixed, weights)
    write_json(metrics, paths.metrics("blend"))
    write_text(confusion_frame(inputs.y_true, proba).write_csv(), paths.plots_dir / "confusion.csv")
    write_text(
        per_class_f1_frame(inputs.y_true, proba).write_csv(), paths.plots_dir / "per_class_f1.csv"
    )
    log.info(
        "blend score %.4f (lgbm %.4f, torch %.4f) with weights %s",
        metrics["score"],
        metrics["lgbm"]["score"],
        metrics["torch"]["score"],
        weights.to_json(),
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main()
