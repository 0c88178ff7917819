"""LightGBM on per-sequence features: one multiclass model per CV fold, out-of-fold probabilities.

Every model is trained with ``num_class=18``, so its probability columns are always the global
class order of ``cmi.schema.GESTURES``, even when a fold's training part lacks a class.

- ``cmi.lgbm.data``: the checked training set and the IMU-only view of a feature row;
- ``cmi.lgbm.train``: one fold, with honest selection (an inner fold of training subjects
  early-stops, the scored fold never does; see its docstring) and both views predicted;
- ``cmi.lgbm.cv``: every fold with per-fold checkpoints, the OOF table in views
  (``cmi.evaluation``), importances and the model metadata.
"""

from cmi.lgbm.cv import (
    CHECKPOINT_FORMAT,
    STAGE_SCRIPT,
    checkpoint_store,
    fingerprint_params,
    fold_oof_frame,
    gain_importance,
    importance_frame,
    load_fold,
    model_meta,
    oof_frame,
    run_cv,
    save_fold,
)
from cmi.lgbm.data import (
    SENSOR_GROUPS,
    TrainingSet,
    build_training_set,
    imu_only_view,
    is_modality_feature,
    modality_mask,
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
    "SENSOR_GROUPS",
    "STAGE_SCRIPT",
    "FoldResult",
    "TrainingSet",
    "booster_params",
    "both_views",
    "build_training_set",
    "checkpoint_store",
    "fingerprint_params",
    "fold_oof_frame",
    "gain_importance",
    "importance_frame",
    "imu_only_view",
    "inner_fold",
    "is_modality_feature",
    "lightgbm_feature_names",
    "load_fold",
    "modality_dropout",
    "modality_mask",
    "model_meta",
    "oof_frame",
    "predict_proba",
    "run_cv",
    "save_fold",
    "train_fold",
]
