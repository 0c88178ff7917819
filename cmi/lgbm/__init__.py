"""LightGBM on per-sequence features: one multiclass model per CV fold, out-of-fold probabilities.

Every model is trained with ``num_class=18``, so its probability columns are always the global
class order of ``cmi.schema.GESTURES``, even when a fold's training part lacks a class.

- ``cmi.lgbm.data``: the checked training set (read from a project) and the IMU-only view of a
  feature row;
- ``cmi.lgbm.train``: one fold, with honest selection (an inner fold of training subjects
  early-stops, the scored fold never does; see its docstring) and both views predicted;
- ``cmi.lgbm.cv``: every fold with per-fold checkpoints (the stage's core, ``run_cv``);
- ``cmi.lgbm.outputs``: what the stage writes: fold models, meta.json, importances, the OOF
  table in views (``cmi.evaluation``) and the dvclive metrics.
"""

from cmi.lgbm.cv import (
    CHECKPOINT_FORMAT,
    STAGE_SCRIPT,
    checkpoint_store,
    fingerprint_params,
    load_fold,
    run_cv,
    save_fold,
    slow_fold_hook,
)
from cmi.lgbm.data import (
    TrainingSet,
    build_training_set,
    imu_only_view,
    input_files,
    is_modality_feature,
    modality_mask,
    read_training_set,
)
from cmi.lgbm.outputs import (
    fold_logger,
    fold_oof_frame,
    gain_importance,
    importance_frame,
    lgbm_metrics,
    live_run,
    model_meta,
    oof_frame,
    write_fold_models,
    write_lgbm_outputs,
    write_models,
)
from cmi.lgbm.train import (
    FoldResult,
    booster_params,
    both_views,
    inner_fold,
    lightgbm_feature_names,
    modality_dropout,
    predict_proba,
    train_fold,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "STAGE_SCRIPT",
    "FoldResult",
    "TrainingSet",
    "booster_params",
    "both_views",
    "build_training_set",
    "checkpoint_store",
    "fingerprint_params",
    "fold_logger",
    "fold_oof_frame",
    "gain_importance",
    "importance_frame",
    "imu_only_view",
    "inner_fold",
    "input_files",
    "is_modality_feature",
    "lgbm_metrics",
    "lightgbm_feature_names",
    "live_run",
    "load_fold",
    "modality_dropout",
    "modality_mask",
    "model_meta",
    "oof_frame",
    "predict_proba",
    "read_training_set",
    "run_cv",
    "save_fold",
    "slow_fold_hook",
    "train_fold",
    "write_fold_models",
    "write_lgbm_outputs",
    "write_models",
]
