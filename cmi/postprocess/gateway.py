"""Replay the Kaggle gateway on out-of-fold tables, to score post-processing as the hidden
test would see it.

Per seeded arrival order and per subject: the subject's sequences arrive in a random order,
``imu_only_share`` of them in their IMU-only view (natively IMU-only sequences always are;
the rest are drawn from the full-sensor ones), and each is answered from the subject's
sequences seen so far. Every subject's draw depends only on (seed, order, subject), so one
subject's answers never depend on which other subjects are present. All methods see the same
presentations, so their scores are paired.

Training only: imports the metric (scikit-learn).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import polars as pl

from cmi.evaluation import OOF_KEY, check_share, view_scores
from cmi.params import PostprocessParams
from cmi.postprocess.assignment import METHODS, MODES, Method, Mode, excess_answers, replay_subject
from cmi.postprocess.slots import Combine
from cmi.protocol import ORIENTATION_COLUMNS
from cmi.schema import PROBA_COLUMNS

_OOF_COLUMNS = ("sequence_id", "fold", "y_true", "sensor_group", "view", *PROBA_COLUMNS)


def _require(frame: pl.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {missing}")


def _subject_rng(seed: int, order: int, subject: str) -> np.random.Generator:
    # crc32, not hash(): stable across processes (PYTHONHASHSEED).
    return np.random.default_rng([seed, order, zlib.crc32(str(subject).encode())])


def present(
    oof: pl.DataFrame,
    sequences: pl.DataFrame,
    n_orders: int,
    seed: int,
    imu_only_share: float,
) -> pl.DataFrame:
    """The gateway's presentations: one row per (order, sequence), the OOF row of the view
    it arrives in, with ``order``, ``subject`` and ``arrival`` (0-based position among the
    subject's sequences); sorted by order, subject, arrival."""
    share = check_share(imu_only_share)
    if n_orders < 1:
        raise ValueError(f"postprocess.n_orders must be >= 1, got {n_orders}")
    _require(oof, _OOF_COLUMNS, "OOF table")
    _require(sequences, ["sequence_id", "subject"], "sequences.parquet")
    views = oof.group_by("sequence_id").agg(
        (pl.col("view") == "full").any().alias("has_full"),
        (pl.col("view") == "imu_only").any().alias("has_imu"),
    )
    no_imu = views.filter(~pl.col("has_imu"))["sequence_id"]
    if no_imu.len():
        raise ValueError(f"OOF table: no imu_only row for sequence(s) {no_imu.head(3).to_list()}")
    table = views.join(sequences.select("sequence_id", "subject"), on="sequence_id", how="left")
    lost = table.filter(pl.col("subject").is_null())["sequence_id"]
    if lost.len():
        raise ValueError(
            f"sequences.parquet: no subject for OOF sequence(s) {lost.head(3).to_list()}"
        )
    table = table.sort("subject", "sequence_id")

    parts = []
    for (subject,), group in table.group_by(["subject"], maintain_order=True):
        ids = group["sequence_id"].to_numpy()
        has_full = group["has_full"].to_numpy()
        n_imu_wanted = round(share * len(ids))
        need = max(0, n_imu_wanted - int((~has_full).sum()))
        for order in range(n_orders):
            rng = _subject_rng(seed, order, subject)
            arrival = rng.permutation(len(ids))
            as_imu = ~has_full
            as_imu[
                rng.choice(np.flatnonzero(has_full), size=min(need, has_full.sum()), replace=False)
            ] = True
            parts.append(
                pl.DataFrame(
                    {
                        "order": pl.Series(np.full(len(ids), order), dtype=pl.Int32),
                        "subject": pl.Series([subject] * len(ids), dtype=pl.String),
                        "arrival": pl.Series(np.arange(len(ids)), dtype=pl.Int32),
                        "sequence_id": pl.Series(ids[arrival], dtype=pl.String),
                        "view": pl.Series(
                            np.where(as_imu[arrival], "imu_only", "full"), dtype=pl.String
                        ),
                    }
                )
            )
    presented = pl.concat(parts)
    return presented.join(oof.select(_OOF_COLUMNS), on=list(OOF_KEY), how="left").sort(
        "order", "subject", "arrival"
    )


def replay(
    presented: pl.DataFrame,
    orientation_oof: pl.DataFrame | None,
    method: Method,
    mode: Mode = "resolve",
    combine: Combine = "max",
) -> np.ndarray:
    """Answers (class indices) for ``present``'s rows, each from its subject's prefix."""
    proba = presented.select(PROBA_COLUMNS).to_numpy().astype(np.float64)
    orient = None
    if orientation_oof is not None:
        _require(orientation_oof, ["sequence_id", *ORIENTATION_COLUMNS], "orientation OOF")
        joined = presented.select("sequence_id").join(
            orientation_oof.select("sequence_id", *ORIENTATION_COLUMNS),
            on="sequence_id",
            how="left",
            maintain_order="left",
        )
        orient = joined.select(ORIENTATION_COLUMNS).to_numpy().astype(np.float64)
        if np.isnan(orient).any():
            missing = joined.filter(pl.col(ORIENTATION_COLUMNS[0]).is_null())["sequence_id"]
            raise ValueError(f"orientation OOF: no row for sequence(s) {missing.head(3).to_list()}")
    # Rows are sorted by (order, subject, arrival): a group starts where either key changes.
    order = presented["order"].to_numpy()
    subject = presented["subject"].to_numpy()
    change = (order[1:] != order[:-1]) | (subject[1:] != subject[:-1])
    starts = np.flatnonzero(np.r_[presented.height > 0, change])
    ends = np.r_[starts[1:], presented.height]
    answers = np.empty(presented.height, dtype=np.int64)
    for start, end in zip(starts, ends, strict=True):
        answers[start:end] = replay_subject(
            proba[start:end],
            None if orient is None else orient[start:end],
            method,
            mode,
            combine,
        )
    return answers


def simulate_gateway(
    oof: pl.DataFrame,
    orientation_oof: pl.DataFrame | None,
    sequences: pl.DataFrame,
    method: Method = "assignment",
    mode: Mode = "resolve",
    n_orders: int = 5,
    seed: int = 0,
    imu_only_share: float = 0.5,
    combine: Combine = "max",
) -> pl.DataFrame:
    """``present``'s rows with ``pred``, the answer each sequence got. Score one order with
    ``view_scores(frame.filter(order == k), share, pred=...)`` or all with ``replay_scores``."""
    presented = present(oof, sequences, n_orders, seed, imu_only_share)
    return presented.with_columns(
        pl.Series("pred", replay(presented, orientation_oof, method, mode, combine), dtype=pl.Int32)
    )


def replay_scores(replayed: pl.DataFrame, imu_only_share: float) -> dict:
    """Scores of a replay (``simulate_gateway``'s frame): medians over orders of each view's
    score and of ``excess_answers``, and the per-order test_like scores."""
    per_order = []
    for (_,), part in replayed.group_by(["order"], maintain_order=True):
        pred = part["pred"].to_numpy()
        scores = view_scores(part, imu_only_share, pred=pred)
        scores["excess_answers"] = excess_answers(part["subject"].to_numpy(), pred)
        per_order.append(scores)
    return _summary(per_order)


def _summary(per_order: list[dict]) -> dict:
    def median(get) -> float:
        return float(np.median([get(s) for s in per_order]))

    return {
        "test_like": median(lambda s: s["test_like"]["score"]),
        "test_like_binary_f1": median(lambda s: s["test_like"]["binary_f1"]),
        "test_like_macro_f1": median(lambda s: s["test_like"]["macro_f1"]),
        "full": median(lambda s: s["full"]["score"]),
        "imu_only": median(lambda s: s["imu_only"]["score"]),
        "excess_answers": median(lambda s: s["excess_answers"]),
        "test_like_per_order": [round(s["test_like"]["score"], 6) for s in per_order],
    }


def compare_postprocessing(
    oof: pl.DataFrame,
    orientation_oof: pl.DataFrame | None,
    sequences: pl.DataFrame,
    *,
    imu_only_share: float = 0.5,
    n_orders: int = 5,
    seed: int = 0,
    combine: Combine = "max",
    methods: Sequence[str] = METHODS,
    modes: Sequence[str] = MODES,
) -> dict:
    """Every method (and mode) on the same presentations: ``{"none": summary,
    "gesture_counts": {mode: summary}, "assignment": {mode: summary}}``; each summary also
    has ``gain``, the median over orders of its test_like minus that of ``none``."""
    presented = present(oof, sequences, n_orders, seed, imu_only_share)
    out: dict = {}

    def run(method: str, mode: str) -> dict:
        frame = presented.with_columns(
            pl.Series("pred", replay(presented, orientation_oof, method, mode, combine))
        )
        return replay_scores(frame, imu_only_share)

    baseline = run("none", "resolve")
    out["none"] = baseline
    for method in methods:
        if method == "none":
            continue
        out[method] = {}
        for mode in modes:
            summary = run(method, mode)
            gains = np.subtract(summary["test_like_per_order"], baseline["test_like_per_order"])
            summary["gain"] = float(np.median(gains))
            out[method][mode] = summary
    return out


def postprocess_report(
    oof: pl.DataFrame,
    orientation_oof: pl.DataFrame | None,
    sequences: pl.DataFrame,
    *,
    mode: Mode,
    combine: Combine,
    n_orders: int,
    seed: int,
    imu_only_share: float,
) -> dict:
    """metrics/blend.json's ``postprocess`` section: every method replayed in ``mode`` on the
    same presentations. ``{"none" | "gesture_counts" | "assignment": {test_like, full,
    imu_only, test_like_binary_f1, test_like_macro_f1, excess_answers, test_like_per_order,
    gain (not for none)}}`` (medians over orders), plus the settings and the rows per order."""
    compared = compare_postprocessing(
        oof,
        orientation_oof,
        sequences,
        imu_only_share=imu_only_share,
        n_orders=n_orders,
        seed=seed,
        combine=combine,
        modes=(mode,),
    )
    report: dict = {
        "mode": mode,
        "combine": combine,
        "n_orders": n_orders,
        "seed": seed,
        "imu_only_share": imu_only_share,
        "orientation": "oof" if orientation_oof is not None else "uniform",
        "n_sequences": int(oof["sequence_id"].n_unique()),
        "none": compared["none"],
    }
    for method in METHODS:
        if method != "none":
            report[method] = compared[method][mode]
    return report


def replay_section(
    blended: pl.DataFrame,
    orientation_oof: pl.DataFrame | None,
    sequences: pl.DataFrame,
    params: PostprocessParams,
    imu_only_share: float,
) -> dict:
    """``postprocess_report`` with the replay settings of ``params.postprocess`` (mode,
    combine, n_orders, seed; not ``method``: every method is replayed)."""
    return postprocess_report(
        blended,
        orientation_oof,
        sequences,
        mode=params.mode,
        combine=params.combine,
        n_orders=params.n_orders,
        seed=params.seed,
        imu_only_share=imu_only_share,
    )


def describe_replay(section: dict) -> str:
    """One log line of a ``postprocess_report`` section: each method's test_like, its gain
    over none and the answers sent beyond the protocol's counts."""
    none, counts, assignment = (section[m] for m in ("none", "gesture_counts", "assignment"))
    return (
        f"gateway replay ({section['n_orders']} orders, {section['mode']}): test_like none "
        f"{none['test_like']:.4f}, gesture_counts {counts['test_like']:.4f} "
        f"({counts['gain']:+.4f}), assignment {assignment['test_like']:.4f} "
        f"({assignment['gain']:+.4f}); answers over the protocol's counts "
        f"{none['excess_answers']:g} / {counts['excess_answers']:g} / "
        f"{assignment['excess_answers']:g}"
    )
