"""Hyper-parameter tuning inside the cross-validation (nested CV) with Optuna.

For every outer fold (seed ``s``, fold ``i`` of the same patient-level stratified splits as
:func:`~medmoe.engine.run_cross_validation`):

1. the outer fold's training data (its train and validation bags; never its test bags) is split again
   into ``inner_k`` patient-level stratified inner folds (inner train / inner validation for early
   stopping / inner test for the score);
2. an Optuna study (TPE sampler, median pruner) draws settings from the search space
   (:mod:`medmoe.engine.mil.search_space`); a trial trains on each inner fold in turn, reports the running
   mean of the inner test scores after each one, and is pruned when it trails the other trials;
3. the best trial's settings train once on the outer training data (early stopping and decision
   thresholds on the outer validation fold) and are tested once on the outer test fold.

The outer test fold never influences a choice: it is not in any inner fold, and the study sees only the
inner scores. Studies live in an Optuna storage: ``sqlite:///<out_dir>/optuna.db`` by default (a killed
run resumes: finished trials are kept, the budget is filled up), or any database URL Optuna accepts
(``postgresql://user@host/db``), so that several processes or machines add trials to the same studies
(``search_only=True`` in all but one of them; see ``docs/tuning.md``). Folder layout::

    out_dir/
      manifest.json          kind "mil-tune": model, data, folds, seeds, settings, space, budget
      optuna.db              the studies (default storage)
      space.yaml             the search space used
      best_params.json/.csv  the chosen settings per outer fold, the best inner score, trial counts
      results.json           as run_cross_validation's (outer test/val metrics per fold), + "tuning"
      summary.md             the nested-CV table and the chosen settings
      seed<s>/splits.json    the outer folds
      seed<s>/fold<i>/       the final run of that outer fold (checkpoint/, metrics.csv, ...)
      studies/seed<s>-fold<i>/trials.csv, optimization_history.png, param_importances.png
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import random
import socket
import statistics
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...data.splits import Split, save_splits, split_hash
from ...errors import SETTING, InputError
from ..checkpoint import atomic_write_text
from ..runs import (
    MANIFEST_NAME,
    RunFolderError,
    RunManifest,
    data_identity,
    fingerprint,
    read_manifest,
    start_run_folder,
    writing,
)
from .config import EARLY_STOPPING_METRICS, TrainConfig, recorded_settings, resolve_monitor
from .cross_validation import ComparisonResult, CVResult, check_model, resolve_variant
from .fold_runner import FoldTask, run_folds
from .metrics import summarize
from .search_space import ParamSpec, SearchSpace, load_space
from .tasks import get_task

__all__ = [
    "TuneResult",
    "applicable_params",
    "apply_params",
    "compare_tuned",
    "inner_splits",
    "open_storage",
    "run_nested_cv",
]

logger = logging.getLogger(__name__)

@dataclass
class TuneResult:
    """Outcome of :func:`run_nested_cv`.

    Attributes:
        cv: the outer folds' results as a :class:`~medmoe.engine.CVResult` (``None`` with ``search_only``).
        chosen: one dict per outer fold: ``seed``, ``fold``, ``study``, ``params`` (the best trial's),
            ``inner_score`` (its mean inner test score), ``metric``, ``trials`` (counts per state).
        out_dir: the run folder.
    """

    cv: CVResult | None
    chosen: list[dict[str, Any]]
    out_dir: Path
    metric: str = ""
    space: dict[str, Any] = field(default_factory=dict)

    def chosen_markdown(self, digits: int = 4) -> str:
        """``| seed | fold | inner <metric> | trials | param ... |`` of the chosen settings."""
        names: list[str] = []
        for row in self.chosen:
            names += [n for n in row["params"] if n not in names]
        lead = ["seed", "fold", f"inner {self.metric}", "trials (done/pruned/failed)"]
        lines = ["| " + " | ".join(lead + names) + " |", "|" + "---|" * (len(lead) + len(names))]
        for row in self.chosen:
            t = row["trials"]
            cells = [str(row["seed"]), str(row["fold"]), _fmt(row["inner_score"], digits),
                     f"{t.get('COMPLETE', 0)}/{t.get('PRUNED', 0)}/{t.get('FAIL', 0)}"]
            cells += [_fmt(row["params"].get(n, ""), digits) for n in names]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_markdown(self) -> str:
        head = self.cv.to_markdown() if self.cv is not None else "# search only (no outer fold trained)\n"
        return (head + "\nNested cross-validation: settings chosen on inner folds of each outer fold's training "
                "data only (Optuna TPE, median pruning); each outer test fold was used once, by the final run.\n\n"
                "## Chosen settings per outer fold\n\n" + self.chosen_markdown())


def _fmt(value: Any, digits: int) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}g}"
    return str(value)


# ----------------------------------------------------------------------------------------------
# pieces


def inner_splits(outer: Split, dataset: Any, inner_k: int, seed: int, *, task: str = "classification") -> list[Split]:
    """Inner folds of one outer fold: its train + validation bags (never its test bags) split into
    ``inner_k`` patient-level stratified folds, each with one inner validation and one inner test fold
    (stratified as ``task`` says, :meth:`~medmoe.engine.mil.tasks.Task.kfold`).

    Returns:
        ``inner_k`` splits whose indices point into ``dataset`` (like ``outer``'s).

    Raises:
        ValueError: too few patients of a class for ``inner_k`` folds (the message says how many).
    """
    pool = sorted(set(outer.train) | set(outer.val))
    if set(pool) & set(outer.test):
        raise ValueError("the outer split's test bags overlap its training bags")
    try:
        sub = get_task(task).kfold(dataset, inner_k, seed, val_folds=1, indices=pool)
    except ValueError as err:
        raise InputError(f"inner folds of an outer training set ({len(pool)} bags): {err}; lower {{inner_k}}",
                         inner_k=SETTING) from err
    return [Split([pool[j] for j in s.train], [pool[j] for j in s.val], [pool[j] for j in s.test]) for s in sub]


def applicable_params(space: SearchSpace, model_name: str, model_overrides: Mapping[str, Any], dataset: Any,
                      cfg: TrainConfig) -> list[ParamSpec]:
    """The parameters of ``space`` that apply to this model: training settings always, model keys when the
    model's config has them, Mammoth arguments when its patch embedding is ``mammoth``."""
    from ...registry import get_config

    overrides = {k: v for k, v in model_overrides.items() if k not in ("in_dim", "num_classes")}
    classes = get_task(cfg.task).num_outputs(dataset, cfg)
    config = get_config(model_name, num_classes=classes, in_dim=getattr(dataset, "feature_dim", None), **overrides)
    mammoth = getattr(config, "patch_embed", None) == "mammoth"
    out = []
    for p in space.params:
        if p.target == "train" or (p.target == "model" and hasattr(config, p.name)) or (
                p.target == "mammoth" and mammoth):
            out.append(p)
    return out


def apply_params(params: Mapping[str, Any], specs: Sequence[ParamSpec], cfg: TrainConfig,
                 model_overrides: Mapping[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
    """The training settings and model overrides of one set of drawn ``params``.

    ``epochs`` lowers ``min_epochs`` when needed; Mammoth arguments are merged into ``patch_embed_args``.
    """
    by_name = {p.name: p for p in specs}
    train: dict[str, Any] = {}
    overrides = dict(model_overrides)
    moe = dict(overrides.get("patch_embed_args") or {})
    for name, value in params.items():
        target = by_name[name].target
        if target == "train":
            train[name] = value
        elif target == "model":
            overrides[name] = value
        else:
            moe[name] = value
    if moe:
        overrides["patch_embed_args"] = moe
    if "epochs" in train:
        train["min_epochs"] = min(cfg.min_epochs, int(train["epochs"]))
    if "lr" in train and cfg.min_lr > train["lr"]:
        train["min_lr"] = train["lr"]
    return cfg.replace(**train), overrides


def _redact(url: str) -> str:
    """A storage URL without its password (it goes into manifests and logs)."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}"
    return url


def open_storage(
    url: str, *, heartbeat_interval: int = 60, grace_period: int = 120,
    stale_trial_callback: Any = None, engine_kwargs: dict[str, Any] | None = None,
) -> Any:
    """An Optuna RDB storage for ``url`` (SQLite, PostgreSQL, MySQL, ...) with trial heartbeats, so that
    the trials of a killed process are marked failed once their heartbeat stops (after ``grace_period``
    seconds; a running trial beats every ``heartbeat_interval`` seconds).

    ``stale_trial_callback(study, trial)`` runs for each trial so failed (e.g. Optuna's
    ``RetryHeartbeatStaleTrialCallback``, which queues it again); ``engine_kwargs`` go to SQLAlchemy's
    ``create_engine``. ``medmoe mil tune`` and ``medmoe mil grid`` share this storage.

    Raises:
        ValueError: the URL cannot be opened (malformed, unknown driver, unreachable database).
    """
    import optuna

    if not isinstance(url, str) or "://" not in url:
        raise InputError("{storage} must be a database URL such as sqlite:///tune.db or "
                         f"postgresql://user@host/db, got {url!r}", storage=SETTING)
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(3):
        try:
            with warnings.catch_warnings():  # heartbeats are an "experimental" argument since Optuna 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period, **_stale_callback_argument(stale_trial_callback),
                )
        except (IntegrityError, OperationalError) as err:
            # processes started together race to create the tables of a new database: the loser retries
            if attempt == 2:
                raise InputError(f"cannot open the Optuna {{storage}} {_redact(url)}: {_first_line(err)}",
                                 storage=SETTING) from err
            time.sleep(0.5 + random.random())
        except Exception as err:  # sqlalchemy / driver errors of any kind: the URL is the user's input
            raise InputError(f"cannot open the Optuna {{storage}} {_redact(url)}: {_first_line(err)}",
                             storage=SETTING) from err
    raise AssertionError("unreachable")  # pragma: no cover


def _stale_callback_argument(callback: Any) -> dict[str, Any]:
    """``RDBStorage``'s keyword for ``callback``: ``heartbeat_stale_trial_callback`` since Optuna 4.9,
    ``failed_trial_callback`` before."""
    import inspect

    import optuna

    if callback is None:
        return {}
    names = inspect.signature(optuna.storages.RDBStorage).parameters
    return {"heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in names
            else "failed_trial_callback": callback}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _trial_counts(study: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


# ----------------------------------------------------------------------------------------------
# one outer fold


def _search_fold(
    study: Any, trials: int, specs: list[ParamSpec], model_name: str, overrides: dict[str, Any], dataset: Any,
    inner: list[Split], cfg: TrainConfig, metric: str, seed: int, fabric: Any, timeout: float | None,
) -> None:
    """Add trials to ``study`` until it holds ``trials`` complete or pruned ones (all processes together);
    this process makes at most that many attempts, so failing trials (a diverged run, a killed process)
    are retried by a resume but never loop."""
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from .trainer import train_one_fold

    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    done = sum(1 for t in study.get_trials(deepcopy=False, states=finished))
    if done >= trials:
        return

    def objective(trial: Any) -> float:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        params = {p.name: p.suggest(trial) for p in specs}
        t_cfg, t_over = apply_params(params, specs, cfg, overrides)
        t_cfg = t_cfg.replace(seed=seed, progress=False)
        scores: list[float] = []
        with tempfile.TemporaryDirectory(prefix="medmoe-trial-") as tmp:
            for j, split in enumerate(inner):
                result = train_one_fold(
                    model_name, dataset.subset(split.train), dataset.subset(split.val),
                    dataset.subset(split.test), t_cfg, Path(tmp) / f"inner{j}", t_over, fabric=fabric,
                )
                value = (result.test_metrics or {}).get(metric, math.nan)
                if value is None or math.isnan(float(value)):
                    raise RuntimeError(f"inner fold {j}: the {metric} is undefined (nan)")
                scores.append(float(value))
                trial.report(statistics.fmean(scores), j)
                if trial.should_prune():
                    trial.set_user_attr("inner_scores", scores)
                    raise optuna.TrialPruned()
        trial.set_user_attr("inner_scores", scores)
        return statistics.fmean(scores)

    study.optimize(objective, n_trials=trials - done, timeout=timeout, catch=(RuntimeError,),
                   callbacks=[MaxTrialsCallback(trials, states=finished)], gc_after_trial=True)


def _make_study(storage: Any, name: str, maximize: bool, trials: int, sampler_seed: int, pruner: str,
                identity: str) -> Any:
    import optuna

    startup = max(1, min(10, trials // 3))
    sampler = optuna.samplers.TPESampler(seed=sampler_seed, n_startup_trials=startup)
    # pruning starts once two trials finished, and looks at the mean of two inner folds or more (one inner
    # fold alone is too noisy to stop a trial on)
    prune = (optuna.pruners.MedianPruner(n_startup_trials=max(2, startup), n_warmup_steps=1) if pruner == "median"
             else optuna.pruners.NopPruner())
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True, sampler=sampler,
                                pruner=prune, direction="maximize" if maximize else "minimize")
    held = study.user_attrs.get("medmoe_identity")
    if held is None:
        study.set_user_attr("medmoe_identity", identity)
    elif held != identity:
        raise InputError(f"the Optuna study {name!r} in this storage belongs to another tuning run (other model, "
                         "data, folds, settings or space); give another {study_name} or {storage}",
                         study_name=SETTING, storage=SETTING)
    return study


def _study_files(study: Any, folder: Path, metric: str, maximize: bool) -> dict[str, Any]:
    """Write ``trials.csv`` and the optimisation-history and parameter-importance plots."""
    import optuna

    from ...viz.tuning_plots import plot_optimization_history, plot_param_importances

    trials = study.get_trials(deepcopy=False)
    names = sorted({n for t in trials for n in t.params})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["number", "state", "value", "inner_scores", "seconds", *names])
    for t in trials:
        secs = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start \
            else ""
        writer.writerow([t.number, t.state.name, "" if t.value is None else t.value,
                         json.dumps(t.user_attrs.get("inner_scores", [])), secs,
                         *(t.params.get(n, "") for n in names)])
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "trials.csv", buffer.getvalue())
    rows = [(t.number, t.state.name, t.value if t.state.name != "PRUNED" else
             (t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)) for t in trials]
    plot_optimization_history(rows, folder / "optimization_history.png", metric=metric, maximize=maximize,
                              title=study.study_name)
    importances: dict[str, float] = {}
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if len(complete) >= 2 and names:
        try:
            with warnings.catch_warnings():  # few trials: "importances will be equal" is expected
                warnings.simplefilter("ignore")
                importances = dict(optuna.importance.get_param_importances(study))
        except (RuntimeError, ValueError, ZeroDivisionError) as err:  # e.g. every complete trial drew the same
            logger.info("%s: no parameter importances (%s)", study.study_name, err)
    if importances:
        plot_param_importances(importances, folder / "param_importances.png", title=study.study_name)
    return importances


# ----------------------------------------------------------------------------------------------
# nested cross-validation


def _outer_splits(dataset: Any, k: int, seed: int, splits: Sequence[Split] | None, task: str) -> list[Split]:
    if splits is not None:
        return list(splits)
    return get_task(task).kfold(dataset, k, seed, val_folds=1, bag_ids=list(dataset.bag_ids))


def _check_args(trials: Any, k: int, inner_k: int, pruner: str, metric: str, task: str) -> None:
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise InputError(f"{{trials}} must be a positive integer (the search budget per outer fold), got {trials!r}",
                         trials=SETTING)
    if isinstance(inner_k, bool) or not isinstance(inner_k, int) or inner_k < 3:
        raise InputError(f"{{inner_k}} must be an integer >= 3 (inner train, validation and test folds), got "
                         f"{inner_k!r}", inner_k=SETTING)
    if pruner not in ("median", "none"):
        raise InputError(f"{{pruner}} must be 'median' or 'none', got {pruner!r}", pruner=SETTING)
    known = {**EARLY_STOPPING_METRICS, **get_task(task).monitor_metrics}
    if metric != "auto" and metric not in known:
        raise InputError(f"{{metric}} must be 'auto' or one of {sorted(known)}, got {metric!r}",
                         metric=SETTING)
    del k


def run_nested_cv(
    model_name: str,
    dataset: Any,
    *,
    k: int = 5,
    inner_k: int = 3,
    seeds: Sequence[int] = (0,),
    trials: int = 20,
    cfg: TrainConfig | None = None,
    space: str | Path | Mapping[str, Any] | SearchSpace | None = None,
    out_dir: str | Path = "runs/tune",
    model_overrides: Mapping[str, Any] | None = None,
    metric: str = "auto",
    storage: str | None = None,
    study_name: str | None = None,
    pruner: str = "median",
    splits: Sequence[Split] | None = None,
    search_only: bool = False,
    timeout: float | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> TuneResult:
    """Nested cross-validation of ``model_name`` on ``dataset`` with an Optuna search in every outer fold.

    Args:
        model_name: registry name (``'abmil.base'``, ``'abmil.base_mammoth'``, ...).
        dataset: bag dataset with ``labels``, ``groups``, ``bag_ids`` and ``subset``.
        k: outer folds (each outer split: one test, one validation and ``k - 2`` training folds, as
            :func:`~medmoe.engine.run_cross_validation`; the same folds for the same seed).
        inner_k: inner folds of each outer training set (>= 3: inner train, validation, test).
        seeds: one repetition per seed (training seed, fold assignment, sampler seed).
        trials: the search budget per outer fold (complete or pruned trials; failed ones are retried).
        cfg: the training settings that are not searched (the searched ones replace them).
        space: search space (YAML file, mapping or :class:`SearchSpace`; default
            :data:`~medmoe.engine.mil.search_space.DEFAULT_SPACE`).
        out_dir: run folder (see the module docstring).
        model_overrides: model config overrides that are not searched.
        metric: the inner score the search maximises (``'auto'``: the early-stopping metric, AUROC for two
            classes, quadratic kappa for more, c-index for survival; ``'loss'`` is minimised).
        storage: Optuna storage URL (default ``sqlite:///<out_dir>/optuna.db``); with a shared database
            several processes or machines add trials to the same studies.
        study_name: prefix of the study names (default: the model and a fingerprint of this run's identity,
            so that the same command on several machines meets in the same studies).
        pruner: ``'median'`` (prune a trial whose running inner mean trails the median of earlier trials
            at the same inner fold) or ``'none'``.
        splits: explicit outer splits used for every seed (``k`` is then ignored).
        search_only: only add trials (for helper processes); no outer fold is trained.
        timeout: stop each outer fold's search after this many seconds (the budget may stay unfilled).
        resume / overwrite: as :func:`~medmoe.engine.run_cross_validation`; a resumed run keeps the trials
            already in the storage and fills up the budget.

    Returns:
        :class:`TuneResult`; ``results.json``, ``summary.md``, ``best_params.json`` and ``.csv`` are written.
    """
    import optuna  # noqa: F401  (fail early with a clear ImportError when the dependency is missing)

    cfg = cfg or TrainConfig()
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must hold distinct seeds, e.g. [0, 1], got {seeds}")
    _check_args(trials, k, inner_k, pruner, metric, cfg.task)
    the_space = load_space(space)
    out_dir = Path(out_dir)
    overrides = dict(model_overrides or {})
    check_model(model_name, overrides, dataset, cfg)
    specs = applicable_params(the_space, model_name, overrides, dataset, cfg)
    if not specs:
        raise ValueError(f"no parameter of the search space {the_space.names()} applies to {model_name}")
    classes = max(int(getattr(dataset, "num_classes", 2)), 2)
    try:
        metric, maximize = resolve_monitor(metric, classes, cfg.task)
    except ValueError as err:
        raise InputError(f"{{metric}} {metric!r} does not fit this task: {err}", metric=SETTING) from err
    plans = _outer_plans(dataset, k, inner_k, seeds, splits, cfg.task)
    identity = {
        "model_name": model_name, "model_overrides": overrides, "data": data_identity(dataset),
        "k": None if splits is not None else k, "inner_k": inner_k, "seeds": seeds,
        "split_hashes": {str(s): h for s, _, _, h in plans}, "train_config": _settings(cfg),
        "space": {p.name: p.to_dict() for p in specs}, "trials": trials, "metric": metric, "pruner": pruner,
    }
    ident = fingerprint(identity)
    url_storage = open_storage(storage) if storage is not None else None  # a bad URL fails before any file
    members = [f"seed{s}/fold{i}" for s, outer, _, _ in plans for i in range(len(outer))]
    manifest = RunManifest("mil-tune", {**identity, "storage": _redact(storage) if storage else "default"}, members)
    _join_run_folder(out_dir, manifest, resume=resume, overwrite=overwrite, search_only=search_only)
    _write_space_and_splits(out_dir, specs, plans, dataset)
    the_storage = url_storage if url_storage is not None else open_storage(
        f"sqlite:///{(out_dir / 'optuna.db').resolve()}")
    search = _Search(the_storage, study_name or f"{model_name}-{ident[:10]}", ident, trials, pruner, timeout,
                     specs, metric, maximize, search_only)
    return _search_and_train(search, plans, model_name, overrides, dataset, cfg, inner_k, out_dir, resume)


Plan = tuple[int, list[Split], list[list[Split]], str]


def _outer_plans(dataset: Any, k: int, inner_k: int, seeds: Sequence[int], splits: Sequence[Split] | None,
                 task: str) -> list[Plan]:
    """``(seed, outer splits, inner splits of each outer one, split hash)`` for every seed."""
    plans = []
    for seed in seeds:
        outer = _outer_splits(dataset, k, seed, splits, task)
        if not outer:
            raise ValueError("no outer splits to run: pass k >= 3 or a non-empty list of splits")
        inner = [inner_splits(s, dataset, inner_k, seed, task=task) for s in outer]
        plans.append((seed, outer, inner, split_hash(outer, list(dataset.bag_ids))))
    return plans


def _write_space_and_splits(out_dir: Path, specs: Sequence[Any], plans: Sequence[Plan], dataset: Any) -> None:
    """``space.yaml`` (the searched parameters) and each seed's ``splits.json`` (written once)."""
    with writing(out_dir / "space.yaml"):
        import yaml

        atomic_write_text(out_dir / "space.yaml", yaml.safe_dump({p.name: p.to_dict() for p in specs},
                                                                  sort_keys=False))
        for seed, outer, _, _ in plans:
            path = out_dir / f"seed{seed}" / "splits.json"
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                save_splits(outer, path, bag_ids=list(dataset.bag_ids))


@dataclass
class _Search:
    """The settings of every outer fold's study: storage, study-name prefix, run identity, budget, pruner,
    time limit, searched parameters, metric and direction, and whether this process only searches."""

    storage: Any
    prefix: str
    ident: str
    trials: int
    pruner: str
    timeout: float | None
    specs: Sequence[Any]
    metric: str
    maximize: bool
    search_only: bool


def _search_and_train(search: _Search, plans: Sequence[Plan], model_name: str, overrides: dict[str, Any],
                      dataset: Any, cfg: TrainConfig, inner_k: int, out_dir: Path, resume: bool) -> TuneResult:
    """Search every outer fold's study, then train the outer fold with its best trial's settings (unless
    ``search.search_only``); write the outputs."""
    from .trainer import make_fabric

    fabric = make_fabric(cfg)
    chosen: list[dict[str, Any]] = []
    tasks: list[FoldTask] = []
    results = []
    trials, metric, specs, search_only = search.trials, search.metric, search.specs, search.search_only
    for seed, outer, inner, h in plans:
        for i, (split, inner_i) in enumerate(zip(outer, inner)):
            name = f"{search.prefix}-seed{seed}-fold{i}"
            # helper processes draw their own random start-up trials (the same seed would repeat them)
            sampler_seed = seed * 1009 + i + (os.getpid() if search_only else 0)
            study = _make_study(search.storage, name, search.maximize, trials, sampler_seed, search.pruner,
                                search.ident)
            logger.info("%s: searching %d trials on %d inner folds (%d bags, outer test fold of %d bags not used)",
                        name, trials, inner_k, len(split.train) + len(split.val), len(split.test))
            _search_fold(study, trials, specs, model_name, overrides, dataset, inner_i, cfg, metric, seed, fabric,
                         search.timeout)
            _study_files(study, out_dir / "studies" / f"seed{seed}-fold{i}", metric, search.maximize)
            counts = _trial_counts(study)
            if counts.get("COMPLETE", 0) == 0:
                if search_only:
                    continue
                raise RuntimeError(f"{name}: no trial completed ({counts}); see "
                                   f"{out_dir / 'studies' / f'seed{seed}-fold{i}' / 'trials.csv'}")
            best = study.best_trial
            chosen.append({"seed": seed, "fold": i, "study": name, "params": dict(best.params),
                           "inner_score": best.value, "inner_scores": best.user_attrs.get("inner_scores", []),
                           "metric": metric, "trials": counts})
            if search_only:
                continue
            f_cfg, f_over = apply_params(best.params, specs, cfg, overrides)
            task = FoldTask(model_name, f_over, "data", seed, i, split, h, out_dir / f"seed{seed}" / f"fold{i}",
                            f"{model_name} seed {seed} fold {i} (tuned)")
            tasks.append(task)
            results += run_folds([task], {"data": dataset}, f_cfg, resume=resume, fabric=fabric)
    result = TuneResult(None, chosen, out_dir, metric, {p.name: p.to_dict() for p in specs})
    if not search_only:
        result.cv = _cv_result(model_name, overrides, tasks, results, {s: h for s, _, _, h in plans}, out_dir, cfg)
    _write_outputs(result, search_only)
    return result


def _join_run_folder(out_dir: Path, manifest: RunManifest, *, resume: bool, overwrite: bool,
                     search_only: bool) -> None:
    """Start or resume the run folder; search-only processes started together join it (they may see the
    folder while another one is writing its manifest, so they retry for a few seconds)."""
    if not search_only:
        start_run_folder(out_dir, manifest, resume=resume, overwrite=overwrite)
        return
    for attempt in range(10):
        try:
            start_run_folder(out_dir, manifest, resume=True)
            return
        except RunFolderError:
            if attempt == 9 or (out_dir / MANIFEST_NAME).is_file() and read_manifest(out_dir) is not None:
                raise
            time.sleep(0.5 + random.random())


def _settings(cfg: TrainConfig) -> dict[str, Any]:
    from .trainer import RESUME_NEUTRAL_SETTINGS

    return recorded_settings({k: v for k, v in cfg.to_dict().items() if k not in RESUME_NEUTRAL_SETTINGS})


def _cv_result(model_name: str, overrides: dict[str, Any], tasks: list[FoldTask], results: list[Any],
               hashes: dict[int, str], out_dir: Path, cfg: TrainConfig) -> CVResult:
    runs = [
        {"seed": t.seed, "fold": t.fold, "best_epoch": r.best_epoch, "epochs_run": r.epochs_run,
         "stopped_early": r.stopped_early, "monitor": r.monitor, "val": r.val_metrics, "test": r.test_metrics,
         "thresholds": r.thresholds, "checkpoint_dir": str(r.checkpoint_dir), "model_overrides": t.model_overrides}
        for t, r in zip(tasks, results)
    ]
    return CVResult(model_name=model_name, model_overrides=overrides, runs=runs,
                    summary=summarize([r["test"] for r in runs if r["test"] is not None]),
                    val_summary=summarize([r["val"] for r in runs if r["val"]]), split_hashes=hashes,
                    out_dir=out_dir, train_config=cfg.to_dict())


def _write_outputs(result: TuneResult, search_only: bool) -> None:
    out_dir = result.out_dir
    names: list[str] = []
    for row in result.chosen:
        names += [n for n in row["params"] if n not in names]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["seed", "fold", "study", "metric", "inner_score", *names])
    for row in result.chosen:
        writer.writerow([row["seed"], row["fold"], row["study"], row["metric"], row["inner_score"],
                         *(row["params"].get(n, "") for n in names)])
    with writing(out_dir / "best_params.json"):
        atomic_write_text(out_dir / "best_params.json", json.dumps(
            {"metric": result.metric, "space": result.space, "folds": result.chosen}, indent=2, default=str) + "\n")
        atomic_write_text(out_dir / "best_params.csv", buffer.getvalue())
        if not search_only and result.cv is not None:
            data = result.cv.to_dict()
            data["tuning"] = {"metric": result.metric, "space": result.space, "folds": result.chosen}
            atomic_write_text(out_dir / "results.json", json.dumps(data, indent=2, default=str) + "\n")
            atomic_write_text(out_dir / "summary.md", result.to_markdown())


# ----------------------------------------------------------------------------------------------
# comparisons with the same budget


def compare_tuned(
    models: Sequence[str],
    datasets: Mapping[str, Any],
    patch_embeds: Sequence[str] = ("linear", "mammoth"),
    *,
    trials: int = 20,
    out_dir: str | Path = "runs/compare-tuned",
    patch_embed_args: Mapping[str, Mapping[str, Any]] | None = None,
    model_overrides: Mapping[str, Any] | None = None,
    metrics: Sequence[str] | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    search_only: bool = False,
    **nested: Any,
) -> ComparisonResult:
    """:func:`run_nested_cv` for every ``model × patch embedding × dataset`` with the same outer folds, the
    same search space and the same budget (``trials`` per outer fold), into
    ``out_dir/<dataset>/<model>/<patch_embed>``; ``comparison.json`` / ``.md`` at the top as
    :func:`~medmoe.engine.compare`. ``nested`` are further :func:`run_nested_cv` arguments (``k``,
    ``inner_k``, ``seeds``, ``cfg``, ``space``, ``metric``, ``pruner``, ``timeout``)."""
    if not models or not datasets or not patch_embeds:
        raise ValueError("compare needs at least one model, one dataset and one patch embedding")
    out_dir = Path(out_dir)
    open_storage(storage) if storage is not None else None  # a bad URL fails before any file
    start_run_folder(out_dir, RunManifest("mil-compare", {"tuned": True}), resume=resume or search_only,
                     overwrite=overwrite)
    rows: list[dict[str, Any]] = []
    cfg = nested.get("cfg") or TrainConfig()
    for ds_name, dataset in datasets.items():
        for model in models:
            for embed in patch_embeds:
                name, extra = resolve_variant(model, embed, (patch_embed_args or {}).get(embed))
                merged = {**dict(model_overrides or {}), **extra}
                run_dir = out_dir / _safe(ds_name) / _safe(model) / _safe(embed)
                prefix = f"{study_name}-{ds_name}-{model}-{embed}" if study_name else None
                tuned = run_nested_cv(name, dataset, trials=trials, out_dir=run_dir, model_overrides=merged,
                                      storage=storage, study_name=prefix, resume=resume, search_only=search_only,
                                      **nested)
                if tuned.cv is None:
                    continue
                rows.append({"dataset": ds_name, "model": model, "patch_embed": embed, "model_name": name,
                             "model_overrides": merged, "runs": len(tuned.cv.runs), "summary": tuned.cv.summary,
                             "out_dir": str(run_dir), "trials": trials})
    default_metrics = get_task(cfg.task).summary_metrics
    result = ComparisonResult(rows, list(metrics) if metrics is not None else list(default_metrics))
    if rows:
        with writing(out_dir / "comparison.json"):
            atomic_write_text(out_dir / "comparison.json", json.dumps(result.to_dict(), indent=2, default=str) + "\n")
            atomic_write_text(out_dir / "comparison.md", result.to_markdown()
                              + f"\nEvery row tuned with the same budget: {trials} Optuna trial{'s' * (trials != 1)} per outer fold "
                              "(nested cross-validation).\n")
    return result


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))
