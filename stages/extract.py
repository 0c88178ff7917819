"""DVC stage `extract`: validated raw CSVs -> sequence table, LightGBM and Torch features.

Reads data/raw (train and test files are both validated; only train gets features, computed
while train.csv parses: ``cmi.extract``), then writes
data/features/{sequences,sequence_features,frame_features}.parquet and wear_model.json (the
upside-down detector with ``extract.fix_upside_down``, else ``{"enabled": false}``).
Everything is computed before anything is written, so a bad input leaves earlier outputs
untouched.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cmi.extract import extract_to
from cmi.params import load_params
from cmi.paths import ProjectPaths
from cmi.schema import SchemaError

log = logging.getLogger("cmi.stages.extract")


@contextmanager
def _timed(step: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    log.info("%s: %.1f s", step, time.perf_counter() - start)


def main(root: Path = Path(".")) -> None:
    paths = ProjectPaths(root)
    params = load_params(paths.params).extract
    with _timed("read + validate raw CSVs, features while parsing, write parquet"):
        outputs = extract_to(paths, params)
    sequences, features = outputs.sequences, outputs.features
    groups = dict(sequences.group_by("sensor_group").len().iter_rows())
    log.info(
        "%d sequences %s, %d sequence features, %d frame channels",
        sequences.height,
        groups,
        features.sequence_features.width - 1,
        features.frame_features.width - 2,
    )
    if outputs.wear is not None:
        log.info(
            "upside-down wearers rotated back: %s (%d sequences; rule: mean score > %.2f "
            "after %d sequences)",
            list(outputs.wear.upside_down_subjects) or "none",
            int(sequences["upside_down"].sum()),
            outputs.wear.model.threshold,
            outputs.wear.model.min_sequences,
        )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        main()
    except SchemaError as err:
        log.error("%s", err)
        sys.exit(1)
