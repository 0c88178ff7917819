"""Upside-down wearers: how well ``cmi.wear`` detects them, how soon, and what a score costs.

Per preset (``cmi synth`` data; the generator says who wears the device upside down):
- fit: ``fit_wear_model`` on the train split without labels (self-training), as on real
  data; which train subjects it flags against the truth; the decision rule it chose.
- sequence level: share of sequences whose own score says upside down (> 0), for upside-down
  and normal wearers, per body orientation (cross-fitted out-of-fold scores of train).
- subject level and arrival: subjects replayed in ``--orders`` random arrival orders, the
  decision after each sequence from the ones seen so far. Three groups of subjects:
  ``new`` (the test split, never seen by the fit, and the same subjects half-turned with
  ``rotate_back``, which makes exactly the readings an upside-down wearer's IMU gives),
  ``native`` (the generator's upside-down train subjects, each scored by a model fitted
  without it), ``train`` (all train subjects and their twins, out-of-fold scores; the rule
  was fitted on them too). Reported: subjects right with all their sequences, share of
  answers with the wrong decision, P(right after n sequences), and the number of sequences
  until the decision is right for good (median / p90 / max over subjects x orders).
- adversarial orders: every normal subject (and twin) with one orientation's sequences
  first; the most wrong answers any such order gets.
- real sample (``--real``): the model fitted on the preset scores the 15 real sequences.
- timing: ``upside_down_score`` on 60-frame sequences, ``rotate_back`` per sequence.
Usage: python bench/upside_down.py [--presets demo full] [--orders 200] [--seed 0]

Project mode (``--project DIR [DIR ...]``): for each project with data/oof/<model>.parquet
(the OOF view contract) and data/features/sequences.parquet, the full / imu_only /
test_like scores (``cmi.evaluation.view_scores``) of the upside-down subjects against everyone
else, e.g. two experiment runs with ``extract.fix_upside_down`` off and on. Who is upside
down: the generator's truth with ``--preset`` (``cmi.synth.subject_table(preset, seed)``),
else the sequences table's ``upside_down`` column (the fit's decision, when it was on).
Usage: python bench/upside_down.py --project A B [--preset demo] [--model blend]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import polars as pl

from cmi.evaluation import view_scores
from cmi.params import load_params
from cmi.paths import ProjectPaths
from cmi.schema import IMU_COLUMNS, TRAIN_SCHEMA
from cmi.synth import generate, subject_table
from cmi.wear import (
    FEATURE_NAMES,
    WearModel,
    decide_subject,
    fit_wear_model,
    rotate_back,
    upside_down_score,
    wear_features,
)
from cmi.wear.fit import replay_running_means

_KEEP = ["sequence_id", "sequence_counter", "subject", *IMU_COLUMNS]
_REAL = Path(__file__).resolve().parents[2] / "shared" / "cmi-real-sample"


def _scores(model: WearModel, frame: pl.DataFrame) -> pl.DataFrame:
    features = wear_features(frame)
    score = model.score_features(features.select(FEATURE_NAMES).to_numpy())
    return features.select("sequence_id", "subject").with_columns(pl.Series("score", score))


def _decisions(scores: np.ndarray, model: WearModel, n_orders: int, rng) -> np.ndarray:
    """(n_orders, n) decision after each arriving sequence (True = upside down)."""
    means = replay_running_means(scores, model.score_clip, n_orders, rng)
    ready = np.arange(1, means.shape[1] + 1) >= model.min_sequences
    return ready & (means > model.threshold)


def arrival_summary(
    groups: list[tuple[np.ndarray, bool]], model: WearModel, n_orders: int, seed: int
) -> dict:
    """Figures for subjects given as (their sequence scores, truly upside down)."""
    rng = np.random.default_rng(seed)
    wrong_answers, answers, settle, right_at = 0, 0, [], {n: [] for n in (1, 2, 3, 5, 10, 20)}
    subjects_right = 0
    for scores, truth in groups:
        right = _decisions(scores, model, n_orders, rng) == truth
        wrong_answers += int((~right).sum())
        answers += right.size
        subjects_right += decide_subject(scores, model) == truth
        # Sequences until right for good: one past the last wrong answer.
        last_wrong = np.where(
            (~right).any(axis=1), right.shape[1] - np.argmax(~right[:, ::-1], axis=1), 0
        )
        settle += (last_wrong + 1).tolist()
        for n in right_at:
            if right.shape[1] >= n:
                right_at[n].append(right[:, n - 1].mean())
    settle = np.array(settle)
    return {
        "subjects": len(groups),
        "subjects_right_with_all": int(subjects_right),
        "wrong_answer_share": round(wrong_answers / max(answers, 1), 5),
        "p_right_after_n": {n: round(float(np.mean(v)), 4) for n, v in right_at.items() if v},
        "sequences_until_right_median_p90_max": [
            int(np.median(settle)),
            int(np.percentile(settle, 90)),
            int(settle.max()),
        ],
    }


def _groups(scored: pl.DataFrame, truth: dict[str, bool], with_twins: bool) -> list:
    out = []
    for subject, part in scored.group_by("subject", maintain_order=True):
        scores = part["score"].to_numpy()
        out.append((scores, truth[subject[0]]))
        if with_twins:  # the half-turned twin: exactly the negated scores
            out.append((-scores, not truth[subject[0]]))
    return out


def _orientation_table(
    scored: pl.DataFrame, orientation: pl.DataFrame, truth: dict
) -> pl.DataFrame:
    table = scored.join(orientation, on="sequence_id").with_columns(
        pl.col("subject").replace_strict(truth, return_dtype=pl.Boolean).alias("upside_down")
    )
    return (
        table.group_by("upside_down", "orientation")
        .agg(pl.len().alias("n"), (pl.col("score") > 0).mean().round(4).alias("says_upside_down"))
        .sort("upside_down", "orientation")
    )


def adversarial(
    scored: pl.DataFrame, orientation: pl.DataFrame, truth: dict, model: WearModel
) -> dict:
    """Each subject with one orientation's sequences first (then the rest in file order)."""
    table = scored.join(orientation, on="sequence_id")
    worst = {}
    for (subject,), part in table.group_by("subject"):
        for name in part["orientation"].unique().to_list():
            first = part.sort(pl.col("orientation") != name)
            for scores, truly in (
                (first["score"].to_numpy(), truth[subject]),
                (-first["score"].to_numpy(), not truth[subject]),
            ):
                means = np.cumsum(np.clip(scores, -model.score_clip, model.score_clip)) / np.arange(
                    1, len(scores) + 1
                )
                decided = (np.arange(1, len(scores) + 1) >= model.min_sequences) & (
                    means > model.threshold
                )
                n_wrong = int((decided != truly).sum())
                key = f"{name} first ({'upside down' if truly else 'normal'})"
                worst[key] = max(worst.get(key, 0), n_wrong)
    return dict(sorted(worst.items()))


def real_sample_report(model: WearModel) -> pl.DataFrame | None:
    path = _REAL / "train_sample.csv"
    if not path.is_file():
        return None
    frame = pl.read_csv(path, schema=TRAIN_SCHEMA)
    scored = _scores(model, frame)
    rest = frame.group_by("sequence_id").agg(
        pl.col("orientation").first(),
        pl.col("acc_z").head(10).mean().round(2).alias("acc_z_first10"),
    )
    return (
        scored.join(rest, on="sequence_id")
        .with_columns(pl.col("score").round(2))
        .sort("orientation")
    )


def timing(model: WearModel, frame: pl.DataFrame, n: int = 300) -> dict:
    sequences = [part.head(60) for _, part in frame.group_by("sequence_id") if part.height >= 60][
        :n
    ]
    score_times, rotate_times = [], []
    for sequence in sequences:
        started = time.perf_counter()
        upside_down_score(sequence, model)
        score_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        rotate_back(sequence)
        rotate_times.append(time.perf_counter() - started)
    return {
        "sequences": len(sequences),
        "score_ms_median_p99": [
            round(float(np.median(score_times)) * 1e3, 4),
            round(float(np.percentile(score_times, 99)) * 1e3, 4),
        ],
        "rotate_back_ms_median (all 332 sensor columns)": round(
            float(np.median(rotate_times)) * 1e3, 3
        ),
    }


def bench_preset(preset: str, seed: int, n_orders: int, real: bool) -> None:
    started = time.perf_counter()
    files = generate(preset, seed)
    truth_table = subject_table(preset, seed)
    train_full, test_full = files["train.csv"], files["test.csv"]
    orientation = train_full.group_by("sequence_id").agg(pl.col("orientation").first())
    train, test = train_full.select(_KEEP), test_full.select(_KEEP)
    timing_frame = test_full.head(20_000)
    del files, train_full, test_full
    truth = dict(zip(truth_table["subject"], truth_table["upside_down"], strict=True))
    print(
        f"\n=== {preset} (seed {seed}): {train['subject'].n_unique()} train subjects, "
        f"{test['subject'].n_unique()} test subjects; "
        f"generated in {time.perf_counter() - started:.1f} s"
    )
    native = [s for s in train["subject"].unique().sort().to_list() if truth[s]]
    print(f"generator's upside-down train subjects: {native}")

    started = time.perf_counter()
    fit = fit_wear_model(train)
    model = fit.model
    print(
        f"fit (self-training, no labels) in {time.perf_counter() - started:.2f} s: "
        f"flagged {list(fit.upside_down_subjects)}; "
        f"rule: clipped mean > {model.threshold:.2f} after >= {model.min_sequences} sequence(s); "
        f"replay error (prior-weighted) {fit.decision_error:.2e}"
    )
    wrong_flags = sorted(set(fit.upside_down_subjects) ^ set(native))
    print(f"train subjects wrongly labelled by the fit: {wrong_flags or 'none'}")

    train_scored = fit.sequences.rename({"oof_score": "score"}).select(
        "sequence_id", "subject", "score"
    )
    print(
        "sequence level, out-of-fold train scores "
        "(share of sequences whose own score says upside down):"
    )
    print(_orientation_table(train_scored, orientation, truth))
    seq_truth = train_scored["subject"].replace_strict(truth, return_dtype=pl.Boolean)
    says = train_scored["score"] > 0
    print(
        f"  all orientations: upside-down wearers detected "
        f"{(says & seq_truth).sum()}/{seq_truth.sum()}, "
        f"normal wearers flagged {(says & ~seq_truth).sum()}/{(~seq_truth).sum()}"
    )

    groups = {}
    test_scored = _scores(model, test)
    test_truth = {s: False for s in test["subject"].unique().to_list()}
    twin_scored = _scores(model, rotate_back(test))
    groups["new: test subjects"] = _groups(test_scored, test_truth, with_twins=False)
    groups["new: test subjects half-turned"] = _groups(
        twin_scored, {s: True for s in test_truth}, with_twins=False
    )
    native_groups = []
    for subject in native:
        alone = fit_wear_model(train.filter(pl.col("subject") != subject)).model
        scores = _scores(alone, train.filter(pl.col("subject") == subject))
        native_groups.append((scores["score"].to_numpy(), True))
        print(
            f"  native {subject} left out: rule > {alone.threshold:.2f} "
            f"after >= {alone.min_sequences}; "
            f"its sequences saying upside down {(scores['score'] > 0).sum()}/{scores.height}"
        )
    groups["native upside-down train subjects (left out)"] = native_groups
    groups["train subjects + twins (out-of-fold)"] = _groups(train_scored, truth, with_twins=True)
    for name, group in groups.items():
        if group:
            print(f"{name}: {arrival_summary(group, model, n_orders, seed)}")
    print("adversarial arrival, most wrong answers (train subjects, out-of-fold scores):")
    for key, worst in adversarial(train_scored, orientation, truth, model).items():
        print(f"  {key}: {worst}")
    print(f"timing: {timing(model, timing_frame)}")
    if real:
        report = real_sample_report(model)
        if report is None:
            print(f"real sample not found at {_REAL}")
        else:
            flagged = int((report["score"] > 0).sum())
            print(
                f"real sample (15 sequences, all normal wearers), "
                f"scored by the {preset}-fitted model: "
                f"{flagged} sequence(s) score > 0; acc_z over the first 10 frames < 0 in "
                f"{int((report['acc_z_first10'] < 0).sum())}"
            )
            print(report.select("subject", "orientation", "acc_z_first10", "score"))


def upside_down_subjects(project: Path, preset: str | None, seed: int) -> set[str]:
    """The generator's upside-down subjects (``preset``), else those the project's sequences
    table flags (its ``upside_down`` column, written with ``extract.fix_upside_down``)."""
    if preset is not None:
        table = subject_table(preset, seed).filter(pl.col("upside_down"))
        return set(table["subject"].to_list())
    sequences = pl.read_parquet(ProjectPaths(project).sequences)
    if "upside_down" not in sequences.columns:
        raise SystemExit(
            f"{ProjectPaths(project).sequences}: no upside_down column (extract ran with "
            "fix_upside_down off); name the synthetic truth with --preset"
        )
    return set(sequences.filter(pl.col("upside_down"))["subject"].unique().to_list())


def project_scores(
    project: Path, upside_down: set[str], model: str = "blend", share: float | None = None
) -> pl.DataFrame:
    """One row per group (upside-down subjects, everyone else) and view: score, binary and
    macro F1, rows, and how many subjects and sequences the group holds."""
    paths = ProjectPaths(project)
    if share is None:
        share = load_params(paths.params).eval.imu_only_share if paths.params.exists() else 0.5
    oof = pl.read_parquet(paths.oof(model))
    subjects = pl.read_parquet(paths.sequences).select("sequence_id", "subject")
    oof = oof.join(subjects, on="sequence_id", how="left")
    if oof["subject"].null_count():
        raise SystemExit(f"{paths.oof(model)}: sequences missing from {paths.sequences}")
    flagged = pl.col("subject").is_in(sorted(upside_down))
    rows = []
    for group, part in (("upside_down", oof.filter(flagged)), ("others", oof.filter(~flagged))):
        if part.height == 0:
            continue
        for view, figures in view_scores(part, share).items():
            rows.append(
                {
                    "project": str(project),
                    "group": group,
                    "subjects": part["subject"].n_unique(),
                    "sequences": part["sequence_id"].n_unique(),
                    "view": view,
                    **{k: figures[k] for k in ("score", "binary_f1", "macro_f1", "n_rows")},
                }
            )
    return pl.DataFrame(rows)


def bench_projects(projects: list[Path], preset: str | None, seed: int, model: str) -> pl.DataFrame:
    tables = []
    for project in projects:
        upside_down = upside_down_subjects(project, preset, seed)
        print(f"{project}: upside-down subjects {sorted(upside_down)}")
        tables.append(project_scores(project, upside_down, model))
    table = pl.concat(tables).sort("group", "view", maintain_order=True)
    with pl.Config(tbl_cols=-1, tbl_width_chars=200, fmt_str_lengths=60):
        print(table.with_columns(pl.col("score", "binary_f1", "macro_f1").round(4)))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["demo", "full"])
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-real", action="store_true", help="skip the real sample")
    parser.add_argument("--project", nargs="+", type=Path, help="score projects' OOF instead")
    parser.add_argument("--preset", help="with --project: the synthetic truth of this preset")
    parser.add_argument("--model", default="blend", help="with --project: data/oof/<model>")
    args = parser.parse_args()
    pl.Config.set_tbl_rows(40)
    pl.Config.set_tbl_width_chars(140)
    pl.Config.set_fmt_str_lengths(40)
    if args.project:
        bench_projects(args.project, args.preset, args.seed, args.model)
        return
    for preset in args.presets:
        bench_preset(preset, args.seed, args.orders, not args.no_real)


if __name__ == "__main__":
    main()
