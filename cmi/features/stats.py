"""Per-sequence statistics of frame channels: (channels, rows) -> (sequences, features).

Channel-major layout throughout: numpy's reduceat over contiguous rows is ~6x faster than
over columns. A block of many sequences and a single sequence run the same operations.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from cmi.features.groups import Groups
from cmi.features.names import QUANTILES, SEGMENT_STATS, WHOLE_STATS

# Padded (sequence, frame) slots sorted at once: it bounds memory, and smaller chunks hold
# sequences of closer lengths, so less NaN padding is sorted (a 4,096-row block of the full
# data: 16,384 -> 2,048 slots, with the gather below, cut its quantiles from 40 to 19 ms).
_QUANTILE_SLOTS = 2_048


def _length_chunks(counts: np.ndarray) -> Iterator[np.ndarray]:
    """Group indices in order of length, in chunks whose padded size (number of groups times
    the longest) stays within ``_QUANTILE_SLOTS`` (a single long group may exceed it)."""
    order = np.argsort(counts, kind="stable")
    order = order[counts[order] > 0]
    lengths = counts[order]
    first = 0
    while first < len(order):
        padded = np.arange(1, len(order) - first + 1) * lengths[first:]
        stop = first + max(1, int(np.searchsorted(padded, _QUANTILE_SLOTS, side="right")))
        yield order[first:stop]
        first = stop


def group_quantiles(
    channels: np.ndarray, groups: Groups, quantiles: Sequence[float]
) -> list[np.ndarray]:
    """Per-group linear-interpolated quantiles (numpy's default); (C, R) -> [(C, G)].

    Groups of similar length are NaN-padded to a common length and sorted along time: many
    short sorts are far cheaper than one sort of the whole table, and one sequence is simply
    a chunk of one. A channel that is NaN in a group is NaN in all of that group's rows
    (callers fill gaps first), so the NaN padding, sorted to the end, never mixes with real
    values.
    """
    n_channels, n_groups = channels.shape[0], len(groups.counts)
    out = [np.full((n_channels, n_groups), np.nan) for _ in quantiles]
    # one NaN column past the last row: padding slots gather it (a plain take, no mask)
    with_nan = np.concatenate([channels, np.full((n_channels, 1), np.nan)], axis=1)
    for chunk in _length_chunks(groups.counts):
        counts = groups.counts[chunk]
        steps = np.arange(counts.max())
        inside = steps[None, :] < counts[:, None]
        rows = np.where(inside, groups.starts[chunk][:, None] + steps[None, :], channels.shape[1])
        padded = np.take(with_nan, rows, axis=1)  # (C, groups of the chunk, longest)
        padded.sort(axis=2)
        which = np.arange(len(chunk))
        for result, q in zip(out, quantiles, strict=True):
            position = q * (counts - 1)
            below = np.floor(position).astype(np.int64)
            above = np.minimum(below + 1, counts - 1)
            low, high = padded[:, which, below], padded[:, which, above]
            result[:, chunk] = low + (position - below) * (high - low)
    return out


def group_stats(
    channels: np.ndarray, groups: Groups, time_s: np.ndarray, stats: Sequence[str]
) -> dict[str, np.ndarray]:
    """Statistics of every channel over every group: (C, R) -> {stat: (C, G)}.

    Empty groups give NaN. std is the population std (ddof=0, defined for one frame); slope
    is the least-squares slope against time in seconds (NaN for one frame); energy is the
    mean of squares (as variance + mean^2, which saves a pass).
    """
    wanted = set(stats)
    n = groups.counts.astype(np.float64)
    empty = groups.counts == 0
    # reduceat needs in-range indices; an empty group's result is discarded below.
    starts = np.minimum(groups.starts, groups.n_rows - 1)
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        out["mean"] = np.add.reduceat(channels, starts, axis=1) / n
        if wanted & {"std", "energy", "slope"}:
            centered = channels - np.repeat(out["mean"], groups.counts, axis=1)
            scratch = np.empty_like(centered)  # one buffer for the products below
            variance = np.add.reduceat(np.square(centered, out=scratch), starts, axis=1) / n
            out["std"] = np.sqrt(variance)
            out["energy"] = variance + np.square(out["mean"])
        if wanted & {"min", "max", "range"}:
            out["min"] = np.minimum.reduceat(channels, starts, axis=1)
            out["max"] = np.maximum.reduceat(channels, starts, axis=1)
            out["range"] = out["max"] - out["min"]
        if "first" in wanted:
            out["first"] = channels[:, starts]
        if "last" in wanted:
            out["last"] = channels[:, np.maximum(groups.ends - 1, 0)]
        if "slope" in wanted:
            t_mean = np.add.reduceat(time_s, starts) / n
            t_centered = time_s - groups.per_row(t_mean)
            s_tt = np.add.reduceat(t_centered * t_centered, starts)
            products = np.multiply(centered, t_centered, out=scratch)
            s_tx = np.add.reduceat(products, starts, axis=1)
            out["slope"] = s_tx / np.where(s_tt > 0, s_tt, np.nan)
    wanted_quantiles = [name for name in QUANTILES if name in wanted]
    if wanted_quantiles:
        found = group_quantiles(channels, groups, [QUANTILES[q] for q in wanted_quantiles])
        out.update(zip(wanted_quantiles, found, strict=True))
    result = {stat: out[stat] for stat in stats}
    for array in result.values():
        array[:, empty] = np.nan
    return result


def sequence_statistics(
    channels: np.ndarray, groups: Groups, sampling_rate_hz: float, n_segments: int
) -> np.ndarray:
    """(C, R) frame channels of a block of whole sequences -> its (G, C * (len(WHOLE_STATS)
    + n_segments * len(SEGMENT_STATS))) sequence features, in feature-name order."""
    n_groups, n_channels = len(groups.counts), channels.shape[0]
    time_s = groups.index_in_group() / sampling_rate_hz
    whole = group_stats(channels, groups, time_s, WHOLE_STATS)
    parts = [np.stack([whole[s] for s in WHOLE_STATS], axis=2).transpose(1, 0, 2)]  # (G, C, S)
    if n_segments:
        seg = group_stats(channels, groups.segments(n_segments), time_s, SEGMENT_STATS)
        stacked = np.stack([seg[s] for s in SEGMENT_STATS], axis=2)  # (C, G * K, S_seg)
        stacked = stacked.reshape(n_channels, n_groups, n_segments * len(SEGMENT_STATS))
        parts.append(stacked.transpose(1, 0, 2))  # (G, C, K * S_seg), segment-major
    return np.concatenate(parts, axis=2).reshape(n_groups, -1)
