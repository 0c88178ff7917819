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

from cmi.evaluation import check_oof
from cmi.nn.data import Scaler, imu_only_inputs, modality_indices, to_padded
from cmi.nn.model import TimeSeriesNet, load_state_dict_file
from cmi.nn.predict import (
    FoldModel,
    load_fold_model,
    load_member_model,
    member_entries,
    network_proba,
)
from cmi.nn.train import CURVE_COLUMNS
from cmi.params import load_params
from cmi.paths import ProjectPaths
from cmi.schema import GESTURES, PROBA_COLUMNS, THM_COLUMNS, TOF_COLUMNS

STAGE = "train_torch.py"


@pytest.fixture(scope="module")
def torch_run(
    tiny_features_project: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """One uninterrupted stage run on tiny data (read-only for the tests)."""
    root = copy_project(tiny_features_project, tmp_path_factory.mktemp("torch_stage") / "p")
    result = run_stage(STAGE, root)
    return root, result.stderr


def view_model(torch_dir: Path, fold: int, view: str) -> FoldModel:
    """The model that scores ``view`` of ``fold`` (one seed): for the IMU-only view the
    fold's IMU-only member when the stage trained one (torch.imu_only_model), else the full."""
    if view == "imu_only":
        imu = [e for e in member_entries(torch_dir) if e["fold"] == fold and e["kind"] == "imu"]
        if imu:
            return load_member_model(torch_dir, imu[0])
    return load_fold_model(torch_dir, fold)


def fold_ids(root: Path) -> list[int]:
    return sorted(pl.read_parquet(ProjectPaths(root).folds)["fold"].unique().to_list())


def curve_files(root: Path) -> dict[str, str]:
    """The dvclive folder's files (per-fold curve tsvs and its summary) by relative path."""
    folder = root / "dvclive" / "torch"
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*.*"))}


def metrics_without_wall_time(root: Path) -> dict:
    metrics = json.loads(ProjectPaths(root).metrics("torch").read_text())
    assert metrics.pop("wall_time_s") > 0  # the one figure that differs between runs
    return metrics


def assert_same_outputs(a: Path, b: Path) -> None:
    pa, pb = ProjectPaths(a), ProjectPaths(b)
    for k in fold_ids(a):
        wa = load_state_dict_file(pa.torch_dir / f"fold_{k}.pt")
        wb = load_state_dict_file(pb.torch_dir / f"fold_{k}.pt")
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.equal(wa[key], wb[key]), f"fold {k}: {key} differs"
    assert pl.read_parquet(pa.oof("torch")).equals(pl.read_parquet(pb.oof("torch")))
    assert curve_files(a) == curve_files(b)
    assert metrics_without_wall_time(a) == metrics_without_wall_time(b)


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
    assert oof.columns == ["sequence_id", "fold", "y_true", "sensor_group", "view", *PROBA_COLUMNS]
    assert oof["fold"].dtype == pl.Int32 and oof["y_true"].dtype == pl.Int32
    assert all(oof[c].dtype == pl.Float64 for c in PROBA_COLUMNS)
    assert sorted(oof["sequence_id"].unique().to_list()) == sorted(sequences["sequence_id"])
    np.testing.assert_allclose(oof.select(PROBA_COLUMNS).to_numpy().sum(axis=1), 1.0, atol=1e-9)
    # The view contract: every sequence IMU-only, full-sensor ones also as recorded.
    imu = oof.filter(pl.col("view") == "imu_only")
    full = oof.filter(pl.col("view") == "full")
    assert sorted(imu["sequence_id"]) == sorted(sequences["sequence_id"])
    native_full = sequences.filter(pl.col("sensor_group") == "full")["sequence_id"]
    assert sorted(full["sequence_id"]) == sorted(native_full)
    assert oof.select("sequence_id", "view").is_duplicated().sum() == 0
    check_oof(oof)  # the shared contract's own check
    assert sequences["sensor_group"].n_unique() == 2  # tiny data has both kinds

    metrics = json.loads(paths.metrics("torch").read_text())
    assert {"score", "binary_f1", "macro_f1", "per_fold", "per_sensor_group"} <= set(metrics)
    for view in ("full", "imu_only", "test_like"):
        assert {"score", "binary_f1", "macro_f1", "n_rows"} <= set(metrics[view])
    assert metrics["full"]["n_rows"] == full.height and metrics["imu_only"]["n_rows"] == imu.height
    assert metrics["test_like"]["n_rows"] == oof.height
    assert metrics["score"] == metrics["test_like"]["score"]
    assert sorted(metrics["per_fold"]) == [str(k) for k in folds]
    assert len(metrics["best_epochs"]) == len(folds) and metrics["wall_time_s"] > 0
    assert metrics["inner_folds"] == [(k + 1) % len(folds) for k in folds]
    assert meta["inner_folds"] == metrics["inner_folds"]

    # dvclive curves: one tsv per fold and curve, one row per epoch (tiny params: 3 epochs).
    curves = curve_files(root)
    for k in folds:
        for name in CURVE_COLUMNS[1:]:
            rows = curves[f"plots/metrics/fold_{k}/{name}.tsv"].splitlines()
            assert rows[0].split("\t") == ["step", name]
            assert [r.split("\t")[0] for r in rows[1:]] == ["1", "2", "3"]
    summary = json.loads(curves["metrics.json"])
    assert summary["fold"] == folds[-1] and summary["epoch"] == 3
    assert not (root / "dvc.yaml").exists()  # dvclive wrote no dvc.yaml of its own
    assert "OOF score" in log
    assert not list(root.rglob("*.pkl")) and not list(root.rglob("*.joblib"))


def test_inference_path_reproduces_oof(torch_run: tuple[Path, str]) -> None:
    """load_fold_model + to_padded + network_proba give the OOF probabilities back, the
    IMU-only view from frames whose thm/ToF channels are null."""
    root, _ = torch_run
    paths = ProjectPaths(root)
    oof = pl.read_parquet(paths.oof("torch"))
    frames = pl.read_parquet(paths.frame_features)
    modality = [c for c in frames.columns if c.startswith(("thm", "tof"))]
    nulled = frames.with_columns(pl.lit(None, dtype=pl.Float32).alias(c) for c in modality)
    for k in fold_ids(root):
        for view, source in (("full", frames), ("imu_only", nulled)):
            fm = view_model(paths.torch_dir, k, view)
            part = oof.filter((pl.col("fold") == k) & (pl.col("view") == view))
            fold_frames = source.filter(pl.col("sequence_id").is_in(part["sequence_id"].implode()))
            x, mask, ids = to_padded(fold_frames, fm.channels, fm.scaler, fm.pad_len, fm.keep)
            proba = network_proba(fm.model, x, mask)
            expected = part.sort("sequence_id").select(PROBA_COLUMNS).to_numpy()
            assert ids == sorted(part["sequence_id"].to_list())
            np.testing.assert_allclose(proba, expected, atol=1e-6)


def test_imu_only_view_is_what_the_hidden_test_gives(torch_run: tuple[Path, str]) -> None:
    """The view the stage scores equals the real inference path on raw rows whose thm/ToF
    values are null (prepare_sensor_frame + compute_features, then the nn data path)."""
    from cmi.features import compute_features, prepare_sensor_frame
    from cmi.schema import read_raw_dir

    root, _ = torch_run
    paths = ProjectPaths(root)
    raw = read_raw_dir(paths.raw_dir, with_test=False)
    oof = pl.read_parquet(paths.oof("torch"))
    recorded = pl.read_parquet(paths.frame_features)
    extract = load_params(paths.params).extract
    k = fold_ids(root)[0]
    fm = load_fold_model(paths.torch_dir, k)
    ids = sorted(oof.filter((pl.col("fold") == k) & (pl.col("view") == "full"))["sequence_id"])
    rows = raw.train.filter(pl.col("sequence_id").is_in(ids))
    hidden = rows.with_columns(
        pl.lit(None, dtype=rows.schema[c]).alias(c) for c in (*THM_COLUMNS, *TOF_COLUMNS)
    )
    features = compute_features(prepare_sensor_frame(hidden), raw.train_demographics, extract)
    assert set(features.sequences["sensor_group"]) == {"imu_only"}
    x_hidden, mask_hidden, ids_hidden = to_padded(
        features.frame_features, fm.channels, fm.scaler, fm.pad_len, fm.keep
    )
    seen = recorded.filter(pl.col("sequence_id").is_in(ids))
    x_rec, mask_rec, ids_rec = to_padded(seen, fm.channels, fm.scaler, fm.pad_len, fm.keep)
    assert ids_hidden == ids_rec == ids
    view = imu_only_inputs(x_rec, modality_indices(fm.channels))
    assert not np.array_equal(view, x_rec)  # the view really removed thm/ToF
    np.testing.assert_array_equal(mask_hidden, mask_rec)
    np.testing.assert_allclose(view, x_hidden, rtol=0, atol=1e-6)
    expected = (
        oof.filter((pl.col("fold") == k) & (pl.col("view") == "imu_only"))
        .filter(pl.col("sequence_id").is_in(ids))
        .sort("sequence_id")
        .select(PROBA_COLUMNS)
        .to_numpy()
    )
    scorer = view_model(paths.torch_dir, k, "imu_only")
    x_view, mask_view, _ = to_padded(
        features.frame_features, scorer.channels, scorer.scaler, scorer.pad_len, scorer.keep
    )
    np.testing.assert_allclose(network_proba(scorer.model, x_view, mask_view), expected, atol=1e-6)


def test_rerun_reuses_finished_folds(torch_run: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = torch_run
    again = copy_project(root, tmp_path / "again")
    stale = again / "checkpoints" / "torch" / ("0" * 16) / "fold_0"
    stale.mkdir(parents=True)  # checkpoints of another fingerprint can never be used
    result = run_stage(STAGE, again)
    for k in fold_ids(root):
        assert f"fold {k}: finished earlier" in result.stderr
    assert "epoch 1/" not in result.stderr
    assert_same_outputs(root, again)
    assert not stale.parent.exists() and "removed stale checkpoints" in result.stderr


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
        assert np.isfinite(network_proba(fm.model, x, mask)).all()
    oof_ids = pl.read_parquet(paths.oof("torch"))["sequence_id"].unique()
    assert oof_ids.len() == pl.read_parquet(paths.sequences).height


# ----------------------------------------------------------------------------- techniques
EVERY_TECHNIQUE = {
    "epochs": 2,
    "seeds": [1, 2],
    "imu_only_model": True,
    "mixup_alpha": 0.4,
    "mixup_same_orientation": True,
    "rotate_deg": 10.0,
    "time_stretch": 0.2,
    "time_shift": 4,
    "aux_orientation_weight": 0.3,
}


def project_with(tiny_features_project: Path, root: Path, torch_values: dict) -> Path:
    import yaml

    copy_project(tiny_features_project, root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["torch"].update(torch_values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def mean_proba(entries: list[dict], torch_dir: Path, frames: pl.DataFrame, ids) -> np.ndarray:
    """The inference path: each member's own channels, scaler and pad_len; seeds averaged."""
    from cmi.nn.predict import load_member_model

    probas = []
    for entry in entries:
        fm = load_member_model(torch_dir, entry)
        part = frames.filter(pl.col("sequence_id").is_in(list(ids)))
        x, mask, got = to_padded(part, fm.channels, fm.scaler, fm.pad_len, fm.keep)
        assert got == sorted(ids)
        probas.append(network_proba(fm.model, x, mask))
    return np.mean(probas, axis=0)


@pytest.mark.slow
def test_stage_with_every_technique_on(tiny_features_project: Path, tmp_path: Path) -> None:
    """Seeds x (full, IMU-only) members, every augmentation and the orientation head: the
    files meta.json lists, the OOF the inference path reproduces, resume after SIGKILL."""
    from cmi.nn.predict import member_entries

    root = project_with(tiny_features_project, tmp_path / "p", EVERY_TECHNIQUE)
    log = run_stage(STAGE, root).stderr
    paths = ProjectPaths(root)
    meta = json.loads((paths.torch_dir / "meta.json").read_text())
    folds = fold_ids(root)
    assert meta["seeds"] == [1, 2] and meta["imu_only_model"] is True
    assert meta["architecture"]["n_orientations"] == 4 and len(meta["orientation_classes"]) == 4
    imu = meta["imu_model"]["channels"]
    assert imu and not any(c.startswith(("thm", "tof")) for c in imu)
    assert meta["imu_model"]["architecture"]["n_channels"] == len(imu)
    entries = member_entries(paths.torch_dir)
    assert len(entries) == 4 * len(folds)
    names = {e["weights"] for e in entries}
    assert {"fold_0.pt", "fold_0_seed_2.pt", "fold_0_imu.pt", "fold_0_imu_seed_2.pt"} <= names
    written = {p.name for p in paths.torch_dir.glob("fold_*.pt")}
    assert written == names
    for e in entries:
        scaler = json.loads((paths.torch_dir / e["scaler"]).read_text())
        assert scaler["channels"] == (imu if e["kind"] == "imu" else meta["channels"])

    oof = pl.read_parquet(paths.oof("torch"))
    check_oof(oof)
    orientation = oof.select("o0", "o1", "o2", "o3").to_numpy()
    np.testing.assert_allclose(orientation.sum(axis=1), 1.0, atol=1e-9)
    frames = pl.read_parquet(paths.frame_features)
    for k in (0, folds[-1]):
        for view, kind in (("full", "full"), ("imu_only", "imu")):
            rows = oof.filter((pl.col("fold") == k) & (pl.col("view") == view)).sort("sequence_id")
            members = [e for e in entries if e["fold"] == k and e["kind"] == kind]
            assert len(members) == 2
            expected = mean_proba(members, paths.torch_dir, frames, rows["sequence_id"])
            np.testing.assert_allclose(rows.select(PROBA_COLUMNS).to_numpy(), expected, atol=1e-6)
    metrics = json.loads(paths.metrics("torch").read_text())
    assert set(metrics["members"]) == {e["weights"][:-3] for e in entries}
    assert {"score", "n_rows"} <= set(metrics["imu_only_by_full_model"])
    assert set(metrics["orientation_head"]) == {"full", "imu_only"}
    assert "fold 0 (fold_0_imu_seed_2) epoch 2/2" in log

    # SIGKILL in fold 1's first member, then resume: identical outputs.
    again = project_with(tiny_features_project, tmp_path / "again", EVERY_TECHNIQUE)
    killed = run_stage(
        STAGE, again, check=False, env={"CMI_TORCH_KILL_AT": "fold=1,epoch=2,batch=0"}
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = run_stage(STAGE, again).stderr
    assert "fold 0 (fold_0_imu_seed_2): finished earlier" in resumed
    assert "fold 1: resuming from epoch 2" in resumed
    for path in sorted(paths.torch_dir.iterdir()):
        assert path.read_bytes() == (ProjectPaths(again).torch_dir / path.name).read_bytes(), path
    assert pl.read_parquet(paths.oof("torch")).equals(
        pl.read_parquet(ProjectPaths(again).oof("torch"))
    )
    assert metrics_without_wall_time(root) == metrics_without_wall_time(again)
    assert curve_files(root) == curve_files(again)


@pytest.mark.slow
def test_members_trained_in_two_processes_give_the_same_outputs(
    torch_run: tuple[Path, str], tiny_features_project: Path, tmp_path: Path
) -> None:
    """torch.cpu_processes is result-neutral (cmi.deps.RESULT_NEUTRAL_PARAMS): every member
    file, the OOF, the curves and the metrics are the same for 1 and 2 processes."""
    reference, _ = torch_run  # tiny params: cpu_processes 1
    root = project_with(tiny_features_project, tmp_path / "p", {"cpu_processes": 2})
    result = run_stage(STAGE, root)
    assert "in 2 processes (1 intra-op thread each)" in result.stderr
    assert_same_outputs(reference, root)
    ref_dir, got_dir = ProjectPaths(reference).torch_dir, ProjectPaths(root).torch_dir
    names = sorted(p.name for p in ref_dir.iterdir())
    assert names == sorted(p.name for p in got_dir.iterdir()) and "fold_0_imu.pt" in names
    for name in names:
        assert (ref_dir / name).read_bytes() == (got_dir / name).read_bytes(), name


@pytest.mark.slow
def test_a_killed_worker_stops_the_stage_and_a_rerun_resumes_identically(
    torch_run: tuple[Path, str], tiny_features_project: Path, tmp_path: Path
) -> None:
    reference, _ = torch_run
    root = project_with(tiny_features_project, tmp_path / "p", {"cpu_processes": 2})
    killed = run_stage(
        STAGE, root, check=False, env={"CMI_TORCH_KILL_AT": "fold=1,epoch=2,batch=1"}
    )
    assert killed.returncode not in (0, -signal.SIGKILL), killed.stderr[-2000:]
    assert "a Torch training worker died" in killed.stderr
    assert not ProjectPaths(root).oof("torch").exists()
    [last] = list((root / "checkpoints" / "torch").glob("*/fold_1/last.pt"))
    assert torch.load(last, weights_only=True)["epoch"] == 1

    # as the error suggests, rerun with one process: result-neutral, so the checkpoints fit
    params_file = root / "params.yaml"
    params_file.write_text(params_file.read_text().replace("cpu_processes: 2", "cpu_processes: 1"))
    resumed = run_stage(STAGE, root)
    assert "fold 1: resuming from epoch 2 (checkpoint" in resumed.stderr
    assert "processes" not in resumed.stderr
    assert_same_outputs(reference, root)
