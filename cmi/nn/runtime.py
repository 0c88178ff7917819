"""Where and how Torch runs: device, threads, DDP (torchrun), seeding and RNG snapshots.

Reproducibility rests on two rules used by ``cmi.nn.train``: every random draw of an epoch
comes from ``derive_seed(seed, fold, epoch, purpose)`` (so an epoch does not depend on what
ran before it in the process), and an epoch checkpoint carries ``rng_state()`` so a resumed
run continues from exactly the RNG state an uninterrupted one would have.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger("cmi.nn.runtime")


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job; world_size 1 = a plain single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class Runtime:
    """The device, the DDP place and the intra-op thread count of this process."""

    device: torch.device
    dist: Distributed
    threads: int

    def barrier(self) -> None:
        """Wait for every rank (no-op in a plain run)."""
        if self.dist.enabled:
            torch.distributed.barrier()


def distributed_from_env(environ: dict[str, str] | None = None) -> Distributed:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; a plain run has none of them."""
    env = os.environ if environ is None else environ
    world_size = int(env.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    return Distributed(int(env["RANK"]), world_size, int(env.get("LOCAL_RANK", "0")))


def resolve_device(name: str, dist: Distributed | None = None) -> torch.device:
    """'auto' -> cuda if available else cpu; under torchrun each rank gets cuda:local_rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and dist is not None and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    return device


def usable_cores() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores or 1)


# Intra-op threads of a CPU training process outside torchrun. One: this network trains
# faster on 1 thread than on 2 (bench/torch_train.py), so cores go to members trained side by
# side (cmi.nn.parallel); and a CPU result then does not depend on the machine's core count.
CPU_THREADS = 1


def configure_torch(
    device: torch.device, dist: Distributed | None = None, threads: int | None = None
) -> int:
    """Intra-op threads (``threads``; by default CPU_THREADS on CPU outside torchrun, else the
    usable cores shared between local ranks); deterministic kernels where possible."""
    ranks = dist.world_size if dist and dist.enabled else 1
    if threads is None:
        plain_cpu = device.type == "cpu" and ranks == 1
        threads = CPU_THREADS if plain_cpu else max(1, usable_cores() // ranks)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return threads


@contextmanager
def torch_runtime(device_name: str) -> Iterator[Runtime]:
    """Set up this process for training (and tear DDP down after).

    Several GPUs: run under ``torchrun --nproc_per_node=N`` (DDP, one GPU per rank); a plain
    run over several visible GPUs uses DataParallel (see ``wrap_model``).
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    dist = distributed_from_env()
    if not dist.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # one rank tells the story
    device = resolve_device(device_name, dist)
    if dist.enabled:
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # one GPU per torchrun rank
    threads = configure_torch(device, dist)
    log.info("device %s, %d threads, world size %d", device, threads, dist.world_size)
    try:
        yield Runtime(device, dist, threads)
    finally:
        if dist.enabled:
            torch.distributed.destroy_process_group()


def wrap_model(model: nn.Module, device: torch.device, dist: Distributed) -> nn.Module:
    """DDP under torchrun; DataParallel over several visible GPUs; else the model itself."""
    if dist.enabled:
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if device.type == "cuda" and torch.cuda.device_count() > 1:
        return nn.DataParallel(model)
    return model


# ----------------------------------------------------------------------------- seeding
def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from (seed, fold, epoch, purpose...), independent of run history."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as weights_only-safe lists and tensors."""
    py_version, py_internal, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": [
            np_kind,
            torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            int(np_pos),
            int(np_has_gauss),
            float(np_gauss),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py_version, py_internal, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_internal), py_gauss))
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    keys = np.asarray(np_keys.numpy(), dtype=np.uint32)
    np.random.set_state((np_kind, keys, np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
