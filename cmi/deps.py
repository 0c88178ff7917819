"""What a stage's results depend on: the ``cmi`` code it runs and the params keys that matter.

``reachable_modules(script)`` follows every import of ``cmi`` (absolute, relative, inside
functions, ``importlib.import_module("cmi...")``) from a stage script, transitively, by
reading the source with ``ast`` (nothing is imported). Importing ``cmi.a.b`` runs
``cmi/__init__.py`` and ``cmi/a/__init__.py`` too, so those count. The same set feeds:

- the ``deps:`` of each stage in dvc.yaml (tests/test_deps.py fails when one is missing), and
- checkpoint fingerprints: ``code_fingerprint(script)`` hashes those files plus the versions
  of the libraries that change results, so a checkpoint made by other code is never reused.

``RESULT_NEUTRAL_PARAMS`` is the one list of params.yaml keys that cannot change any result
(so no stage lists them, and changing them reruns nothing); every other key must be listed by
the stages that read it.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import json
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PACKAGE = "cmi"
REPO_ROOT = Path(__file__).resolve().parents[1]
# Libraries whose version can change a trained model or a score.
RESULT_LIBRARIES: tuple[str, ...] = (
    "numpy",
    "polars",
    "scipy",
    "scikit-learn",
    "lightgbm",
    "torch",
)

# params.yaml keys that cannot change any output, each with the evidence. Keep it short: a key
# belongs here only when a test or an argument shows results are identical for every value.
RESULT_NEUTRAL_PARAMS: dict[str, str] = {
    "lgbm.n_jobs": (
        "LightGBM runs with deterministic=True and force_col_wise=True: the same trees and "
        "predictions for 1, 2 or 4 threads (checked on 3,000 x 300 rows, 18 classes, bagging "
        "and feature_fraction on); only the model file's [num_threads] line differs"
    ),
    "orientation.n_jobs": "the same LightGBM settings as lgbm.n_jobs (cmi.orientation)",
    "torch.num_workers": (
        "DataLoader workers only slice batches the main process drew (order, modality "
        "dropout) from seeded generators; batch_size=None keeps the order"
    ),
    "torch.cpu_processes": (
        "each member trains alone in one process with one intra-op thread from its own "
        "seeds, whichever process runs it (cmi.nn.parallel); a test checks 1 vs 2 processes "
        "give byte-identical outputs"
    ),
}


def result_params(section: str, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (one params.yaml section) without its result-neutral keys: what a
    checkpoint fingerprint hashes, so that changing, e.g., torch.cpu_processes between a
    killed run and its rerun still resumes."""
    return {k: v for k, v in values.items() if f"{section}.{k}" not in RESULT_NEUTRAL_PARAMS}


# --------------------------------------------------------------------------------------------
# Imports, read from the source
# --------------------------------------------------------------------------------------------


def module_path(name: str, root: Path = REPO_ROOT) -> Path | None:
    """The file of module ``name`` under ``root`` (a package gives its ``__init__.py``)."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path, root: Path) -> tuple[str, bool]:
    """(dotted name, is_package) of a file under ``root``; ('__main__', False) elsewhere."""
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        return "__main__", False
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _resolve_relative(module: str | None, level: int, current: str, is_package: bool) -> str:
    package = current if is_package else current.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    if not package:
        raise ImportError(f"relative import beyond the top-level package in {current}")
    return f"{package}.{module}" if module else package


def imported_names(path: Path, root: Path = REPO_ROOT) -> set[str]:
    """Dotted names of the ``cmi`` modules (or attributes of them) ``path`` imports anywhere."""
    current, is_package = _module_name(path, root)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = (
                _resolve_relative(node.module, node.level, current, is_package)
                if node.level
                else node.module or ""
            )
            found.add(base)
            # `from cmi import x` imports the submodule cmi.x when there is one.
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call) and _is_import_module_call(node):
            found.add(node.args[0].value)  # type: ignore[attr-defined]
    return {name for name in found if name == PACKAGE or name.startswith(f"{PACKAGE}.")}


def _is_import_module_call(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return (
        name in ("import_module", "__import__")
        and bool(node.args)
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    )


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def reachable_modules(script: Path | str, root: Path = REPO_ROOT) -> dict[str, Path]:
    """Every ``cmi`` module ``script`` reaches, transitively: dotted name -> file.

    A name imported from a module that is not itself a module (``from cmi.io import
    write_json``) counts as its module. Conservative: imports inside functions and under
    ``if TYPE_CHECKING`` count too.
    """
    script = Path(script)
    if not script.is_absolute():
        script = root / script
    reached: dict[str, Path] = {}
    queue = [script]
    seen_files: set[Path] = set()
    while queue:
        path = queue.pop()
        if path in seen_files:
            continue
        seen_files.add(path)
        for name in imported_names(path, root):
            for module in _with_parents(name):
                file = module_path(module, root)
                if file is not None and module not in reached:
                    reached[module] = file
                    queue.append(file)
    return dict(sorted(reached.items()))


# --------------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------------


def fingerprint_files(script: Path | str, root: Path = REPO_ROOT) -> list[Path]:
    """The files whose content a stage's results depend on: the script and every ``cmi``
    module it reaches (sorted, absolute)."""
    script = Path(script)
    script = script if script.is_absolute() else root / script
    return sorted(
        {script.resolve(), *(p.resolve() for p in reachable_modules(script, root).values())}
    )


def library_versions(libraries: Iterable[str] = RESULT_LIBRARIES) -> dict[str, str]:
    """Installed versions (without importing the libraries), plus Python's."""
    versions = {"python": platform.python_version()}
    for name in libraries:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def code_fingerprint(
    script: Path | str,
    root: Path = REPO_ROOT,
    libraries: Iterable[str] = RESULT_LIBRARIES,
) -> dict[str, Any]:
    """JSON-ready: ``{"files": {relative path: sha256}, "versions": {library: version}}``.

    Put it in a checkpoint's fingerprint (e.g. as part of the params dict, or
    ``code_digest`` as the salt): any edit to the code the stage runs, or another library
    version, then gives another key.
    """
    files = {}
    for path in fingerprint_files(script, root):
        try:
            name = path.relative_to(root.resolve()).as_posix()
        except ValueError:
            name = path.as_posix()
        files[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"files": files, "versions": library_versions(libraries)}


def code_digest(script: Path | str, root: Path = REPO_ROOT, **kwargs: Any) -> str:
    """One hex string over ``code_fingerprint`` (for a salt or a log line)."""
    payload = json.dumps(code_fingerprint(script, root, **kwargs), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# dvc.yaml
# --------------------------------------------------------------------------------------------


def stage_script(command: str) -> str | None:
    """``stages/x.py`` from a stage's ``cmd`` (``python stages/x.py ...``), if it runs one."""
    for word in command.split():
        if word.endswith(".py"):
            return word
    return None


def missing_deps(script: str, deps: Iterable[str], root: Path = REPO_ROOT) -> list[str]:
    """The ``cmi`` files ``script`` reaches that no dep covers (a dir dep covers its files)."""
    covered = [Path(d).as_posix().rstrip("/") for d in deps]
    missing = []
    for path in fingerprint_files(script, root):
        rel = path.relative_to(root.resolve()).as_posix()
        if not any(rel == dep or rel.startswith(f"{dep}/") for dep in covered):
            missing.append(rel)
    return missing


def unreached_code_deps(script: str, deps: Iterable[str], root: Path = REPO_ROOT) -> list[str]:
    """``cmi`` deps the script never reaches: they rerun the stage for nothing (a dir dep is
    fine when it holds at least one reached file)."""
    reached = {p.relative_to(root.resolve()).as_posix() for p in fingerprint_files(script, root)}
    extra = []
    for dep in deps:
        dep = Path(dep).as_posix().rstrip("/")
        if not dep.startswith(f"{PACKAGE}/") and dep != PACKAGE:
            continue
        if not any(r == dep or r.startswith(f"{dep}/") for r in reached):
            extra.append(dep)
    return extra


def flatten_params(params: dict[str, Any]) -> list[str]:
    """``section.key`` for every key of params.yaml (values themselves are never split)."""
    keys = []
    for section, values in params.items():
        if isinstance(values, dict):
            keys.extend(f"{section}.{key}" for key in values)
        else:
            keys.append(section)
    return keys
