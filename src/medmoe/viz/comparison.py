"""Grouped bar plot of a linear-vs-MoE comparison (``medmoe mil compare``, ``medmoe demo``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_comparison"]


def plot_comparison(rows: Sequence[Mapping[str, Any]], metric: str, path: str | Path, title: str = "") -> Path:
    """One panel per dataset, one bar group per model, one bar per patch embedding, std as error bars.

    Args:
        rows: ``ComparisonResult.rows`` (``dataset``, ``model``, ``patch_embed``, ``summary`` with
            ``{metric: (mean, std)}``).
        metric: the metric to draw, e.g. ``'auroc'`` or ``'balanced_accuracy'``.
        path: output PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("nothing to plot: the comparison has no rows")
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    embeds = list(dict.fromkeys(r["patch_embed"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(4.0, 1.6 * len(models)) * len(datasets), 3.6),
                             squeeze=False, sharey=True)
    width = 0.8 / len(embeds)
    colours = plt.get_cmap("tab10")
    # rows averaging fewer runs than the others (a grid still running) get their count on the bar
    runs = {(r["dataset"], r["model"], r["patch_embed"]): r["runs"] for r in rows if isinstance(r.get("runs"), int)}
    most_runs = max(runs.values(), default=0)
    for ax, ds in zip(axes[0], datasets):
        for j, emb in enumerate(embeds):
            means, stds = [], []
            for m in models:
                row = next((r for r in rows if r["dataset"] == ds and r["model"] == m and r["patch_embed"] == emb),
                           None)
                mean, std = row["summary"].get(metric, (math.nan, math.nan)) if row else (math.nan, math.nan)
                means.append(mean)
                stds.append(0.0 if std is None or math.isnan(std) else std)
            xs = [i + (j - (len(embeds) - 1) / 2) * width for i in range(len(models))]
            ax.bar(xs, means, width, yerr=stds, capsize=3, label=emb, color=colours(j))
            for x, m, mean in zip(xs, models, means):
                n = runs.get((ds, m, emb))
                if n is not None and n < most_runs and not math.isnan(mean):  # a row still being run
                    ax.text(x, 0.02, f"n={n}", rotation=90, ha="center", va="bottom", fontsize=7, color="white")
        ax.set_xticks(range(len(models)), models, rotation=20)
        ax.set_title(ds)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(f"{metric} (mean ± std)")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, title="patch embedding", fontsize=8, loc="lower center", ncol=len(embeds))
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
