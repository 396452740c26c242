"""What every training loop in :mod:`medmoe.engine` writes and shows while it runs.

* :func:`write_history_csv` — the per-epoch ``metrics.csv`` (one row per epoch, columns in order of first
  appearance, missing values empty), rewritten atomically so a killed run never leaves a torn file;
* :func:`training_progress` — the rich progress bar (description, bar, done/total, time left, an ``info``
  field), or ``None`` when disabled or when stderr is not a terminal.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_text

__all__ = ["training_progress", "write_history_csv"]


def write_history_csv(path: str | Path, history: list[dict[str, Any]]) -> None:
    """Write ``history`` (one dict per epoch) to ``path`` as CSV, atomically."""
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k, "") for k in columns})
    atomic_write_text(path, buffer.getvalue())


def training_progress(enabled: bool) -> Any:
    """A transient :class:`rich.progress.Progress` whose tasks take an ``info`` field, or ``None``."""
    if not (enabled and sys.stderr.isatty()):
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        transient=True,
    )
