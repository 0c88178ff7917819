"""Blend the LightGBM and Torch out-of-fold probabilities, optionally fitting the weights.

The weights are a convex pair (``lgbm + torch == 1``); fitting searches that one free
parameter to maximize the competition score on the OOF tables, overall or per sensor group.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from sklearn.metrics import f1_score

from cmi.metrics import competition_scores, proba_matrix
from cmi.params import EnsembleParams
from cmi.schema import GESTURES, N_CLASSES, PROBA_COLUMNS

# Re-exported: the weights record lives in the light cmi.weights (the Kaggle path needs it
# without scikit-learn); cmi.blend keeps offering the same names.
from cmi.weights import BlendError, BlendWeights, normalize_weights

MODELS: tuple[str, ...] = ("lgbm", "torch")
SENSOR_GROUPS: tuple[str, ...] = ("full", "imu_only")
OPTIMIZERS: tuple[str, ...] = ("none", "grid", "nelder_mead")
GRID_STEP = 0.05
_KEY_COLUMNS: tuple[str, ...] = ("sequence_id", "fold", "y_true", "sensor_group")


@dataclass(frozen=True)
class BlendInputs:
    """Both OOF tables aligned on sequence_id (sorted)."""

    sequence_id: np.ndarray
    fold: np.ndarray
    y_true: np.ndarray
    sensor_group: np.ndarray
    p_lgbm: np.ndarray
    p_torch: np.ndarray

    def subset(self, rows: np.ndarray) -> BlendInputs:
        return BlendInputs(
            self.sequence_id[rows],
            self.fold[rows],
            self.y_true[rows],
            self.sensor_group[rows],
            self.p_lgbm[rows],
            self.p_torch[rows],
        )

    def __len__(self) -> int:
        return len(self.sequence_id)


def _check_oof(frame: pl.DataFrame, name: str) -> None:
    missing = [c for c in (*_KEY_COLUMNS, *PROBA_COLUMNS) if c not in frame.columns]
    if missing:
        raise BlendError(f"{name}: missing column(s) {missing[:5]}")
    dup = frame.get_column("sequence_id").is_duplicated()
    if dup.any():
        raise BlendError(
            f"{name}: duplicate sequence_id {frame['sequence_id'][int(dup.arg_max())]!r}"
        )
    proba = proba_matrix(frame)
    bad = ~np.isfinite(proba).all(axis=1)
    if bad.any():
        sequence = frame["sequence_id"][int(bad.argmax())]
        raise BlendError(f"{name}: non-finite probability for sequence {sequence!r}")


def align_oof(
    lgbm: pl.DataFrame, torch: pl.DataFrame, names: tuple[str, str] = ("lgbm OOF", "torch OOF")
) -> BlendInputs:
    """Join both tables on sequence_id after checking they describe the same sequences."""
    _check_oof(lgbm, names[0])
    _check_oof(torch, names[1])
    lgbm = lgbm.sort("sequence_id")
    torch = torch.sort("sequence_id")
    ids_l = set(lgbm.get_column("sequence_id").to_list())
    ids_t = set(torch.get_column("sequence_id").to_list())
    if ids_l != ids_t:
        only_l = sorted(ids_l - ids_t)[:3]
        only_t = sorted(ids_t - ids_l)[:3]
        raise BlendError(
            f"{names[0]} and {names[1]} cover different sequences: "
            f"{len(ids_l - ids_t)} only in {names[0]} (e.g. {only_l}), "
            f"{len(ids_t - ids_l)} only in {names[1]} (e.g. {only_t})"
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
        sequence_id=lgbm.get_column("sequence_id").to_numpy(),
        fold=lgbm.get_column("fold").to_numpy().astype(np.int32),
        y_true=lgbm.get_column("y_true").to_numpy().astype(np.int64),
        sensor_group=lgbm.get_column("sensor_group").to_numpy().astype(str),
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


def blend_proba(p_lgbm: np.ndarray, p_torch: np.ndarray, weights: dict) -> np.ndarray:
    return weights["lgbm"] * p_lgbm + weights["torch"] * p_torch


def score_of(y_true: np.ndarray, proba: np.ndarray) -> float:
    return competition_scores(y_true, proba.argmax(axis=1))["score"]


def _pair(w_lgbm: float) -> dict:
    w_lgbm = float(np.clip(w_lgbm, 0.0, 1.0))
    return {"lgbm": w_lgbm, "torch": 1.0 - w_lgbm}


def _objective(inputs: BlendInputs, w_lgbm: float) -> float:
    return score_of(inputs.y_true, blend_proba(inputs.p_lgbm, inputs.p_torch, _pair(w_lgbm)))


def _grid_search(inputs: BlendInputs, start: float) -> float:
    # Ties go to the weight closest to the configured one: the score is a step function, and
    # the prior choice is the least surprising among equally good weights.
    grid = np.round(np.arange(0.0, 1.0 + GRID_STEP / 2, GRID_STEP), 6)
    scored = [(_objective(inputs, w), -abs(w - start), w) for w in grid]
    return float(max(scored)[2])


def _nelder_mead(inputs: BlendInputs, start: float) -> float:
    from scipy.optimize import minimize

    # The score is piecewise constant in the weight, so a wide initial simplex is what lets
    # Nelder-Mead move at all; the start point stays if nothing beats it.
    step = 0.25 if start <= 0.5 else -0.25
    result = minimize(
        lambda x: -_objective(inputs, float(x[0])),
        x0=np.array([start]),
        method="Nelder-Mead",
        options={"initial_simplex": np.array([[start], [start + step]]), "xatol": 1e-3},
    )
    best = float(np.clip(result.x[0], 0.0, 1.0))
    return best if _objective(inputs, best) > _objective(inputs, start) else start


def fit_weights(inputs: BlendInputs, fixed: dict, method: str) -> dict:
    """The weight pair maximizing the OOF score (``fixed`` when method is 'none' or no rows)."""
    if method not in OPTIMIZERS:
        raise BlendError(
            f"params.yaml: ensemble.optimize must be one of {OPTIMIZERS} (got {method!r})"
        )
    if method == "none" or len(inputs) == 0:
        return dict(fixed)
    search = _grid_search if method == "grid" else _nelder_mead
    return _pair(search(inputs, fixed["lgbm"]))


def fit_blend(inputs: BlendInputs, params: EnsembleParams) -> BlendWeights:
    fixed = normalize_weights(params.w_lgbm, params.w_torch)
    default = fit_weights(inputs, fixed, params.optimize)
    by_group = None
    if params.by_sensor_group:
        by_group = {}
        for group in SENSOR_GROUPS:
            rows = inputs.sensor_group == group
            # A group absent from the OOF keeps the overall weights.
            by_group[group] = (
                fit_weights(inputs.subset(rows), fixed, params.optimize) if rows.any() else default
            )
    return BlendWeights(default, by_group, params.optimize)


def apply_weights(inputs: BlendInputs, weights: BlendWeights) -> np.ndarray:
    out = np.empty_like(inputs.p_lgbm)
    for group in np.unique(inputs.sensor_group):
        rows = inputs.sensor_group == group
        out[rows] = blend_proba(inputs.p_lgbm[rows], inputs.p_torch[rows], weights.for_group(group))
    return out


def _scores(inputs: BlendInputs, proba: np.ndarray) -> dict:
    pred = proba.argmax(axis=1)
    out: dict[str, Any] = dict(competition_scores(inputs.y_true, pred))
    out["per_sensor_group"] = {
        str(g): competition_scores(inputs.y_true[rows], pred[rows])
        for g in sorted(set(inputs.sensor_group.tolist()))
        if (rows := inputs.sensor_group == g).any()
    }
    return out


def blend_metrics(inputs: BlendInputs, fixed: dict, weights: BlendWeights) -> dict:
    """metrics/blend.json: the final blend's score on top, then every candidate for comparison."""
    final = apply_weights(inputs, weights)
    fixed_weights = BlendWeights(fixed, None, "none")
    report: dict[str, Any] = _scores(inputs, final)
    report["n_sequences"] = len(inputs)
    report["lgbm"] = _scores(inputs, inputs.p_lgbm)
    report["torch"] = _scores(inputs, inputs.p_torch)
    report["blend_fixed"] = _scores(inputs, apply_weights(inputs, fixed_weights))
    if weights.optimize != "none":
        report["blend_optimized"] = _scores(inputs, final)
    report["weights"] = weights.to_json()
    return report


def blend_oof_frame(inputs: BlendInputs, proba: np.ndarray) -> pl.DataFrame:
    """data/oof/blend.parquet: the OOF table format of the model stages."""
    proba = proba / proba.sum(axis=1, keepdims=True)
    return pl.DataFrame(
        {
            "sequence_id": pl.Series(inputs.sequence_id.tolist(), dtype=pl.String),
            "fold": pl.Series(inputs.fold, dtype=pl.Int32),
            "y_true": pl.Series(inputs.y_true, dtype=pl.Int32),
            "sensor_group": pl.Series(inputs.sensor_group.tolist(), dtype=pl.String),
            **{c: pl.Series(proba[:, i], dtype=pl.Float64) for i, c in enumerate(PROBA_COLUMNS)},
        }
    )


def confusion_frame(y_true: np.ndarray, proba: np.ndarray) -> pl.DataFrame:
    """plots/confusion.csv: one row per sequence, gesture strings, for DVC's confusion template."""
    return pl.DataFrame(
        {
            "actual": [GESTURES[int(i)] for i in y_true],
            "predicted": [GESTURES[int(i)] for i in proba.argmax(axis=1)],
        }
    )


def per_class_f1_frame(y_true: np.ndarray, proba: np.ndarray) -> pl.DataFrame:
    """plots/per_class_f1.csv: one-vs-rest F1 of each of the 18 gestures (0 when absent)."""
    f1 = f1_score(
        y_true, proba.argmax(axis=1), labels=list(range(N_CLASSES)), average=None, zero_division=0
    )
    return pl.DataFrame({"gesture": list(GESTURES), "f1": [float(v) for v in f1]})
