"""cmi.submission (cmi predict / cmi package) and the Kaggle notebook script.

The public test files are the synthetic ones (``tiny_raw_dir``) unless a test takes the
``real_sample`` fixture; those skip on a clone without ../shared."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from test_bundle import build_fake_bundle

from cmi import inference
from cmi.bundle import BundleError, load_bundle
from cmi.cli import main as cli_main
from cmi.schema import GESTURES
from cmi.submission import gateway_batches, package_submission, pin_digest, predict_file

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO_ROOT / "kaggle" / "submission_notebook.py"
ENV_VARS = (
    "MODEL_PATH",
    "TORCH_BUNDLE_PATH",
    "ENSEMBLE_W_LGBM",
    "ENSEMBLE_W_TORCH",
    "LOAD_TORCH_FOLDS_IN_MEMORY",
    "FAIL_IF_TORCH_MISSING",
    "KAGGLE_IS_COMPETITION_RERUN",
    "BUNDLE_DIGEST",
)

# A stand-in for Kaggle's evaluation package: records what the notebook does with it and
# runs a gateway that behaves like CMIGateway (polars read, random order, str check).
FAKE_SERVER = textwrap.dedent(
    """
    import importlib.util
    import json
    import os
    import random
    import sys

    import polars as pl

    GESTURES = set(json.loads(os.environ["FAKE_KAGGLE_GESTURES"]))


    def _record(event, **info):
        with open(os.environ["FAKE_KAGGLE_RECORD"], "a") as handle:
            handle.write(json.dumps({"event": event, **info}) + "\\n")


    class CMIInferenceServer:
        def __init__(self, predict):
            self.predict = predict
            _record(
                "init",
                predict=f"{predict.__module__}.{predict.__name__}",
                guarded=hasattr(predict, "__wrapped__"),
                cmi_file=sys.modules["cmi"].__file__,
                dvc_importable=importlib.util.find_spec("dvc") is not None,
            )

        def serve(self):
            _record("serve")

        def run_local_gateway(self, data_paths=None):
            _record("run_local_gateway", data_paths=list(data_paths))
            test = pl.read_csv(data_paths[0])
            demos = pl.read_csv(data_paths[1])
            ids = list(test["sequence_id"].unique())
            if os.environ.get("FAKE_KAGGLE_BREAK"):  # input that makes every answer fail
                ids = ids * 3
            rows = []
            for seq_id in random.sample(ids, len(ids)):
                sequence = test.filter(pl.col("sequence_id") == seq_id)
                demo = demos.filter(pl.col("subject") == sequence["subject"][0])
                if os.environ.get("FAKE_KAGGLE_BREAK"):
                    sequence = sequence.head(0)
                answer = self.predict(sequence, demo)
                if not isinstance(answer, str) or answer not in GESTURES:
                    raise ValueError(f"bad prediction {answer!r}")
                rows.append({"sequence_id": seq_id, "gesture": answer})
            pl.DataFrame(rows).write_parquet("submission.parquet")
            _record("done", n=len(rows))
    """
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    inference.reset_cache()
    yield
    inference.reset_cache()


@pytest.fixture(scope="module")
def fake_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("fake_bundle"))


@pytest.fixture(scope="module")
def dataset(fake_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder `cmi package` writes (read-only)."""
    return package_submission(tmp_path_factory.mktemp("package") / "submission", fake_bundle)


@pytest.fixture(scope="module")
def public_test(tiny_raw_dir: Path) -> Path:
    """A folder with test.csv and test_demographics.csv (synthetic, half IMU-only)."""
    return tiny_raw_dir


def _test_ids(folder: Path) -> list[str]:
    return sorted(pl.read_csv(folder / "test.csv")["sequence_id"].unique())


def _kaggle_input(root: Path, dataset: Path, public_test: Path) -> Path:
    """/kaggle/input with the competition folder (fake kaggle_evaluation) and our dataset."""
    competition = root / "input" / "cmi-detect-behavior-with-sensor-data"
    (competition / "kaggle_evaluation").mkdir(parents=True)
    (competition / "kaggle_evaluation" / "__init__.py").write_text("")
    (competition / "kaggle_evaluation" / "cmi_inference_server.py").write_text(FAKE_SERVER)
    for name in ("test.csv", "test_demographics.csv"):
        shutil.copy(public_test / name, competition / name)
    shutil.copytree(dataset, root / "input" / "cmi-submission")
    (root / "working").mkdir()
    return root / "input"


def _run_notebook(
    python: str, input_root: Path, rerun: bool, *, ok: bool = True, **extra_env: str
) -> tuple[list[dict], Path]:
    work = input_root.parent / "working"
    record = input_root.parent / f"record-{rerun}.jsonl"
    record.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in (*ENV_VARS, "PYTHONPATH")}
    env.update(
        CMI_KAGGLE_INPUT=str(input_root),
        CMI_KAGGLE_WORK=str(work),
        FAKE_KAGGLE_RECORD=str(record),
        FAKE_KAGGLE_GESTURES=json.dumps(list(GESTURES)),
    )
    if rerun:
        env["KAGGLE_IS_COMPETITION_RERUN"] = "1"
    env.update(extra_env)
    script = input_root / "cmi-submission" / "submission_notebook.py"
    result = subprocess.run(
        [python, str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert (result.returncode == 0) == ok, result.stderr[-4000:]
    lines = record.read_text().splitlines() if record.exists() else []
    (work / "notebook.log").write_text(result.stderr)
    return [json.loads(line) for line in lines], work


# ------------------------------------------------------------------------------ cmi predict


def test_gateway_batches_shuffle_like_kaggle() -> None:
    test = pl.DataFrame(
        {
            "sequence_id": [f"S{i % 7}" for i in range(30)],
            "sequence_counter": list(range(30)),
            "subject": [f"P{i % 7 % 3}" for i in range(30)],
        }
    )
    demographics = pl.DataFrame({"subject": ["P0", "P1"], "age": [10, 20]})
    batches = gateway_batches(test, demographics, seed=1)
    assert sorted(b[0] for b in batches) == [f"S{i}" for i in range(7)]
    assert [b[0] for b in batches] == [b[0] for b in gateway_batches(test, demographics, seed=1)]
    assert [b[0] for b in batches] != [b[0] for b in gateway_batches(test, demographics, seed=2)]
    for sequence_id, rows, demo in batches:
        assert set(rows["sequence_id"]) == {sequence_id}
        assert rows["sequence_counter"].is_sorted()
        expected = rows["subject"][0]
        assert demo["subject"].to_list() == ([expected] if expected != "P2" else [])


@pytest.fixture(params=["synthetic", pytest.param("real", marks=pytest.mark.real_sample)])
def any_public_test(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue("public_test" if request.param == "synthetic" else "real_sample")


def test_cmi_predict_writes_a_valid_submission(
    fake_bundle: Path, tmp_path: Path, any_public_test: Path
) -> None:
    out = tmp_path / "submission.parquet"
    code = cli_main(
        [
            "predict",
            "--test",
            str(any_public_test / "test.csv"),
            "--demographics",
            str(any_public_test / "test_demographics.csv"),
            "--out",
            str(out),
            "--bundle",
            str(fake_bundle),
            "--seed",
            "0",
        ]
    )
    assert code == 0
    submission = pl.read_parquet(out)
    assert submission.columns == ["sequence_id", "gesture"]
    assert sorted(submission["sequence_id"]) == _test_ids(any_public_test)
    assert set(submission["gesture"]) <= set(GESTURES)
    # The same answers as calling predict directly.
    test = pl.read_csv(any_public_test / "test.csv")
    demographics = pl.read_csv(any_public_test / "test_demographics.csv")
    for sequence_id, gesture in submission.iter_rows():
        sequence = test.filter(pl.col("sequence_id") == sequence_id)
        demo = demographics.filter(pl.col("subject") == sequence["subject"][0])
        assert inference.predict(sequence, demo) == gesture


def test_cmi_predict_fails_on_a_bad_bundle(
    fake_bundle: Path, tmp_path: Path, capsys, public_test: Path
) -> None:
    bundle = Path(shutil.copytree(fake_bundle, tmp_path / "bundle"))
    weights = bundle / "torch" / "fold_0.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"evil")
    out = tmp_path / "submission.parquet"
    args = [
        "predict",
        "--test",
        str(public_test / "test.csv"),
        "--demographics",
        str(public_test / "test_demographics.csv"),
        "--out",
        str(out),
        "--bundle",
        str(bundle),
    ]
    assert cli_main(args) == 2
    assert "torch/fold_0.safetensors: checksum mismatch" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(BundleError, match="bundle directory not found"):
        predict_file(
            public_test / "test.csv", public_test / "test_demographics.csv", out, tmp_path / "x"
        )


def test_cmi_predict_aborts_when_answers_fall_back(
    fake_bundle: Path, tmp_path: Path, public_test: Path, monkeypatch, capsys
) -> None:
    """A bug that real input triggers: every answer would be the fallback. Abort, write nothing."""

    from cmi.predictor import Predictor

    def broken(predictor, features):
        raise RuntimeError("a bug only real input triggers")

    monkeypatch.setattr(Predictor, "ensemble_proba", broken)
    out = tmp_path / "submission.parquet"
    args = ["predict", "--test", str(public_test / "test.csv"), "--demographics"]
    args += [str(public_test / "test_demographics.csv"), "--out", str(out)]
    assert cli_main([*args, "--bundle", str(fake_bundle)]) == 2
    err = capsys.readouterr().err
    assert "aborting: 3 fallback(s) in 3 answer(s)" in err, err
    assert "a bug only real input triggers" in err
    assert not out.exists()


# ------------------------------------------------------------------------------ cmi package


def test_package_writes_an_uploadable_folder(dataset: Path) -> None:
    assert sorted(p.name for p in dataset.iterdir()) == [
        "README.md",
        "bundle",
        "submission_notebook.py",
        "wheels",
    ]
    assert load_bundle(dataset / "bundle").has_torch
    (wheel,) = (dataset / "wheels").glob("cmi-*-py3-none-any.whl")
    assert (
        "inference.py"
        in subprocess.run(
            [sys.executable, "-m", "zipfile", "-l", str(wheel)], capture_output=True, text=True
        ).stdout
    )
    digest = load_bundle(dataset / "bundle").digest
    pinned = (dataset / "submission_notebook.py").read_text()
    assert pinned == pin_digest(NOTEBOOK.read_text(), digest)
    assert f"PINNED_BUNDLE_DIGEST: str | None = {digest!r}" in pinned
    assert digest in (dataset / "README.md").read_text()
    assert not (REPO_ROOT / "build").exists()  # the wheel was built from a copy


def test_package_without_bundle_or_dvc_remote_says_so(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # not a DVC repo: the pull must fail, clearly
    with pytest.raises(FileNotFoundError, match=r"dvc pull models/bundle\` failed"):
        package_submission(tmp_path / "out", Path("models/bundle"))
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ notebook


def test_notebook_serves_predict_through_kaggle_evaluation(
    dataset: Path, tmp_path: Path, public_test: Path
) -> None:
    input_root = _kaggle_input(tmp_path, dataset, public_test)
    events, work = _run_notebook(sys.executable, input_root, rerun=False)
    init, gateway, done = events
    assert init["event"] == "init" and init["predict"] == "cmi.inference.predict"
    assert init["guarded"]  # predict wrapped by guard_fallbacks
    log = (work / "notebook.log").read_text()
    assert "warm-up: {'full': " in log and "(Torch on, post-processing assignment)" in log
    assert "post-processing chose 20" in log  # stateful predict on the served sequences
    assert load_bundle(dataset / "bundle").digest in log
    # cmi came from the dataset's wheel, not from this checkout.
    assert Path(init["cmi_file"]).is_relative_to(work / "cmi_wheel")
    competition = input_root / "cmi-detect-behavior-with-sensor-data"
    assert gateway == {
        "event": "run_local_gateway",
        "data_paths": [str(competition / "test.csv"), str(competition / "test_demographics.csv")],
    }
    assert done == {"event": "done", "n": len(_test_ids(public_test))}
    submission = pl.read_parquet(work / "submission.parquet")
    assert set(submission["gesture"]) <= set(GESTURES)

    events, _ = _run_notebook(sys.executable, input_root, rerun=True)
    assert [e["event"] for e in events] == ["init", "serve"]


def test_notebook_aborts_when_answers_fall_back(
    dataset: Path, tmp_path: Path, public_test: Path
) -> None:
    """Input that makes every answer fail: the run stops inside the gateway, no submission."""
    input_root = _kaggle_input(tmp_path, dataset, public_test)
    events, work = _run_notebook(
        sys.executable, input_root, rerun=False, ok=False, FAKE_KAGGLE_BREAK="1"
    )
    assert [e["event"] for e in events] == ["init", "run_local_gateway"]  # never "done"
    assert (
        "TooManyFallbacksError: aborting: 3 fallback(s) in 3" in (work / "notebook.log").read_text()
    )
    assert not (work / "submission.parquet").exists()


def test_notebook_refuses_another_bundle_than_the_packaged_one(
    dataset: Path, tmp_path: Path, public_test: Path
) -> None:
    """A valid, sealed bundle, but not the one `cmi package` pinned: refused at start."""
    other = build_fake_bundle(tmp_path / "other", n_folds=1)
    input_root = _kaggle_input(tmp_path / "k", dataset, public_test)
    shipped = input_root / "cmi-submission" / "bundle"
    shutil.rmtree(shipped)
    shutil.copytree(other, shipped)
    events, work = _run_notebook(sys.executable, input_root, rerun=False, ok=False)
    assert events == []
    pinned = load_bundle(dataset / "bundle").digest
    assert f"is not the pinned {pinned}" in (work / "notebook.log").read_text()


def test_notebook_fails_loudly_on_a_broken_torch_part(
    dataset: Path, tmp_path: Path, public_test: Path
) -> None:
    """Not a silent LightGBM-only submission: a declared Torch part must load."""
    input_root = _kaggle_input(tmp_path, dataset, public_test)
    weights = input_root / "cmi-submission" / "bundle" / "torch" / "fold_1.safetensors"
    weights.chmod(0o644)
    weights.write_bytes(weights.read_bytes()[:-8])
    events, work = _run_notebook(sys.executable, input_root, rerun=False, ok=False)
    assert events == []
    assert "fold_1.safetensors: checksum mismatch" in (work / "notebook.log").read_text()


# ------------------------------------------------------------------------------ fresh venv


def _deps_without_cmi_and_dvc(target: Path) -> Path:
    """The workspace's third-party packages (symlinked), minus cmi and DVC."""
    site = Path(sysconfig.get_paths()["purelib"])
    target.mkdir()
    for entry in site.iterdir():
        name = entry.name.lower()
        if name.startswith(("cmi", "__editable__", "dvc", "_cmi")) or name.endswith(".pth"):
            continue
        (target / entry.name).symlink_to(entry)
    return target


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_predicts_like_the_workspace(
    dataset: Path, fake_bundle: Path, tmp_path: Path, public_test: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    venv_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deps = _deps_without_cmi_and_dvc(tmp_path / "deps")
    Path(venv_site, "workspace_deps.pth").write_text(f"{deps}\n")
    (wheel,) = (dataset / "wheels").glob("cmi-*.whl")
    env = {k: v for k, v in os.environ.items() if k not in (*ENV_VARS, "PYTHONPATH")}
    subprocess.run(
        [python, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", str(wheel)],
        check=True,
        env=env,
        timeout=300,
    )
    probe = textwrap.dedent(
        f"""
        import importlib.util, json
        import polars as pl
        import cmi
        from cmi import inference
        test = pl.read_csv({str(public_test / "test.csv")!r})
        demographics = pl.read_csv({str(public_test / "test_demographics.csv")!r})
        out = {{"cmi_file": cmi.__file__, "dvc": importlib.util.find_spec("dvc") is not None}}
        for sequence_id in sorted(test["sequence_id"].unique()):
            sequence = test.filter(pl.col("sequence_id") == sequence_id)
            demo = demographics.filter(pl.col("subject") == sequence["subject"][0])
            out[sequence_id] = inference.predict_ensemble(sequence, demo).tolist()
        print(json.dumps(out))
        """
    )
    result = subprocess.run(
        [python, "-c", probe],
        cwd=tmp_path,
        env={**env, "MODEL_PATH": str(dataset / "bundle")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    fresh = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(fresh.pop("cmi_file")).is_relative_to(venv)
    assert fresh.pop("dvc") is False

    inference.load(inference.InferenceSettings(model_path=fake_bundle))
    test = pl.read_csv(public_test / "test.csv")
    demographics = pl.read_csv(public_test / "test_demographics.csv")
    for sequence_id, proba in fresh.items():
        sequence = test.filter(pl.col("sequence_id") == sequence_id)
        demo = demographics.filter(pl.col("subject") == sequence["subject"][0])
        np.testing.assert_array_equal(np.array(proba), inference.predict_ensemble(sequence, demo))

    # And the notebook script, run by that interpreter, serves from the wheel.
    input_root = _kaggle_input(tmp_path / "kaggle", dataset, public_test)
    events, work = _run_notebook(python, input_root, False)
    assert events[0]["dvc_importable"] is False
    assert Path(events[0]["cmi_file"]).is_relative_to(work / "cmi_wheel")
    assert events[-1] == {"event": "done", "n": len(_test_ids(public_test))}
    # Without kaggle_evaluation, the notebook runs cmi's own gateway loop.
    (work / "submission.parquet").unlink()
    shutil.rmtree(input_root / "cmi-detect-behavior-with-sensor-data" / "kaggle_evaluation")
    events, work = _run_notebook(python, input_root, False)
    assert events == []
    submitted = pl.read_parquet(work / "submission.parquet")["sequence_id"]
    assert sorted(submitted) == _test_ids(public_test)


@pytest.mark.slow
def test_tiny_pipeline_bundle_on_the_real_test_files(
    tiny_trained_project: Path, tmp_path: Path, real_sample: Path
) -> None:
    out = tmp_path / "submission.parquet"
    bundle = tiny_trained_project / "models" / "bundle"
    submission = predict_file(
        real_sample / "test.csv", real_sample / "test_demographics.csv", out, bundle, seed=3
    )
    assert pl.read_parquet(out).equals(submission)
    assert submission.height == 2 and set(submission["gesture"]) <= set(GESTURES)


@pytest.mark.slow
def test_cmi_predict_with_the_tiny_pipeline_bundle(tiny_trained_project: Path, tmp_path) -> None:
    out = tmp_path / "submission.parquet"
    bundle = tiny_trained_project / "models" / "bundle"
    # The tiny project's own test.csv (half IMU-only), through the CLI.
    raw = tiny_trained_project / "data" / "raw"
    args = ["predict", "--test", str(raw / "test.csv"), "--demographics"]
    args += [str(raw / "test_demographics.csv"), "--out", str(out), "--bundle", str(bundle)]
    assert cli_main(args) == 0
    submission = pl.read_parquet(out)
    test_ids = pl.read_csv(raw / "test.csv")["sequence_id"].unique()
    assert sorted(submission["sequence_id"]) == sorted(test_ids)
    assert set(submission["gesture"]) <= set(GESTURES)


@pytest.mark.slow
def test_package_pulls_a_missing_bundle_from_the_dvc_remote(
    fake_bundle: Path, tmp_path: Path, monkeypatch
) -> None:
    repo, remote = tmp_path / "repo", tmp_path / "remote"
    repo.mkdir()

    def run(*command: str) -> None:
        subprocess.run(command, cwd=repo, check=True, capture_output=True, timeout=300)

    dvc = [sys.executable, "-m", "dvc"]
    run("git", "init", "-q")
    run(*dvc, "init", "-q")
    run(*dvc, "remote", "add", "-d", "local", str(remote))
    shutil.copytree(fake_bundle, repo / "models" / "bundle")
    run(*dvc, "add", "-q", "models/bundle")
    run(*dvc, "push", "-q")
    shutil.rmtree(repo / "models" / "bundle")
    shutil.rmtree(repo / ".dvc" / "cache")

    monkeypatch.chdir(repo)
    out = package_submission(Path("submission"), Path("models/bundle"))
    assert load_bundle(repo / "models" / "bundle").has_torch
    assert load_bundle(out / "bundle").has_torch
