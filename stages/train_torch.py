"""DVC stage `torch`: TimeSeriesNet members per fold (``cmi.nn.members``: seeds, optional
IMU-only model), with epoch-level resume from checkpoints/torch/.

Outputs (``cmi.nn.outputs``): models/torch/{fold_k.pt, fold_k_scaler.json, meta.json and
the other members' files}, data/oof/torch.parquet (both views), metrics/torch.json and the
dvclive curves in dvclive/torch/. Several GPUs:
`torchrun --nproc_per_node=N stages/train_torch.py` (DDP).

Test hook: CMI_TORCH_KILL_AT="fold=1,epoch=2,batch=3" SIGKILLs this process just before that
training step (fold as in fold_k, epoch 1-based as logged, batch 0-based).
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: idle worker threads sleep instead of spinning. On a small shared
# machine spinning threads made a training step ~7x slower in CPU time under load.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import logging
import time
from pathlib import Path

from cmi.nn import cv, outputs
from cmi.nn.curves import epoch_curves
from cmi.nn.runtime import torch_runtime
from cmi.nn.train import kill_hook
from cmi.params import load_params
from cmi.paths import ProjectPaths

log = logging.getLogger("cmi.stages.torch")


def main(root: Path = Path(".")) -> None:
    started = time.perf_counter()
    paths = ProjectPaths(root)
    params = load_params(paths.params)
    with torch_runtime(params.torch.device) as runtime:
        data = cv.read_training_data(paths, params)
        inputs = [paths.sequences, paths.frame_features, paths.folds, Path(__file__)]
        store = cv.checkpoint_store(paths.checkpoints_dir / "torch", inputs, params)
        log.info("%d folds; checkpoints under %s", data.n_folds, store.root)
        hook = kill_hook(os.environ.get("CMI_TORCH_KILL_AT"))
        with epoch_curves(outputs.curves_dir(paths), enabled=runtime.dist.is_main) as curves:
            results = cv.run_torch_cv(data, params, runtime, store, on_batch=hook, on_epoch=curves)
    if not runtime.dist.is_main:
        return
    wall_time_s = time.perf_counter() - started
    metrics = outputs.write_torch_outputs(
        paths, results, data.labeled, data.channels, params, wall_time_s
    )
    for old in store.prune_others():
        log.info("removed stale checkpoints %s", old)
    log.info(
        "OOF score (test_like) %.4f: full %.4f, imu_only %.4f; best epochs %s; %.0fs",
        metrics["test_like"]["score"],
        metrics["full"]["score"],
        metrics["imu_only"]["score"],
        metrics["best_epochs"],
        wall_time_s,
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main()
