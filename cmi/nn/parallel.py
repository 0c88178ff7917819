"""Torch members trained side by side on CPU: one process per core, one thread each.

This small network does not scale over intra-op threads on CPU (on 2 cores, 2 threads trained
an epoch x0.84-0.86 as fast as 1: bench/torch_train.py), while members (folds, seeds, the
IMU-only models) are independent. So on CPU every process trains with ONE intra-op thread
(``CPU_THREADS``) and ``torch.cpu_processes`` processes (0 = one per usable core) train the
members not yet finished. Each member's result depends only on its seeds and data, never on
how many processes ran or which one trained it: ``torch.cpu_processes`` is result-neutral.

Workers are spawned (not forked: OpenMP state does not survive a fork), get the training
data once, save every epoch and finished member to the checkpoint store like the sequential
path, and die with the stage (Linux: PR_SET_PDEATHSIG), so a killed stage leaves no
orphan writing checkpoints. A worker that dies (killed, out of memory) stops the stage with
an error; a rerun resumes every member from its checkpoints.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import torch

from cmi.checkpoint import CheckpointStore
from cmi.nn.fold_data import FoldInputs, prepare_fold
from cmi.nn.members import Member
from cmi.nn.runtime import CPU_THREADS, Distributed, Runtime, configure_torch, usable_cores
from cmi.nn.train import BatchHook, TorchFoldResult
from cmi.params import Params

log = logging.getLogger("cmi.nn.parallel")

_PR_SET_PDEATHSIG = 1


def cpu_processes(params: Params, runtime: Runtime, pending: int) -> int:
    """How many processes train the ``pending`` members: 1 off CPU or under torchrun."""
    if runtime.device.type != "cpu" or runtime.dist.enabled or pending < 2:
        return 1
    wanted = params.torch.cpu_processes or usable_cores()
    return max(1, min(wanted, pending))


@dataclass
class _WorkerState:
    """What a worker keeps between tasks: the data, once, and the last fold's inputs."""

    data: Any  # cmi.nn.cv.TorchTrainingData
    params: Params
    store: CheckpointStore | None
    on_batch: BatchHook | None
    fold: int = -1
    inputs: FoldInputs | None = None


_STATE: _WorkerState | None = None


def _die_with_parent() -> None:
    """Linux: the kernel SIGKILLs this worker when the stage process dies."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # no prctl: best effort
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _init_worker(
    data: Any,
    params: Params,
    store: CheckpointStore | None,
    on_batch: BatchHook | None,
    log_level: int,
) -> None:
    global _STATE
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the stage process handles it
    logging.basicConfig(level=log_level, format="%(asctime)s %(name)s: %(message)s")
    configure_torch(torch.device("cpu"), threads=CPU_THREADS)
    _STATE = _WorkerState(data, params, store, on_batch)


def _train_member(member: Member) -> TorchFoldResult:
    from cmi.nn.cv import train_member  # cv imports this module

    state = _STATE
    if state is None:  # pragma: no cover - only when called outside the pool
        raise RuntimeError("cmi.nn.parallel: worker used before its initializer ran")
    if state.fold != member.fold or state.inputs is None:
        data, torch_params = state.data, state.params.torch
        state.inputs = prepare_fold(
            data.frame_features, data.labeled, member.fold, data.channels, torch_params
        )
        state.fold = member.fold
    runtime = Runtime(torch.device("cpu"), Distributed(), CPU_THREADS)
    return train_member(
        state.inputs, member, state.params, runtime, state.store, state.on_batch, None
    )


def train_in_processes(
    data: Any,
    members: Sequence[Member],
    params: Params,
    store: CheckpointStore | None,
    processes: int,
    on_batch: BatchHook | None = None,
) -> dict[str, TorchFoldResult]:
    """Train ``members`` in ``processes`` spawned workers; their results by member name.

    A failing member's error is raised here and the other workers are stopped; members
    finished so far, and the last epoch of the others, are in ``store``.
    """
    log.info(
        "training %d members in %d processes (%d intra-op thread each)",
        len(members), processes, CPU_THREADS,
    )  # fmt: skip
    level = logging.getLogger().getEffectiveLevel()
    context = multiprocessing.get_context("spawn")
    results: dict[str, TorchFoldResult] = {}
    with ProcessPoolExecutor(
        processes,
        mp_context=context,
        initializer=_init_worker,
        initargs=(data, params, store, on_batch, level),
    ) as pool:
        futures = {pool.submit(_train_member, member): member for member in members}
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for future in done:
                error = future.exception()
                if error is not None:
                    raise error
            for future, member in futures.items():
                results[member.name] = future.result()
        except BrokenProcessPool as error:
            _stop(pool)
            raise RuntimeError(
                "a Torch training worker died (killed, or out of memory?); the members "
                "finished so far and the last epoch of the others are checkpointed: run "
                "the stage again to resume, or set torch.cpu_processes: 1"
            ) from error
        except BaseException:
            _stop(pool)
            raise
    return results


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel queued members and end running workers (their last epoch is checkpointed)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # gone after shutdown
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.kill()
