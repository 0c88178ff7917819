"""Training batches of one epoch (order, modality dropout, augmentation) and their loss.

A batch is drawn whole (``_EpochBatches``: no per-row collation) from the training part's
arrays. With an ``Augmenter`` each batch is augmented where it is made (in a DataLoader
worker, when there are some) from a generator seeded by (member seed, fold, epoch, rank,
batch index): the epoch is the same whichever worker made which batch, and a resumed epoch
draws what an uninterrupted one drew.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from cmi.nn.augment import AugmentedBatch, Augmenter
from cmi.nn.data import FILL_VALUE
from cmi.nn.fold_data import PaddedPart
from cmi.nn.runtime import derive_seed


def epoch_batches(
    n: int,
    batch_size: int,
    generator: torch.Generator,
    world_size: int = 1,
    lengths: torch.Tensor | None = None,
    bucket_batches: int = 0,
) -> list[torch.Tensor]:
    """Shuffled index batches; a last batch too small to give every rank a row is dropped.

    With ``bucket_batches`` >= 2 and the rows' ``lengths``, the shuffled rows are cut into
    chunks of ``bucket_batches`` batches, each chunk is sorted by length and cut into batches,
    and the batches are shuffled: a batch then holds sequences of similar length, and the
    network (which cuts a batch after its longest sequence) runs far fewer padded steps.
    The number and sizes of batches are those of the plain shuffle.
    """
    perm = torch.randperm(n, generator=generator)
    if bucket_batches < 2 or lengths is None:
        batches = list(torch.split(perm, batch_size))
    else:
        batches = []
        for chunk in torch.split(perm, batch_size * bucket_batches):
            order = torch.sort(lengths[chunk], stable=True).indices
            batches.extend(torch.split(chunk[order], batch_size))
        last = batches.pop() if len(batches[-1]) < batch_size else None
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[i] for i in shuffled] + ([last] if last is not None else [])
    if batches and len(batches[-1]) < world_size:
        batches.pop()
    return batches


def steps_per_epoch(n: int, batch_size: int, world_size: int = 1) -> int:
    steps = math.ceil(n / batch_size)
    last = n - (steps - 1) * batch_size
    return steps - (1 if steps and last < world_size else 0)


def training_tensors(part: PaddedPart) -> tuple[torch.Tensor, ...]:
    """x, mask, y and orientation (-1 where unknown) of a training part, as CPU tensors."""
    orientation = part.orientation
    if orientation is None:
        orientation = np.full(len(part), -1, dtype=np.int64)
    return tuple(torch.from_numpy(a) for a in (part.x, part.mask, part.y, orientation))


class EpochBatches(Dataset):
    """Each item is a whole batch (DataLoader with batch_size=None).

    Without an augmenter an item is the rows' tensors, as given; with one it is
    ``(x, mask, y_a, y_b, orientation_a, orientation_b, lam, *rest)`` after augmentation
    (``rest``: the tensors after the first four, e.g. the modality dropout flags).
    """

    def __init__(
        self,
        tensors: tuple[torch.Tensor, ...],
        batches: list[torch.Tensor],
        augmenter: Augmenter | None = None,
        seed_parts: tuple[int | str, ...] = (),
    ) -> None:
        self.tensors = tensors
        self.batches = batches
        self.augmenter = augmenter
        self.seed_parts = seed_parts

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        idx = self.batches[i]
        rows = tuple(t[idx] for t in self.tensors)
        if self.augmenter is None:
            return rows
        x, mask, y, orientation, *rest = rows
        rng = np.random.default_rng(derive_seed(*self.seed_parts, "augment", i))
        batch = self.augmenter(rng, x.numpy(), mask.numpy(), y.numpy(), orientation.numpy())
        return (*augmented_tensors(batch), *rest)


def augmented_tensors(batch: AugmentedBatch) -> tuple[torch.Tensor, ...]:
    return tuple(
        torch.from_numpy(np.ascontiguousarray(a))
        for a in (
            batch.x,
            batch.mask,
            batch.y_a,
            batch.y_b,
            batch.orientation_a,
            batch.orientation_b,
            batch.lam,
        )
    )


def apply_modality_dropout(
    x: torch.Tensor, drop: torch.Tensor, modality_idx: torch.Tensor
) -> torch.Tensor:
    """thm/tof channels of the ``drop`` rows set to FILL_VALUE, as in a real IMU-only sequence."""
    if modality_idx.numel() == 0 or not bool(drop.any()):
        return x
    x = x.clone()
    rows = drop.nonzero(as_tuple=True)[0]
    x[rows[:, None], :, modality_idx[None, :]] = FILL_VALUE
    return x


def mixed_cross_entropy(
    logits: torch.Tensor,
    target_a: torch.Tensor,
    target_b: torch.Tensor,
    lam: torch.Tensor,
    smoothing: float,
) -> torch.Tensor:
    """Label-smoothed cross entropy against lam * onehot(a) + (1 - lam) * onehot(b), the
    mean over rows whose two targets are known (>= 0); 0 (with a gradient) if none is."""
    known = (target_a >= 0) & (target_b >= 0)
    if not bool(known.any()):
        return logits.sum() * 0.0
    n_classes = logits.shape[1]
    a = F.one_hot(target_a[known], n_classes).to(logits.dtype)
    b = F.one_hot(target_b[known], n_classes).to(logits.dtype)
    weight = lam[known].to(logits.dtype)[:, None]
    soft = weight * a + (1 - weight) * b
    return F.cross_entropy(logits[known], soft, label_smoothing=smoothing)
