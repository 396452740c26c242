"""Grids of cross-validations (``medmoe mil compare``, ``medmoe mil summarize`` and ``medmoe demo``): every
model x patch embedding x dataset, then the markdown table of mean ± std and a bar plot of one metric."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["check_plot_metric", "compare_grid", "compare_grid_tuned", "default_summary_metrics", "summarize_grid"]


def _loaded(datasets: list[str], folders: dict[str, Any] | None) -> dict[str, Any]:
    from .inputs import load_dataset

    loaded = dict(load_dataset(d, None, None) for d in datasets)
    loaded.update(folders or {})
    return loaded


def check_plot_metric(metric: str) -> None:
    """Refuse a ``metric`` no fold reports, before a grid trains (it would draw an empty plot after hours).

    Accepted: :data:`~medmoe.engine.mil.metrics.ALL_METRIC_NAMES` and the per-label ``auroc_<label>`` /
    ``threshold_<label>`` of multi-label runs.

    Raises:
        medmoe.errors.InputError: naming the closest metric names.
    """
    from ...errors import SETTING, InputError, did_you_mean
    from .metrics import ALL_METRIC_NAMES

    if metric in ALL_METRIC_NAMES or metric.startswith(("auroc_", "threshold_")):
        return
    hint = did_you_mean(metric, ALL_METRIC_NAMES)
    raise InputError(f"unknown {{metric}} {metric!r}" + (f" ({hint})" if hint else "")
                     + f"; the test metrics are {', '.join(ALL_METRIC_NAMES)}", metric=SETTING)


def compare_grid(
    models: list[str], datasets: list[str], patch_embeds: list[str], k: int, seeds: list[int], epochs: int,
    out: str | Path, metric: str, overrides: dict[str, Any] | None = None, moe_args: dict[str, Any] | None = None,
    lr: float = 1e-4, patience: int = 5, resume: bool = False, jobs: int = 1, *,
    folders: dict[str, Any] | None = None, task: str = "classification", overwrite: bool = False,
    columns: list[str] | None = None, **train_settings: Any,
) -> tuple[str, Path]:
    """Cross-validate the grid (:func:`~medmoe.engine.mil.cross_validation.compare`, which writes
    ``comparison.md``) and draw ``comparison.png``.

    Args:
        models, patch_embeds: registry names and patch embeddings (``linear``, ``mammoth``) crossed.
        datasets: benchmark names (fetched on first use); ``folders`` adds already loaded datasets by name.
        k, seeds, epochs, lr, patience: the protocol (``min_epochs = min(epochs, 5)``, standardised features).
        out: the grid's folder.
        metric: the metric drawn in the plot.
        overrides: model config overrides; moe_args: Mammoth arguments of the ``mammoth`` variant only.
        resume, overwrite, jobs: see :func:`~medmoe.engine.mil.cross_validation.compare`.
        task: ``classification`` | ``survival`` | ``multilabel``.
        columns: the table's metrics (default: the task's).
        train_settings: further :class:`~medmoe.engine.TrainConfig` fields (``None`` = default).

    Returns:
        ``(markdown table, plot path)``.
    """
    from ...viz.comparison import plot_comparison
    from .config import TrainConfig
    from .cross_validation import compare

    check_plot_metric(metric)
    out = Path(out)
    settings = {"epochs": epochs, "lr": lr, "patience": patience, "min_epochs": min(epochs, 5),
                "standardize_features": True, "progress": False, "task": task, **train_settings}
    cfg = TrainConfig(**{key: v for key, v in settings.items() if v is not None})
    result = compare(models, _loaded(datasets, folders), patch_embeds, k=k, seeds=seeds, cfg=cfg, out_dir=out,
                     model_overrides=overrides or {}, patch_embed_args={"mammoth": moe_args} if moe_args else None,
                     resume=resume, overwrite=overwrite, jobs=jobs, metrics=columns)
    table = result.to_markdown()  # compare() wrote it to comparison.md (atomically)
    png = plot_comparison(result.rows, metric, out / "comparison.png",
                          title=f"{k}-fold CV, seeds {list(seeds)}: test {metric}")
    return table, png


def compare_grid_tuned(models: list[str], datasets: list[str], patch_embeds: list[str], folders: dict[str, Any],
                       out: str | Path, metric: str, *, space: str | Path | None, overrides: dict[str, Any],
                       moe_args: dict[str, Any], search_only: bool, **kwargs: Any) -> tuple[str, Path] | None:
    """The grid with every variant tuned by nested cross-validation
    (:func:`~medmoe.engine.mil.tuning.compare_tuned`), then the bar plot of ``metric``.

    Args:
        models, datasets, patch_embeds, folders, out, metric, overrides, moe_args: as :func:`compare_grid`.
        space: a search-space YAML (default: the built-in space; read before any data is loaded).
        search_only: only add trials to the studies; train no outer fold.
        kwargs: passed to :func:`~medmoe.engine.mil.tuning.compare_tuned` (``trials``, ``k``, ``seeds``,
            ``inner_k``, ``cfg``, ``storage``, ...).

    Returns:
        ``(markdown table, plot path)``, or ``None`` with ``search_only``.
    """
    from ...viz.comparison import plot_comparison
    from .search_space import load_space
    from .tuning import compare_tuned

    check_plot_metric(metric)
    out = Path(out)
    the_space = load_space(space)  # a bad space fails before any data is loaded
    result = compare_tuned(models, _loaded(datasets, folders), patch_embeds, out_dir=out, model_overrides=overrides,
                           patch_embed_args={"mammoth": moe_args} if moe_args else None, space=the_space,
                           search_only=search_only, **kwargs)
    if search_only:
        return None
    png = plot_comparison(result.rows, metric, out / "comparison.png",
                          title=f"nested CV, {kwargs['trials']} trials per outer fold: test {metric}")
    return (out / "comparison.md").read_text(), png


def default_summary_metrics(metrics: list[str]) -> list[str]:
    """The columns a summary shows when none are asked for, from the metrics a grid recorded: ``c_index`` for
    survival runs; ``auroc, f1, subset_accuracy`` for multi-label runs; else ``auroc, balanced_accuracy, f1``."""
    if "c_index" in metrics:
        return ["c_index"]
    if "subset_accuracy" in metrics:
        return ["auroc", "f1", "subset_accuracy"]
    return ["auroc", "balanced_accuracy", "f1"]


def summarize_grid(
    run_dir: str | Path,
    *,
    datasets: list[str] | None = None,
    models: list[str] | None = None,
    metrics: list[str] | None = None,
    min_runs: int = 1,
    out: str | Path | None = None,
    paired: bool = True,
    baseline: str = "linear",
    variant: str = "mammoth",
) -> tuple[str, Path, Path]:
    """Table (mean ± std over the finished folds, with their count) and bar plot of a grid's folder, finished
    or not (:func:`~medmoe.engine.mil.comparison_summary.collect_comparison`); trains nothing.

    Args:
        run_dir: the grid's folder (``<dataset>/<model>/<patch_embed>/seed*/fold*/fold_result.json``).
        datasets, models: only these, in this order (``None``: all).
        metrics: the table's columns, the first drawn in the plot (default :func:`default_summary_metrics`).
        min_runs: leave out variants with fewer finished folds.
        out: write ``<out>.md`` and ``<out>.png`` (default ``run_dir/summary_table``).
        paired: also pair the folds of ``variant`` and ``baseline`` per dataset and model, per metric (mean
            difference, 95 % CI, corrected resampled t-test; :func:`~medmoe.engine.paired_comparison`).
        baseline, variant: the patch embeddings paired.

    Returns:
        ``(markdown, table file, plot file)``.

    Raises:
        ValueError: no finished fold, or a metric the grid did not record.
    """
    from ...viz.comparison import plot_comparison
    from .comparison_summary import collect_comparison
    from .paired_comparison import paired_comparison, paired_markdown

    run_dir = Path(run_dir)
    result = collect_comparison(run_dir, datasets=datasets or None, models=models or None, min_runs=min_runs)
    metrics = list(metrics) if metrics else default_summary_metrics(list(result.metrics))
    # a multi-label folder also has auroc_<label> per label
    available = list(dict.fromkeys([*result.metrics, *(m for r in result.rows for m in r["summary"])]))
    unknown = [m for m in metrics if m not in available]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {available}")
    table = result.to_markdown(metrics, show_runs=True)
    if paired:
        for name in metrics:
            pairs = paired_comparison(run_dir, name, baseline=baseline, variant=variant, datasets=datasets or None,
                                      models=models or None)
            if pairs:
                table += "\n" + paired_markdown(pairs)
    stem = Path(out) if out is not None else run_dir / "summary_table"
    stem.parent.mkdir(parents=True, exist_ok=True)
    md = Path(f"{stem}.md")
    md.write_text(table)
    png = plot_comparison(result.rows, metrics[0], Path(f"{stem}.png"), title=f"test {metrics[0]} (finished folds)")
    return table, md, png
