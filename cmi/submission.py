"""Local runs of the Kaggle submission, and the folder to upload as a Kaggle dataset.

``predict_file`` behaves like Kaggle's local gateway (``CMIGateway``): polars reads test.csv,
the sequence ids are shuffled, and ``cmi.inference.predict`` gets one sequence and that
subject's demographics row at a time; more than a few fallback answers abort the run.
``package_submission`` writes the dataset a Kaggle notebook attaches: the bundle, a wheel of
``cmi``, the notebook script (with the bundle's digest pinned in it) and a README.
"""

from __future__ import annotations

import logging
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from cmi import inference
from cmi.bundle import BundleError, load_bundle
from cmi.fallback import AnswerStats, FallbackLimit
from cmi.io import write_parquet, write_text
from cmi.schema import GESTURES

log = logging.getLogger(__name__)

NOTEBOOK_SCRIPT = "submission_notebook.py"
# The notebook's line that `cmi package` rewrites with the bundle's digest.
DIGEST_PIN_LINE = "PINNED_BUNDLE_DIGEST: str | None = None"
_GESTURE_SET = frozenset(GESTURES)
_PROGRESS_EVERY_S = 10.0


# --------------------------------------------------------------------------------------------
# cmi predict
# --------------------------------------------------------------------------------------------


def _read_inputs(test_csv: Path, demographics_csv: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    for path in (test_csv, demographics_csv):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: file not found")
    # Read exactly as the gateway does (polars' own dtype inference): a column that is empty
    # in its first rows arrives as strings, and inference has to cope with that.
    test = pl.read_csv(test_csv)
    demographics = pl.read_csv(demographics_csv)
    for frame, path, columns in (
        (test, test_csv, ("sequence_id", "subject")),
        (demographics, demographics_csv, ("subject",)),
    ):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}")
    if test.height == 0:
        raise ValueError(f"{test_csv}: no rows")
    nulls = test.get_column("sequence_id").null_count()
    if nulls:
        raise ValueError(f"{test_csv}: {nulls} row(s) without a sequence_id")
    return test, demographics


def gateway_batches(
    test: pl.DataFrame, demographics: pl.DataFrame, seed: int | None = None
) -> list[tuple[str, pl.DataFrame, pl.DataFrame]]:
    """(sequence_id, its rows, its subject's demographics) in the gateway's random order."""
    rng = random.Random(time.time() if seed is None else seed)
    by_id = test.partition_by("sequence_id", as_dict=True, maintain_order=True)
    ids = [key[0] for key in by_id]
    batches = []
    for sequence_id in rng.sample(ids, len(ids)):
        sequence = by_id[(sequence_id,)]
        subject = sequence.get_column("subject")[0]
        batches.append(
            (str(sequence_id), sequence, demographics.filter(pl.col("subject") == subject))
        )
    return batches


def predict_file(
    test_csv: Path,
    demographics_csv: Path,
    out: Path,
    bundle_dir: Path | None = None,
    seed: int | None = None,
    limit: FallbackLimit | None = None,
) -> pl.DataFrame:
    """Write ``out`` (submission.parquet: sequence_id, gesture) from ``test_csv``.

    The bundle (``bundle_dir``, else $MODEL_PATH, else models/bundle) is verified in full
    first: a bad bundle raises BundleError naming the bad file instead of predicting with a
    fallback. More fallback answers than ``limit`` allows raise TooManyFallbacksError, and
    nothing is written.
    """
    limit = limit or FallbackLimit()
    settings = inference.InferenceSettings.from_env(bundle_dir=bundle_dir)
    test, demographics = _read_inputs(Path(test_csv), Path(demographics_csv))
    predictor = inference.load(settings, strict=True)
    log.info("%s", predictor.describe())
    batches = gateway_batches(test, demographics, seed)
    log.info("%s: %d sequences, %d rows", test_csv, len(batches), test.height)

    ids, answers = [], []
    before = inference.answer_stats()
    started = last_report = time.perf_counter()
    for done, (sequence_id, sequence, demo) in enumerate(batches, start=1):
        answer = inference.predict(sequence, demo)
        if not isinstance(answer, str) or answer not in _GESTURE_SET:
            raise ValueError(f"sequence {sequence_id}: {answer!r} is not one of the 18 gestures")
        ids.append(sequence_id)
        answers.append(answer)
        limit.check(_since(before, inference.answer_stats()))
        now = time.perf_counter()
        if now - last_report >= _PROGRESS_EVERY_S or done == len(batches):
            last_report = now
            log.info(
                "%d/%d sequences, %.1f ms per sequence",
                done,
                len(batches),
                1000 * (now - started) / done,
            )
    log.info("%s", _since(before, inference.answer_stats()).describe())
    submission = pl.DataFrame(
        {"sequence_id": ids, "gesture": answers},
        schema={"sequence_id": pl.String, "gesture": pl.String},
    )
    write_parquet(submission, Path(out))
    log.info("wrote %s (%d rows)", out, submission.height)
    return submission


def _since(before: AnswerStats, now: AnswerStats) -> AnswerStats:
    """The answers of this run only (the counter is per process)."""
    return AnswerStats(
        calls=now.calls - before.calls,
        fallbacks=now.fallbacks - before.fallbacks,
        torch_failures=now.torch_failures - before.torch_failures,
        postprocessed=now.postprocessed - before.postprocessed,
        postprocess_changed=now.postprocess_changed - before.postprocess_changed,
        postprocess_failures=now.postprocess_failures - before.postprocess_failures,
        last_error=(
            now.last_error
            if now.fallbacks > before.fallbacks
            or now.postprocess_failures > before.postprocess_failures
            else None
        ),
    )


# --------------------------------------------------------------------------------------------
# cmi package
# --------------------------------------------------------------------------------------------


def source_root() -> Path:
    """The checkout that holds pyproject.toml and kaggle/ (package needs the source tree)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file() or not (root / "kaggle" / NOTEBOOK_SCRIPT).is_file():
        raise FileNotFoundError(
            f"{root}: not a cmi source checkout (no pyproject.toml or kaggle/{NOTEBOOK_SCRIPT}); "
            "run `cmi package` from a checkout with the package installed in editable mode"
        )
    return root


def pull_bundle(bundle_dir: Path) -> None:
    """``dvc pull`` the bundle into the workspace (the current directory's DVC repo)."""
    try:
        import dvc  # noqa: F401  # only to know whether `python -m dvc` can work

        command = [sys.executable, "-m", "dvc", "pull", str(bundle_dir)]
    except ImportError:
        dvc_exe = shutil.which("dvc")
        if dvc_exe is None:
            raise FileNotFoundError(
                f"{bundle_dir}: bundle not found and DVC is not installed to pull it; install "
                "`cmi[pipeline]` and configure the remote, or build it with `dvc repro bundle`"
            ) from None
        command = [dvc_exe, "pull", str(bundle_dir)]
    log.info("%s not in the workspace: %s", bundle_dir, " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not Path(bundle_dir).is_dir():
        tail = (result.stderr or result.stdout).strip()[-2000:]
        raise FileNotFoundError(
            f"{bundle_dir}: bundle not found and `dvc pull {bundle_dir}` failed "
            f"(exit {result.returncode}); check the DVC remote, or build it with "
            f"`dvc repro bundle`.\n{tail}"
        )


def build_wheel(root: Path, out_dir: Path) -> Path:
    """A wheel of ``cmi`` built offline from a clean copy of the source (the checkout is left
    untouched: no build/ or egg-info appears there)."""
    out_dir = Path(out_dir).resolve()  # pip runs in the temp dir
    with tempfile.TemporaryDirectory(prefix="cmi-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        shutil.copy2(root / "pyproject.toml", src / "pyproject.toml")
        readme = root / "README.md"
        if readme.is_file():
            shutil.copy2(readme, src / "README.md")
        else:  # pyproject names a readme; the wheel only needs it to exist
            (src / "README.md").write_text("cmi\n", encoding="utf-8")
        shutil.copytree(
            root / "cmi", src / "cmi", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        command = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            str(src),
            "-w",
            str(out_dir),
        ]
        result = subprocess.run(command, capture_output=True, text=True, cwd=tmp)
        if result.returncode != 0:
            raise RuntimeError(f"building the cmi wheel failed:\n{result.stderr[-3000:]}")
    wheels = sorted(Path(out_dir).glob("cmi-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one cmi wheel in {out_dir}, found {wheels}")
    return wheels[0]


def pin_digest(notebook: str, digest: str) -> str:
    """The notebook script with the bundle's digest pinned: it refuses any other bundle."""
    if notebook.count(DIGEST_PIN_LINE) != 1:
        raise ValueError(
            f"kaggle/{NOTEBOOK_SCRIPT}: expected exactly one line {DIGEST_PIN_LINE!r} to pin "
            "the bundle digest in"
        )
    return notebook.replace(DIGEST_PIN_LINE, f"PINNED_BUNDLE_DIGEST: str | None = {digest!r}")


def _readme(bundle_manifest: dict, wheel: Path, digest: str) -> str:
    versions = bundle_manifest.get("versions", {})
    has_torch = bool(bundle_manifest.get("torch"))
    postprocess = (bundle_manifest.get("postprocess") or {}).get("method", "none")
    return f"""# CMI submission dataset

Upload this folder as a Kaggle dataset, attach it (and the competition data) to a notebook
with internet off, and run `{NOTEBOOK_SCRIPT}` in it (paste it into a cell, or
`%run /kaggle/input/<this dataset>/{NOTEBOOK_SCRIPT}`).

- `bundle/`: the verified model bundle (LightGBM{" + Torch" if has_torch else " only"}),
  built with cmi {versions.get("cmi", "?")}, lightgbm {versions.get("lightgbm", "?")},
  torch {versions.get("torch", "?")}; `manifest.json` lists every file with its sha256
  and is sealed: its digest is `{digest}`.
- `wheels/{wheel.name}`: the `cmi` package (pure Python). The notebook unpacks it and puts
  it first on `sys.path`; numpy, polars, lightgbm, torch and safetensors come from the
  Kaggle image.
- `{NOTEBOOK_SCRIPT}`: finds the wheel and the bundle under /kaggle/input, loads the bundle
  at start and refuses one whose digest is not the one pinned in it (`{digest}`), runs the
  full ensemble strictly on a public test sequence (a broken bundle or feature path fails
  there, loudly), then serves `cmi.inference.predict` through
  `kaggle_evaluation.cmi_inference_server`, aborting if more than a few answers are
  fallbacks.

Subject-level post-processing: `{postprocess}` (the bundle's `postprocess.method`;
`SUBJECT_POSTPROCESS` overrides it).

Settings (environment variables, optional): MODEL_PATH, TORCH_BUNDLE_PATH, ENSEMBLE_W_LGBM,
ENSEMBLE_W_TORCH, LOAD_TORCH_FOLDS_IN_MEMORY, FAIL_IF_TORCH_MISSING, SUBJECT_POSTPROCESS (see
cmi/inference_settings.py).
"""


def package_submission(out: Path, bundle_dir: Path = Path("models/bundle")) -> Path:
    """Write ``out``: bundle/, wheels/cmi-*.whl, the notebook script and a README.

    The bundle is pulled from the DVC remote if it is not in the workspace, and verified
    (BundleError names a bad file) before anything is written. Its digest is pinned in the
    notebook script, which then refuses any other bundle.
    """
    from cmi.bundle.builder import swap_directory  # packaging, like building, is not Kaggle-side

    out, bundle_dir = Path(out), Path(bundle_dir)
    root = source_root()
    if not bundle_dir.exists():
        pull_bundle(bundle_dir)
    bundle = load_bundle(bundle_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        shutil.copytree(bundle_dir, staging / "bundle")
        # The copy is what ships: verify it too, and that it is the same bundle.
        load_bundle(staging / "bundle", expected_digest=bundle.digest)
        (staging / "wheels").mkdir()
        wheel = build_wheel(root, staging / "wheels")
        notebook = (root / "kaggle" / NOTEBOOK_SCRIPT).read_text(encoding="utf-8")
        write_text(pin_digest(notebook, bundle.digest), staging / NOTEBOOK_SCRIPT)
        write_text(_readme(bundle.manifest, wheel, bundle.digest), staging / "README.md")
        swap_directory(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    log.info(
        "wrote %s: bundle (digest %s), %s, %s, README.md",
        out,
        bundle.digest,
        wheel.name,
        NOTEBOOK_SCRIPT,
    )
    return out


__all__ = [
    "BundleError",
    "build_wheel",
    "gateway_batches",
    "package_submission",
    "pin_digest",
    "predict_file",
    "pull_bundle",
]
