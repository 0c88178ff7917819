"""One subject-grouped, gesture-stratified CV split shared by every model.

The folds table (``data/folds/folds.parquet``: sequence_id, fold) is checked against the
sequences table where the model stages read both: ``cmi.sequences.labeled_folds``."""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl
from sklearn.model_selection import StratifiedGroupKFold

from cmi.params import CVParams


def assign_folds(sequences: pl.DataFrame, cv: CVParams) -> pl.DataFrame:
    """``sequence_id -> fold`` with no subject in two folds, deterministic for ``cv.seed``.

    ``sequences`` needs sequence_id, subject and label. The output is sorted by sequence_id so
    it does not depend on the input's row order.
    """
    ordered = sequences.select("sequence_id", "subject", "label").sort("sequence_id")
    n_subjects = ordered.get_column("subject").n_unique()
    if n_subjects < cv.n_splits:
        raise ValueError(
            f"cv.n_splits={cv.n_splits} but only {n_subjects} subjects: "
            "lower cv.n_splits in params.yaml"
        )
    splitter = StratifiedGroupKFold(n_splits=cv.n_splits, shuffle=True, random_state=cv.seed)
    fold = np.full(ordered.height, -1, dtype=np.int64)
    labels = ordered.get_column("label").to_numpy()
    groups = ordered.get_column("subject").to_numpy()
    with warnings.catch_warnings():
        # sklearn warns when a class has fewer members than folds; that is expected and fine.
        warnings.simplefilter("ignore", UserWarning)
        for k, (_, valid) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
            fold[valid] = k
    return ordered.select("sequence_id").with_columns(pl.Series("fold", fold, dtype=pl.Int32))
