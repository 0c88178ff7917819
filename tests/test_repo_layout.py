"""Repository invariants that DVC's workflow depends on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
RAW = "data/raw"  # `make repro` runs `dvc add data/raw`


def _ignored_by(repo: Path, path: str) -> tuple[str, str] | None:
    """(ignore file, pattern) of the rule that makes git ignore ``path``, or None."""
    result = subprocess.run(
        ["git", "check-ignore", "-v", "--no-index", path],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return None
    source, _line, pattern = result.stdout.split("\t", 1)[0].split(":", 2)
    return source, pattern


def _is_dvc_own_rule(rule: tuple[str, str], output: str) -> bool:
    """DVC ignores an output it caches with ``/<name>`` in the .gitignore beside it."""
    parent, _, name = output.rpartition("/")
    expected_source = f"{parent}/.gitignore" if parent else ".gitignore"
    return rule == (expected_source, f"/{name}")


def _dvc_outputs(repo: Path) -> tuple[list[str], list[str]]:
    """(outputs DVC caches, outputs git keeps: `cache: false`) of dvc.yaml, plus data/raw."""
    cached, uncached = [RAW], []
    for stage in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"].values():
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get(key, []):
                path, options = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
                (uncached if options.get("cache") is False else cached).append(path)
    return cached, uncached


def check_ignore_rules(repo: Path) -> list[str]:
    """What is wrong with the ignore rules of ``repo`` (empty when nothing is).

    The rule guarded (regression: a root rule ignoring /data/* made `dvc exp run` delete
    data/raw): only DVC's own per-output entry may git-ignore a path DVC caches, nothing may
    ignore what DVC leaves to git (`cache: false`), and local clutter stays ignored. It holds
    before and after `dvc add data/raw` writes data/.gitignore (`/raw`).
    """
    problems = []
    cached, uncached = _dvc_outputs(repo)
    for output in cached:
        for path in (output, f"{output}/some_file.csv"):
            rule = _ignored_by(repo, path)
            if rule is not None and not _is_dvc_own_rule(rule, output):
                problems.append(f"{path} is ignored by {rule[0]}: {rule[1]!r}, not by DVC")
    for path in uncached:
        rule = _ignored_by(repo, path)
        if rule is not None:
            problems.append(f"{path} (cache: false, kept by git) is ignored by {rule}")
    for path in ("checkpoints/lgbm", ".venv/bin/python", "model.pkl", "x.joblib"):
        if _ignored_by(repo, path) is None:
            problems.append(f"{path} is not ignored")
    return problems


def test_gitignore_leaves_dvc_tracked_paths_to_dvc() -> None:
    assert check_ignore_rules(REPO_ROOT) == []


def test_ignore_check_accepts_dvc_rules_and_catches_others(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for name in ("dvc.yaml", ".gitignore"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / name, repo / name)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    assert check_ignore_rules(repo) == []
    root_rules = (REPO_ROOT / ".gitignore").read_text()
    (repo / ".gitignore").write_text(root_rules + "/data/*\n")  # the old regression
    assert "data/raw is ignored by .gitignore: '/data/*', not by DVC" in check_ignore_rules(repo)
    (repo / ".gitignore").write_text(root_rules)
    (repo / "data").mkdir()
    (repo / "data" / ".gitignore").write_text("/raw\n/features\n")  # what DVC writes
    assert check_ignore_rules(repo) == []
    (repo / "data" / ".gitignore").write_text("/raw\n/oof\n")  # not DVC's: it caches files
    problems = check_ignore_rules(repo)
    assert "data/oof/lgbm.parquet is ignored by data/.gitignore: '/oof', not by DVC" in problems


def test_each_stage_lists_only_the_params_it_reads() -> None:
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    sections = {
        name: {key.split(".")[0] for key in stage.get("params", [])}
        for name, stage in stages.items()
    }
    assert sections["extract"] == {"extract"}
    assert sections["folds"] == {"cv"}
    assert sections["lgbm"] == {"cv", "lgbm", "eval"}
    assert sections["torch"] == {"cv", "torch", "eval"}
    # oof_blend replays every post-processing method; only the bundle reads postprocess.method.
    assert sections["oof_blend"] == {"ensemble", "eval", "postprocess"}
    assert "postprocess.method" not in stages["oof_blend"]["params"]
    assert sections["bundle"] == {"extract", "postprocess"}
    assert sections["orientation"] == {"cv", "orientation"}
    assert [name for name, keys in sections.items() if "ensemble" in keys] == ["oof_blend"]
    # Thread and worker counts cannot change results (cmi.deps.RESULT_NEUTRAL_PARAMS).
    assert "lgbm.n_jobs" not in stages["lgbm"]["params"]
    assert "torch.num_workers" not in stages["torch"]["params"]
    assert "torch.py" not in {Path(s["cmd"].split()[-1]).name for s in stages.values()}


def test_tests_reach_the_real_sample_only_through_its_fixture() -> None:
    """So exactly the tests that read it carry the real_sample mark (tests/conftest.py) and
    everything else runs on a clone without ../shared; and no test knows an absolute path."""
    for path in sorted((REPO_ROOT / "tests").glob("*.py")):
        if path.name == Path(__file__).name:  # names them to check them
            continue
        text = path.read_text(encoding="utf-8")
        if path.name not in ("conftest.py", "pipeline_helpers.py"):
            assert "REAL_SAMPLE" not in text, f"{path.name}: use the real_sample fixture"
            assert "pytestmark = pytest.mark.real_sample" not in text, path.name
        for absolute in ("/work/shared", "/work/main"):
            assert absolute not in text, f"{path.name}: absolute path {absolute}"


def test_no_pickle_is_tracked() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert not [f for f in tracked if f.endswith((".pkl", ".pickle", ".joblib"))]


@pytest.mark.slow
def test_make_repro_then_make_test_on_a_fresh_clone(tmp_path: Path) -> None:
    """The README's two commands in their natural order: `dvc add data/raw` (what `make repro`
    runs first) writes data/.gitignore; this module's tests, run inside that clone, pass
    before it and after it."""
    clone = tmp_path / "clone"
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for name in listed:
        if (REPO_ROOT / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, clone / name)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}

    def run(*command: str) -> subprocess.CompletedProcess:
        result = subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        return result

    run("git", "init", "-q")
    layout_tests = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    layout_tests += ["tests/test_repo_layout.py", "-m", "not slow"]
    run(*layout_tests)  # make test before make repro
    (clone / RAW).mkdir(parents=True)
    (clone / RAW / "train.csv").write_text("row_id\nx\n")
    run(sys.executable, "-m", "dvc", "add", "--quiet", RAW)
    assert (clone / "data" / ".gitignore").read_text().splitlines() == ["/raw"]
    assert check_ignore_rules(clone) == []
    run(*layout_tests)  # make test after make repro


def test_lint_passes_beside_the_pipeline_outputs(tmp_path: Path) -> None:
    """`make repro` then `make test`: the dvclive/ folder dvc repro writes at the root must not
    change how ruff sorts imports (it once read `dvclive` as a first-party module)."""
    ruff = Path(sys.executable).parent / "ruff"
    if not ruff.exists():
        pytest.skip("ruff is not installed beside this interpreter")
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "cmi").mkdir()
    module = tmp_path / "cmi" / "live.py"
    module.write_text(
        "import polars as pl\nfrom dvclive import Live\n\nfrom cmi.io import write_json\n\n"
        "__all__ = ['Live', 'pl', 'write_json']\n"
    )
    (tmp_path / "dvclive" / "lgbm").mkdir(parents=True)
    (tmp_path / "dvclive" / "lgbm" / "metrics.json").write_text("{}")
    result = subprocess.run(
        [str(ruff), "check", "--no-cache", "."], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
