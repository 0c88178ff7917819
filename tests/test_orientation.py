"""The orientation classifier: IMU features only, honest folds, the stage's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest
from pipeline_helpers import copy_project, run_stage

from cmi.orientation import (
    ORIENTATION_COLUMNS,
    build_orientation_set,
    inner_fold,
    orientation_feature_names,
    orientation_metrics,
    orientation_oof_frame,
    predict_orientation_proba,
    run_orientation_cv,
    train_orientation_fold,
)
from cmi.params import OrientationParams
from cmi.schema import ORIENTATIONS

SMALL = OrientationParams(n_estimators=40, early_stopping_rounds=10, n_jobs=1, num_leaves=7)


def toy_tables(n: int = 240, n_folds: int = 4, seed: int = 0):
    """sequences / sequence_features / folds where acc features carry the orientation and
    a ToF feature *is* the orientation (a leak the classifier must not be able to use)."""
    rng = np.random.default_rng(seed)
    ids = [f"SEQ_{i:04d}" for i in range(n)]
    y = rng.integers(0, 4, size=n)
    sequences = pl.DataFrame(
        {
            "sequence_id": ids,
            "subject": [f"S{i % 12}" for i in range(n)],
            "label": rng.integers(0, 18, size=n).astype(np.int32),  # the gesture: unused here
            "orientation": [ORIENTATIONS[k] for k in y],
            "sensor_group": ["full"] * n,
        }
    )
    features = pl.DataFrame(
        {
            "sequence_id": ids,
            "acc_x__mean": (y + rng.normal(0, 0.6, n)).astype(np.float32),
            "acc_z__std": rng.normal(size=n).astype(np.float32),
            "tof_1_mean__mean": y.astype(np.float32),
            "thm_1__mean": y.astype(np.float32),
            "length": rng.integers(30, 90, n).astype(np.float32),
        }
    )
    folds = pl.DataFrame({"sequence_id": ids, "fold": [(i % 12) % n_folds for i in range(n)]})
    return sequences, features, folds


def test_only_imu_features_are_used() -> None:
    names = ["acc_x__mean", "rot_w__std", "thm_2__max", "tof_3_r1__mean", "length", "age"]
    assert orientation_feature_names(names) == ["acc_x__mean", "rot_w__std", "length", "age"]
    data = build_orientation_set(*toy_tables())
    assert data.feature_names == ["acc_x__mean", "acc_z__std", "length"]
    assert data.x.shape == (240, 3)


def test_bad_inputs_are_named() -> None:
    sequences, features, folds = toy_tables()
    bad = sequences.with_columns(
        pl.when(pl.col("sequence_id") == "SEQ_0007")
        .then(pl.lit("Standing"))
        .otherwise(pl.col("orientation"))
        .alias("orientation")
    )
    with pytest.raises(ValueError, match=r"orientation.*SEQ_0007"):
        build_orientation_set(bad, features, folds)
    with pytest.raises(ValueError, match=r"folds.parquet.*SEQ_0003"):
        build_orientation_set(
            sequences, features, folds.filter(pl.col("sequence_id") != "SEQ_0003")
        )
    with pytest.raises(ValueError, match="orientation"):
        build_orientation_set(sequences.drop("orientation"), features, folds)
    # The checks cmi.sequences shares with the model stages: features for every sequence.
    with pytest.raises(ValueError, match=r"sequence_features.parquet: no row.*SEQ_0005"):
        build_orientation_set(
            sequences, features.filter(pl.col("sequence_id") != "SEQ_0005"), folds
        )


def test_a_fold_never_sees_its_own_labels() -> None:
    """Early stopping uses the inner fold; permuting the scored fold's labels changes nothing."""
    sequences, features, folds = toy_tables()
    data = build_orientation_set(sequences, features, folds)
    assert all(inner_fold(k, 4) != k for k in range(4))
    fold = 2
    rows = np.flatnonzero(data.fold == fold)
    y = data.y.copy()
    y[rows] = np.random.default_rng(1).permutation(y[rows])[::-1]
    shuffled = type(data)(data.sequence_ids, data.x, data.feature_names, y, data.fold)
    for refit in (True, False):
        params = OrientationParams(**{**SMALL.__dict__, "refit_full": refit})
        a = train_orientation_fold(data, fold, params)
        b = train_orientation_fold(shuffled, fold, params)
        np.testing.assert_array_equal(a.valid_proba, b.valid_proba)


def test_learns_orientation_and_oof_matches_shipped_models() -> None:
    data = build_orientation_set(*toy_tables())
    results = run_orientation_cv(data, SMALL)
    oof = orientation_oof_frame(data, results)
    assert oof.columns == ["sequence_id", "fold", *ORIENTATION_COLUMNS]
    np.testing.assert_allclose(oof.select(ORIENTATION_COLUMNS).to_numpy().sum(axis=1), 1.0)
    metrics = orientation_metrics(data, oof)
    assert metrics["accuracy"] > metrics["majority_accuracy"] + 0.2
    assert metrics["log_loss"] < metrics["uniform_log_loss"]
    # A fold's OOF rows are what its model text gives at inference.
    model = lgb.Booster(model_str=results[1].model_text)
    rows = data.fold == 1
    np.testing.assert_allclose(
        predict_orientation_proba([model], data.x[rows]),
        oof.filter(pl.col("fold") == 1).select(ORIENTATION_COLUMNS).to_numpy(),
    )


def test_fewer_than_three_folds_is_an_error() -> None:
    data = build_orientation_set(*toy_tables(n_folds=2))
    with pytest.raises(ValueError, match="n_splits >= 3"):
        train_orientation_fold(data, 0, SMALL)


@pytest.mark.slow  # runs the extract and folds stages (session fixture) and the stage
def test_stage_writes_models_oof_and_metrics(tiny_features_project: Path, tmp_path: Path) -> None:
    root = copy_project(tiny_features_project, tmp_path / "p")
    run_stage("train_orientation.py", root)
    meta = json.loads((root / "models/orientation/meta.json").read_text())
    assert meta["classes"] == list(ORIENTATIONS)
    assert not any(name.startswith(("thm", "tof")) for name in meta["feature_names"])
    assert sorted(p.name for p in (root / "models/orientation").glob("fold_*.txt")) == [
        f"fold_{k}.txt" for k in range(meta["n_folds"])
    ]
    oof = pl.read_parquet(root / "data/oof/orientation.parquet")
    sequences = pl.read_parquet(root / "data/features/sequences.parquet")
    assert sorted(oof["sequence_id"].to_list()) == sorted(sequences["sequence_id"].to_list())
    metrics = json.loads((root / "metrics/orientation.json").read_text())
    assert {"accuracy", "log_loss", "per_fold", "best_iterations"} <= set(metrics)
