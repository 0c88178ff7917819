"""Counting the answers ``cmi.inference.predict`` could not compute, and the limit beyond which
a submission should abort instead of scoring the fallback gesture silently.

Post-processing is counted apart: an answer it could not post-process is still the blend's own
answer (its argmax), not a fallback, so it never counts towards ``FallbackLimit``.

``predict`` never raises (Kaggle's server needs an answer for every sequence), so a bug that
only real test input triggers would otherwise show only as log lines and a poor score.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, replace


class TooManyFallbacksError(RuntimeError):
    """More than the allowed share of answers were the fallback gesture."""


@dataclass(frozen=True)
class AnswerStats:
    calls: int = 0
    fallbacks: int = 0  # answers that are FALLBACK_GESTURE because something failed
    torch_failures: int = 0  # real answers made by LightGBM alone because Torch failed
    postprocessed: int = 0  # answers chosen by subject-level post-processing
    postprocess_changed: int = 0  # ... of which differ from the blend's argmax
    postprocess_failures: int = 0  # answers left at the argmax because post-processing failed
    last_error: str | None = None

    def describe(self) -> str:
        text = f"{self.fallbacks} fallback(s) in {self.calls} answer(s)"
        if self.torch_failures:
            text += f", {self.torch_failures} by LightGBM alone (Torch failed)"
        if self.postprocessed or self.postprocess_failures:
            text += (
                f"; post-processing chose {self.postprocessed} ({self.postprocess_changed} "
                "differ from the blend's argmax)"
            )
        if self.postprocess_failures:
            text += f", failed on {self.postprocess_failures} (answered the argmax)"
        return text + (f"; last error: {self.last_error}" if self.last_error else "")


class AnswerCounter:
    """Thread-safe running totals (Kaggle's server may call predict from a worker thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats = AnswerStats()

    def answered(self, postprocessed: bool = False, changed: bool = False) -> None:
        with self._lock:
            stats = self._stats
            self._stats = replace(
                stats,
                calls=stats.calls + 1,
                postprocessed=stats.postprocessed + int(postprocessed),
                postprocess_changed=stats.postprocess_changed + int(postprocessed and changed),
            )

    def postprocess_failed(self, error: BaseException) -> None:
        """A real answer (the argmax) given because post-processing failed."""
        with self._lock:
            stats = self._stats
            self._stats = replace(
                stats,
                calls=stats.calls + 1,
                postprocess_failures=stats.postprocess_failures + 1,
                last_error=repr(error)[:500],
            )

    def fell_back(self, error: BaseException | None) -> None:
        with self._lock:
            stats = self._stats
            last = repr(error)[:500] if error is not None else stats.last_error
            self._stats = replace(
                stats, calls=stats.calls + 1, fallbacks=stats.fallbacks + 1, last_error=last
            )

    def torch_failed(self, error: BaseException) -> None:
        with self._lock:
            stats = self._stats
            self._stats = replace(
                stats, torch_failures=stats.torch_failures + 1, last_error=repr(error)[:500]
            )

    def snapshot(self) -> AnswerStats:
        with self._lock:
            return self._stats

    def reset(self) -> None:
        with self._lock:
            self._stats = AnswerStats()


@dataclass(frozen=True)
class FallbackLimit:
    """At most ``grace + max_share * calls`` fallbacks: a couple of odd sequences pass, a
    systematic failure stops the run within its first few answers."""

    max_share: float = 0.02
    grace: int = 2

    def allowed(self, calls: int) -> int:
        return self.grace + math.floor(self.max_share * calls)

    def check(self, stats: AnswerStats) -> None:
        if stats.fallbacks > self.allowed(stats.calls):
            raise TooManyFallbacksError(
                f"aborting: {stats.describe()} (at most {self.grace} + {self.max_share:.0%} of "
                "answers may be fallbacks); fix the bug rather than submit fallback answers"
            )


# One per process, like the loaded bundle: predict and the Torch fallback record here.
ANSWERS = AnswerCounter()
