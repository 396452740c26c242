"""One log line per finished run of a cross-validation grid, with the count and the time left.

A full protocol (models x patch embeddings x datasets x seeds x folds) runs for hours, mostly unattended
and with its output in a file. :class:`GridProgress` counts the runs and, after each, logs on the
``medmoe.progress`` logger (which the CLI shows by default)::

    [37/500] musk1 abmil mammoth seed 0 fold 6: test auroc 0.912, 12.3 s (6 epochs); 1 h 32 min left

Runs that were already finished (skipped by ``resume``) count as done but do not enter the time
estimate, which is the mean time of the last ten runs trained times the runs still to do, divided by the
number of runs going on at once (``parallel``). A grid runs variant after variant, so recent runs
predict the next ones better than the mean of all (a Lin-MIL + Mammoth fold takes many times a MeanMIL one).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

__all__ = ["PROGRESS_LOGGER", "GridProgress", "format_duration"]

PROGRESS_LOGGER = logging.getLogger("medmoe.progress")


def format_duration(seconds: float) -> str:
    """``'45 s'``, ``'12 min'``, ``'1 h 32 min'`` (``'?'`` for NaN or a negative value)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


class GridProgress:
    """Counts the runs of a grid and logs each finished one with the estimated time left.

    Args:
        total: runs in the whole grid (e.g. datasets x models x embeddings x seeds x folds).
        enabled: log (rank 0 of a distributed run) or stay silent.

    Attributes:
        parallel: runs going on at once (worker processes); divides the time left.
        window: how many of the latest trained runs the time estimate averages (10).
    """

    def __init__(self, total: int, enabled: bool = True) -> None:
        if total < 1:
            raise ValueError(f"GridProgress needs at least one run, got total={total}")
        self.total = int(total)
        self.enabled = bool(enabled)
        self.done = 0
        self._trained_seconds: list[float] = []
        self._started: float | None = None
        self.parallel = 1
        self.window = 10

    def start_run(self) -> None:
        """Mark the start of a run (its time is measured until :meth:`finish_run`)."""
        self._started = time.perf_counter()

    def finish_run(self, label: str, result: Any, *, skipped: bool = False) -> None:
        """Count one finished run and log it.

        Args:
            label: what the run is, e.g. ``'musk1 abmil mammoth seed 0 fold 6'``.
            result: its :class:`~medmoe.engine.mil.trainer.FoldResult` (``monitor``, ``test_metrics``,
                ``val_metrics``, ``epochs_run``).
            skipped: the run had finished before (resumed): counted, but not timed.
        """
        seconds = time.perf_counter() - self._started if self._started is not None else math.nan
        self._started = None
        self.record_run(label, result, seconds, skipped=skipped)

    def record_run(self, label: str, result: Any, seconds: float, *, skipped: bool = False) -> None:
        """:meth:`finish_run` for a run timed elsewhere (in a worker process): ``seconds`` it took."""
        self.done += 1
        if not skipped and math.isfinite(seconds):
            self._trained_seconds.append(seconds)
        if not self.enabled:
            return
        metrics = result.test_metrics or result.val_metrics or {}
        split = "test" if result.test_metrics else "val"
        value = metrics.get(result.monitor)
        score = f"{split} {result.monitor} {value:.3f}" if isinstance(value, (int, float)) else "no score"
        timing = "finished before" if skipped else f"{seconds:.1f} s ({result.epochs_run} epochs)"
        PROGRESS_LOGGER.info(
            "[%d/%d] %s: %s, %s; %s left", self.done, self.total, label, score, timing, format_duration(self.eta())
        )

    def eta(self) -> float:
        """Seconds left: mean time of the last ``window`` runs trained x runs to go / ``parallel`` (NaN
        before the first)."""
        left = max(self.total - self.done, 0)
        if left == 0:
            return 0.0
        if not self._trained_seconds:
            return math.nan
        recent = self._trained_seconds[-self.window :]
        return left * sum(recent) / len(recent) / max(self.parallel, 1)
