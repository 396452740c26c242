"""Plots of an Optuna study drawn with matplotlib from its trials (no plotly): the optimisation history
(each trial's inner score, the best so far, pruned and failed trials marked) and the parameter
importances (``optuna.importance.get_param_importances``, its default evaluator)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .figure_io import save_figure

__all__ = ["plot_optimization_history", "plot_param_importances"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_optimization_history(
    trials: Sequence[tuple[int, str, float | None]], path: str | os.PathLike, *, metric: str, maximize: bool = True,
    title: str = "",
) -> Path:
    """Draw ``(number, state, value)`` rows of a study's trials.

    Complete trials are dots with the best-so-far line; pruned trials are grey crosses at the running inner
    mean they were stopped at when known (else left out); failed ones are listed in the legend count.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    done = [(n, v) for n, s, v in trials if s == "COMPLETE" and v is not None and not math.isnan(v)]
    pruned = [(n, v) for n, s, v in trials if s == "PRUNED" and v is not None]
    failed = sum(1 for _, s, _ in trials if s == "FAIL")
    if done:
        xs, ys = zip(*sorted(done))
        ax.plot(xs, ys, "o", color="#4c72b0", label=f"complete ({len(done)})")
        best, line = None, []
        for y in ys:
            best = y if best is None or (y > best if maximize else y < best) else best
            line.append(best)
        ax.step(xs, line, where="post", color="#dd8452", label="best so far")
    if pruned:
        px, py = zip(*sorted(pruned))
        ax.plot(px, py, "x", color="#999999", label=f"pruned ({len(pruned)})")
    elif any(s == "PRUNED" for _, s, _ in trials):
        ax.plot([], [], "x", color="#999999", label=f"pruned ({sum(1 for _, s, _ in trials if s == 'PRUNED')})")
    if failed:
        ax.plot([], [], " ", label=f"failed ({failed})")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"mean inner {metric}")
    ax.set_title(f"optimisation history {title}".strip(), fontsize=9)
    if done or pruned or failed:
        ax.legend(fontsize=7, loc="best")
    return save_figure(fig, path)


def plot_param_importances(importances: Mapping[str, float], path: str | os.PathLike, *, title: str = "") -> Path:
    """Horizontal bars of ``{parameter: importance}`` (fractions summing to 1), most important on top."""
    plt = _pyplot()
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(6.4, 1.6 + 0.35 * len(items)))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#4c72b0")
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=7)
    ax.set_xlabel("importance (optuna.importance, default evaluator)")
    ax.set_title(f"parameter importances {title}".strip(), fontsize=9)
    return save_figure(fig, path)
