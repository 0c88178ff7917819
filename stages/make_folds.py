"""DVC stage `folds`: one subject-grouped, gesture-stratified split for every model."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from cmi.folds import assign_folds
from cmi.io import write_parquet
from cmi.params import load_params
from cmi.paths import ProjectPaths

log = logging.getLogger("cmi.stages.folds")


def main(root: Path = Path(".")) -> None:
    paths = ProjectPaths(root)
    params = load_params(paths.params)
    sequences = pl.read_parquet(paths.sequences)
    folds = assign_folds(sequences, params.cv)
    write_parquet(folds, paths.folds)
    sizes = folds.group_by("fold").len().sort("fold")["len"].to_list()
    log.info("%d sequences in %d folds, sizes %s", folds.height, params.cv.n_splits, sizes)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main()
