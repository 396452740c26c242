"""Grids of cross-validation runs shared by processes and machines through one Optuna storage.

A grid is a list of *units*, one (dataset, model, patch embedding, seed) each; running a unit means one

    medmoe mil compare -m MODEL -d DATASET --patch-embed EMBED --k K --seed S --out OUT/out --resume --jobs 1

(its ``K`` folds; flags given after ``--`` to ``medmoe mil grid`` are added). The grid lives in an Optuna
study in the storage ``medmoe mil tune`` uses (:func:`~medmoe.engine.mil.tuning.open_storage`: an SQLite
file or a database server): every unit is one enqueued trial with the unit as its fixed parameters. A
worker (:func:`run_grid_worker`), on any machine that reaches the storage and the output folder, takes the
next waiting trial (Optuna hands each waiting trial to exactly one worker), runs its unit and reports it:
complete with the unit's seconds as the value, or failed. Nothing else coordinates the workers.

* A unit whose worker is killed (a node lost, a job out of time) keeps beating no more: once its heartbeat
  is ``2 * heartbeat_interval`` seconds old, the next worker that looks marks it failed and Optuna's
  ``RetryHeartbeatStaleTrialCallback`` queues it again; ``--resume`` then continues its finished folds.
* A unit whose command fails (non-zero exit status) is queued again the same way, at most ``max_retry``
  times in all (a unit that fails every time stays failed; its log says why).
* A unit interrupted by Ctrl-C (``KeyboardInterrupt``) is queued again the same way, and its worker stops.
* A unit whose ``K`` fold results already exist (restored with ``sync_results.py``) completes at once.
* While units run elsewhere, a worker with ``wait=True`` waits for them (so it can retry one whose
  worker dies) and stops when every unit is complete or failed for good.
* A worker that asks just as another takes the last waiting unit is given a new, empty trial by Optuna;
  it closes it as pruned (user attribute ``note``) and looks again. Such trials name no unit and count
  for none.

Output folder layout (the one ``benchmarks/full_protocol/run_units.sh`` always had)::

    out_dir/
      out/<dataset>/<model>/<patch_embed>/seed<s>/...   the runs (mil compare's layout)
      logs/<unit>.log                                   each unit's output, every attempt appended
      log_grid.txt                                      "<time> <worker> start|end <unit> [rc=N]" lines

SQLite storages serialise their transactions (``BEGIN IMMEDIATE``), so that two workers never take the same
trial (a database server gets this from Optuna's row locks). An SQLite file serves the processes of one
machine, or of several that share a disk with working file locks; across machines prefer a server
(``postgresql://user@host/db``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import SETTING, InputError
from .grid_progress import PROGRESS_LOGGER

__all__ = [
    "DEFAULT_SEEDS",
    "GridReport",
    "GridSpec",
    "GridUnit",
    "compare_command",
    "grid_state",
    "open_grid",
    "read_units",
    "run_grid_worker",
    "run_unit_command",
]

#: the seeds of every unit line when none are given (the full protocol's five)
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
#: user attribute of a unit's trials: the unit's name
UNIT_ATTR = "medmoe_unit"
#: study user attributes: what the grid is (checked by every worker) and that all its units are queued
_IDENTITY_ATTR, _READY_ATTR = "medmoe_grid", "medmoe_grid_ready"
#: ``mil compare`` flags the grid sets itself (not allowed among the extra flags)
_OWN_FLAGS = (
    "-m",
    "--model",
    "-d",
    "--dataset",
    "--patch-embed",
    "--k",
    "--seed",
    "--out",
    "--resume",
    "--overwrite",
    "--jobs",
    "-j",
)
#: environment variable naming the worker's process id to a unit's process (see ``medmoe/cli/__main__.py``)
PARENT_ENV = "MEDMOE_EXIT_WITH_PARENT"


@dataclass(frozen=True)
class GridUnit:
    """One unit of a grid: the cross-validation of one model variant on one dataset with one seed."""

    dataset: str
    model: str
    patch_embed: str
    seed: int

    @property
    def name(self) -> str:
        """``'musk1.abmil.linear.seed0'`` (the log file's name)."""
        return f"{self.dataset}.{self.model}.{self.patch_embed}.seed{self.seed}"

    def params(self) -> dict[str, Any]:
        """The unit as trial parameters."""
        return dataclasses.asdict(self)

    def run_dir(self, runs_dir: str | Path) -> Path:
        """Where ``mil compare --out runs_dir`` writes this unit's folds."""
        return Path(runs_dir) / self.dataset / self.model / self.patch_embed / f"seed{self.seed}"

    def finished(self, runs_dir: str | Path, k: int) -> bool:
        """Whether all ``k`` folds of this unit have their ``fold_result.json`` under ``runs_dir``."""
        return len(list(self.run_dir(runs_dir).glob("fold*/fold_result.json"))) >= k


def read_units(path: str | Path, seeds: Sequence[int] = DEFAULT_SEEDS) -> list[GridUnit]:
    """The units of a units file: one ``dataset model patch_embed`` line per grid row, each run with every
    seed of ``seeds`` (blank lines and ``#`` comments are skipped).

    Raises:
        ValueError: the file is missing, a line does not have three fields, a row repeats, or no units.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"units file {path} not found (one 'dataset model patch_embed' line per grid row)")
    if not seeds or any(not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be integers >= 0, got {list(seeds)}")
    units: list[GridUnit] = []
    rows: set[tuple[str, ...]] = set()
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 3:
            raise ValueError(
                f"{path}, line {number}: expected 'dataset model patch_embed', got {line.strip()!r}"
            )
        if tuple(fields) in rows:
            raise ValueError(f"{path}, line {number}: the row {' '.join(fields)!r} is already listed")
        rows.add(tuple(fields))
        units += [GridUnit(*fields, seed=int(s)) for s in dict.fromkeys(seeds)]
    if not units:
        raise ValueError(
            f"units file {path} lists no units (one 'dataset model patch_embed' line per grid row)"
        )
    return units


@dataclass(frozen=True)
class GridSpec:
    """A grid: its units, the folds per unit and the further ``mil compare`` flags of every unit.

    Attributes:
        units: the units, in the order they are queued.
        k: folds per unit (``mil compare --k``).
        compare_args: further ``mil compare`` flags, e.g. ``("--epochs", "5")``; not those the grid sets.
        study_name: the Optuna study holding the grid.
    """

    units: tuple[GridUnit, ...]
    k: int = 10
    compare_args: tuple[str, ...] = ()
    study_name: str = "medmoe-grid"

    def __post_init__(self) -> None:
        object.__setattr__(self, "units", tuple(self.units))
        object.__setattr__(self, "compare_args", tuple(str(a) for a in self.compare_args))
        if not self.units:
            raise ValueError("a grid needs at least one unit")
        names = [u.name for u in self.units]
        if len(set(names)) != len(names):
            raise ValueError(
                f"a grid lists each unit once; repeated: {sorted({n for n in names if names.count(n) > 1})}"
            )
        if not isinstance(self.k, int) or self.k < 3:
            raise InputError(f"{{k}} must be an integer >= 3, got {self.k!r}", k=SETTING)
        own = [a for a in self.compare_args if a.split("=", 1)[0] in _OWN_FLAGS]
        if own:
            raise InputError(
                f"the grid sets {', '.join(own)} of every unit itself: give {{k}} and {{seed}} to the grid, "
                "the models, datasets and patch embeddings in the units file",
                k=SETTING,
                seed=SETTING,
            )

    def identity(self) -> str:
        """What every worker of this grid must agree on (JSON)."""
        return json.dumps(
            {"units": [u.name for u in self.units], "k": self.k, "compare_args": list(self.compare_args)}
        )


@dataclass
class GridReport:
    """Where a grid stands after a worker stopped.

    Attributes:
        study_name: the Optuna study.
        states: unit name -> ``'done'``, ``'running'``, ``'waiting'`` or ``'failed'`` (all workers together).
        ran: the units this worker ran (or completed at once as already finished), in order.
        failed: the units this worker saw fail, with their exit status.
    """

    study_name: str
    states: dict[str, str]
    ran: list[str] = field(default_factory=list)
    failed: dict[str, int] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """``{'done': n, 'running': n, 'waiting': n, 'failed': n}``."""
        out = {"done": 0, "running": 0, "waiting": 0, "failed": 0}
        for state in self.states.values():
            out[state] += 1
        return out

    def summary(self) -> str:
        """One line: the grid's counts and what this worker did."""
        c = self.counts()
        return (
            f"grid {self.study_name}: {c['done']}/{len(self.states)} units done, {c['running']} running, "
            f"{c['waiting']} waiting, {c['failed']} failed; this worker ran {len(self.ran)}"
        )


# ----------------------------------------------------------------------------------------------
# the study


def _serialise_sqlite(storage: Any) -> None:
    """Make every transaction of an SQLite-backed storage take the write lock first (``BEGIN IMMEDIATE``):
    SQLite ignores ``SELECT ... FOR UPDATE``, so two workers could otherwise both read a trial as waiting
    and both take it. The connections were opened in autocommit mode (``isolation_level=None``) so that the
    driver starts no transaction of its own."""
    from sqlalchemy import event

    event.listen(storage.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))


def _retry_callback(max_retry: int) -> Any:
    import optuna

    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    if cls is None:  # Optuna < 4.9
        cls = optuna.storages.RetryFailedTrialCallback
    with warnings.catch_warnings():  # "experimental" since Optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return cls(max_retry=max_retry)


def open_grid(
    spec: GridSpec,
    storage: str,
    *,
    heartbeat_interval: int = 60,
    max_retry: int = 2,
    ready_timeout: float = 300.0,
) -> Any:
    """The grid's Optuna study in ``storage`` (a database URL), created with every unit queued by the
    first worker; the others wait until it is ready and check that it is the same grid.

    Raises:
        InputError: the storage cannot be opened, the study holds another grid, or its units were never
            all queued (the worker that created it died while queueing).
    """
    import optuna

    from .tuning import open_storage

    if not isinstance(heartbeat_interval, int) or heartbeat_interval < 1:
        raise ValueError(f"heartbeat_interval must be an integer >= 1 (seconds), got {heartbeat_interval!r}")
    if not isinstance(max_retry, int) or max_retry < 0:
        raise ValueError(f"max_retry must be an integer >= 0, got {max_retry!r}")
    sqlite = storage.startswith("sqlite")
    store = open_storage(
        storage,
        heartbeat_interval=heartbeat_interval,
        grace_period=2 * heartbeat_interval,
        stale_trial_callback=_retry_callback(max_retry),
        engine_kwargs={"connect_args": {"timeout": 60, "isolation_level": None}} if sqlite else None,
    )
    if sqlite:
        _serialise_sqlite(store)
    try:  # creating a study is atomic (its name is unique): exactly one worker queues the units
        study = optuna.create_study(study_name=spec.study_name, storage=store, direction="minimize")
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=spec.study_name, storage=store)
    else:
        study.set_user_attr(_IDENTITY_ATTR, spec.identity())
        for unit in spec.units:
            study.enqueue_trial(unit.params(), user_attrs={UNIT_ATTR: unit.name})
        study.set_user_attr(_READY_ATTR, True)
        return study
    deadline = time.monotonic() + ready_timeout
    while not study.user_attrs.get(_READY_ATTR):
        if time.monotonic() > deadline:
            raise InputError(
                f"the Optuna study {spec.study_name!r} exists but its units were never all queued (the "
                "worker that created it stopped while queueing); delete it (optuna delete-study --study-name "
                f"{spec.study_name} --storage URL) or give another {{study_name}}",
                study_name=SETTING,
            )
        time.sleep(0.5)
    if study.user_attrs.get(_IDENTITY_ATTR) != spec.identity():
        raise InputError(
            f"the Optuna study {spec.study_name!r} in this storage holds another grid (other units, --k or "
            "mil compare flags); give another {study_name} or {storage}",
            study_name=SETTING,
            storage=SETTING,
        )
    return study


def grid_state(study: Any) -> dict[str, str]:
    """Unit name -> ``'done'``, ``'running'``, ``'waiting'`` or ``'failed'`` (failed and not queued again),
    from all the study's trials."""
    from optuna.trial import TrialState

    names = {
        TrialState.COMPLETE: "done",
        TrialState.RUNNING: "running",
        TrialState.WAITING: "waiting",
        TrialState.FAIL: "failed",
    }
    rank = {"failed": 0, "waiting": 1, "running": 2, "done": 3}
    state: dict[str, str] = {}
    for trial in study.get_trials(deepcopy=False):
        unit, s = trial.user_attrs.get(UNIT_ATTR), names.get(trial.state)
        if unit is not None and s is not None and rank[s] > rank.get(state.get(unit, ""), -1):
            state[unit] = s
    return state


# ----------------------------------------------------------------------------------------------
# running units


def compare_command(
    unit: GridUnit, runs_dir: str | Path, k: int, compare_args: Sequence[str] = ()
) -> list[str]:
    """The command line that runs ``unit``: ``python -m medmoe.cli mil compare ... --resume --jobs 1``."""
    return [
        sys.executable,
        "-m",
        "medmoe.cli",
        "mil",
        "compare",
        "-m",
        unit.model,
        "-d",
        unit.dataset,
        "--patch-embed",
        unit.patch_embed,
        "--k",
        str(k),
        "--seed",
        str(unit.seed),
        "--out",
        str(runs_dir),
        "--resume",
        "--jobs",
        "1",
        *compare_args,
    ]


def run_unit_command(argv: Sequence[str], log_path: str | Path) -> int:
    """Run ``argv`` with its output appended to ``log_path``; its exit status. The child process ends when
    this one does (even when killed: it watches its parent), with one torch thread per process unless
    ``OMP_NUM_THREADS`` says otherwise."""
    env = {**os.environ, PARENT_ENV: str(os.getpid())}
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    with open(log_path, "a") as log:
        log.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n")
        log.flush()
        return subprocess.run(
            list(argv), stdout=log, stderr=subprocess.STDOUT, env=env, check=False
        ).returncode


class _UnitFailed(Exception):
    """A unit's command ended with a non-zero exit status (the trial is marked failed)."""


def _take_units(
    study: Any,
    objective: Callable[[Any], float],
    callbacks: list[Any],
    *,
    wait: bool,
    poll: float,
    interrupted: list[str],
) -> None:
    """Run ``objective`` on waiting trials, one at a time, until none waits and (with ``wait``) none runs."""
    import optuna
    from optuna.trial import TrialState

    while True:
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if not waiting:
            # abandoned units: marked failed, and queued again if their retries allow
            with warnings.catch_warnings():  # an "experimental" function since Optuna 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if not waiting:
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not (wait and any(t.user_attrs.get(UNIT_ATTR) for t in running)):
                break
            time.sleep(poll)
            continue
        study.optimize(objective, n_trials=1, catch=(_UnitFailed,), callbacks=callbacks)
        if interrupted:
            raise KeyboardInterrupt


def run_grid_worker(
    spec: GridSpec,
    storage: str,
    out_dir: str | Path,
    *,
    worker: str | None = None,
    max_retry: int = 2,
    heartbeat_interval: int = 60,
    wait: bool = True,
    run_unit: Callable[[GridUnit, Path], int] | None = None,
) -> GridReport:
    """Take units of the grid ``spec`` from ``storage`` and run them until none is left.

    Args:
        spec: the grid (every worker of one grid gives the same).
        storage: Optuna storage URL (``sqlite:///grid.db``, ``postgresql://user@host/db``).
        out_dir: the grid's output folder (shared by all workers; see the module docstring).
        worker: this worker's name in ``log_grid.txt`` (default ``host:pid``).
        max_retry: how often a failed or abandoned unit is queued again.
        heartbeat_interval: seconds between a running unit's heartbeats; a unit silent for twice as long
            counts as abandoned. Also how often a waiting worker looks again.
        wait: when no unit is waiting but some run elsewhere, wait for them (to retry one whose worker
            dies) instead of stopping.
        run_unit: ``run_unit(unit, log_path) -> exit status`` (default: :func:`compare_command` run by
            :func:`run_unit_command`).

    Returns:
        The grid's state and this worker's part in it.
    """
    import optuna
    from optuna.trial import TrialState

    out_dir = Path(out_dir).resolve()
    runs_dir = out_dir / "out"
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    runs_dir.mkdir(exist_ok=True)
    worker = worker or f"{socket.gethostname()}:{os.getpid()}"
    study = open_grid(spec, storage, heartbeat_interval=heartbeat_interval, max_retry=max_retry)
    retry = _retry_callback(max_retry)
    choices = {
        key: sorted({u.params()[key] for u in spec.units})
        for key in ("dataset", "model", "patch_embed", "seed")
    }

    def run_compare(unit: GridUnit, log_path: Path) -> int:
        return run_unit_command(compare_command(unit, runs_dir, spec.k, spec.compare_args), log_path)

    run = run_unit if run_unit is not None else run_compare
    report = GridReport(spec.study_name, {})
    interrupted: list[str] = []

    def note(text: str) -> None:
        PROGRESS_LOGGER.info("grid %s: %s %s", spec.study_name, worker, text)
        with open(out_dir / "log_grid.txt", "a") as fh:
            fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())} {worker} {text}\n")

    def objective(trial: optuna.Trial) -> float:
        name = trial.user_attrs.get(UNIT_ATTR)
        if name is None:  # another worker took the last waiting unit between our look and our ask
            trial.set_user_attr("note", "no unit was waiting when this worker asked")
            raise optuna.TrialPruned()
        params = {key: trial.suggest_categorical(key, values) for key, values in choices.items()}
        unit = GridUnit(**params)
        trial.set_user_attr("worker", worker)
        start = time.monotonic()
        if unit.finished(runs_dir, spec.k):
            trial.set_user_attr("note", "already finished")
            report.ran.append(unit.name)
            return 0.0
        note(f"start {unit.name}")
        try:
            rc = run(unit, out_dir / "logs" / f"{unit.name}.log")
        except KeyboardInterrupt:  # Ctrl-C: the unit is queued again (a retry), then the worker stops
            interrupted.append(unit.name)
            note(f"interrupted {unit.name}")
            raise _UnitFailed(f"{unit.name} was interrupted") from None
        note(f"end {unit.name} rc={rc}")
        report.ran.append(unit.name)
        if rc != 0:
            report.failed[unit.name] = rc
            trial.set_user_attr("exit_status", rc)
            raise _UnitFailed(
                f"{unit.name} exited with status {rc}; see {out_dir / 'logs' / (unit.name + '.log')}"
            )
        return time.monotonic() - start

    def retry_failed(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.FAIL and trial.user_attrs.get(UNIT_ATTR) is not None:
            retry(study, trial)

    _take_units(study, objective, [retry_failed], wait=wait, poll=heartbeat_interval, interrupted=interrupted)
    report.states = grid_state(study)
    return report
