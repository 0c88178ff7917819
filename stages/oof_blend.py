"""DVC stage `oof_blend`: blend weights, nested blended OOF (in views), metrics and plots,
and the gateway replay of subject-level post-processing on that blended OOF.

models/blend/weights.json (what the bundle ships) is fitted on every OOF row;
data/oof/blend.parquet and metrics/blend.json use, for fold k, weights fitted on the other
folds only (``cmi.blend``). The plots are of that nested blend on both views' rows (the
test_like pool). metrics/blend.json's ``postprocess`` section scores every post-processing
method (none, gesture_counts, assignment) on the same replayed arrival orders
(``cmi.postprocess.gateway``), so the stage does not read ``postprocess.method`` (only the
bundle does).
"""

from __future__ import annotations

import logging
from pathlib import Path

from cmi import blend
from cmi.evaluation import check_share
from cmi.params import load_params
from cmi.paths import ProjectPaths
from cmi.postprocess import gateway

log = logging.getLogger("cmi.stages.oof_blend")


def main(root: Path = Path(".")) -> None:
    paths = ProjectPaths(root)
    params = load_params(paths.params)
    ensemble, share = params.ensemble, check_share(params.eval.imu_only_share)
    # Validate the weights before reading anything, so a bad params.yaml fails fast.
    blend.normalize_weights(ensemble.w_lgbm, ensemble.w_torch, str(paths.params))
    inputs = blend.read_oof_pair(paths.oof("lgbm"), paths.oof("torch"))
    orientation_oof = blend.read_stage_table(paths.oof("orientation"), "orientation")
    sequences = blend.read_stage_table(paths.sequences, "extract")
    weights = blend.fit_blend(inputs, ensemble, share)  # on every row: what the bundle ships
    nested = blend.nested_blend(inputs, ensemble, share)  # fold k: weights fitted without it
    blended = blend.blend_oof_frame(inputs, nested[0])

    metrics = blend.blend_metrics(inputs, ensemble, weights, nested, share)
    # Replayed on the nested blended OOF: post-processing sees what the blend's scores describe.
    metrics["postprocess"] = gateway.replay_section(
        blended, orientation_oof, sequences, params.postprocess, share
    )
    blend.write_blend_outputs(paths, inputs, weights, blended, nested[0], metrics, share)
    log.info("%s", blend.describe_blend(metrics))
    log.info("%s", gateway.describe_replay(metrics["postprocess"]))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main()
