"""DVC stage `bundle`: everything inference needs in one sealed directory (models/bundle):
the gesture models (every Torch member: seeds, IMU-only models), the blend weights, the
orientation models and the post-processing settings (``postprocess.method``, ``mode``,
``combine``).

Prints the bundle's digest (``bundle digest: sha256:...``): `cmi package` pins it in the
Kaggle notebook, which refuses any other bundle.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cmi.bundle import PostprocessSettings
from cmi.bundle.builder import build_bundle
from cmi.params import load_params
from cmi.paths import ProjectPaths

log = logging.getLogger("cmi.stages.bundle")


def main(root: Path = Path(".")) -> None:
    paths = ProjectPaths(root)
    params = load_params(paths.params)
    pp = params.postprocess
    torch_dir = paths.torch_dir if (paths.torch_dir / "meta.json").exists() else None
    if torch_dir is None:
        log.warning("%s has no meta.json: building a LightGBM-only bundle", paths.torch_dir)
    manifest = build_bundle(
        out_dir=paths.bundle_dir,
        lgbm_dir=paths.lgbm_dir,
        torch_dir=torch_dir,
        blend_weights=paths.blend_dir / "weights.json",
        extract=params.extract,
        orientation_dir=paths.orientation_dir,
        postprocess=PostprocessSettings(pp.method, pp.mode, pp.combine),
        wear_model=paths.wear_model,
    )
    size = sum(f["size"] for f in manifest["files"].values())
    log.info(
        "%s: %d LightGBM folds, %d Torch folds (%d members), %d orientation folds, "
        "post-processing %s (%s), %d files, %.1f MB",
        paths.bundle_dir,
        manifest["lgbm"]["n_folds"],
        manifest["torch"]["n_folds"] if manifest["torch"] else 0,
        len(manifest["torch"]["members"]) if manifest["torch"] else 0,
        manifest["orientation"]["n_folds"] if manifest["orientation"] else 0,
        pp.method,
        pp.mode,
        len(manifest["files"]),
        size / 1e6,
    )
    # stdout, not the log: the one line a person copies (and `dvc repro` always shows).
    print(f"bundle digest: {manifest['seal']['digest']}", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main()
