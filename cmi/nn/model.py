"""TimeSeriesNet: Conv1d blocks -> BiLSTM -> GRU -> masked attention pooling -> 18 logits
(and, with ``n_orientations``, an auxiliary orientation head on the same pooled vector).

A sequence's output depends on its real steps only, not on how much padding surrounds them
or where (in eval mode; up to float rounding). The real steps are first moved to the start
of the time axis (``left_aligned``) and the axis is cut after the batch's longest sequence, so:
convolutions see zeros beyond the real steps exactly as their own zero padding; every max-pool
window starts at a fixed offset from the first real step; the forward recurrences (LSTM, GRU)
meet the real steps before any padding, and the LSTM's backward direction runs over each row's
real steps reversed (``reversed_real_steps``), so no recurrent state ever passes through a
padded step before a real one. Padded steps get exactly zero attention weight.

That is what lets training batch sequences of similar length (``torch.bucket_batches``) and
inference run a sequence at its own length: a batch costs its longest sequence, not pad_len.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from cmi.io import write_with
from cmi.schema import N_CLASSES, ORIENTATIONS

# Feature and mask time axes are halved this many times (MaxPool1d(2, ceil_mode=True) each).
N_POOLS = 2
# Classes of the auxiliary orientation head, in schema.ORIENTATIONS order.
N_ORIENTATIONS = len(ORIENTATIONS)
_WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")
# log(length) minus this is about 0 for the data's typical 55-step sequence.
LOG_LENGTH_CENTER = 4.0


class ConvBlock(nn.Module):
    """Conv1d -> BatchNorm -> GELU -> channel dropout (Dropout1d: one draw per channel, which
    regularizes like element dropout here at a fraction of its CPU cost)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm = nn.BatchNorm1d(out_channels)
        self.dropout = nn.Dropout1d(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, T); the caller re-masks the padded steps.
        return self.dropout(F.gelu(self.norm(self.conv(x))))


def masked_max_pool(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MaxPool1d(2, ceil_mode=True) of features (B, C, T) and mask (B, T), same windows.

    A window with a real step takes the max over its real steps only; an all-padded window
    stays padded (and zero). An odd T keeps its last half window (ceil mode): the steps are
    padded with one masked step, then pairs are reduced (cheaper than max_pool1d on CPU).
    """
    filled = x.masked_fill(~mask[:, None, :], float("-inf"))
    if x.shape[-1] % 2:
        filled = F.pad(filled, (0, 1), value=float("-inf"))
        mask = F.pad(mask, (0, 1), value=False)
    batch, channels, steps = filled.shape
    pooled = filled.view(batch, channels, steps // 2, 2).amax(dim=-1)
    pooled_mask = mask.view(batch, steps // 2, 2).any(dim=-1)
    return pooled.masked_fill(~pooled_mask[:, None, :], 0.0), pooled_mask


def left_aligned(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's real steps (one contiguous run per row: padding before and/or after it)
    moved to the start of the time axis, and the axis cut after the longest row.

    x (B, T, C), mask (B, T) -> x (B, T*, C), mask (B, T*) with T* = the most real steps of
    any row (at least 1). Steps after a row's real ones are padding (masked).
    """
    lengths = mask.sum(dim=1)
    width = max(int(lengths.max()), 1) if mask.shape[0] else 1
    if width == mask.shape[1] and bool(mask.all()):
        return x, mask  # nothing to move (every row is all real steps)
    first = mask.to(torch.uint8).argmax(dim=1)  # first real step (0 for an all-padded row)
    steps = torch.arange(width, device=mask.device)
    index = (first[:, None] + steps[None, :]).clamp(max=mask.shape[1] - 1)
    aligned = steps[None, :] < lengths[:, None]
    moved = x.gather(1, index[..., None].expand(-1, -1, x.shape[2]))
    return moved, aligned


def reversed_real_steps(h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, T, C) left-aligned rows with their first ``lengths`` steps in reverse order; the
    steps after them stay where they are. Applied twice it gives back ``h``."""
    steps = torch.arange(h.shape[1], device=h.device)[None, :]
    index = torch.where(steps < lengths[:, None], lengths[:, None] - 1 - steps, steps)
    return h.gather(1, index[..., None].expand(-1, -1, h.shape[2]))


def pooled_length(steps: int, n_pools: int) -> int:
    """Time steps left after ``n_pools`` MaxPool1d(2, ceil_mode=True)."""
    for _ in range(n_pools):
        steps = -(-steps // 2)
    return steps


def pooled_mask(mask: torch.Tensor, n_pools: int) -> torch.Tensor:
    """The mask after ``n_pools`` masked max-pools (what the attention sees)."""
    for _ in range(n_pools):
        mask = F.max_pool1d(mask[:, None, :].float(), 2, 2, ceil_mode=True)[:, 0] > 0
    return mask


class MaskedAttentionPool(nn.Module):
    """Additive attention over time; padded steps get weight exactly 0."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.score(h).squeeze(-1).float()
        # A row with no real step would softmax to NaN; let it softmax over everything and
        # zero it afterwards, so its pooled vector is 0 and gradients stay finite.
        has_real = mask.any(dim=1, keepdim=True)
        logits = logits.masked_fill(~(mask | ~has_real), float("-inf"))
        weights = torch.softmax(logits, dim=1) * mask
        pooled = torch.einsum("bt,btd->bd", weights.to(h.dtype), h)
        return pooled, weights


class TimeSeriesNet(nn.Module):
    """forward(x (B, T, C) float32, mask (B, T) bool, True = real step) -> logits (B, 18).

    ``conv_channels`` gives one ConvBlock per entry; the first ``N_POOLS`` blocks are each
    followed by a masked MaxPool1d(2). The BiLSTM and the (unidirectional) GRU run over the
    pooled steps; padded steps are zeroed between them. ``n_orientations`` > 0 adds
    ``orientation_head`` (training's auxiliary task, ``forward_heads``); ``forward`` still
    returns the gesture logits only, so inference code need not know about it.
    ``length_input`` appends the sequence's length (log of its real steps, centred) to the
    pooled vector the heads read: attention pooling averages over steps, so without it the
    network hardly sees how long a gesture took.
    """

    def __init__(
        self,
        n_channels: int,
        n_classes: int = N_CLASSES,
        conv_channels: Sequence[int] = (64, 128),
        lstm_hidden: int = 64,
        gru_hidden: int = 64,
        dropout: float = 0.3,
        n_orientations: int = 0,
        length_input: bool = False,
    ) -> None:
        super().__init__()
        if n_channels < 1 or not conv_channels:
            raise ValueError("TimeSeriesNet needs n_channels >= 1 and at least one conv block")
        widths = [n_channels, *conv_channels]
        self.blocks = nn.ModuleList(
            ConvBlock(widths[i], widths[i + 1], dropout) for i in range(len(conv_channels))
        )
        self.n_pools = min(N_POOLS, len(conv_channels))
        # The BiLSTM as two one-way LSTMs: the backward one reads each row's real steps in
        # reverse, which one bidirectional call over a padded batch cannot do.
        self.lstm_forward = nn.LSTM(widths[-1], lstm_hidden, batch_first=True)
        self.lstm_backward = nn.LSTM(widths[-1], lstm_hidden, batch_first=True)
        self.gru = nn.GRU(2 * lstm_hidden, gru_hidden, batch_first=True)
        self.attention = MaskedAttentionPool(gru_hidden)
        self.length_input = bool(length_input)
        pooled_width = gru_hidden + (1 if self.length_input else 0)
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(pooled_width, gru_hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(gru_hidden, n_classes),
        )
        self.n_classes = n_classes
        # Built last: without it the modules (and the seeded initial weights) are unchanged.
        self.orientation_head = (
            nn.Sequential(nn.Dropout(dropout), nn.Linear(pooled_width, n_orientations))
            if n_orientations > 0
            else None
        )

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, heads: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Gesture logits; with ``heads`` (training through DDP/DataParallel wrappers, which
        only forward ``forward``) the pair of ``forward_heads``."""
        if heads:
            return self.forward_heads(x, mask)
        return self.forward_with_attention(x, mask)[0]

    def forward_heads(
        self, x: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gesture logits (B, 18) and orientation logits (B, n_orientations)."""
        if self.orientation_head is None:
            raise ValueError("forward_heads: this TimeSeriesNet has no orientation head")
        pooled, _, _ = self._pooled(x, mask)
        return self.head(pooled), self.orientation_head(pooled)

    def forward_with_attention(
        self, x: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """logits (B, n_classes), attention weights (B, T') and the pooled mask (B, T').

        T' is T pooled ``n_pools`` times. Weights and mask are left-aligned: pooled step j
        covers real steps j * 2**n_pools onwards of the row, whatever its padding was.
        """
        steps = x.shape[1]
        pooled, weights, mask = self._pooled(x, mask)
        full = pooled_length(steps, self.n_pools)
        weights = F.pad(weights, (0, full - weights.shape[1]))
        mask = F.pad(mask, (0, full - mask.shape[1]), value=False)
        return self.head(pooled), weights, mask

    def _pooled(
        self, x: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The attention-pooled representation (B, gru_hidden [+ 1]) every head reads, the
        attention weights and the pooled mask (both left-aligned, cut after the longest row)."""
        x, mask = left_aligned(x, mask.bool())
        n_steps = mask.sum(dim=1)
        h = x.masked_fill(~mask[..., None], 0.0).transpose(1, 2)  # (B, C, T)
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i < self.n_pools:
                h, mask = masked_max_pool(h, mask)  # also zeroes the padded steps
            else:
                h = h * mask[:, None, :].to(h.dtype)  # finite here: a product is safe and cheap
        h = h.transpose(1, 2)  # (B, T', C)
        lengths = mask.sum(dim=1)
        forward, _ = self.lstm_forward(h)
        backward, _ = self.lstm_backward(reversed_real_steps(h, lengths))
        h = torch.cat([forward, reversed_real_steps(backward, lengths)], dim=2)
        h = h * mask[..., None].to(h.dtype)
        h, _ = self.gru(h)
        pooled, weights = self.attention(h, mask)
        if self.length_input:
            length = torch.log(n_steps.clamp(min=1).to(pooled.dtype)) - LOG_LENGTH_CENTER
            pooled = torch.cat([pooled, length[:, None]], dim=1)
        return pooled, weights, mask


def architecture_kwargs(
    n_channels: int,
    conv_channels: Sequence[int],
    lstm_hidden: int,
    gru_hidden: int,
    dropout: float,
    n_orientations: int = 0,
    length_input: bool = False,
) -> dict[str, Any]:
    """JSON-ready kwargs of TimeSeriesNet (meta.json "architecture"); ``n_orientations`` and
    ``length_input`` appear only when used."""
    kwargs: dict[str, Any] = {
        "n_channels": int(n_channels),
        "n_classes": N_CLASSES,
        "conv_channels": [int(c) for c in conv_channels],
        "lstm_hidden": int(lstm_hidden),
        "gru_hidden": int(gru_hidden),
        "dropout": float(dropout),
    }
    if n_orientations > 0:
        kwargs["n_orientations"] = int(n_orientations)
    if length_input:
        kwargs["length_input"] = True
    return kwargs


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop `module.` (DataParallel/DDP) and `_orig_mod.` (torch.compile) key prefixes."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DataParallel / DDP / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Prefix-free CPU copy of a (possibly wrapped) model's weights."""
    state = unwrap(model).state_dict()
    return {k: v.detach().to("cpu", copy=True) for k, v in strip_prefixes(state).items()}


def torch_save_writer(obj: Any) -> Callable[[Path], None]:
    """A writer (for ``cmi.io.write_with`` / the checkpoint store) that torch.saves ``obj``.

    torch.save given a path names its zip archive after that (temp) file, so identical
    tensors hashed differently (DVC saw a change, tests saw a diff). Through a file handle
    the archive is always named "archive": the bytes depend only on the contents.
    """

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)

    return write


def save_state_dict(state: dict[str, torch.Tensor], path: Path | str) -> Path:
    """Atomically write a state_dict whose bytes depend only on the tensors."""
    return write_with(Path(path), torch_save_writer(state))


def load_state_dict_file(path: Path | str) -> dict[str, torch.Tensor]:
    """Weights saved by the torch stage, loaded without unpickling code, prefixes stripped."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state_dict of tensors")
    return strip_prefixes(state)
