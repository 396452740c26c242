"""k-fold cross-validation over several seeds, and linear-vs-MoE comparisons across models and datasets.

:func:`run_cross_validation` trains one model on every fold of patient-level stratified splits for each
seed and reports mean ± std of the test metrics over all folds × seeds. Folder layout::

    out_dir/
      manifest.json         written first: model, data identity, k, seeds, split hashes, settings, the
                            fold folders (see :mod:`medmoe.engine.runs`); ``resume`` is checked against it
      results.json          every run's val/test metrics, the summaries, the split hashes
      summary.md            mean ± std table
      seed<s>/splits.json   the folds used with seed s (bag ids + indices, with their hash)
      seed<s>/fold<i>/      one train_one_fold run (checkpoint/, metrics.csv, trainer_state.pt, ...)
      test_predictions.csv  every run's test bags with seed, fold, label and class probabilities
      test_risks.csv        survival instead: every run's test bags with time, event, predicted risk and
                            high_risk (above the median risk of its fold's test bags)

:func:`compare` runs :func:`run_cross_validation` for every ``model × patch embedding × dataset`` and
returns one table (the ``medmoe mil compare`` command prints it).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...data.splits import Split, save_splits, split_hash
from ..checkpoint import atomic_write_text
from ..runs import (
    MANIFEST_NAME,
    RunManifest,
    check_run_folder,
    data_identity,
    extend_manifest,
    start_run_folder,
    write_manifest,
    writing,
)
from .config import TrainConfig, recorded_settings
from .fold_runner import FoldTask, run_folds
from .grid_progress import GridProgress
from .metrics import ALL_METRIC_NAMES, format_mean_std, format_summary, summarize
from .tasks import Task, get_task
from .thresholds import thresholds_note
from .trainer import RESUME_NEUTRAL_SETTINGS, TEST_PREDICTIONS_CSV, make_fabric

if TYPE_CHECKING:  # pragma: no cover
    from lightning_fabric import Fabric

__all__ = ["CVResult", "ComparisonResult", "compare", "resolve_variant", "run_cross_validation"]

logger = logging.getLogger(__name__)


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


@dataclass
class CVResult:
    """Outcome of :func:`run_cross_validation`.

    Attributes:
        model_name: the model trained.
        model_overrides: config overrides used.
        runs: one dict per (seed, fold): ``seed``, ``fold``, ``best_epoch``, ``epochs_run``,
            ``val`` and ``test`` metric dicts, ``checkpoint_dir``.
        summary: test metrics ``{name: (mean, std)}`` over all runs (sample std).
        val_summary: the same for the validation metrics of the best checkpoints.
        split_hashes: ``{seed: split hash}``.
        out_dir: the results folder.
    """

    model_name: str
    model_overrides: dict[str, Any]
    runs: list[dict[str, Any]]
    summary: dict[str, tuple[float, float]]
    val_summary: dict[str, tuple[float, float]]
    split_hashes: dict[int, str]
    out_dir: Path
    train_config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _nan_to_none(
            {
                "model_name": self.model_name,
                "model_overrides": self.model_overrides,
                "train_config": self.train_config,
                "split_hashes": {str(k): v for k, v in self.split_hashes.items()},
                "summary": {k: list(v) for k, v in self.summary.items()},
                "val_summary": {k: list(v) for k, v in self.val_summary.items()},
                "runs": self.runs,
                "out_dir": str(self.out_dir),
            }
        )

    def to_markdown(self, metrics: Sequence[str] | None = None, digits: int = 3) -> str:
        """Title, run count and a ``| metric | test | val |`` table of mean ± std."""
        per_label = [m for m in self.summary if m.startswith(("auroc_", "threshold_"))]  # multi-label runs
        known = [m for m in ALL_METRIC_NAMES if m in self.summary] + per_label
        names = list(metrics) if metrics is not None else known
        seeds = sorted({r["seed"] for r in self.runs})
        folds = sorted({r["fold"] for r in self.runs})
        lines = [
            f"# {self.model_name}",
            "",
            f"{len(self.runs)} runs: {len(folds)} folds x seeds {seeds}; mean ± std (sample std over runs).",
            "",
            "| metric | test | val |",
            "|---|---|---|",
        ]
        for name in names:
            test = format_mean_std(*self.summary.get(name, (math.nan, math.nan)), digits=digits)
            val = format_mean_std(*self.val_summary.get(name, (math.nan, math.nan)), digits=digits)
            lines.append(f"| {name} | {test} | {val} |")
        note = thresholds_note([r.get("thresholds") for r in self.runs])
        return "\n".join(lines) + "\n" + (f"\n{note}\n" if note else "")


def run_cross_validation(
    model_name: str,
    dataset: Any,
    k: int = 5,
    seeds: Sequence[int] = (0,),
    cfg: TrainConfig | None = None,
    out_dir: str | Path = "runs/cv",
    model_overrides: dict[str, Any] | None = None,
    *,
    val_folds: int = 1,
    split_seed: int | None = None,
    splits: Sequence[Split] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    fabric: Fabric | None = None,
    progress: GridProgress | None = None,
    label: str | None = None,
    jobs: int = 1,
) -> CVResult:
    """k-fold cross-validation of ``model_name`` on ``dataset``, repeated for every seed.

    Args:
        model_name: registry name (``'abmil.base'``, ``'abmil.base_mammoth'``, ...).
        dataset: bag dataset with ``labels``, ``groups``, ``bag_ids`` and ``subset``.
        k: folds; split ``i`` tests on fold ``i`` and validates on the next ``val_folds`` folds.
        seeds: one repetition per seed: the seed sets the training seed and (unless ``split_seed``
            or ``splits`` is given) the fold assignment.
        cfg: training settings (its ``seed`` is replaced by each seed).
        out_dir: results folder (see the module docstring).
        model_overrides: config overrides for the model.
        val_folds: validation folds per split (0 = no validation set: the last epoch is kept).
        split_seed: use the same folds (from this seed) for every seed.
        splits: explicit splits (e.g. :func:`medmoe.data.load_splits`) used for every seed; ``k`` and
            ``val_folds`` are then ignored.
        resume: continue the run in ``out_dir``: its ``manifest.json`` must match this run (model, data,
            k, seeds, split hashes, settings), checked before anything is written; then finished folds are
            re-evaluated and interrupted ones continue (see :func:`train_one_fold`).
        overwrite: ``out_dir`` holds an earlier run: delete it first. Without ``resume`` or ``overwrite``
            a non-empty ``out_dir`` is refused (:class:`~medmoe.engine.runs.RunFolderError`).
        fabric: a launched Fabric (default: built from ``cfg``; only with ``jobs=1``).
        progress: counts the runs and logs one line per finished run with the time left (default: a
            new one for this model's seeds x folds; :func:`compare` passes one for its whole grid).
        label: how those lines name this model (default: ``model_name``).
        jobs: folds trained at a time, in worker processes (see :func:`~medmoe.engine.mil.fold_runner.run_folds`).

    Returns:
        :class:`CVResult`; ``results.json`` and ``summary.md`` are written to ``out_dir``.
    """
    cfg = cfg or TrainConfig()
    seeds = _check_seeds(seeds)
    out_dir = Path(out_dir)
    is_zero = fabric.is_global_zero if fabric is not None else _is_global_zero(cfg, jobs)
    model_overrides = dict(model_overrides or {})
    check_model(model_name, model_overrides, dataset, cfg)  # a wrong name or --set fails before any file
    tasks, hashes, plans = _plan_folds(
        model_name, model_overrides, "data", dataset, out_dir, label or model_name, k=k, seeds=seeds,
        val_folds=val_folds, split_seed=split_seed, splits=splits, task=get_task(cfg.task),
    )
    if is_zero:
        manifest = _cv_manifest(model_name, model_overrides, dataset, cfg, tasks, hashes, out_dir, k=k,
                                seeds=seeds, val_folds=val_folds, split_seed=split_seed, explicit=splits is not None)
        start_run_folder(out_dir, manifest, resume=resume, overwrite=overwrite)
        _save_plans(plans)
    if progress is None:
        progress = GridProgress(len(tasks), is_zero)
    results = run_folds(tasks, {"data": dataset}, cfg, resume=resume, fabric=fabric, progress=progress, jobs=jobs)
    return _write_cv_result(model_name, model_overrides, tasks, results, hashes, out_dir, cfg, is_zero)


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed, e.g. seeds=[0, 1, 2]")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    return seeds


def check_model(model_name: str, model_overrides: dict[str, Any], dataset: Any, cfg: TrainConfig) -> None:
    """Validate the model name and its overrides against the data (config only, no weights), so that a
    typo fails before a run folder is touched."""
    from ...registry import check_model_fits

    outputs = get_task(cfg.task).num_outputs(dataset, cfg)
    overrides = {k: v for k, v in model_overrides.items() if k not in ("in_dim", "num_classes")}
    try:
        check_model_fits(model_name, num_classes=outputs, in_dim=getattr(dataset, "feature_dim", None), **overrides)
    except TypeError as err:  # a dataclass given a value it cannot take
        raise ValueError(f"{model_name}: invalid settings {overrides}: {err}") from err


def _settings(cfg: TrainConfig) -> dict[str, Any]:
    """The training settings a resume must match (those that cannot change a result left out)."""
    return recorded_settings({k: v for k, v in cfg.to_dict().items() if k not in RESUME_NEUTRAL_SETTINGS})


def _cv_identity(
    model_name: str, model_overrides: dict[str, Any], dataset: Any, cfg: TrainConfig, hashes: dict[int, str], *,
    k: int, seeds: list[int], val_folds: int, split_seed: int | None, explicit: bool,
) -> dict[str, Any]:
    return {
        "model_name": model_name,
        "model_overrides": model_overrides,
        "data": data_identity(dataset),
        "k": None if explicit else k,
        "val_folds": None if explicit else val_folds,
        "split_seed": split_seed,
        "explicit_splits": explicit,
        "seeds": seeds,
        "split_hashes": {str(s): h for s, h in hashes.items()},
        "train_config": _settings(cfg),
    }


def _cv_manifest(
    model_name: str, model_overrides: dict[str, Any], dataset: Any, cfg: TrainConfig, tasks: Sequence[FoldTask],
    hashes: dict[int, str], out_dir: Path, **plan: Any,
) -> RunManifest:
    identity = _cv_identity(model_name, model_overrides, dataset, cfg, hashes, **plan)
    members = [t.out_dir.relative_to(out_dir).as_posix() for t in tasks]
    return RunManifest("mil-cv", identity, members)


def _save_plans(plans: Sequence[tuple[Path, list[Split], list[str]]]) -> None:
    """Write each seed's ``splits.json`` (after the run folder was accepted); an existing one is the same
    folds (the manifest's split hashes matched) and is left as it is."""
    for seed_dir, seed_splits, bag_ids in plans:
        path = seed_dir / "splits.json"
        if path.is_file():
            continue
        with writing(path):
            seed_dir.mkdir(parents=True, exist_ok=True)
            save_splits(seed_splits, path, bag_ids=bag_ids)


def _is_global_zero(cfg: TrainConfig, jobs: int) -> bool:
    """Rank 0 of the run's processes (the Fabric is built here only when this process trains)."""
    return True if jobs > 1 else make_fabric(cfg).is_global_zero


def _plan_folds(
    model_name: str,
    model_overrides: dict[str, Any],
    dataset_key: str,
    dataset: Any,
    out_dir: Path,
    label: str,
    *,
    k: int,
    seeds: list[int],
    val_folds: int,
    split_seed: int | None = None,
    splits: Sequence[Split] | None = None,
    task: Task | None = None,
) -> tuple[list[FoldTask], dict[int, str], list[tuple[Path, list[Split], list[str]]]]:
    """The runs of one model on one dataset (seeds x folds), their split hashes and, per seed, what
    ``seed<s>/splits.json`` will hold (written by :func:`_save_plans`; nothing is written here).
    Folds are stratified as the ``task`` says (:meth:`~medmoe.engine.mil.tasks.Task.kfold`: by label, or
    for multi-label on all labels at once; default classification)."""
    task = task if task is not None else get_task("classification")
    bag_ids = list(dataset.bag_ids)
    tasks: list[FoldTask] = []
    hashes: dict[int, str] = {}
    plans: list[tuple[Path, list[Split], list[str]]] = []
    for seed in seeds:
        if splits is not None:
            seed_splits = list(splits)
        else:
            s_seed = seed if split_seed is None else split_seed
            seed_splits = task.kfold(dataset, k, s_seed, val_folds=val_folds, bag_ids=bag_ids,
                                     class_names=getattr(dataset, "class_names", None))
        if not seed_splits:
            raise ValueError("no splits to run: pass k >= 2 or a non-empty list of splits")
        h = hashes[seed] = split_hash(seed_splits, bag_ids)
        seed_dir = out_dir / f"seed{seed}"
        plans.append((seed_dir, list(seed_splits), bag_ids))
        for fold, split in enumerate(seed_splits):
            if not split.train:
                raise ValueError(f"fold {fold} (seed {seed}) has no training bags; use fewer folds")
            tasks.append(
                FoldTask(model_name, model_overrides, dataset_key, seed, fold, split, h, seed_dir / f"fold{fold}",
                         f"{label} seed {seed} fold {fold}")
            )
    return tasks, hashes, plans


def _write_cv_result(
    model_name: str,
    model_overrides: dict[str, Any],
    tasks: Sequence[FoldTask],
    results: Sequence[Any],
    hashes: dict[int, str],
    out_dir: Path,
    cfg: TrainConfig,
    write: bool,
) -> CVResult:
    """Collect one model's runs into a :class:`CVResult`; write ``results.json`` and ``summary.md``."""
    runs = [
        {
            "seed": task.seed,
            "fold": task.fold,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "stopped_early": result.stopped_early,
            "monitor": result.monitor,
            "val": result.val_metrics,
            "test": result.test_metrics,
            "thresholds": result.thresholds,
            "checkpoint_dir": str(result.checkpoint_dir),
        }
        for task, result in zip(tasks, results)
    ]
    summary = summarize([r["test"] for r in runs if r["test"] is not None])
    val_summary = summarize([r["val"] for r in runs if r["val"]])
    result_cv = CVResult(
        model_name=model_name,
        model_overrides=model_overrides,
        runs=runs,
        summary=summary,
        val_summary=val_summary,
        split_hashes=hashes,
        out_dir=out_dir,
        train_config=cfg.to_dict(),
    )
    if write:
        with writing(out_dir / "results.json", keep="every finished fold is intact"):
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(
                out_dir / "results.json", json.dumps(result_cv.to_dict(), indent=2, default=str) + "\n"
            )
            atomic_write_text(out_dir / "summary.md", result_cv.to_markdown())
            task = get_task(cfg.task)
            _pool_test_predictions(tasks, out_dir / task.pooled_predictions_csv, task)
        logger.info("%s: %d runs\n%s", model_name, len(runs), format_summary(summary, title="test"))
    return result_cv


def _pool_test_predictions(tasks: Sequence[FoldTask], path: Path, task: Task) -> None:
    """Concatenate the runs' ``test_predictions.csv`` with ``seed`` and ``fold`` columns, plus the task's
    :meth:`~medmoe.engine.mil.tasks.Task.pool_extra_columns` (survival: ``high_risk``, risk above the median
    of the run's test bags: the usual risk stratification of survival papers). Runs without the file
    (finished by an older medmoe) are left out."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header_written = False
    for fold in tasks:
        pred = fold.out_dir / TEST_PREDICTIONS_CSV
        if not pred.is_file():
            continue
        with pred.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        if not rows:
            continue
        columns = list(rows[0])
        extra_names, extra = task.pool_extra_columns(rows)
        if not header_written:
            writer.writerow(["seed", "fold", *columns, *extra_names])
            header_written = True
        for r, values in zip(rows, extra):
            writer.writerow([fold.seed, fold.fold, *(r[c] for c in columns), *values])
    if header_written:
        atomic_write_text(path, buffer.getvalue())


# ----------------------------------------------------------------------------------------------
# comparisons


def resolve_variant(
    model_name: str, patch_embed: str, patch_embed_args: Mapping[str, Any] | None = None
) -> tuple[str, dict[str, Any]]:
    """The model name and overrides that give ``model_name`` the patch embedding ``patch_embed``.

    Rule: take the model's config (``base`` when not named; a ``_<embed>`` suffix is stripped, e.g.
    ``base_mammoth`` -> ``base``). If its patch embedding already is ``patch_embed``, use it; else if a
    config ``<config>_<patch_embed>`` is registered (``abmil.base_mammoth``: the paper's Mammoth
    settings), use that; else override ``patch_embed=<patch_embed>``. ``patch_embed_args`` (e.g.
    ``{'num_experts': 4}`` for small data) are merged into the chosen config's. The encoder part of the
    name is dropped (``in_dim`` comes from the data).

    Returns:
        ``(name, overrides)`` for :func:`medmoe.create_model` / :func:`run_cross_validation`.
    """
    from ...registry import get_entry, parse_model_name

    parsed = parse_model_name(model_name)
    entry = get_entry(parsed.model)
    available = entry.config_names()
    config = parsed.config
    for embed in ("mammoth", "soft_moe", "mlp", "linear"):
        suffix = f"_{embed}"
        if config.endswith(suffix) and config[: -len(suffix)] in available:
            config = config[: -len(suffix)]
            break
    overrides: dict[str, Any] = {}
    base_embed = entry.config_dict(config).get("patch_embed", "linear")
    if base_embed == patch_embed:
        chosen = config
    elif f"{config}_{patch_embed}" in available:
        chosen = f"{config}_{patch_embed}"
    else:
        chosen = config
        overrides["patch_embed"] = patch_embed
        if entry.config_dict(config).get("patch_embed_args"):
            logger.warning(
                "%s.%s has patch_embed_args meant for %r; they are passed on to %r too",
                parsed.model,
                config,
                base_embed,
                patch_embed,
            )
    if patch_embed_args:
        overrides["patch_embed_args"] = dict(patch_embed_args)
    return f"{parsed.model}.{chosen}", overrides


@dataclass
class ComparisonResult:
    """Rows of :func:`compare`: one per (dataset, model, patch embedding).

    Each row: ``dataset``, ``model``, ``patch_embed``, ``model_name`` (resolved), ``runs``, ``summary``
    (test metrics ``{name: (mean, std)}``), ``out_dir``.
    """

    rows: list[dict[str, Any]]
    metrics: list[str]

    def to_markdown(self, metrics: Sequence[str] | None = None, digits: int = 3, show_runs: bool = False) -> str:
        """``| dataset | model | patch_embed | metric ... |`` with ``mean ± std`` cells.

        ``show_runs`` adds a ``runs`` column (folds × seeds behind each row) after ``patch_embed``.
        """
        names = list(metrics) if metrics is not None else self.metrics
        lead = ["dataset", "model", "patch_embed"] + (["runs"] if show_runs else [])
        lines = ["| " + " | ".join(lead + names) + " |", "|" + "---|" * (len(lead) + len(names))]
        for row in self.rows:
            cells = [str(row[c]) for c in lead] + [
                format_mean_std(*row["summary"].get(m, (math.nan, math.nan)), digits=digits) for m in names
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return _nan_to_none(
            {
                "metrics": self.metrics,
                "rows": [{**r, "summary": {k: list(v) for k, v in r["summary"].items()}} for r in self.rows],
            }
        )


def compare(
    models: Sequence[str],
    datasets: Mapping[str, Any],
    patch_embeds: Sequence[str] = ("linear", "mammoth"),
    *,
    k: int = 5,
    seeds: Sequence[int] = (0,),
    cfg: TrainConfig | None = None,
    out_dir: str | Path = "runs/compare",
    model_overrides: Mapping[str, Any] | None = None,
    patch_embed_args: Mapping[str, Mapping[str, Any]] | None = None,
    metrics: Sequence[str] | None = None,
    val_folds: int = 1,
    resume: bool = False,
    overwrite: bool = False,
    fabric: Fabric | None = None,
    jobs: int = 1,
) -> ComparisonResult:
    """Cross-validate every ``model × patch embedding`` on every dataset with the same folds and seeds.

    Args:
        models: model names, e.g. ``['abmil', 'transmil']``.
        datasets: ``{name: bag dataset}``.
        patch_embeds: e.g. ``('linear', 'mammoth')``; see :func:`resolve_variant` for how each maps to a
            config.
        k, seeds, cfg, val_folds, resume, fabric: as :func:`run_cross_validation`; splits depend only on
            the dataset and seed, so every variant sees the same folds (a fair comparison). ``resume``
            requires every variant already in ``out_dir`` to match its own ``manifest.json`` (model, data,
            k, seeds, settings); new variants may be added (several processes can fill one folder).
        overwrite: delete the earlier grid in ``out_dir`` first (else a non-empty ``out_dir`` is refused).
        out_dir: runs go to ``out_dir/<dataset>/<model>/<patch_embed>`` (each with its own manifest, so
            ``mil predict`` takes it); ``manifest.json``, ``comparison.json`` and ``comparison.md`` are
            written at the top.
        model_overrides: overrides for every model (e.g. ``{'embed_dim': 128}``).
        patch_embed_args: per patch embedding extra args, e.g. ``{'mammoth': {'num_experts': 4,
            'num_slots': 4}}`` for small data; the caller decides.
        metrics: table columns (default: all of :data:`~medmoe.engine.mil.metrics.METRIC_NAMES`, or
            ``c_index`` for ``cfg.task='survival'``).
        jobs: runs trained at a time, in worker processes, over the whole grid (see
            :func:`~medmoe.engine.mil.fold_runner.run_folds`); ``jobs=4`` on 16 cores runs 4 folds of 4 threads.
    """
    if not models or not datasets or not patch_embeds:
        raise ValueError("compare needs at least one model, one dataset and one patch embedding")
    seeds = _check_seeds(seeds)
    cfg = cfg or TrainConfig()
    out_dir = Path(out_dir)
    is_zero = fabric.is_global_zero if fabric is not None else _is_global_zero(cfg, jobs)
    variants: list[dict[str, Any]] = []
    tasks: list[FoldTask] = []
    plans: list[tuple[Path, list[Split], list[str]]] = []
    for ds_name, dataset in datasets.items():
        for model in models:
            for embed in patch_embeds:
                name, overrides = resolve_variant(model, embed, (patch_embed_args or {}).get(embed))
                merged = {**dict(model_overrides or {}), **overrides}
                if "patch_embed_args" in (model_overrides or {}) and "patch_embed_args" in overrides:
                    merged["patch_embed_args"] = {
                        **model_overrides["patch_embed_args"],
                        **overrides["patch_embed_args"],
                    }  # type: ignore[index]
                run_dir = out_dir / _safe(ds_name) / _safe(model) / _safe(embed)
                check_model(name, merged, dataset, cfg)
                variant_tasks, hashes, variant_plans = _plan_folds(
                    name, merged, ds_name, dataset, run_dir, f"{ds_name} {model} {embed}", k=k, seeds=seeds,
                    val_folds=val_folds, task=get_task(cfg.task),
                )
                manifest = _cv_manifest(name, merged, dataset, cfg, variant_tasks, hashes, run_dir, k=k, seeds=seeds,
                                        val_folds=val_folds, split_seed=None, explicit=False)
                variants.append(
                    {"dataset": ds_name, "model": model, "patch_embed": embed, "model_name": name,
                     "model_overrides": merged, "out_dir": run_dir, "hashes": hashes, "manifest": manifest,
                     "tasks": slice(len(tasks), len(tasks) + len(variant_tasks))}
                )
                tasks += variant_tasks
                plans += variant_plans
    if is_zero:
        _start_compare_folder(out_dir, variants, plans, resume=resume, overwrite=overwrite)
    progress = GridProgress(len(tasks), is_zero)
    results = run_folds(tasks, datasets, cfg, resume=resume, fabric=fabric, progress=progress, jobs=jobs)
    rows = [_comparison_row(v, tasks, results, cfg, is_zero) for v in variants]
    default_metrics = get_task(cfg.task).summary_metrics
    result = ComparisonResult(rows, list(metrics) if metrics is not None else list(default_metrics))
    if is_zero:
        with writing(out_dir / "comparison.json", keep="every finished fold is intact"):
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(
                out_dir / "comparison.json", json.dumps(result.to_dict(), indent=2, default=str) + "\n"
            )
            atomic_write_text(out_dir / "comparison.md", result.to_markdown())
    return result


def _start_compare_folder(out_dir: Path, variants: Sequence[dict[str, Any]], plans: Any, *, resume: bool,
                          overwrite: bool) -> None:
    """Check and start the grid folder and every variant's run folder (rank 0), then save the fold plans.

    The top folder holds variant runs (several compare processes may fill it, one per dataset, say): each
    variant's own manifest is what a resume must match; everything is checked before writing."""
    top = RunManifest("mil-compare", {})
    extend = []
    if check_run_folder(out_dir, top, resume=resume, overwrite=overwrite).action == "resume":
        for v in variants:
            if check_run_folder(v["out_dir"], v["manifest"], resume=True).action == "extend":
                extend.append(v)  # the same variant run on more seeds (one process per seed fills a grid)
    start_run_folder(out_dir, top, resume=resume, overwrite=overwrite)
    for v in variants:
        if v in extend:
            extend_manifest(v["out_dir"], v["manifest"])
        elif not (v["out_dir"] / MANIFEST_NAME).is_file():
            write_manifest(v["out_dir"], v["manifest"])
    _save_plans(plans)


def _comparison_row(v: dict[str, Any], tasks: list[FoldTask], results: list[Any], cfg: TrainConfig,
                    is_zero: bool) -> dict[str, Any]:
    """One variant's row of the comparison (its cross-validation summary, written into its run folder)."""
    cv = _write_cv_result(v["model_name"], v["model_overrides"], tasks[v["tasks"]], results[v["tasks"]],
                          v["hashes"], v["out_dir"], cfg, is_zero)
    return {
        "dataset": v["dataset"],
        "model": v["model"],
        "patch_embed": v["patch_embed"],
        "model_name": v["model_name"],
        "model_overrides": v["model_overrides"],
        "runs": len(cv.runs),
        "summary": cv.summary,
        "out_dir": str(v["out_dir"]),
    }


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))
