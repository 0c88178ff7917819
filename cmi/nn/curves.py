"""Per-epoch training curves through dvclive, so `dvc plots` and VS Code see them live.

``dvclive/torch/`` is a dvclive folder: ``plots/metrics/<member>/<curve>.tsv`` (columns
``step`` = epoch and the curve, one file per member (``fold_{k}`` for a fold's single
model, ``cmi.nn.members`` names the others) and curve in ``CURVE_COLUMNS``) and
``metrics.json`` (dvclive's summary, kept small here: where training is and how the inner
fold scores). dvc.yaml declares both, so `dvc exp show` sees progress during a run too.

Under `dvc repro` / `dvc exp run` this never creates an experiment (``save_dvc_exp=False``)
and never writes a dvc.yaml (``dvcyaml=False``): the stage's own dvc.yaml entry declares the
files. A resumed stage starts a fresh folder and replays the curves of restored epochs from
the checkpoints before new epochs are logged, so the files end up identical to an
uninterrupted run's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from cmi.nn.members import Member
from cmi.nn.train import CURVE_COLUMNS

log = logging.getLogger("cmi.nn.curves")


class EpochCurves:
    """``on_epoch`` hook for ``cmi.nn.cv.run_torch_cv`` that logs each row with dvclive."""

    def __init__(self, directory: Path) -> None:
        try:
            from dvclive import Live
        except ImportError as error:  # the pipeline extra is missing
            raise ImportError(
                "the torch stage logs its curves with dvclive: pip install -e '.[pipeline]'"
            ) from error
        self.directory = Path(directory)
        self._live: Any = Live(
            str(self.directory), resume=False, save_dvc_exp=False, dvcyaml=False, report=None
        )
        self._best: dict[int, float] = {}

    def __call__(self, member: Member, row: list[float]) -> None:
        values = dict(zip(CURVE_COLUMNS, row, strict=True))
        epoch = int(values.pop("epoch"))
        self._live.step = epoch
        for name, value in values.items():
            self._live.log_metric(f"{member.name}/{name}", float(value))
        best = max(self._best.get(member.name, float("-inf")), values[member.selected_by])
        self._best[member.name] = best
        # The summary says where training is (the last row) rather than repeating every
        # fold's latest values: a handful of columns in `dvc exp show`.
        summary: dict[str, Any] = {"fold": member.fold}
        if member.name != f"fold_{member.fold}":
            summary["member"] = member.name
        self._live.summary = {
            **summary,
            "epoch": epoch,
            **values,
            f"best_{member.selected_by}": best,
        }
        self._live.next_step()

    def close(self) -> None:
        self._live.end()

    def __enter__(self) -> EpochCurves:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@contextmanager
def epoch_curves(directory: Path, enabled: bool = True) -> Iterator[EpochCurves | None]:
    """EpochCurves on ``directory`` (closed after), or None where not ``enabled`` (DDP ranks
    other than 0 log nothing)."""
    if not enabled:
        yield None
        return
    with EpochCurves(directory) as curves:
        yield curves
