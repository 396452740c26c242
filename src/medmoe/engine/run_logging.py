"""What every training loop in :mod:`medmoe.engine` writes and shows while it runs.

* :func:`write_history_csv` — the per-epoch ``metrics.csv`` (one row per epoch, columns in order of first
  appearance, missing values empty), rewritten atomically so a killed run never leaves a torn file;
* :func:`training_progress` — the rich progress bar (description, bar, done/total, time left, an ``info``
  field), or ``None`` when disabled or when stderr is not a terminal;
* :func:`make_loggers` — metric loggers by name (``"tensorboard"``, ``"mlflow"``): objects with
  ``log_metrics(metrics, step)`` and ``finalize(status)`` that :class:`~medmoe.engine.loop.TrainingLoop`
  calls after every epoch; one that is not installed is skipped with a warning.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import logging
import math
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_text

__all__ = ["LOGGERS", "MLflowLogger", "TensorBoardLogger", "make_loggers", "training_progress", "write_history_csv"]

logger = logging.getLogger(__name__)

#: the metric loggers :func:`make_loggers` knows
LOGGERS = ("tensorboard", "mlflow")


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


class MLflowLogger:
    """Minimal MLflow adapter: logs params once and metrics per epoch into the active (or a new) run."""

    def __init__(self, run_name: str, params: dict[str, Any]) -> None:
        import mlflow

        self._mlflow = mlflow
        self._own_run = mlflow.active_run() is None
        if self._own_run:
            mlflow.start_run(run_name=run_name)
        mlflow.log_params({k: str(v)[:250] for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._mlflow.log_metrics(
            {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not math.isnan(v)}, step=step
        )

    def finalize(self, status: str) -> None:
        if self._own_run:
            self._mlflow.end_run()


class TensorBoardLogger:
    """Lightning Fabric's TensorBoard logger under ``root/tensorboard``, numbers only."""

    def __init__(self, root: Path) -> None:
        from lightning_fabric.loggers import TensorBoardLogger as FabricTensorBoardLogger

        self._logger = FabricTensorBoardLogger(root_dir=str(root), name="tensorboard")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._logger.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def finalize(self, status: str) -> None:
        self._logger.finalize(status)


def make_loggers(names: Iterable[str], out_dir: Path, params: dict[str, Any]) -> list[Any]:
    """The loggers named in ``names`` (``"tensorboard"`` under ``out_dir``, ``"mlflow"`` in the active or a new
    run named after ``out_dir``, with ``params`` logged once); one that is not installed is skipped with a
    warning."""
    loggers: list[Any] = []
    for name in names:
        if name == "tensorboard":
            if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
                logger.warning("TensorBoard logging requested but tensorboard is not installed; skipping it")
                continue
            loggers.append(TensorBoardLogger(out_dir))
        elif name == "mlflow":
            if importlib.util.find_spec("mlflow") is None:
                logger.warning("MLflow logging requested but mlflow is not installed; skipping it")
                continue
            loggers.append(MLflowLogger(out_dir.name, params))
    return loggers
