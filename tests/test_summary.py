import json
from pathlib import Path

from cmi.io import write_json
from cmi.paths import ProjectPaths
from cmi.summary import format_table, main, stage_metrics, summary_lines, summary_rows


def _views(full: float, imu_only: float, test_like: float) -> dict:
    def score(value: float) -> dict:
        return {"score": value, "binary_f1": value + 0.1, "macro_f1": value - 0.1, "n_rows": 30}

    return {"full": score(full), "imu_only": score(imu_only), "test_like": score(test_like)}


def _write_run(root: Path) -> ProjectPaths:
    """lgbm's metrics where dvclive writes them, torch's in metrics/, the blend's."""
    paths = ProjectPaths(root)
    write_json({"score": 0.7, **_views(0.8, 0.6, 0.7)}, paths.live_dir("lgbm") / "metrics.json")
    write_json({"score": 0.75, **_views(0.85, 0.65, 0.75)}, paths.metrics("torch"))
    blend = {
        "score": 0.78,
        "lgbm": _views(0.8, 0.6, 0.7),
        "torch": _views(0.85, 0.65, 0.75),
        "blend": _views(0.88, 0.68, 0.78),
        "blend_fixed": _views(0.87, 0.67, 0.77),
        "weights": {"default": {"lgbm": 0.4, "torch": 0.6}, "by_sensor_group": None},
        "imu_only_share": 0.5,
    }
    write_json(blend, paths.metrics("blend"))
    return paths


def test_table_has_models_by_views_and_says_which_figure_to_compare(tmp_path: Path) -> None:
    paths = _write_run(tmp_path)
    rows = summary_rows(paths)
    assert [name for name, _ in rows] == ["lgbm", "torch", "blend", "blend (fixed)"]
    lines = summary_lines(paths)
    header = lines[0].split()
    assert header[:4] == ["model", "full", "imu_only", "test_like"]
    lgbm, _, blend, fixed = (line.split() for line in lines[2:6])
    assert lgbm[:4] == ["lgbm", "0.8000", "0.6000", "0.7000"]
    assert blend[:7] == ["blend", "0.8800", "0.6800", "0.7800", "0.8800", "0.6800", "30"]
    assert fixed[:3] == ["blend", "(fixed)", "0.8700"]
    text = "\n".join(lines)
    assert "eval.imu_only_share = 0.5" in text
    assert "test_like" in text and "compare with the leaderboard" in text
    assert '"lgbm": 0.4' in text


def test_more_rows_are_one_append_away(tmp_path: Path) -> None:
    paths = _write_run(tmp_path)
    extra = ("blend + pp", _views(0.9, 0.7, 0.8))
    lines = summary_lines(paths, extra_rows=[extra])
    assert lines[6].split()[:3] == ["blend", "+", "pp"]  # after the four model rows
    assert format_table([extra])[2].split()[-4] == "0.8000"  # test_like, then F1s and rows


def _replay(test_like: float, gain: float | None) -> dict:
    out = {
        "test_like": test_like,
        "test_like_binary_f1": test_like + 0.1,
        "test_like_macro_f1": test_like - 0.1,
        "full": test_like + 0.05,
        "imu_only": test_like - 0.05,
        "excess_answers": 3.0 if gain is None else 0.0,
        "test_like_per_order": [test_like] * 3,
    }
    return out if gain is None else {**out, "gain": gain}


def test_post_processing_replay_rows_follow_the_models(tmp_path: Path) -> None:
    paths = _write_run(tmp_path)
    blend = json.loads(paths.metrics("blend").read_text())
    blend["postprocess"] = {
        "mode": "resolve",
        "combine": "max",
        "n_orders": 3,
        "seed": 0,
        "imu_only_share": 0.5,
        "n_sequences": 40,
        "none": _replay(0.7, None),
        "gesture_counts": _replay(0.72, 0.02),
        "assignment": _replay(0.75, 0.05),
    }
    write_json(blend, paths.metrics("blend"))
    names = [name for name, _ in summary_rows(paths)]
    assert names[4:] == ["replay: none", "replay: gesture_counts", "replay: assignment"]
    lines = summary_lines(paths)
    assignment = lines[8].split()
    assert assignment[:2] == ["replay:", "assignment"]
    assert assignment[2:] == ["0.8000", "0.7000", "0.7500", "0.8500", "0.6500", "40"]
    text = "\n".join(lines)
    assert "per subject, 3 seeded" in text and "assignment +0.0500" in text
    assert "(none / gesture_counts / assignment): 3 / 0 / 0." in text


def test_metrics_without_views_are_skipped(tmp_path: Path) -> None:
    paths = _write_run(tmp_path)
    # A stale one-view file (the layout before views) must not shadow dvclive's summary.
    write_json({"score": 0.99, "binary_f1": 1.0, "macro_f1": 0.98}, paths.metrics("lgbm"))
    assert stage_metrics(paths, "lgbm")["test_like"]["score"] == 0.7
    (paths.live_dir("lgbm") / "metrics.json").write_text(json.dumps({"per_fold_test_like": {}}))
    assert stage_metrics(paths, "lgbm") is None  # a run still going: no final numbers yet
    # The blend's copy of lgbm's scores stands in; without it, no lgbm row.
    assert dict(summary_rows(paths))["lgbm"]["test_like"]["score"] == 0.7
    blend = json.loads(paths.metrics("blend").read_text())
    write_json({k: v for k, v in blend.items() if k != "lgbm"}, paths.metrics("blend"))
    assert next(name for name, _ in summary_rows(paths)) == "torch"


def test_main_prints_the_table(tmp_path: Path, capsys) -> None:
    _write_run(tmp_path)
    assert main(tmp_path) == 0
    out = capsys.readouterr().out
    assert "summary" in out and "test_like" in out and "blend (fixed)" in out


def test_summary_without_metrics_says_what_to_run(tmp_path: Path, capsys) -> None:
    assert main(tmp_path) == 1
    assert "dvc repro" in capsys.readouterr().err


def test_summary_of_a_trained_project(tiny_trained_project: Path, capsys) -> None:
    lines = summary_lines(ProjectPaths(tiny_trained_project))
    names = [line.split()[0] for line in lines[2:6]]
    assert names[:4] == ["lgbm", "torch", "blend", "blend"], lines
    replay = [" ".join(line.split()[:2]) for line in lines[6:9]]
    assert replay == ["replay: none", "replay: gesture_counts", "replay: assignment"], lines
    text = "\n".join(lines)
    assert "blend weights" in text and "bundle" in text
    assert main(tiny_trained_project) == 0
    assert "summary" in capsys.readouterr().out
