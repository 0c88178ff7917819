"""The torch stage's plumbing: code deps vs fingerprint, the two views, dvclive curves."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from cmi import deps
from cmi.deps import REPO_ROOT
from cmi.nn.cv import STAGE_SCRIPT, checkpoint_store
from cmi.nn.data import FILL_VALUE, imu_only_inputs
from cmi.nn.fold_data import PaddedPart
from cmi.nn.members import Member
from cmi.nn.model import TimeSeriesNet
from cmi.nn.train import CURVE_COLUMNS
from cmi.nn.views import predict_views, recorded_proba, views_frame
from cmi.params import EvalParams, LgbmParams, Params
from cmi.schema import PROBA_COLUMNS


def test_fingerprinted_code_is_what_dvc_yaml_lists() -> None:
    """The checkpoint fingerprint hashes the cmi code whose change makes DVC rerun the stage:
    every module the stage script reaches, which tests/test_deps.py holds dvc.yaml's deps to."""
    stage = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]["torch"]
    hashed = deps.code_fingerprint(STAGE_SCRIPT)["files"]
    for dep in (d for d in stage["deps"] if d.startswith("cmi/")):
        assert any(n == dep or n.startswith(f"{dep}/") for n in hashed), dep
    assert {"cmi/nn/train.py", "cmi/nn/cv.py", "cmi/checkpoint.py", "cmi/evaluation.py"} <= set(
        hashed
    )
    assert "torch" in deps.code_fingerprint(STAGE_SCRIPT)["versions"]
    assert {key.split(".")[0] for key in stage["params"]} == {"cv", "torch", "eval"}


def test_fingerprint_follows_the_params_the_stage_reads(tmp_path: Path) -> None:
    data = tmp_path / "inputs.parquet"
    data.write_bytes(b"x")
    base = Params()

    def key(params: Params) -> str:
        return checkpoint_store(tmp_path / "ckpt", [data], params).key

    before = key(base)
    assert key(base) == before
    assert key(replace(base, eval=EvalParams(imu_only_share=0.3))) != key(base)
    assert key(replace(base, torch=replace(base.torch, seed=7))) != key(base)
    assert key(replace(base, lgbm=LgbmParams(num_leaves=3))) == key(base)
    data.write_bytes(b"y")
    assert key(base) != before


def part_with_groups() -> PaddedPart:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6, 5)).astype(np.float32)
    mask = np.ones((4, 6), dtype=bool)
    mask[0, :2] = False
    x[0, :2] = FILL_VALUE
    groups = np.array(["full", "imu_only", "full", "full"])
    x[1, :, 3:] = FILL_VALUE  # natively IMU-only: thm/ToF already at the fill value
    return PaddedPart(["A", "B", "C", "D"], x, mask, np.array([0, 1, 2, 9]), groups)


def test_imu_only_view_fills_only_modality_channels() -> None:
    part = part_with_groups()
    view = imu_only_inputs(part.x, np.array([3, 4]))
    assert np.all(view[:, :, 3:] == FILL_VALUE)
    np.testing.assert_array_equal(view[:, :, :3], part.x[:, :, :3])
    np.testing.assert_array_equal(view[1], part.x[1])  # natively IMU-only: unchanged
    assert not np.array_equal(view, part.x)


def test_views_follow_the_oof_contract() -> None:
    torch.manual_seed(0)
    net = TimeSeriesNet(5, conv_channels=(4, 4), lstm_hidden=4, gru_hidden=4).eval()
    part = part_with_groups()
    predictions = predict_views(net, part, np.array([3, 4]))
    assert predictions["full"].ids == ["A", "C", "D"]
    assert predictions["imu_only"].ids == ["A", "B", "C", "D"]
    # B is natively IMU-only: its IMU-only view is its recorded input.
    recorded = recorded_proba(predictions, part)
    np.testing.assert_array_equal(recorded[1], predictions["imu_only"].proba[1])
    np.testing.assert_array_equal(recorded[2], predictions["full"].proba[1])
    labeled = pl.DataFrame(
        {"sequence_id": part.ids, "label": part.y, "sensor_group": part.sensor_group}
    )
    frame = views_frame(predictions, labeled, fold=3)
    assert frame.columns == [
        "sequence_id",
        "fold",
        "y_true",
        "sensor_group",
        "view",
        *PROBA_COLUMNS,
    ]
    assert frame.select("sequence_id", "view").rows() == [
        ("A", "full"), ("A", "imu_only"), ("B", "imu_only"), ("C", "full"),
        ("C", "imu_only"), ("D", "full"), ("D", "imu_only"),
    ]  # fmt: skip
    assert set(frame["fold"]) == {3} and frame["y_true"].to_list()[-1] == 9
    np.testing.assert_allclose(frame.select(PROBA_COLUMNS).to_numpy().sum(axis=1), 1.0)


def curve_rows(n_folds: int = 2, epochs: int = 3) -> list[tuple[Member, list[float]]]:
    rng = np.random.default_rng(1)
    return [
        (Member(fold, 42), [float(epoch), *rng.random(len(CURVE_COLUMNS) - 1).tolist()])
        for fold in range(n_folds)
        for epoch in range(1, epochs + 1)
    ]


def folder_files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*.*"))}


def test_replayed_curves_equal_uninterrupted_ones(tmp_path: Path, monkeypatch) -> None:
    """A resumed stage starts a fresh dvclive folder and replays restored epochs first."""
    pytest.importorskip("dvclive")
    from cmi.nn.curves import EpochCurves

    monkeypatch.chdir(tmp_path)  # dvclive looks for a repo from the working directory
    rows = curve_rows()
    with EpochCurves(tmp_path / "a") as curves:
        for fold, row in rows:
            curves(fold, row)
    with EpochCurves(tmp_path / "b") as curves:  # a killed run: folds 0 and 1, epoch 1
        for fold, row in rows[:4]:
            curves(fold, row)
    with EpochCurves(tmp_path / "b") as curves:  # the resumed run replays, then goes on
        for fold, row in rows:
            curves(fold, row)
    a, b = folder_files(tmp_path / "a"), folder_files(tmp_path / "b")
    assert a == b
    assert a["plots/metrics/fold_1/train_loss.tsv"].splitlines()[0] == "step\ttrain_loss"
    assert len(a["plots/metrics/fold_1/inner_test_like.tsv"].splitlines()) == 4
    assert not (tmp_path / "dvc.yaml").exists() and "dvc.yaml" not in a


def test_members_train_side_by_side_only_on_plain_cpu() -> None:
    from cmi.nn.parallel import cpu_processes
    from cmi.nn.runtime import Distributed, Runtime
    from cmi.params import Params

    cpu = Runtime(torch.device("cpu"), Distributed(), 1)
    two = Params(torch=replace(Params().torch, cpu_processes=2))
    assert cpu_processes(two, cpu, pending=10) == 2
    assert cpu_processes(two, cpu, pending=1) == 1  # nothing to share
    assert cpu_processes(Params(torch=replace(Params().torch, cpu_processes=8)), cpu, 3) == 3
    assert cpu_processes(Params(torch=replace(Params().torch, cpu_processes=0)), cpu, 50) >= 1
    ddp = Runtime(torch.device("cpu"), Distributed(rank=0, world_size=2), 1)
    assert cpu_processes(two, ddp, pending=10) == 1  # torchrun already splits the work
    gpu = Runtime(torch.device("cuda"), Distributed(), 1)
    assert cpu_processes(two, gpu, pending=10) == 1
