"""Contiguous row groups (one per sequence, or per segment of one) and gap filling in them.

After sorting by (sequence_id, sequence_counter) every sequence is a contiguous run of rows,
so a whole table is handled with vectorized numpy over all of its groups at once (no Python
loop per sequence), and a single sequence is simply a table of one group.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Groups:
    """Contiguous row blocks: group g is rows starts[g] .. starts[g] + counts[g] - 1."""

    starts: np.ndarray  # (G,) int64
    counts: np.ndarray  # (G,) int64
    n_rows: int

    @classmethod
    def from_ids(cls, sequence_ids: np.ndarray) -> Groups:
        """One group per run of equal ids (the rows must be sorted by id)."""
        change = np.ones(len(sequence_ids), dtype=bool)
        change[1:] = sequence_ids[1:] != sequence_ids[:-1]
        starts = np.flatnonzero(change).astype(np.int64)
        counts = np.diff(np.append(starts, len(sequence_ids))).astype(np.int64)
        return cls(starts, counts, len(sequence_ids))

    @property
    def ends(self) -> np.ndarray:
        return self.starts + self.counts

    def per_row(self, values: np.ndarray) -> np.ndarray:
        """Broadcast one value per group (G, ...) to its rows (R, ...)."""
        return np.repeat(values, self.counts, axis=0)

    def index_in_group(self) -> np.ndarray:
        return np.arange(self.n_rows, dtype=np.int64) - self.per_row(self.starts)

    def take(self, which: np.ndarray) -> tuple[np.ndarray, Groups]:
        """The rows of the groups ``which`` (a mask, or indices in any order), in that order,
        and those groups renumbered over just these rows."""
        counts = self.counts[which]
        new_starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        total = int(counts.sum())
        rows = np.arange(total, dtype=np.int64) + np.repeat(self.starts[which] - new_starts, counts)
        return rows, Groups(new_starts, counts, total)

    def blocks(self, max_rows: int) -> Iterator[tuple[slice, slice, Groups]]:
        """Consecutive blocks of whole groups of about ``max_rows`` rows: (group slice, row
        slice, the block's groups renumbered from row 0)."""
        block_of = self.starts // max_rows
        bounds = [0, *(np.flatnonzero(np.diff(block_of)) + 1).tolist(), len(self.counts)]
        for first, stop in itertools.pairwise(bounds):
            row0, row1 = int(self.starts[first]), int(self.ends[stop - 1])
            block = Groups(self.starts[first:stop] - row0, self.counts[first:stop], row1 - row0)
            yield slice(first, stop), slice(row0, row1), block

    def segments(self, n_segments: int) -> Groups:
        """Split every group into ``n_segments`` consecutive parts (some empty if short)."""
        k = np.arange(n_segments + 1, dtype=np.int64)
        bounds = self.starts[:, None] + (k[None, :] * self.counts[:, None]) // n_segments
        return Groups(bounds[:, :-1].reshape(-1), np.diff(bounds, axis=1).reshape(-1), self.n_rows)


def fill_within_groups(values: np.ndarray, valid: np.ndarray | None, groups: Groups) -> np.ndarray:
    """Forward-fill, then backward-fill, each column inside each group; (R, C) -> (R, C).

    ``valid=None`` means NaN marks the gaps, and ``values`` is filled in place (it may be a
    view, e.g. the transpose of channel-major rows). Invalid entries of a group with no valid
    value in that column become NaN. Only the groups that have a gap and something to fill it
    with are processed (usually few).
    """
    if valid is None:
        valid = ~np.isnan(values)
        out = values
    else:
        out = np.where(valid, values, np.nan)
    gap_rows = ~valid.all(axis=1)
    if not gap_rows.any():
        return out
    has_gap = np.logical_or.reduceat(gap_rows, groups.starts)
    has_value = np.logical_or.reduceat(valid.any(axis=1), groups.starts)
    todo = has_gap & has_value
    if todo.any():
        rows, subset = groups.take(todo)
        out[rows] = _fill_gaps(values[rows], valid[rows], subset)
    return out


def _fill_gaps(values: np.ndarray, valid: np.ndarray, groups: Groups) -> np.ndarray:
    rows = np.arange(groups.n_rows, dtype=np.int64)[:, None]
    cols = np.arange(values.shape[1])[None, :]
    prev = np.maximum.accumulate(np.where(valid, rows, -1), axis=0)
    nxt = np.minimum.accumulate(np.where(valid, rows, groups.n_rows)[::-1], axis=0)[::-1]
    has_prev = prev >= groups.per_row(groups.starts)[:, None]
    has_next = nxt < groups.per_row(groups.ends)[:, None]
    source = np.where(has_prev, prev, np.where(has_next, nxt, 0))
    filled = values[source, cols]
    filled[~(has_prev | has_next)] = np.nan
    return filled


def hold_edge(values: np.ndarray, edge: np.ndarray, step: int, counts: np.ndarray) -> None:
    """Rows ``edge`` (one per group) take the value of row ``edge + step`` of the same group,
    or 0 for one-row groups (in place)."""
    longer = counts > 1
    values[edge[longer]] = values[edge[longer] + step]
    values[edge[~longer]] = 0.0
