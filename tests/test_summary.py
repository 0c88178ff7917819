from pathlib import Path

from cmi.paths import ProjectPaths
from cmi.summary import main, summary_lines


def test_summary_of_a_trained_project(tiny_trained_project: Path, capsys) -> None:
    lines = summary_lines(ProjectPaths(tiny_trained_project))
    text = "\n".join(lines)
    for name in ("lgbm", "torch", "blend_fixed", "blend (used)", "blend weights", "bundle"):
        assert name in text, text
    assert main(tiny_trained_project) == 0
    assert "summary" in capsys.readouterr().out


def test_summary_without_metrics_says_what_to_run(tmp_path: Path, capsys) -> None:
    assert main(tmp_path) == 1
    assert "dvc repro" in capsys.readouterr().err
