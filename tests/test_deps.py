"""cmi.deps: the cmi modules a stage reaches, dvc.yaml deps and params keys checked against
them, and code fingerprints that change exactly when reached code does."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from cmi import deps

REPO_ROOT = Path(__file__).resolve().parents[1]


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    """A small cmi package exercising every import form."""
    return _write(
        tmp_path,
        {
            "cmi/__init__.py": "",
            "cmi/a/__init__.py": "",
            "cmi/a/b.py": "from . import sibling\nfrom ..c import helper\n",
            "cmi/a/sibling.py": "",
            "cmi/a/untouched.py": "import cmi.never\n",
            "cmi/c.py": "def helper():\n    from cmi.lazy import x\n",
            "cmi/lazy.py": "x = 1\n",
            "cmi/d.py": "import importlib\nM = importlib.import_module('cmi.dynamic')\n",
            "cmi/dynamic.py": "",
            "cmi/e/__init__.py": "from cmi.e.inner import thing\n",
            "cmi/e/inner.py": "thing = 1\n",
            "cmi/never.py": "",
            "stages/run.py": (
                "import os\nimport cmi.a.b\nfrom cmi import d\nfrom cmi.e import thing\n"
                "from cmi.c import helper as h\n"
            ),
        },
    )


def test_reachable_modules_follow_every_import_form(toy: Path) -> None:
    reached = deps.reachable_modules("stages/run.py", root=toy)
    assert sorted(reached) == [
        "cmi",
        "cmi.a",
        "cmi.a.b",
        "cmi.a.sibling",  # from . import sibling
        "cmi.c",  # from ..c import helper, and from cmi.c import helper
        "cmi.d",  # from cmi import d: a submodule
        "cmi.dynamic",  # importlib.import_module("cmi.dynamic")
        "cmi.e",  # a package: its __init__ runs ...
        "cmi.e.inner",  # ... and imports this
        "cmi.lazy",  # imported inside a function
    ]
    assert reached["cmi.e"] == toy / "cmi" / "e" / "__init__.py"
    assert "cmi.a.untouched" not in reached and "cmi.never" not in reached


def test_fingerprint_changes_with_reached_code_only(toy: Path) -> None:
    before = deps.code_fingerprint("stages/run.py", root=toy)
    assert set(before["files"]) >= {"stages/run.py", "cmi/lazy.py", "cmi/e/inner.py"}
    assert {"numpy", "lightgbm", "torch", "python"} <= set(before["versions"])
    (toy / "cmi" / "never.py").write_text("x = 2\n")  # not reached: same fingerprint
    assert deps.code_fingerprint("stages/run.py", root=toy) == before
    digest = deps.code_digest("stages/run.py", root=toy)
    (toy / "cmi" / "lazy.py").write_text("x = 2\n")  # reached, two imports deep
    after = deps.code_fingerprint("stages/run.py", root=toy)
    assert after["files"]["cmi/lazy.py"] != before["files"]["cmi/lazy.py"]
    assert deps.code_digest("stages/run.py", root=toy) != digest


def test_missing_and_unreached_deps_are_named(toy: Path) -> None:
    listed = ["stages/run.py", "cmi/__init__.py", "cmi/a", "cmi/c.py", "cmi/d.py", "cmi/never.py"]
    missing = deps.missing_deps("stages/run.py", listed, root=toy)
    assert missing == ["cmi/dynamic.py", "cmi/e/__init__.py", "cmi/e/inner.py", "cmi/lazy.py"]
    assert deps.unreached_code_deps("stages/run.py", listed, root=toy) == ["cmi/never.py"]


# ------------------------------------------------------------------ the repository's dvc.yaml


def _stages() -> dict:
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


def _scripts() -> list[tuple[str, str, list[str]]]:
    out = []
    for name, stage in _stages().items():
        script = deps.stage_script(stage["cmd"])
        assert script, f"stage {name}: no script in {stage['cmd']!r}"
        out.append((name, script, list(stage.get("deps", []))))
    return out


@pytest.mark.parametrize("stage", [s[0] for s in _scripts()])
def test_stage_deps_cover_every_cmi_module_the_script_reaches(stage: str) -> None:
    """An edit to any code a stage runs must rerun it (else `dvc repro` keeps stale results)."""
    (_, script, listed) = next(s for s in _scripts() if s[0] == stage)
    assert script in listed, f"dvc.yaml stage {stage}: add {script} to deps"
    missing = deps.missing_deps(script, listed)
    assert not missing, f"dvc.yaml stage {stage}: add to deps {missing}"
    extra = deps.unreached_code_deps(script, listed)
    assert not extra, f"dvc.yaml stage {stage}: {extra} are never imported; remove them"


def test_the_kaggle_path_reaches_no_training_code() -> None:
    reached = deps.reachable_modules("cmi/inference.py")
    forbidden = ("cmi.bundle.builder", "cmi.blend", "cmi.metrics", "cmi.lgbm", "cmi.nn.train")
    forbidden += ("cmi.synth", "cmi.folds", "cmi.checkpoint", "cmi.deps", "cmi.submission")
    assert not [m for m in reached if m.startswith(forbidden)]
    assert {"cmi.bundle.reader", "cmi.weights", "cmi.features"} <= set(reached)


# ------------------------------------------------------------------ params keys


def _params_keys() -> list[str]:
    return deps.flatten_params(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()))


def test_every_params_key_is_read_by_a_stage_or_declared_result_neutral() -> None:
    listed = {key for stage in _stages().values() for key in stage.get("params", [])}
    unlisted = [
        key for key in _params_keys() if key not in listed and key not in deps.RESULT_NEUTRAL_PARAMS
    ]
    assert not unlisted, (
        f"params.yaml keys {unlisted} are listed by no stage in dvc.yaml: add each to the "
        "stages that read it (or, if it cannot change any result, to "
        "cmi.deps.RESULT_NEUTRAL_PARAMS with the evidence)"
    )


def test_stages_list_keys_and_never_a_result_neutral_one() -> None:
    existing = set(_params_keys())
    sections = {key.split(".")[0] for key in existing}
    for name, stage in _stages().items():
        for key in stage.get("params", []):
            assert isinstance(key, str), f"stage {name}: params entry {key!r}"
            assert key not in sections, (
                f"stage {name}: lists the whole section {key!r}; list its keys, so that "
                "result-neutral keys (thread counts) do not rerun the stage"
            )
            assert key in existing, f"stage {name}: {key!r} is not in params.yaml"
            assert key not in deps.RESULT_NEUTRAL_PARAMS, (
                f"stage {name}: {key!r} cannot change results ({deps.RESULT_NEUTRAL_PARAMS[key]})"
            )
    assert set(deps.RESULT_NEUTRAL_PARAMS) <= existing


def test_checkpoint_fingerprints_ignore_result_neutral_params() -> None:
    from dataclasses import replace

    from cmi.lgbm import fingerprint_params as lgbm_fingerprint
    from cmi.nn.cv import fingerprint_params as torch_fingerprint
    from cmi.params import Params

    base = Params()
    neutral = Params(
        torch=replace(base.torch, cpu_processes=3, num_workers=2),
        lgbm=replace(base.lgbm, n_jobs=7),
    )
    assert torch_fingerprint(neutral) == torch_fingerprint(base)
    assert lgbm_fingerprint(neutral) == lgbm_fingerprint(base)
    assert torch_fingerprint(Params(torch=replace(base.torch, seed=1))) != torch_fingerprint(base)
    assert lgbm_fingerprint(Params(lgbm=replace(base.lgbm, seed=1))) != lgbm_fingerprint(base)
