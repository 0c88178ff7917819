"""cmi.bundle and stages/bundle.py: building, verifying, and refusing unsafe bundles.

The bundles here come from fake models (a few LightGBM trees on random data, an untrained
TimeSeriesNet) with the real feature and channel names, so they also serve the inference and
submission tests (``write_fake_models`` / ``build_fake_bundle``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest
import torch
from pipeline_helpers import run_stage

from cmi.bundle import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    BundleError,
    PostprocessSettings,
    load_bundle,
    manifest_digest,
)
from cmi.bundle.builder import build_bundle
from cmi.bundle.seal import seal_manifest
from cmi.features import frame_channels, sequence_feature_names
from cmi.io import read_json, sha256_file, write_json
from cmi.lgbm import lightgbm_feature_names
from cmi.nn.model import TimeSeriesNet, architecture_kwargs
from cmi.orientation import orientation_feature_names
from cmi.params import ExtractParams, section_dict
from cmi.paths import ProjectPaths
from cmi.schema import GESTURES, N_CLASSES, ORIENTATIONS

FAKE_PAD_LEN = 24


def write_fake_models(
    root: Path,
    extract: ExtractParams | None = None,
    n_folds: int = 2,
    with_torch: bool = True,
    blend: dict | None = None,
    with_orientation: bool = True,
    seeds: tuple[int, ...] = (),
    imu_only_model: bool = False,
) -> ProjectPaths:
    """models/{lgbm,torch,blend,orientation} in the contract's formats, from fake models;
    ``seeds`` / ``imu_only_model`` write Torch members as torch.seeds / torch.imu_only_model
    make the torch stage write them."""
    extract = extract or ExtractParams()
    paths = ProjectPaths(root)
    names = sequence_feature_names(extract)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4 * N_CLASSES, len(names))).astype(np.float32)
    y = np.arange(len(x)) % N_CLASSES
    paths.lgbm_dir.mkdir(parents=True, exist_ok=True)
    for k in range(n_folds):
        booster = lgb.train(
            {
                "objective": "multiclass",
                "num_class": N_CLASSES,
                "num_leaves": 3,
                "min_data_in_leaf": 2,
                "num_threads": 1,
                "seed": k,
                "verbosity": -1,
            },
            lgb.Dataset(x, label=y, feature_name=lightgbm_feature_names(names)),
            num_boost_round=2,
        )
        (paths.lgbm_dir / f"fold_{k}.txt").write_text(booster.model_to_string())
    write_json(
        {
            "n_folds": n_folds,
            "feature_names": names,
            "best_iterations": [2] * n_folds,
            "classes": list(GESTURES),
            "num_class": N_CLASSES,
        },
        paths.lgbm_dir / "meta.json",
    )
    if with_torch:
        write_fake_torch(paths, extract, n_folds, rng, seeds, imu_only_model)
    blend = blend or {
        "default": {"lgbm": 0.4, "torch": 0.6},
        "by_sensor_group": None,
        "optimize": "none",
    }
    write_json(blend, paths.blend_dir / "weights.json")
    if with_orientation:
        write_fake_orientation(paths, names, n_folds)
    return paths


def write_fake_torch(
    paths: ProjectPaths,
    extract: ExtractParams,
    n_folds: int,
    rng: np.random.Generator,
    seeds: tuple[int, ...] = (),
    imu_only_model: bool = False,
) -> None:
    """models/torch as the torch stage writes it (``cmi.nn.outputs``): per member
    ``<name>.pt`` (untrained nets, each its own init), per fold and kind one scaler json,
    meta.json listing every member in ``models``."""
    from cmi.nn.members import Member, imu_channels

    channels = frame_channels(extract)
    imu = imu_channels(channels)
    specs = {"full": (channels, architecture_kwargs(len(channels), [8, 8], 8, 8, 0.1))}
    if imu_only_model:
        specs["imu"] = (imu, architecture_kwargs(len(imu), [8, 8], 8, 8, 0.1))
    paths.torch_dir.mkdir(parents=True, exist_ok=True)
    models = []
    for k in range(n_folds):
        mean = rng.normal(size=len(channels))
        std = 1 + rng.random(len(channels))
        for kind, (own, arch) in specs.items():
            keep = [channels.index(c) for c in own]
            scaler = {
                "channels": own,
                "mean": mean[keep].tolist(),
                "std": std[keep].tolist(),
                "pad_len": FAKE_PAD_LEN - k,
            }
            scaler_name = f"fold_{k}_imu_scaler.json" if kind == "imu" else f"fold_{k}_scaler.json"
            write_json(scaler, paths.torch_dir / scaler_name)
            for index, seed in enumerate(seeds or (0,)):
                member = Member(k, seed, index, kind)  # type: ignore[arg-type]
                torch.manual_seed(k + 100 * index + (1000 if kind == "imu" else 0))
                torch.save(
                    TimeSeriesNet(**arch).state_dict(), paths.torch_dir / f"{member.name}.pt"
                )
                models.append(
                    {"fold": k, "kind": kind, "seed": seed, "weights": f"{member.name}.pt",
                     "scaler": scaler_name, "best_epoch": 1, "best_inner_score": 0.5,
                     "selected_by": member.selected_by}
                )  # fmt: skip
    meta = {
        "n_folds": n_folds,
        "channels": channels,
        "pad_len": FAKE_PAD_LEN,
        "keep": "end",
        "architecture": specs["full"][1],
        "classes": list(GESTURES),
        "seeds": list(seeds or (0,)),
        "imu_only_model": imu_only_model,
        "models": models,
    }
    if imu_only_model:
        meta["imu_model"] = {"channels": imu, "architecture": specs["imu"][1], "selection": "x"}
    write_json(meta, paths.torch_dir / "meta.json")


def write_fake_orientation(paths: ProjectPaths, feature_names: list[str], n_folds: int) -> None:
    """models/orientation as the orientation stage writes it: one LightGBM model per fold on
    the IMU features. The models learn the sign of the first feature (so a probe gets a real,
    non-uniform estimate)."""
    names = orientation_feature_names(feature_names)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, len(names))).astype(np.float32)
    y = (x[:, 0] > 0).astype(int) + 2 * (np.arange(len(x)) % 2)
    paths.orientation_dir.mkdir(parents=True, exist_ok=True)
    for k in range(n_folds):
        booster = lgb.train(
            {
                "objective": "multiclass",
                "num_class": len(ORIENTATIONS),
                "num_leaves": 3,
                "min_data_in_leaf": 2,
                "num_threads": 1,
                "seed": k,
                "verbosity": -1,
            },
            lgb.Dataset(x, label=y),
            num_boost_round=3,
        )
        (paths.orientation_dir / f"fold_{k}.txt").write_text(booster.model_to_string())
    write_json(
        {
            "n_folds": n_folds,
            "feature_names": names,
            "classes": list(ORIENTATIONS),
            "best_iterations": [3] * n_folds,
        },
        paths.orientation_dir / "meta.json",
    )


def build_fake_bundle(
    root: Path,
    with_torch: bool = True,
    n_folds: int = 2,
    blend: dict | None = None,
    postprocess: str = "assignment",
    with_orientation: bool = True,
    seeds: tuple[int, ...] = (),
    imu_only_model: bool = False,
) -> Path:
    """A bundle from fake models at ``root / 'bundle'``, applying ``postprocess`` (the fake
    Torch models at ``root / 'models_src/models/torch'``)."""
    paths = write_fake_models(
        root / "models_src",
        n_folds=n_folds,
        with_torch=with_torch,
        blend=blend,
        with_orientation=with_orientation,
        seeds=seeds,
        imu_only_model=imu_only_model,
    )
    out = root / "bundle"
    build_bundle(
        out,
        paths.lgbm_dir,
        paths.torch_dir if with_torch else None,
        paths.blend_dir / "weights.json",
        ExtractParams(),
        orientation_dir=paths.orientation_dir if with_orientation else None,
        postprocess=PostprocessSettings(postprocess),
    )
    return out


@pytest.fixture(scope="module")
def fake_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only: copy it before changing anything."""
    return build_fake_bundle(tmp_path_factory.mktemp("fake_bundle"))


@pytest.fixture
def bundle_copy(fake_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(fake_bundle, tmp_path / "bundle"))


def _rewrite_manifest(bundle: Path, edit, *, reseal: bool = True) -> None:
    """Edit the manifest; ``reseal`` as an attacker who knows the seal would, so that the
    checks behind the seal are what a test exercises."""
    manifest = read_json(bundle / MANIFEST_NAME)
    edit(manifest)
    if reseal:
        manifest = seal_manifest(manifest)
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest))


def _relist(bundle: Path, rel: str, new_rel: str | None = None) -> None:
    """Update the manifest's checksum entry of ``rel`` (renamed to ``new_rel``)."""
    new_rel = new_rel or rel

    def edit(manifest: dict) -> None:
        entry = manifest["files"].pop(rel)
        entry.update(sha256=sha256_file(bundle / new_rel), size=(bundle / new_rel).stat().st_size)
        manifest["files"][new_rel] = entry
        for member in manifest["torch"]["members"]:
            if member["weights"] == rel:
                member["weights"] = new_rel

    _rewrite_manifest(bundle, edit)


class _MarkerPayload:
    """Unpickling this creates the marker file: proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ------------------------------------------------------------------------------- building


def test_manifest_describes_everything(fake_bundle: Path) -> None:
    manifest = read_json(fake_bundle / MANIFEST_NAME)
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["classes"] == list(GESTURES)
    assert manifest["extract"] == section_dict(ExtractParams())
    assert manifest["lgbm"]["feature_names"] == sequence_feature_names(ExtractParams())
    assert [f["model"] for f in manifest["lgbm"]["folds"]] == ["lgbm/fold_0.txt", "lgbm/fold_1.txt"]
    section = manifest["torch"]
    assert section["channels"] == frame_channels(ExtractParams())
    assert section["pad_len"] == FAKE_PAD_LEN and section["keep"] == "end"
    assert [m["pad_len"] for m in section["members"]] == [FAKE_PAD_LEN, FAKE_PAD_LEN - 1]
    assert [(m["fold"], m["kind"]) for m in section["members"]] == [(0, "full"), (1, "full")]
    assert section["imu_model"] is None
    assert section["architecture"]["conv_channels"] == [8, 8]
    assert set(section["members"][0]["scaler"]) >= {"channels", "mean", "std"}
    assert manifest["blend"]["default"] == {"lgbm": 0.4, "torch": 0.6}
    assert set(manifest["versions"]) >= {"cmi", "lightgbm", "torch", "polars", "numpy"}

    on_disk = sorted(
        p.relative_to(fake_bundle).as_posix()
        for p in fake_bundle.rglob("*")
        if p.is_file() and p.name != MANIFEST_NAME
    )
    assert on_disk == sorted(manifest["files"])
    assert all(p.endswith((".txt", ".safetensors")) for p in on_disk)
    for rel, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(fake_bundle / rel)
        assert entry["size"] == (fake_bundle / rel).stat().st_size
    # Nothing hidden was left behind by the temp-dir build.
    assert [p.name for p in fake_bundle.parent.iterdir() if p.name.startswith(".")] == []


def test_loaded_weights_equal_the_trained_ones(fake_bundle: Path) -> None:
    from cmi.nn.model import load_state_dict_file

    bundle = load_bundle(fake_bundle)
    assert bundle.has_torch and len(bundle.lgbm.boosters) == 2
    original = load_state_dict_file(fake_bundle.parent / "models_src/models/torch/fold_1.pt")
    loaded = bundle.torch.members[1].state_dict
    assert original.keys() == loaded.keys()
    for name, tensor in original.items():
        assert torch.equal(tensor, loaded[name])
    lazy = load_bundle(fake_bundle, torch_in_memory=False).torch.members[1]
    assert lazy.state_dict is None
    assert torch.equal(lazy.load_state_dict()["head.4.weight"], original["head.4.weight"])


def test_lgbm_only_bundle_loads(tmp_path: Path) -> None:
    bundle = load_bundle(build_fake_bundle(tmp_path, with_torch=False))
    assert bundle.torch is None and not bundle.has_torch
    assert len(bundle.lgbm.boosters) == 2
    assert bundle.blend.default == {"lgbm": 1.0, "torch": 0.0}
    assert not (tmp_path / "bundle" / "torch").exists()


def test_rebuild_replaces_atomically_and_a_failed_build_keeps_the_old(tmp_path: Path) -> None:
    out = build_fake_bundle(tmp_path, n_folds=2)
    src = tmp_path / "models_src" / "models"
    # Rebuild with one fold fewer: the old fold files must be gone.
    meta = read_json(src / "lgbm" / "meta.json")
    write_json({**meta, "n_folds": 1}, src / "lgbm" / "meta.json")
    build_bundle(out, src / "lgbm", None, None, ExtractParams())
    assert sorted(read_json(out / MANIFEST_NAME)["files"]) == ["lgbm/fold_0.txt"]
    # A build that fails half-way leaves the previous bundle untouched and no temp dir.
    write_json({**meta, "n_folds": 3}, src / "lgbm" / "meta.json")
    with pytest.raises(FileNotFoundError, match=r"fold_2\.txt"):
        build_bundle(out, src / "lgbm", None, None, ExtractParams())
    assert sorted(read_json(out / MANIFEST_NAME)["files"]) == ["lgbm/fold_0.txt"]
    load_bundle(out)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_bundle_stage_script(tmp_path: Path) -> None:
    write_fake_models(tmp_path)
    (tmp_path / "params.yaml").write_text(
        "extract:\n  sampling_rate_hz: 20.0\npostprocess:\n  method: gesture_counts\n"
        "  mode: pinned\n"
    )
    run_stage("bundle.py", tmp_path)
    bundle = load_bundle(tmp_path / "models" / "bundle")
    assert bundle.extract.sampling_rate_hz == 20.0
    assert bundle.has_torch
    assert bundle.postprocess == PostprocessSettings("gesture_counts", "pinned", "max")
    assert len(bundle.orientation.boosters) == 2  # shipped whatever the method: an env may ask


# ------------------------------------------------------------------------ Torch members

MEMBER_NAMES = ["fold_{k}", "fold_{k}_seed_2", "fold_{k}_imu", "fold_{k}_imu_seed_2"]


@pytest.fixture(scope="module")
def members_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only: torch.seeds [1, 2] and IMU-only models, two folds."""
    root = tmp_path_factory.mktemp("members_bundle")
    return build_fake_bundle(root, seeds=(1, 2), imu_only_model=True)


def test_every_torch_member_is_shipped_checksummed_and_sealed(members_bundle: Path) -> None:
    from cmi.nn.members import imu_channels
    from cmi.nn.model import load_state_dict_file

    manifest = read_json(members_bundle / MANIFEST_NAME)
    section = manifest["torch"]
    names = [name.format(k=k) for k in range(2) for name in MEMBER_NAMES]
    assert [m["weights"] for m in section["members"]] == [f"torch/{n}.safetensors" for n in names]
    assert [(m["fold"], m["kind"], m["seed"]) for m in section["members"]] == [
        (k, kind, seed) for k in range(2) for kind in ("full", "imu") for seed in (1, 2)
    ]
    imu = imu_channels(frame_channels(ExtractParams()))
    assert section["imu_model"]["channels"] == imu
    assert section["imu_model"]["architecture"]["n_channels"] == len(imu)
    for m in section["members"]:
        assert m["scaler"]["channels"] == (imu if m["kind"] == "imu" else section["channels"])
        assert m["pad_len"] == FAKE_PAD_LEN - m["fold"]
        assert manifest["files"][m["weights"]]["sha256"] == sha256_file(
            members_bundle / m["weights"]
        )
    assert "torch.members" in manifest["seal"]["hashes"]

    source = members_bundle.parent / "models_src" / "models" / "torch"
    bundle = load_bundle(members_bundle)
    assert len(bundle.torch.members) == 8 and bundle.torch.imu_channels == imu
    for name, member in zip(names, bundle.torch.members, strict=True):
        original = load_state_dict_file(source / f"{name}.pt")
        assert original.keys() == member.state_dict.keys()
        assert all(torch.equal(t, member.state_dict[key]) for key, t in original.items())
    # Each member is its own net (the average is not of copies).
    first, second = bundle.torch.members[0].state_dict, bundle.torch.members[1].state_dict
    assert not torch.equal(first["head.4.weight"], second["head.4.weight"])


def test_a_tampered_or_unlisted_member_is_refused(members_bundle: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(members_bundle, tmp_path / "bundle"))
    weights = copy / "torch" / "fold_1_imu_seed_2.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"fold_1_imu_seed_2\.safetensors: checksum mismatch"):
        load_bundle(copy)
    # A member dropped from the manifest (resealed) would silently leave the average.
    copy = Path(shutil.copytree(members_bundle, tmp_path / "dropped"))
    _rewrite_manifest(copy, lambda m: m["torch"]["members"].pop())
    with pytest.raises(BundleError, match=r"fold_1_imu_seed_2\.safetensors'\] are used by no"):
        load_bundle(copy)


def _rewrite_members(bundle: Path, edit) -> None:
    _rewrite_manifest(bundle, lambda m: edit(m["torch"]))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("imu member without imu_model", r"IMU-only member .* but no torch\.imu_model"),
        ("imu member with the full scaler", r"scaler channels of Torch member .* imu model"),
        ("fold without a full member", r"fold\(s\) \[1\] have no full-input member"),
        ("member listed twice", r"listed twice"),
        ("unknown kind", r"kind 'tof' fold 0"),
        ("imu channels not among the channels", r"imu_model channels must be a non-empty subset"),
    ],
)
def test_a_malformed_members_section_is_refused(
    members_bundle: Path, tmp_path: Path, case: str, message: str
) -> None:
    copy = Path(shutil.copytree(members_bundle, tmp_path / "bundle"))

    def edit(section: dict) -> None:
        members = section["members"]
        if case == "imu member without imu_model":
            section["imu_model"] = None
        elif case == "imu member with the full scaler":
            members[2]["scaler"] = members[0]["scaler"]
        elif case == "fold without a full member":
            for m in members:
                if m["fold"] == 1 and m["kind"] == "full":
                    m.update(kind="imu", seed=m["seed"] + 10, scaler=members[2]["scaler"])
        elif case == "member listed twice":
            members[1]["seed"] = members[0]["seed"]
        elif case == "unknown kind":
            members[0]["kind"] = "tof"
        else:
            section["imu_model"]["channels"] = ["no_such_channel"]

    _rewrite_members(copy, edit)
    with pytest.raises(BundleError, match=message):
        load_bundle(copy)
    assert load_bundle(copy, parts=("lgbm",)).torch is None  # LightGBM alone still loads


def test_the_builder_ships_what_meta_json_lists_and_nothing_else(tmp_path: Path) -> None:
    paths = write_fake_models(tmp_path / "src", seeds=(1, 2), imu_only_model=True)
    args = (paths.lgbm_dir, paths.torch_dir, paths.blend_dir / "weights.json", ExtractParams())
    meta = read_json(paths.torch_dir / "meta.json")

    def build_with(edited: dict) -> None:
        write_json(edited, paths.torch_dir / "meta.json")
        build_bundle(tmp_path / "bundle", *args, postprocess=PostprocessSettings("none"))

    # A weights file meta.json does not list (another run's?) would be left out: refused.
    listed = [m for m in meta["models"] if m["weights"] != "fold_0_seed_2.pt"]
    with pytest.raises(BundleError, match=r"\['fold_0_seed_2\.pt'\] are not listed in 'models'"):
        build_with({**meta, "models": listed})
    # IMU-only members without the imu_model section that describes them.
    with pytest.raises(BundleError, match=r"kind 'imu' fold 0 .*\['full'\]"):
        build_with({key: v for key, v in meta.items() if key != "imu_model"})
    # A member whose weights do not fit its kind's architecture.
    swapped = [dict(m) for m in meta["models"]]
    swapped[2]["weights"], swapped[0]["weights"] = swapped[0]["weights"], swapped[2]["weights"]
    with pytest.raises(
        BundleError, match=r"fold_0_imu\.pt: does not fit meta\.json's full architecture"
    ):
        build_with({**meta, "models": swapped})
    # A fold whose members are all IMU-only could not serve full-sensor inputs.
    no_full = [m for m in meta["models"] if not (m["fold"] == 1 and m["kind"] == "full")]
    for name in ("fold_1.pt", "fold_1_seed_2.pt"):
        (paths.torch_dir / name).unlink()
    with pytest.raises(BundleError, match=r"fold\(s\) \[1\] have no full-input member"):
        build_with({**meta, "models": no_full})
    assert not (tmp_path / "bundle").exists()  # no failed build left anything behind


def test_a_torch_meta_from_before_members_still_builds(tmp_path: Path) -> None:
    """meta.json without ``models``: one full-input model per fold, fold_{k}.pt."""
    paths = write_fake_models(tmp_path / "src")
    meta = read_json(paths.torch_dir / "meta.json")
    write_json({k: v for k, v in meta.items() if k != "models"}, paths.torch_dir / "meta.json")
    build_bundle(
        tmp_path / "bundle",
        paths.lgbm_dir,
        paths.torch_dir,
        paths.blend_dir / "weights.json",
        ExtractParams(),
    )
    members = load_bundle(tmp_path / "bundle").torch.members
    assert [(m.fold, m.kind, m.path.name) for m in members] == [
        (0, "full", "fold_0.safetensors"),
        (1, "full", "fold_1.safetensors"),
    ]


# ------------------------------------------------------------------ orientation, post-processing


def test_orientation_models_and_postprocess_settings_are_sealed_in(fake_bundle: Path) -> None:
    manifest = read_json(fake_bundle / MANIFEST_NAME)
    assert manifest["postprocess"] == {"method": "assignment", "mode": "resolve", "combine": "max"}
    section = manifest["orientation"]
    assert section["classes"] == list(ORIENTATIONS)
    assert section["feature_names"] == orientation_feature_names(
        sequence_feature_names(ExtractParams())
    )
    assert [f["model"] for f in section["folds"]] == [
        "orientation/fold_0.txt",
        "orientation/fold_1.txt",
    ]
    for rel in ("orientation/fold_0.txt", "orientation/fold_1.txt"):
        assert manifest["files"][rel]["sha256"] == sha256_file(fake_bundle / rel)
    bundle = load_bundle(fake_bundle)
    assert bundle.postprocess.method == "assignment"
    assert [b.num_feature() for b in bundle.orientation.boosters] == [
        len(section["feature_names"])
    ] * 2
    # Only the parts asked for are loaded.
    assert load_bundle(fake_bundle, parts=("lgbm",)).orientation is None


def test_a_tampered_orientation_model_or_setting_is_refused(bundle_copy: Path) -> None:
    model = bundle_copy / "orientation" / "fold_0.txt"
    model.write_text(model.read_text().replace("num_leaves=3", "num_leaves=4", 1))
    with pytest.raises(BundleError, match=r"orientation/fold_0\.txt: checksum mismatch"):
        load_bundle(bundle_copy)
    _rewrite_manifest(bundle_copy, lambda m: m["postprocess"].update(method="none"), reseal=False)
    with pytest.raises(BundleError, match=r"the manifest was changed.*postprocess\.method"):
        load_bundle(bundle_copy, parts=("lgbm",))


def test_bad_postprocess_settings_are_refused(bundle_copy: Path, tmp_path: Path) -> None:
    _rewrite_manifest(bundle_copy, lambda m: m["postprocess"].update(method="hungarian"))
    with pytest.raises(BundleError, match=r"bad 'postprocess' section.*method must be one of"):
        load_bundle(bundle_copy, parts=("lgbm",))
    # A bundle built before post-processing existed answers the plain argmax.
    _rewrite_manifest(bundle_copy, lambda m: [m.pop("postprocess"), m.pop("orientation")])
    bundle = load_bundle(bundle_copy)
    assert bundle.postprocess == PostprocessSettings("none") and bundle.orientation is None


def test_assignment_without_orientation_models_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="'assignment' needs the orientation models"):
        build_fake_bundle(tmp_path, with_orientation=False)
    bundle = load_bundle(build_fake_bundle(tmp_path, with_orientation=False, postprocess="none"))
    assert bundle.orientation is None and bundle.postprocess.method == "none"
    assert not (tmp_path / "bundle" / "orientation").exists()


# ------------------------------------------------------------------------------- refusing


def test_tampered_file_is_refused(bundle_copy: Path) -> None:
    model = bundle_copy / "lgbm" / "fold_1.txt"
    model.write_text(model.read_text().replace("num_leaves=3", "num_leaves=4", 1))
    with pytest.raises(BundleError, match=r"lgbm/fold_1\.txt: checksum mismatch"):
        load_bundle(bundle_copy)


def test_tampered_torch_file_is_refused(bundle_copy: Path) -> None:
    weights = bundle_copy / "torch" / "fold_0.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"torch/fold_0\.safetensors: checksum mismatch"):
        load_bundle(bundle_copy)
    # Asked for LightGBM only, the Torch files are not read.
    assert load_bundle(bundle_copy, parts=("lgbm",)).torch is None


def test_pickle_payload_is_refused_without_running_it(bundle_copy: Path, tmp_path: Path) -> None:
    # The payload is live: plain unpickling it creates its marker.
    probe_marker, probe = tmp_path / "probe-marker", tmp_path / "probe.pt"
    torch.save(_MarkerPayload(probe_marker), probe)
    torch.load(probe, weights_only=False)
    assert probe_marker.exists()

    marker = tmp_path / "marker"
    weights = bundle_copy / "torch" / "fold_0.safetensors"
    torch.save(_MarkerPayload(marker), weights)
    _relist(bundle_copy, "torch/fold_0.safetensors")
    with pytest.raises(BundleError, match=r"fold_0\.safetensors: not a valid safetensors file"):
        load_bundle(bundle_copy)
    assert not marker.exists()


def test_pickle_extension_is_refused_without_running_it(bundle_copy: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    (bundle_copy / "torch" / "fold_0.safetensors").unlink()
    torch.save(_MarkerPayload(marker), bundle_copy / "torch" / "fold_0.pt")
    _relist(bundle_copy, "torch/fold_0.safetensors", "torch/fold_0.pt")
    with pytest.raises(BundleError, match=r"fold_0\.pt: refusing a pickle-like file"):
        load_bundle(bundle_copy)
    assert not marker.exists()


def test_unlisted_file_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / "lgbm" / "notes.txt").write_text("hello")
    with pytest.raises(BundleError, match=r"lgbm/notes\.txt: file is not listed"):
        load_bundle(bundle_copy)


def test_stray_pickle_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / "scaler.joblib").write_bytes(b"\x80\x04N.")
    with pytest.raises(BundleError, match=r"scaler\.joblib: refusing a pickle-like file"):
        load_bundle(bundle_copy)


def test_wrong_format_version_is_refused(bundle_copy: Path) -> None:
    _rewrite_manifest(bundle_copy, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    newer = rf"manifest\.json: format_version {FORMAT_VERSION + 1} is not supported"
    with pytest.raises(BundleError, match=newer):
        load_bundle(bundle_copy)
    # An unsealed bundle of the first format is refused as such (rebuild it).
    _rewrite_manifest(bundle_copy, lambda m: m.update(format_version=1), reseal=False)
    with pytest.raises(BundleError, match=r"format_version 1 is not supported.*rebuild"):
        load_bundle(bundle_copy)
    # So is a sealed one of the format before Torch members (one model per fold).
    _rewrite_manifest(bundle_copy, lambda m: m.update(format_version=2))
    with pytest.raises(BundleError, match=r"format_version 2 is not supported.*rebuild"):
        load_bundle(bundle_copy)


def test_missing_and_malformed_bundles_are_refused(bundle_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="bundle directory not found"):
        load_bundle(tmp_path / "nowhere")
    (bundle_copy / "lgbm" / "fold_0.txt").unlink()
    with pytest.raises(BundleError, match=r"fold_0\.txt: listed in the manifest but missing"):
        load_bundle(bundle_copy)
    (bundle_copy / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(BundleError, match=r"manifest\.json: not valid JSON"):
        load_bundle(bundle_copy)
    (bundle_copy / MANIFEST_NAME).unlink()
    with pytest.raises(BundleError, match=r"manifest\.json: not found"):
        load_bundle(bundle_copy)


def test_paths_outside_the_bundle_are_refused(bundle_copy: Path) -> None:
    def escape(manifest: dict) -> None:
        manifest["files"]["../outside.txt"] = manifest["files"].pop("lgbm/fold_0.txt")
        manifest["lgbm"]["folds"][0]["model"] = "../outside.txt"

    (bundle_copy / "lgbm" / "fold_0.txt").unlink()
    _rewrite_manifest(bundle_copy, escape)
    with pytest.raises(BundleError, match=r"unsafe file path '\.\./outside\.txt'"):
        load_bundle(bundle_copy)


def test_bundle_error_is_a_value_error() -> None:
    assert issubclass(BundleError, ValueError)  # the CLI turns ValueErrors into exit code 2


# ------------------------------------------------------------------------------- the seal


def _edit_value(manifest: dict, dotted: str, value) -> None:
    node = manifest
    *parents, last = dotted.split(".")
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = value


# Each edit would load without a word before the seal (and change what inference computes).
SEAL_EDITS = {
    "scaler mean": ("torch.members.0.scaler.mean", [0.0] * 3, "torch.members"),
    "pad_len": ("torch.pad_len", 7, "torch.pad_len"),
    "blend weights": ("blend.default", {"lgbm": 0.9, "torch": 0.1}, "blend.default"),
    "feature order": ("lgbm.feature_names", None, "lgbm.feature_names"),
    "extract params": ("extract.n_segments", 4, "extract.n_segments"),
    "a file's checksum": ("files.lgbm/fold_0.txt", None, "files.lgbm/fold_0.txt"),
    "a new key": ("notes", "hello", "added: notes"),
}


@pytest.mark.parametrize("case", list(SEAL_EDITS))
def test_any_manifest_edit_is_refused_naming_the_key(bundle_copy: Path, case: str) -> None:
    dotted, value, named = SEAL_EDITS[case]

    def edit(manifest: dict) -> None:
        if case == "feature order":
            names = manifest["lgbm"]["feature_names"]
            names[0], names[1] = names[1], names[0]
        elif case == "a file's checksum":
            manifest["files"]["lgbm/fold_0.txt"]["sha256"] = "0" * 64
        else:
            _edit_value(manifest, dotted, value)

    _rewrite_manifest(bundle_copy, edit, reseal=False)
    with pytest.raises(BundleError, match=r"manifest\.json: the manifest was changed") as err:
        load_bundle(bundle_copy, parts=("lgbm",))
    assert named in str(err.value)


def test_a_resealed_table_without_its_digest_is_refused(bundle_copy: Path) -> None:
    """Editing content and the seal's per-key hashes, but not its digest, is still caught."""
    manifest = read_json(bundle_copy / MANIFEST_NAME)
    manifest["torch"]["pad_len"] = 7
    forged = seal_manifest(manifest)
    forged["seal"]["digest"] = manifest["seal"]["digest"]
    (bundle_copy / MANIFEST_NAME).write_text(json.dumps(forged))
    with pytest.raises(BundleError, match="the seal itself was edited"):
        load_bundle(bundle_copy)
    del forged["seal"]
    (bundle_copy / MANIFEST_NAME).write_text(json.dumps(forged))
    with pytest.raises(BundleError, match="not sealed"):
        load_bundle(bundle_copy)


def test_digest_names_the_bundle_and_can_be_pinned(fake_bundle: Path, tmp_path: Path) -> None:
    bundle = load_bundle(fake_bundle)
    digest = manifest_digest(read_json(fake_bundle / MANIFEST_NAME))
    assert bundle.digest == digest and digest.startswith("sha256:") and len(digest) == 71
    assert load_bundle(fake_bundle, expected_digest=digest).digest == digest
    # Another valid bundle (one fold fewer) has another digest and is refused when pinned.
    other = build_fake_bundle(tmp_path, n_folds=1)
    assert load_bundle(other).digest != digest
    with pytest.raises(BundleError, match=f"is not the pinned {digest}"):
        load_bundle(other, expected_digest=digest)
    # Pretty-printing the manifest (whitespace, key order) is not an edit.
    manifest = read_json(fake_bundle / MANIFEST_NAME)
    copy = Path(shutil.copytree(fake_bundle, tmp_path / "pretty"))
    (copy / MANIFEST_NAME).write_text(json.dumps(dict(reversed(manifest.items())), indent=4))
    assert load_bundle(copy, expected_digest=digest).digest == digest


def test_same_models_same_digest(tmp_path: Path) -> None:
    first = load_bundle(build_fake_bundle(tmp_path / "a")).digest
    assert load_bundle(build_fake_bundle(tmp_path / "b")).digest == first


def test_bundle_stage_prints_the_digest(tmp_path: Path) -> None:
    write_fake_models(tmp_path)
    result = run_stage("bundle.py", tmp_path)
    digest = load_bundle(tmp_path / "models" / "bundle").digest
    assert f"bundle digest: {digest}" in result.stdout
