"""The DVC workflow end to end, with real `dvc` commands, on tiny synthetic data.

One temporary git repository holds a copy of this project's files (params shrunk for tiny data,
the DVC remote pointed at a temp folder). The tests run in file order and build on each other:
repro, push / fresh clone / pull / predict, an S3 round trip against a local moto server,
`dvc exp run` touching only the blend, and SIGKILL + resume through `dvc repro` and `dvc exp run`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
import yaml
from pipeline_helpers import REPO_ROOT, tiny_params

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
STAGES = ("extract", "folds", "lgbm", "torch", "orientation", "oof_blend", "bundle")


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.update({"DVC_NO_ANALYTICS": "1", "PYTHONHASHSEED": "0", **extra})
    return env


def run(cmd: list[str], cwd: Path, *, check: bool = True, timeout: float = 900, **env: str):
    result = subprocess.run(
        cmd, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({result.returncode}) in {cwd}\n"
            f"stdout:\n{result.stdout[-6000:]}\nstderr:\n{result.stderr[-6000:]}"
        )
    return result


def dvc(repo: Path, *args: str, check: bool = True, **env: str) -> str:
    result = run([str(BIN / "dvc"), *args], repo, check=check, **env)
    return result.stdout + result.stderr


def git(repo: Path, *args: str) -> str:
    return run(["git", *args], repo).stdout


def stages_run(log: str) -> set[str]:
    return {s for s in STAGES if f"Running stage '{s}'" in log}


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def project_files() -> list[str]:
    """What a clean clone of this project holds: tracked and untracked-but-not-ignored files."""
    out = run(["git", "ls-files", "-co", "--exclude-standard"], REPO_ROOT).stdout
    return [line for line in out.splitlines() if line and (REPO_ROOT / line).is_file()]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dvc_e2e")


@pytest.fixture(scope="module")
def repo(workdir: Path, tiny_raw_dir: Path) -> Path:
    root = workdir / "repo"
    for name in project_files():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target)
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "e2e@example.org")
    git(root, "config", "user.name", "e2e")
    dvc(root, "remote", "modify", "local", "url", str(workdir / "remote"))
    git(root, "add", "-A")
    git(root, "commit", "-qm", "project")
    shutil.copytree(tiny_raw_dir, root / "data" / "raw")
    dvc(root, "add", "data/raw")
    git(root, "add", "data/raw.dvc", "data/.gitignore")
    git(root, "commit", "-qm", "raw data tracked by DVC")
    return root


def predict(repo: Path, out: str) -> pl.DataFrame:
    run(
        [
            str(BIN / "cmi"),
            "predict",
            "--test",
            str(repo / "data/raw/test.csv"),
            "--demographics",
            str(repo / "data/raw/test_demographics.csv"),
            "--out",
            out,
            "--bundle",
            "models/bundle",
            "--seed",
            "0",
        ],
        repo,
    )
    return pl.read_parquet(repo / out).sort("sequence_id")


def test_repro_runs_every_stage_then_nothing(repo: Path) -> None:
    log = dvc(repo, "repro")
    assert stages_run(log) == set(STAGES), log
    for path in ("models/bundle/manifest.json", "metrics/blend.json", "data/oof/torch.parquet"):
        assert (repo / path).exists(), path
    again = dvc(repo, "repro")
    assert stages_run(again) == set(), again
    assert "up to date" in again
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "repro on tiny data")


def test_push_fresh_clone_pull_bundle_predicts_the_same(repo: Path, workdir: Path) -> None:
    dvc(repo, "push")
    clone = workdir / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], workdir)
    dvc(clone, "pull", "bundle")
    assert tree_digest(clone / "models/bundle") == tree_digest(repo / "models/bundle")
    shutil.copytree(repo / "data/raw", clone / "data/raw")
    original = predict(repo, "submission.parquet")
    cloned = predict(clone, "submission.parquet")
    assert original.height == pl.read_csv(repo / "data/raw/test.csv")["sequence_id"].n_unique()
    assert original.equals(cloned)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_for_port(port)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


def _wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"moto server did not start on port {port}")


S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def test_s3_remote_round_trip(repo: Path, workdir: Path, s3_endpoint: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint, **_boto_kwargs()).create_bucket(Bucket="cmi")
    dvc(repo, "remote", "add", "s3store", "s3://cmi/store")
    dvc(repo, "remote", "modify", "s3store", "endpointurl", s3_endpoint)
    assert "testing" not in (repo / ".dvc/config").read_text()
    git(repo, "add", ".dvc/config")
    git(repo, "commit", "-qm", "S3 remote (credentials from the environment)")
    dvc(repo, "push", "-r", "s3store", **S3_CREDENTIALS)
    clone = workdir / "clone_s3"
    run(["git", "clone", "-q", str(repo), str(clone)], workdir)
    dvc(clone, "pull", "-r", "s3store", "bundle", **S3_CREDENTIALS)
    assert tree_digest(clone / "models/bundle") == tree_digest(repo / "models/bundle")


def _boto_kwargs() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_CREDENTIALS["AWS_DEFAULT_REGION"],
    }


def test_exp_run_reruns_only_blend_and_bundle(repo: Path) -> None:
    log = dvc(repo, "exp", "run", "-n", "wtorch07", "-S", "ensemble.w_torch=0.7")
    assert stages_run(log) == {"oof_blend", "bundle"}, log
    shown = dvc(repo, "exp", "show", "--csv")
    header = shown.splitlines()[0]
    columns = header.split(",")
    assert "ensemble.w_torch" in columns, header
    # The leaderboard-like views of every model (issue 9): lgbm and torch from their stage
    # metrics, the blend (and both models again, aligned) from blend.json.
    for view in ("full", "imu_only", "test_like"):
        for column in (
            f"dvclive/lgbm/metrics.json:{view}.score",
            f"metrics/torch.json:{view}.score",
            f"blend.{view}.score",
            f"blend.{view}.binary_f1",
            f"blend.{view}.macro_f1",
        ):
            assert column in columns, (column, header)
    assert "wtorch07" in shown
    diff = dvc(repo, "metrics", "diff", "HEAD")
    assert "blend.json" in diff


def test_exp_run_postprocess_method_rebuilds_only_the_bundle(repo: Path) -> None:
    # oof_blend replays every post-processing method, so only the bundle reads the choice.
    log = dvc(repo, "exp", "run", "-n", "ppnone", "-S", "postprocess.method=none")
    assert stages_run(log) == {"bundle"}, log
    manifest = json.loads((repo / "models/bundle/manifest.json").read_text())
    assert manifest["postprocess"]["method"] == "none"


def test_queued_experiments_run_in_parallel(repo: Path) -> None:
    for weight in ("0.3", "0.5"):
        dvc(
            repo,
            "exp",
            "run",
            "--queue",
            "-n",
            f"w{weight[-1]}",
            "-S",
            f"ensemble.w_torch={weight}",
        )
    dvc(repo, "queue", "start", "-j", "2")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = dvc(repo, "queue", "status")
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    assert "Failed" not in status, status + dvc(repo, "queue", "logs", "w3", check=False)
    shown = dvc(repo, "exp", "show", "--csv")
    assert "w3" in shown and "w5" in shown, shown


def _kill_during_torch_epoch(cmd: list[str], repo: Path, fold_dir: str) -> str:
    """Start ``cmd`` (a dvc command), SIGKILL its whole process group once the torch stage has
    written an epoch checkpoint of ``fold_dir``; return what it printed."""
    proc = subprocess.Popen(
        cmd,
        cwd=repo,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            # last.pt is written after each finished epoch of a fold still in training.
            if list((repo / "checkpoints" / "torch").glob(f"*/{fold_dir}/last.pt")):
                break
            if proc.poll() is not None:
                raise AssertionError(f"finished before the kill:\n{proc.stdout.read()}")
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        out, _ = proc.communicate(timeout=60)
    return out


def test_sigkill_dvc_repro_during_torch_then_resume(repo: Path) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["torch"]["seed"] = 7  # a new fingerprint: no finished checkpoint to reuse
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _kill_during_torch_epoch([str(BIN / "dvc"), "repro"], repo, "fold_1")
    log = dvc(repo, "repro")
    assert "fold 1: resuming from epoch" in log, log
    assert stages_run(log) == {"torch", "oof_blend", "bundle"}, log
    resumed = tree_digest(repo / "models/torch")
    resumed_oof = pl.read_parquet(repo / "data/oof/torch.parquet")
    shutil.rmtree(repo / "checkpoints" / "torch")
    dvc(repo, "repro", "--force", "torch")
    assert tree_digest(repo / "models/torch") == resumed
    assert pl.read_parquet(repo / "data/oof/torch.parquet").equals(resumed_oof)


def test_sigkill_dvc_exp_run_during_torch_then_resume(repo: Path) -> None:
    cmd = [str(BIN / "dvc"), "exp", "run", "-S", "torch.seed=11"]
    _kill_during_torch_epoch(cmd, repo, "fold_1")
    log = dvc(repo, "exp", "run", "-S", "torch.seed=11")
    assert "fold 1: resuming from epoch" in log, log
    assert "torch" in stages_run(log)
    assert (repo / "models/bundle/manifest.json").exists()
