"""Blend the LightGBM and Torch out-of-fold probabilities, optionally fitting the weights.

Both OOF tables keep the view contract of ``cmi.evaluation`` and are aligned on
(sequence_id, view). The weights are a convex pair (``lgbm + torch == 1``); fitting searches
that one free parameter to maximize the ``test_like`` score (both views pooled at
``eval.imu_only_share``), overall or per sensor group. Per-group weights are fitted on the
*views*: the ``full`` weights on the recorded view of full-sensor sequences, the ``imu_only``
weights on the IMU-only view of every sequence (natively IMU-only ones included), which is
what a test sequence of that group looks like at inference.

Fitted weights are scored nested: fold k's blended OOF uses weights fitted on the other folds'
rows only, so the blend's metrics never come from weights chosen on the rows they score. The
weights written for the bundle are fitted on every row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from sklearn.metrics import f1_score

from cmi.evaluation import (
    VIEWS,
    check_oof,
    per_fold_test_like,
    view_oof_frame,
    view_scores,
    view_weights,
)
from cmi.io import write_json, write_parquet, write_text
from cmi.metrics import competition_scores, proba_matrix
from cmi.params import EnsembleParams
from cmi.paths import ProjectPaths
from cmi.schema import GESTURES, N_CLASSES

# Re-exported: the weights record lives in the light cmi.weights (the Kaggle path needs it
# without scikit-learn); cmi.blend keeps offering the same names.
from cmi.weights import BlendError, BlendWeights, normalize_weights

MODELS: tuple[str, ...] = ("lgbm", "torch")
SENSOR_GROUPS: tuple[str, ...] = VIEWS  # by_sensor_group keys: the view a sequence arrives in
OPTIMIZERS: tuple[str, ...] = ("none", "grid", "nelder_mead")
GRID_STEP = 0.05


@dataclass(frozen=True)
class BlendInputs:
    """Both OOF tables aligned on (sequence_id, view), sorted by it."""

    sequence_id: np.ndarray
    fold: np.ndarray
    y_true: np.ndarray
    sensor_group: np.ndarray
    view: np.ndarray
    p_lgbm: np.ndarray
    p_torch: np.ndarray

    def subset(self, rows: np.ndarray) -> BlendInputs:
        return BlendInputs(
            self.sequence_id[rows],
            self.fold[rows],
            self.y_true[rows],
            self.sensor_group[rows],
            self.view[rows],
            self.p_lgbm[rows],
            self.p_torch[rows],
        )

    def __len__(self) -> int:
        return len(self.sequence_id)


# ---------------------------------------------------------------- inputs


def align_oof(
    lgbm: pl.DataFrame, torch: pl.DataFrame, names: tuple[str, str] = ("lgbm OOF", "torch OOF")
) -> BlendInputs:
    """Join both tables on (sequence_id, view) after checking each keeps the OOF contract and
    both describe the same rows."""
    for frame, name in ((lgbm, names[0]), (torch, names[1])):
        try:
            check_oof(frame, name)
        except ValueError as err:
            raise BlendError(str(err)) from err
    lgbm = lgbm.sort("sequence_id", "view")
    torch = torch.sort("sequence_id", "view")
    keys_l = set(lgbm.select("sequence_id", "view").iter_rows())
    keys_t = set(torch.select("sequence_id", "view").iter_rows())
    if keys_l != keys_t:
        only_l, only_t = sorted(keys_l - keys_t), sorted(keys_t - keys_l)
        raise BlendError(
            f"{names[0]} and {names[1]} cover different (sequence_id, view) rows: "
            f"{len(only_l)} only in {names[0]} (e.g. {only_l[:3]}), "
            f"{len(only_t)} only in {names[1]} (e.g. {only_t[:3]})"
        )
    for column in ("y_true", "fold", "sensor_group"):
        a = lgbm.get_column(column).to_numpy()
        b = torch.get_column(column).to_numpy()
        differs = a != b
        if differs.any():
            row = int(np.argmax(differs))
            raise BlendError(
                f"{names[0]} and {names[1]} disagree on {column} for sequence "
                f"{lgbm['sequence_id'][row]!r} ({a[row]!r} vs {b[row]!r})"
            )
    return BlendInputs(
        sequence_id=lgbm.get_column("sequence_id").to_numpy().astype(str),
        fold=lgbm.get_column("fold").to_numpy().astype(np.int32),
        y_true=lgbm.get_column("y_true").to_numpy().astype(np.int64),
        sensor_group=lgbm.get_column("sensor_group").to_numpy().astype(str),
        view=lgbm.get_column("view").to_numpy().astype(str),
        p_lgbm=proba_matrix(lgbm),
        p_torch=proba_matrix(torch),
    )


def read_oof_pair(lgbm_path: Path, torch_path: Path) -> BlendInputs:
    for path in (lgbm_path, torch_path):
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: OOF table not found; run its model stage first")
    return align_oof(
        pl.read_parquet(lgbm_path), pl.read_parquet(torch_path), (str(lgbm_path), str(torch_path))
    )


def read_stage_table(path: Path, stage: str) -> pl.DataFrame:
    """A parquet table another stage writes; FileNotFoundError naming it and that stage."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: not found; run the {stage} stage first")
    return pl.read_parquet(path)


# ---------------------------------------------------------------- fitting


def blend_proba(p_lgbm: np.ndarray, p_torch: np.ndarray, weights: dict) -> np.ndarray:
    return weights["lgbm"] * p_lgbm + weights["torch"] * p_torch


def pooled_score(inputs: BlendInputs, proba: np.ndarray, imu_only_share: float) -> float:
    """The competition score of ``proba`` with both views pooled at ``imu_only_share``."""
    weight = view_weights(inputs.view, imu_only_share)
    pooled = weight > 0  # as cmi.evaluation.view_scores: a view without weight leaves the pool
    pred = proba.argmax(axis=1)
    return competition_scores(inputs.y_true[pooled], pred[pooled], weight[pooled])["score"]


def _pair(w_lgbm: float) -> dict:
    # Rounded so weights.json reads 0.45, not 0.44999999999999996 (1 - 0.55).
    w_lgbm = round(float(np.clip(w_lgbm, 0.0, 1.0)), 6)
    return {"lgbm": w_lgbm, "torch": round(1.0 - w_lgbm, 6)}


def _objective(inputs: BlendInputs, w_lgbm: float, share: float) -> float:
    proba = blend_proba(inputs.p_lgbm, inputs.p_torch, _pair(w_lgbm))
    return pooled_score(inputs, proba, share)


def _grid_search(inputs: BlendInputs, start: float, share: float) -> float:
    # Ties go to the weight closest to the configured one: the score is a step function, and
    # the prior choice is the least surprising among equally good weights.
    grid = np.round(np.arange(0.0, 1.0 + GRID_STEP / 2, GRID_STEP), 6)
    scored = [(_objective(inputs, w, share), -abs(w - start), w) for w in grid]
    return float(max(scored)[2])


def _nelder_mead(inputs: BlendInputs, start: float, share: float) -> float:
    from scipy.optimize import minimize

    # The score is piecewise constant in the weight, so a wide initial simplex is what lets
    # Nelder-Mead move at all; the start point stays if nothing beats it.
    step = 0.25 if start <= 0.5 else -0.25
    result = minimize(
        lambda x: -_objective(inputs, float(x[0]), share),
        x0=np.array([start]),
        method="Nelder-Mead",
        options={"initial_simplex": np.array([[start], [start + step]]), "xatol": 1e-3},
    )
    best = float(np.clip(result.x[0], 0.0, 1.0))
    return best if _objective(inputs, best, share) > _objective(inputs, start, share) else start


def fit_weights(inputs: BlendInputs, fixed: dict, method: str, imu_only_share: float = 0.5) -> dict:
    """The weight pair maximizing the test_like score of ``inputs`` (``fixed`` when method is
    'none' or there are no rows)."""
    if method not in OPTIMIZERS:
        raise BlendError(
            f"params.yaml: ensemble.optimize must be one of {OPTIMIZERS} (got {method!r})"
        )
    if method == "none" or len(inputs) == 0:
        return dict(fixed)
    search = _grid_search if method == "grid" else _nelder_mead
    return _pair(search(inputs, fixed["lgbm"], imu_only_share))


def fit_blend(
    inputs: BlendInputs, params: EnsembleParams, imu_only_share: float = 0.5
) -> BlendWeights:
    """Overall weights on both views pooled; with ``by_sensor_group``, one pair per view."""
    fixed = normalize_weights(params.w_lgbm, params.w_torch)
    default = fit_weights(inputs, fixed, params.optimize, imu_only_share)
    by_group = None
    if params.by_sensor_group:
        by_group = {}
        for group in SENSOR_GROUPS:
            rows = inputs.view == group
            # A view absent from the OOF keeps the overall weights.
            by_group[group] = (
                fit_weights(inputs.subset(rows), fixed, params.optimize, imu_only_share)
                if rows.any()
                else default
            )
    return BlendWeights(default, by_group, params.optimize)


def apply_weights(inputs: BlendInputs, weights: BlendWeights) -> np.ndarray:
    """Each row blended with the weights of its view (the sensor group inference will see)."""
    out = np.empty_like(inputs.p_lgbm)
    for view in np.unique(inputs.view):
        rows = inputs.view == view
        out[rows] = blend_proba(inputs.p_lgbm[rows], inputs.p_torch[rows], weights.for_group(view))
    return out


def nested_blend(
    inputs: BlendInputs, params: EnsembleParams, imu_only_share: float = 0.5
) -> tuple[np.ndarray, dict[str, BlendWeights]]:
    """Blended OOF where fold k's rows use weights fitted on the other folds' rows only, and
    those per-fold weights (keyed by fold)."""
    out = np.empty_like(inputs.p_lgbm)
    per_fold = {}
    for fold in np.unique(inputs.fold):
        scored = inputs.fold == fold
        # A lone fold has no other rows: fitting on none gives the configured pair.
        weights = fit_blend(inputs.subset(~scored), params, imu_only_share)
        out[scored] = apply_weights(inputs.subset(scored), weights)
        per_fold[str(int(fold))] = weights
    return out, per_fold


# ---------------------------------------------------------------- outputs


def blend_oof_frame(inputs: BlendInputs, proba: np.ndarray) -> pl.DataFrame:
    """An OOF table in the contract of the model stages (data/oof/blend.parquet)."""
    proba = proba / proba.sum(axis=1, keepdims=True)
    return view_oof_frame(
        inputs.sequence_id.tolist(),
        inputs.fold,
        inputs.y_true,
        inputs.sensor_group.tolist(),
        inputs.view.tolist(),
        proba,
    )


def blend_metrics(
    inputs: BlendInputs,
    params: EnsembleParams,
    weights: BlendWeights,
    nested: tuple[np.ndarray, dict[str, BlendWeights]],
    imu_only_share: float,
) -> dict[str, Any]:
    """metrics/blend.json: ``full``, ``imu_only`` and ``test_like`` (score, binary and macro
    F1, rows) of each model and blend; ``score`` on top is the blend's test_like.

    ``blend`` is the nested blend (what the blended OOF holds); ``blend_fixed`` the configured
    pair; ``blend_in_sample`` (only when weights are fitted) the weights fitted on every row
    scored on those same rows: optimistic, kept to show how much.
    """
    fixed = normalize_weights(params.w_lgbm, params.w_torch)
    candidates = {
        "lgbm": inputs.p_lgbm,
        "torch": inputs.p_torch,
        "blend": nested[0],
        "blend_fixed": apply_weights(inputs, BlendWeights(fixed, None, "none")),
    }
    if params.optimize != "none":
        candidates["blend_in_sample"] = apply_weights(inputs, weights)
    frames = {name: blend_oof_frame(inputs, proba) for name, proba in candidates.items()}
    scores = {name: view_scores(frame, imu_only_share) for name, frame in frames.items()}
    report: dict[str, Any] = {"score": scores["blend"]["test_like"]["score"], **scores}
    report["per_fold_test_like"] = {
        name: per_fold_test_like(frames[name], imu_only_share)
        for name in ("lgbm", "torch", "blend")
    }
    report["weights"] = weights.to_json()
    if params.optimize != "none":
        report["weights_by_fold"] = {fold: w.to_json() for fold, w in nested[1].items()}
    report["imu_only_share"] = imu_only_share
    report["n_sequences"] = len(set(inputs.sequence_id.tolist()))
    report["n_rows"] = len(inputs)
    return report


def confusion_frame(inputs: BlendInputs, proba: np.ndarray) -> pl.DataFrame:
    """plots/confusion.csv: one row per OOF row of both views (the test_like pool, each row
    counted once), gesture strings, for DVC's confusion template; ``view`` says which."""
    return pl.DataFrame(
        {
            "actual": [GESTURES[int(i)] for i in inputs.y_true],
            "predicted": [GESTURES[int(i)] for i in proba.argmax(axis=1)],
            "view": inputs.view.tolist(),
        }
    )


def per_class_f1_frame(
    inputs: BlendInputs, proba: np.ndarray, imu_only_share: float = 0.5
) -> pl.DataFrame:
    """plots/per_class_f1.csv: one-vs-rest F1 of each of the 18 gestures (0 when absent) on the
    test_like pool, the views weighted as in ``test_like``."""
    f1 = f1_score(
        inputs.y_true,
        proba.argmax(axis=1),
        labels=list(range(N_CLASSES)),
        average=None,
        zero_division=0,
        sample_weight=view_weights(inputs.view, imu_only_share),
    )
    return pl.DataFrame({"gesture": list(GESTURES), "f1": [float(v) for v in f1]})


def write_blend_outputs(
    paths: ProjectPaths,
    inputs: BlendInputs,
    weights: BlendWeights,
    blended: pl.DataFrame,
    nested_proba: np.ndarray,
    metrics: dict[str, Any],
    imu_only_share: float,
) -> None:
    """models/blend/weights.json (``weights``: what the bundle ships), data/oof/blend.parquet
    (``blended``), metrics/blend.json and the plots of the nested blend (``nested_proba``)."""
    write_json(weights.to_json(), paths.blend_dir / "weights.json")
    write_parquet(blended, paths.oof("blend"))
    write_json(metrics, paths.metrics("blend"))
    confusion = confusion_frame(inputs, nested_proba)
    write_text(confusion.write_csv(), paths.plots_dir / "confusion.csv")
    per_class = per_class_f1_frame(inputs, nested_proba, imu_only_share)
    write_text(per_class.write_csv(), paths.plots_dir / "per_class_f1.csv")


def describe_blend(metrics: dict[str, Any]) -> str:
    """One log line: the test_like score of the nested blend and of each model, and the
    weights the bundle ships."""
    return (
        f"test_like: blend {metrics['blend']['test_like']['score']:.4f} (nested), "
        f"lgbm {metrics['lgbm']['test_like']['score']:.4f}, "
        f"torch {metrics['torch']['test_like']['score']:.4f}; "
        f"weights for the bundle {metrics['weights']}"
    )
