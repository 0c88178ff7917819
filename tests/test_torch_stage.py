"""The torch stage end to end on tiny data: outputs, inference path, resume after SIGKILL."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from pipeline_helpers import copy_project, run_stage

from cmi.nn.data import Scaler, to_padded
from cmi.nn.model import TimeSeriesNet, load_state_dict_file
from cmi.nn.predict import load_fold_model, predict_proba
from cmi.paths import ProjectPaths
from cmi.schema import GESTURES, PROBA_COLUMNS

STAGE = "train_torch.py"


@pytest.fixture(scope="module")
def torch_run(
    tiny_features_project: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """One uninterrupted stage run on tiny data (read-only for the tests)."""
    root = copy_project(tiny_features_project, tmp_path_factory.mktemp("torch_stage") / "p")
    result = run_stage(STAGE, root)
    return root, result.stderr


def fold_ids(root: Path) -> list[int]:
    return sorted(pl.read_parquet(ProjectPaths(root).folds)["fold"].unique().to_list())


def assert_same_outputs(a: Path, b: Path) -> None:
    pa, pb = ProjectPaths(a), ProjectPaths(b)
    for k in fold_ids(a):
        wa = load_state_dict_file(pa.torch_dir / f"fold_{k}.pt")
        wb = load_state_dict_file(pb.torch_dir / f"fold_{k}.pt")
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.equal(wa[key], wb[key]), f"fold {k}: {key} differs"
    assert pl.read_parquet(pa.oof("torch")).equals(pl.read_parquet(pb.oof("torch")))
    curves = "torch_curves.csv"
    assert (pa.plots_dir / curves).read_text() == (pb.plots_dir / curves).read_text()
    assert json.loads(pa.metrics("torch").read_text()) == json.loads(
        pb.metrics("torch").read_text()
    )


def test_stage_writes_every_output(torch_run: tuple[Path, str]) -> None:
    root, log = torch_run
    paths = ProjectPaths(root)
    folds = fold_ids(root)
    meta = json.loads((paths.torch_dir / "meta.json").read_text())
    assert meta["n_folds"] == len(folds) and meta["classes"] == list(GESTURES)
    assert meta["keep"] == "end" and meta["pad_len"] == max(meta["pad_len_per_fold"])
    frames = pl.read_parquet(paths.frame_features)
    assert meta["channels"] == [
        c for c in frames.columns if c not in ("sequence_id", "sequence_counter")
    ]
    for k in folds:
        state = torch.load(paths.torch_dir / f"fold_{k}.pt", weights_only=True)
        assert not any(key.startswith(("module.", "_orig_mod.")) for key in state)
        TimeSeriesNet(**meta["architecture"]).load_state_dict(state)
        scaler_json = json.loads((paths.torch_dir / f"fold_{k}_scaler.json").read_text())
        assert Scaler.from_json(scaler_json).channels == tuple(meta["channels"])
        assert scaler_json["pad_len"] == meta["pad_len_per_fold"][k]

    oof = pl.read_parquet(paths.oof("torch"))
    sequences = pl.read_parquet(paths.sequences)
    assert oof.columns == ["sequence_id", "fold", "y_true", "sensor_group", *PROBA_COLUMNS]
    assert oof["fold"].dtype == pl.Int32 and oof["y_true"].dtype == pl.Int32
    assert all(oof[c].dtype == pl.Float64 for c in PROBA_COLUMNS)
    assert sorted(oof["sequence_id"].to_list()) == sorted(sequences["sequence_id"].to_list())
    np.testing.assert_allclose(oof.select(PROBA_COLUMNS).to_numpy().sum(axis=1), 1.0, atol=1e-9)

    metrics = json.loads(paths.metrics("torch").read_text())
    assert {"score", "binary_f1", "macro_f1", "per_fold", "per_sensor_group"} <= set(metrics)
    assert len(metrics["best_epochs"]) == len(folds)
    curves = pl.read_csv(paths.plots_dir / "torch_curves.csv")
    assert curves.columns == ["fold", "epoch", "train_loss", "val_loss", "val_score"]
    epochs = curves.group_by("fold").len()["len"].to_list()
    assert len(epochs) == len(folds) and set(epochs) == {3}  # tiny params: 3 epochs
    assert "OOF score" in log
    assert not list(root.rglob("*.pkl")) and not list(root.rglob("*.joblib"))


def test_inference_path_reproduces_oof(torch_run: tuple[Path, str]) -> None:
    """load_fold_model + to_padded + predict_proba give the OOF probabilities back."""
    root, _ = torch_run
    paths = ProjectPaths(root)
    oof = pl.read_parquet(paths.oof("torch"))
    frames = pl.read_parquet(paths.frame_features)
    for k in fold_ids(root):
        part = oof.filter(pl.col("fold") == k)
        fm = load_fold_model(paths.torch_dir, k)
        fold_frames = frames.filter(pl.col("sequence_id").is_in(part["sequence_id"].implode()))
        x, mask, ids = to_padded(fold_frames, fm.channels, fm.scaler, fm.pad_len, fm.keep)
        proba = predict_proba(fm.model, x, mask)
        expected = part.sort("sequence_id").select(PROBA_COLUMNS).to_numpy()
        assert ids == sorted(part["sequence_id"].to_list())
        np.testing.assert_allclose(proba, expected, atol=1e-6)


def test_rerun_reuses_finished_folds(torch_run: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = torch_run
    again = copy_project(root, tmp_path / "again")
    result = run_stage(STAGE, again)
    for k in fold_ids(root):
        assert f"fold {k}: finished earlier" in result.stderr
    assert "epoch 1/" not in result.stderr
    assert_same_outputs(root, again)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_identical(
    torch_run: tuple[Path, str], tiny_features_project: Path, tmp_path: Path
) -> None:
    reference, _ = torch_run
    root = copy_project(tiny_features_project, tmp_path / "p")
    killed = run_stage(
        STAGE, root, check=False, env={"CMI_TORCH_KILL_AT": "fold=1,epoch=2,batch=1"}
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not ProjectPaths(root).oof("torch").exists()
    [last] = list((root / "checkpoints" / "torch").glob("*/fold_1/last.pt"))
    assert torch.load(last, weights_only=True)["epoch"] == 1

    resumed = run_stage(STAGE, root)
    assert "fold 0: finished earlier" in resumed.stderr
    assert "fold 1: resuming from epoch 2 (checkpoint" in resumed.stderr
    assert_same_outputs(reference, root)


@pytest.mark.slow
def test_truncated_and_foreign_checkpoints_are_not_used(
    torch_run: tuple[Path, str], tiny_features_project: Path, tmp_path: Path
) -> None:
    reference, _ = torch_run
    root = copy_project(tiny_features_project, tmp_path / "p")
    killed = run_stage(
        STAGE, root, check=False, env={"CMI_TORCH_KILL_AT": "fold=1,epoch=3,batch=0"}
    )
    assert killed.returncode == -signal.SIGKILL
    [fold_1] = list((root / "checkpoints" / "torch").glob("*/fold_1"))
    last = fold_1 / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    # A finished fold from another run (other fingerprint) planted where fold 2 would look.
    [foreign] = list((reference / "checkpoints" / "torch").glob("*/fold_2/done.pt"))
    payload = torch.load(foreign, weights_only=True)
    payload["fingerprint"] = "0" * 16
    (fold_1.parent / "fold_2").mkdir()
    torch.save(payload, fold_1.parent / "fold_2" / "done.pt")

    rerun = run_stage(STAGE, root)
    assert "fold 1: checkpoint" in rerun.stderr and "is unreadable" in rerun.stderr
    assert "fold 2: ignoring checkpoint" in rerun.stderr
    assert "resuming" not in rerun.stderr
    assert_same_outputs(reference, root)


@pytest.mark.slow
def test_stage_under_torchrun_ddp_on_cpu(tiny_features_project: Path, tmp_path: Path) -> None:
    """Two gloo ranks on CPU: rank 0 writes prefix-free weights that a plain net loads."""
    import subprocess
    import sys

    from pipeline_helpers import STAGES_DIR

    root = copy_project(tiny_features_project, tmp_path / "p")
    # --standalone: a local rendezvous on a free port (a fixed port could be taken).
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(STAGES_DIR / STAGE)]  # fmt: skip
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world size 2" in result.stderr
    paths = ProjectPaths(root)
    meta = json.loads((paths.torch_dir / "meta.json").read_text())
    frames = pl.read_parquet(paths.frame_features)
    for k in fold_ids(root):
        fm = load_fold_model(paths.torch_dir, k)
        x, mask, _ = to_padded(frames.head(200), meta["channels"], fm.scaler, fm.pad_len, "end")
        assert np.isfinite(predict_proba(fm.model, x, mask)).all()
    assert pl.read_parquet(paths.oof("torch")).height == pl.read_parquet(paths.sequences).height
