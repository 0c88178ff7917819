"""Kaggle notebook for "CMI - Detect Behavior with Sensor Data": serve cmi.inference.predict.

Attach two inputs to a notebook with internet off: the competition data, and the dataset
written by `cmi package` (bundle/, wheels/cmi-*.whl, this script). Paste this file into a
cell, or run `%run /kaggle/input/<dataset>/submission_notebook.py`.

What it does, in order:
1. finds the `cmi` wheel under /kaggle/input, unpacks it (pure Python, no pip, no network)
   and puts it first on sys.path; numpy, polars, lightgbm, torch, safetensors come from the
   Kaggle image;
2. points MODEL_PATH at the bundle it finds (unless MODEL_PATH is already set);
3. loads and verifies the bundle right away, strictly (a declared Torch part that does not
   load is an error, not a silent LightGBM-only run), and refuses a bundle whose sealed
   digest is not PINNED_BUNDLE_DIGEST (written here by `cmi package`); so a broken or wrong
   bundle fails seconds after start, well inside the 15-minute startup limit;
4. warms up: the full ensemble runs strictly (raising, unlike `predict`) on the first public
   test sequence as recorded and in its IMU-only view, and so does the subject-level
   post-processing (on a scratch memory), so a bug that real input triggers fails here
   instead of turning every answer into the fallback gesture;
5. imports `kaggle_evaluation.cmi_inference_server` from the competition folder, builds
   `CMIInferenceServer(predict)` and calls `serve()` when KAGGLE_IS_COMPETITION_RERUN is set,
   else `run_local_gateway` on the competition's public test files (which writes
   submission.parquet). The `predict` served counts its fallback answers and raises once more
   than a few are fallbacks (FallbackLimit), which stops the run before `serve()` finishes:
   a failed submission instead of a silently bad one. Without kaggle_evaluation,
   `cmi.submission.predict_file` runs the same loop, with the same limit.

CMI_KAGGLE_INPUT and CMI_KAGGLE_WORK override /kaggle/input and /kaggle/working (tests).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

COMPETITION = "cmi-detect-behavior-with-sensor-data"
SERVER_MODULE = "kaggle_evaluation.cmi_inference_server"
MAX_DEPTH = 4  # /kaggle/input/<dataset>[/<version>]/bundle/manifest.json
# `cmi package` replaces None by the digest of the bundle it packaged ("sha256:..."); the
# notebook then refuses any other bundle. None (this source file) checks nothing.
PINNED_BUNDLE_DIGEST: str | None = None

log = logging.getLogger("cmi.kaggle")


def input_root() -> Path:
    return Path(os.environ.get("CMI_KAGGLE_INPUT", "/kaggle/input"))


def work_dir() -> Path:
    return Path(os.environ.get("CMI_KAGGLE_WORK", "/kaggle/working"))


def _dirs(root: Path, depth: int = MAX_DEPTH) -> Iterator[Path]:
    """``root`` and its subfolders down to ``depth``, in a stable order."""
    if not root.is_dir():
        return
    yield root
    if depth == 0:
        return
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        yield from _dirs(child, depth - 1)


def find_wheel(root: Path) -> Path | None:
    wheels = sorted(w for d in _dirs(root) for w in d.glob("cmi-*.whl"))
    return wheels[-1] if wheels else None


def _is_bundle(folder: Path) -> bool:
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("format") == "cmi-bundle"
    except (ValueError, OSError):
        return False


def find_bundle(root: Path) -> Path | None:
    return next((d for d in _dirs(root) if _is_bundle(d)), None)


def find_competition_dir(root: Path) -> Path | None:
    """The competition folder: kaggle_evaluation/ (when Kaggle ships it) and the test files."""
    preferred = root / COMPETITION
    candidates = [preferred, *(d for d in _dirs(root, 2) if d != preferred)]
    for marker in ("kaggle_evaluation/cmi_inference_server.py", "test_demographics.csv"):
        for folder in candidates:
            if (folder / marker).is_file():
                return folder
    return None


def install_wheel(wheel: Path, target_parent: Path) -> Path:
    """Unpack ``wheel`` and import ``cmi`` from it ahead of anything else on sys.path."""
    target = target_parent / "cmi_wheel"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    sys.path.insert(0, str(target))
    for name in [m for m in sys.modules if m == "cmi" or m.startswith("cmi.")]:
        del sys.modules[name]  # a cmi imported before this point must not shadow the wheel
    log.info("cmi from %s", wheel)
    return target


def warm_up(inference, competition: Path | None) -> None:
    """The full ensemble, strictly, on the first public test sequence (read as the gateway
    reads it), or on a synthetic one in the same layout; raises on any problem."""
    sequence = demographics = None
    if competition is not None and (competition / "test.csv").is_file():
        import polars as pl

        test = pl.read_csv(competition / "test.csv")
        demographics = pl.read_csv(competition / "test_demographics.csv")
        sequence = test.filter(pl.col("sequence_id") == test["sequence_id"][0])
        demographics = demographics.filter(pl.col("subject") == sequence["subject"][0])
    else:
        log.warning("no public test.csv: warming up on a synthetic sequence")
    report = inference.warm_up(sequence, demographics)
    log.info(
        "warm-up: %s (Torch %s, post-processing %s) in %.2fs",
        report.answers,
        "on" if report.uses_torch else "off",
        report.postprocess,
        report.seconds,
    )


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    started = time.perf_counter()
    root = input_root()
    wheel = find_wheel(root)
    if wheel is not None:
        install_wheel(wheel, work_dir())
    else:
        log.warning("no cmi-*.whl under %s: using whatever cmi is installed", root)
    if not os.environ.get("MODEL_PATH"):
        bundle = find_bundle(root)
        if bundle is None:
            raise SystemExit(f"no cmi bundle (manifest.json) under {root}: attach the dataset")
        os.environ["MODEL_PATH"] = str(bundle)

    import torch

    torch.set_num_threads(1)  # one sequence per call: tiny tensors, no use for a thread pool

    from cmi import inference

    if PINNED_BUNDLE_DIGEST:
        os.environ["BUNDLE_DIGEST"] = PINNED_BUNDLE_DIGEST
    # Verifies the seal, the pinned digest and every checksum; raises on a broken bundle.
    predictor = inference.load(strict=True)
    log.info(
        "%s, digest %s (cmi from %s)",
        predictor.describe(),
        predictor.bundle.digest,
        Path(inference.__file__).parent,
    )
    competition = find_competition_dir(root)
    warm_up(inference, competition)
    inference.reset_answer_stats()
    log.info("ready after %.1fs", time.perf_counter() - started)

    if competition is None:
        raise SystemExit(f"no {COMPETITION} folder under {root}: attach the competition data")
    data_paths = (str(competition / "test.csv"), str(competition / "test_demographics.csv"))
    if not (competition / "kaggle_evaluation" / "cmi_inference_server.py").is_file():
        # Outside Kaggle's evaluation setup: the same loop, run by cmi itself.
        from cmi.submission import predict_file

        log.warning("no kaggle_evaluation in %s: predicting with cmi's own gateway", competition)
        predict_file(Path(data_paths[0]), Path(data_paths[1]), Path("submission.parquet"))
        return
    sys.path.insert(0, str(competition))
    server_module = importlib.import_module(SERVER_MODULE)
    # Named `predict` like the function it wraps: the server routes calls by that name.
    server = server_module.CMIInferenceServer(inference.guard_fallbacks(inference.predict))
    if os.getenv("KAGGLE_IS_COMPETITION_RERUN"):
        server.serve()
    else:
        server.run_local_gateway(data_paths=data_paths)
    stats = inference.answer_stats()
    log.info("%s", stats.describe())
    inference.FallbackLimit().check(stats)


if __name__ == "__main__":
    main()
