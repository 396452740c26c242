"""Kaplan-Meier curves of predicted risk groups with a log-rank test (``medmoe mil train --task survival``).

The figure survival papers show for a MIL risk model: patients split at the median predicted risk
(per test fold), one Kaplan-Meier curve per group, censored patients marked, and the log-rank p-value of
the difference. The estimator and the test are small enough to live here (numpy only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .figure_io import save_figure

__all__ = ["kaplan_meier", "logrank_test", "plot_risk_groups"]


def _arrays(times: Sequence[float], events: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(times, dtype=np.float64).ravel()
    e = np.asarray(events).ravel().astype(bool)
    if t.shape != e.shape:
        raise ValueError(f"got {t.size} times and {e.size} events")
    if t.size and (not np.isfinite(t).all() or (t < 0).any()):
        raise ValueError("survival times must be finite and >= 0")
    return t, e


def kaplan_meier(times: Sequence[float], events: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The Kaplan-Meier estimate: distinct event-or-censoring times ``(m,)`` and ``S(t)`` just after each.

    ``S`` drops by the factor ``1 - d_i / n_i`` at every time with ``d_i`` events among the ``n_i``
    patients still at risk; it stays flat at censoring-only times.
    """
    t, e = _arrays(times, events)
    if t.size == 0:
        raise ValueError("kaplan_meier needs at least one patient")
    grid = np.unique(t)
    at_risk = (t[None, :] >= grid[:, None]).sum(1)
    deaths = ((t[None, :] == grid[:, None]) & e[None, :]).sum(1)
    return grid, np.cumprod(1.0 - deaths / at_risk)


def logrank_test(times: Sequence[float], events: Sequence[int], groups: Sequence[int]) -> tuple[float, float]:
    """Two-group log-rank test: ``(chi2 statistic, p-value)`` with one degree of freedom.

    ``groups`` holds 0 / 1 (or booleans) per patient. ``nan`` when no event happened or a group is
    empty.
    """
    t, e = _arrays(times, events)
    g = np.asarray(groups).ravel().astype(bool)
    if g.shape != t.shape:
        raise ValueError(f"got {g.size} group labels for {t.size} patients")
    if not g.any() or g.all() or not e.any():
        return math.nan, math.nan
    grid = np.unique(t[e])
    at_risk = t[None, :] >= grid[:, None]
    died = (t[None, :] == grid[:, None]) & e[None, :]
    n, n1 = at_risk.sum(1), (at_risk & g).sum(1)
    d, d1 = died.sum(1), (died & g).sum(1)
    expected = d * n1 / n
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.where(n > 1, d * (n1 / n) * (1 - n1 / n) * (n - d) / (n - 1), 0.0)
    v = float(var.sum())
    if v <= 0:
        return math.nan, math.nan
    chi2 = float((d1 - expected).sum() ** 2 / v)
    return chi2, math.erfc(math.sqrt(chi2 / 2))


def _numbers_at_risk(ax, times: np.ndarray, groups) -> None:  # type: ignore[no-untyped-def]
    """Rows of patients still at risk at each x tick, under the axis, as in survival papers."""
    from matplotlib.transforms import blended_transform_factory

    lo, hi = ax.get_xlim()
    ticks = [x for x in ax.get_xticks() if lo <= x <= hi]
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    ax.text(lo, -0.2, "at risk", transform=trans, ha="right", va="top", fontsize=7, color="0.3")
    for row, (_, mask, colour) in enumerate(groups):
        y = -0.27 - 0.07 * row
        for x in ticks:
            ax.text(x, y, str(int((times[mask] >= x).sum())), transform=trans, ha="center", va="top",
                    fontsize=7, color=colour)


def plot_risk_groups(
    times: Sequence[float],
    events: Sequence[int],
    high_risk: Sequence[bool],
    path: str | Path,
    title: str = "",
    time_label: str = "time",
) -> Path:
    """Kaplan-Meier curves of the low- and high-risk patients, censoring ticks, log-rank p and the numbers
    at risk under the time axis; a PNG.

    Args:
        times, events: follow-up and event indicator (1 = observed) per patient.
        high_risk: True for the patients predicted at high risk (e.g. above their fold's median).
        path: output PNG.
        title: figure title (the log-rank p-value is added below it).
        time_label: x-axis label (e.g. ``'months'``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, e = _arrays(times, events)
    high = np.asarray(high_risk).ravel().astype(bool)
    if high.shape != t.shape:
        raise ValueError(f"got {high.size} risk-group flags for {t.size} patients")
    _, p = logrank_test(t, e, high)
    fig, ax = plt.subplots(figsize=(5.2, 4.3))
    groups = (("low risk", ~high, "tab:blue"), ("high risk", high, "tab:red"))
    for name, mask, colour in groups:
        if not mask.any():
            continue
        grid, surv = kaplan_meier(t[mask], e[mask])
        xs = np.concatenate([[0.0], grid])
        ys = np.concatenate([[1.0], surv])
        label = f"{name} (n={int(mask.sum())}, events={int(e[mask].sum())})"
        ax.step(xs, ys, where="post", color=colour, label=label)
        censored = mask & ~e
        if censored.any():  # a tick on the curve at every censoring time
            idx = np.searchsorted(grid, t[censored], side="right") - 1
            ax.plot(t[censored], surv[idx], "|", color=colour, markersize=8)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(left=0)
    _numbers_at_risk(ax, t, groups)
    ax.set_xlabel(time_label)
    ax.set_ylabel("survival probability")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    p_text = "log-rank p = n/a" if math.isnan(p) else f"log-rank p = {p:.2g}"
    ax.set_title(f"{title}\n{p_text}" if title else p_text, fontsize=9)
    return save_figure(fig, path)
