"""Run the folds of a cross-validation grid: one after another, or ``jobs`` at a time in worker processes.

Small MIL bags cannot keep many CPU threads busy, so a grid of thousands of short runs goes fastest as
several single-run processes, each with its share of the threads (``jobs=4`` on 16 cores: 4 processes of
4 threads). :func:`run_folds` takes the planned :class:`FoldTask` list and returns one
:class:`~medmoe.engine.mil.trainer.FoldResult` per task, in order, reporting each finished run to a
:class:`~medmoe.engine.mil.grid_progress.GridProgress`. Results do not depend on ``jobs``: every run is seeded
by its own seed and writes only into its own folder (same numbers up to the float rounding of the
thread count).

Worker processes are started with ``spawn`` (safe with OpenMP and CUDA), receive the datasets once, and
show no per-epoch progress bars (the parent logs one line per finished run). As with any ``spawn``
pool, a script that uses ``jobs > 1`` must call it under ``if __name__ == "__main__":`` (the workers
import the main script again); without the guard the pool breaks and a ``RuntimeError`` says so. The first error stops the
pool and is raised in the parent; finished folds stay on disk for ``resume``.
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...data.splits import Split
from ...errors import SETTING, InputError
from .config import TrainConfig
from .grid_progress import GridProgress
from .trainer import FOLD_RESULT_JSON, FoldResult, make_fabric, train_one_fold

if TYPE_CHECKING:
    from lightning_fabric import Fabric

__all__ = ["FoldTask", "run_folds"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldTask:
    """One training run of a grid.

    Attributes:
        model_name: registry name (``'abmil.base_mammoth'``).
        model_overrides: config overrides for the model.
        dataset: key of the dataset in the ``datasets`` mapping given to :func:`run_folds`.
        seed, fold: the repetition and the split index.
        split: the bags to train, validate and test on (indices into the dataset).
        split_hash: identifier of the seed's splits (stored in the checkpoint).
        out_dir: the run folder.
        label: how progress lines name the run (``'musk1 abmil mammoth seed 0 fold 3'``).
    """

    model_name: str
    model_overrides: dict[str, Any]
    dataset: str
    seed: int
    fold: int
    split: Split
    split_hash: str
    out_dir: Path
    label: str


def _train(task: FoldTask, dataset: Any, cfg: TrainConfig, resume: bool, fabric: Fabric) -> FoldResult:
    split = task.split
    if fabric.is_global_zero:
        logger.info(
            "%s (%d train, %d val, %d test bags)", task.label, len(split.train), len(split.val), len(split.test)
        )
    return train_one_fold(
        task.model_name,
        dataset.subset(split.train),
        dataset.subset(split.val) if split.val else None,
        dataset.subset(split.test) if split.test else None,
        cfg.replace(seed=task.seed),
        task.out_dir,
        task.model_overrides,
        resume=resume,
        split_hash=task.split_hash,
        fabric=fabric,
    )


def _finished_before(task: FoldTask, resume: bool) -> bool:
    return resume and (task.out_dir / FOLD_RESULT_JSON).is_file()


# worker-process state, set once by _init_worker
_WORKER_DATASETS: Mapping[str, Any] = {}


def _init_worker(datasets_blob: bytes, threads: int) -> None:
    import torch

    global _WORKER_DATASETS
    torch.set_num_threads(threads)
    _WORKER_DATASETS = pickle.loads(datasets_blob)


def _worker_run(task: FoldTask, cfg: TrainConfig, resume: bool) -> tuple[FoldResult, float]:
    start = time.perf_counter()
    result = _train(task, _WORKER_DATASETS[task.dataset], cfg, resume, make_fabric(cfg))
    return result, time.perf_counter() - start


def run_folds(
    tasks: Sequence[FoldTask],
    datasets: Mapping[str, Any],
    cfg: TrainConfig,
    *,
    resume: bool = False,
    fabric: Fabric | None = None,
    progress: GridProgress | None = None,
    jobs: int = 1,
) -> list[FoldResult]:
    """Train every task; ``jobs > 1`` runs that many at a time in worker processes.

    Args:
        tasks: the runs, e.g. from :func:`~medmoe.engine.mil.cross_validation.run_cross_validation`'s plan.
        datasets: ``{task.dataset: bag dataset}``; with ``jobs > 1`` they are pickled to the workers.
        cfg: training settings (each task's seed replaces ``cfg.seed``).
        resume: continue / re-evaluate existing runs (see :func:`~medmoe.engine.mil.trainer.train_one_fold`).
        fabric: a launched Fabric for ``jobs == 1`` (default: from ``cfg``); not allowed with ``jobs > 1``.
        progress: receives every finished run (default: a new one over ``tasks``).
        jobs: runs at a time; each worker gets ``max(1, threads // jobs)`` torch threads.

    Returns:
        one :class:`FoldResult` per task, in the order of ``tasks``.
    """
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    tasks = list(tasks)
    if progress is None:
        progress = GridProgress(max(len(tasks), 1), fabric.is_global_zero if fabric is not None else True)
    if jobs == 1 or len(tasks) <= 1:
        fabric = fabric if fabric is not None else make_fabric(cfg)
        results = []
        for task in tasks:
            skipped = _finished_before(task, resume)
            progress.start_run()
            result = _train(task, datasets[task.dataset], cfg, resume, fabric)
            progress.finish_run(task.label, result, skipped=skipped)
            results.append(result)
        return results
    return _run_in_pool(tasks, datasets, cfg, resume, fabric, progress, jobs)


def _run_in_pool(
    tasks: list[FoldTask],
    datasets: Mapping[str, Any],
    cfg: TrainConfig,
    resume: bool,
    fabric: Fabric | None,
    progress: GridProgress,
    jobs: int,
) -> list[FoldResult]:
    import torch

    if fabric is not None or cfg.devices not in (1, "1") or cfg.num_nodes != 1:
        raise InputError(
            "{jobs} > 1 runs folds in separate processes: it cannot share a Fabric or use several devices or "
            "nodes per run (DDP); use {jobs} 1 with {devices} > 1 or {num_nodes} > 1, or {devices} 1 with "
            "{jobs} > 1", jobs=SETTING, devices=SETTING, num_nodes=SETTING
        )
    try:
        blob = pickle.dumps({t.dataset: datasets[t.dataset] for t in tasks})
    except (pickle.PicklingError, TypeError, AttributeError) as err:
        raise ValueError(f"jobs > 1 needs picklable datasets (they are sent to worker processes): {err}") from err
    threads = max(1, torch.get_num_threads() // jobs)
    worker_cfg = cfg.replace(progress=False)  # one terminal, many processes: the parent reports per run
    results: dict[int, FoldResult] = {}
    pending: dict[Any, int] = {}
    # tasks finished before (resume) are re-evaluated in-process: no worker start-up for them
    todo = []
    for i, task in enumerate(tasks):
        if _finished_before(task, resume):
            progress.start_run()
            results[i] = _train(task, datasets[task.dataset], cfg.replace(progress=False), resume, make_fabric(cfg))
            progress.finish_run(task.label, results[i], skipped=True)
        else:
            todo.append(i)
    if not todo:
        return [results[i] for i in range(len(tasks))]
    progress.parallel = min(jobs, len(todo))
    workers = min(jobs, len(todo))
    logger.info("running %d folds in %d processes of %d threads", len(todo), workers, threads)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(blob, threads)) as pool:
        for i in todo:
            pending[pool.submit(_worker_run, tasks[i], worker_cfg, resume)] = i
        try:
            while pending:
                done, _ = wait(list(pending), return_when=FIRST_EXCEPTION)
                for future in done:
                    i = pending.pop(future)
                    result, seconds = future.result()  # re-raises a worker's error here
                    results[i] = result
                    progress.record_run(tasks[i].label, result, seconds)
        except BrokenProcessPool as err:
            raise RuntimeError(
                "a fold worker process died (killed, out of memory, or the calling script has no main guard): "
                "jobs > 1 starts workers with 'spawn', which imports the main script again, so call it under "
                "`if __name__ == \"__main__\":`; finished folds are kept for resume"
            ) from err
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return [results[i] for i in range(len(tasks))]
