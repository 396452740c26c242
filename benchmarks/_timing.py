"""Timing helper shared by the benchmark scripts (run them from the repository root: ``python benchmarks/X.py``)."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_ms(fn: Callable[[], object], reps: int, inner: int) -> float:
    """Milliseconds per call of ``fn``: the fastest of ``reps`` rounds of ``inner`` calls, after one warm-up call.

    The minimum is the statistic least disturbed by other processes on a shared machine.
    """
    fn()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - start) / inner)
    return best * 1e3
