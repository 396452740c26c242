"""Expert statistics of a mixture-of-experts patch embedding (Mammoth, Soft MoE) and their plots.

Inputs are the routing summaries every MoE embedding returns (:class:`medmoe.nn.routing.Routing`):
``expert_assignment (n, E)`` per bag (rows sum to 1: each patch's share of routing mass per expert)
and, for Mammoth with ``keep_slots``, the slot tokens ``(E*S, dim)`` ordered expert-major.

* :func:`expert_load` — mean share per expert over patches (or the mean of per-bag loads), ``(E,)``.
* :func:`routing_entropy` — per-patch entropy over experts; normalised by ``log E`` it is 1 for uniform
  routing and 0 for a patch routed to one expert.
* :func:`usage_per_class` — mean per-bag expert load for every bag class, ``(C, E)``.
* :func:`embed_2d` — PCA (SVD, deterministic) or t-SNE (scikit-learn) of slot outputs to 2-D.
* :func:`compute_expert_stats` — all of it in one JSON-able :class:`ExpertStats`.
* ``plot_*`` — bar plot of load, entropy histogram, class x expert usage matrix, 2-D slot map coloured
  by expert.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .figure_io import save_figure

__all__ = [
    "ExpertStats",
    "compute_expert_stats",
    "embed_2d",
    "expert_load",
    "plot_entropy_histogram",
    "plot_expert_load",
    "plot_slot_embedding",
    "plot_usage_per_class",
    "routing_entropy",
    "slot_expert_ids",
    "usage_per_class",
]


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _bag(a: Any) -> np.ndarray:
    arr = _np(a)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"an expert assignment must be (n, E) with n >= 1, got shape {arr.shape}")
    if (arr < -1e-6).any():
        raise ValueError("expert assignments must be non-negative shares")
    return arr


def _bags(assignments: Any) -> list[np.ndarray]:
    if isinstance(assignments, (list, tuple)):
        bags = [_bag(a) for a in assignments]
    else:
        bags = [_bag(assignments)]
    if not bags:
        raise ValueError("no expert assignments given")
    E = {b.shape[1] for b in bags}
    if len(E) != 1:
        raise ValueError(f"all bags must have the same number of experts, got {sorted(E)}")
    return bags


def expert_load(assignments: Any, per_bag: bool = False) -> np.ndarray:
    """Share of routing mass per expert, ``(E,)`` summing to 1.

    Args:
        assignments: ``(n, E)`` or a list of per-bag ``(n_i, E)``.
        per_bag: average the per-bag loads (every bag weighs the same) instead of pooling patches.
    """
    bags = _bags(assignments)
    if per_bag:
        load = np.mean([b.mean(0) for b in bags], axis=0)
    else:
        load = np.concatenate(bags).mean(0)
    return load / max(load.sum(), 1e-12)


def routing_entropy(assignment: Any, normalized: bool = True) -> np.ndarray:
    """Per-patch entropy over experts of ``(n, E)`` shares (``/ log E`` when ``normalized``), ``(n,)``."""
    a = _bag(assignment)
    p = a / np.maximum(a.sum(1, keepdims=True), 1e-12)
    h = -(p * np.log(np.clip(p, 1e-12, None))).sum(1)
    E = a.shape[1]
    return h / math.log(E) if normalized and E > 1 else h


def usage_per_class(assignments: Sequence[Any], labels: Sequence[int], num_classes: int | None = None) -> np.ndarray:
    """Mean per-bag expert load for every class, ``(C, E)`` (rows of absent classes are ``NaN``)."""
    bags = _bags(list(assignments))
    labels = [int(v) for v in labels]
    if len(labels) != len(bags):
        raise ValueError(f"{len(labels)} labels for {len(bags)} bags")
    C = num_classes if num_classes is not None else max(labels) + 1
    if any(not 0 <= v < C for v in labels):
        raise ValueError(f"labels must be in [0, {C}), got {sorted(set(labels))}")
    E = bags[0].shape[1]
    out = np.full((C, E), np.nan)
    for c in range(C):
        loads = [b.mean(0) for b, v in zip(bags, labels) if v == c]
        if loads:
            out[c] = np.mean(loads, axis=0)
    return out


def slot_expert_ids(num_experts: int, num_slots: int) -> np.ndarray:
    """Expert id of every Mammoth slot token (tokens are ordered expert-major), ``(E*S,)``."""
    return np.repeat(np.arange(num_experts), num_slots)


def embed_2d(x: Any, method: str = "pca", seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """Project ``(m, d)`` vectors to 2-D with PCA (centred SVD, sign-fixed) or t-SNE (scikit-learn)."""
    v = _np(x)
    if v.ndim != 2 or v.shape[0] < 2:
        raise ValueError(f"embed_2d needs at least two vectors (m, d), got shape {v.shape}")
    if method == "pca":
        centred = v - v.mean(0, keepdims=True)
        _u, _s, vt = np.linalg.svd(centred, full_matrices=False)
        comps = vt[:2]
        signs = np.sign(comps[np.arange(comps.shape[0]), np.abs(comps).argmax(1)])
        out = centred @ (comps * signs[:, None]).T
        if out.shape[1] < 2:
            out = np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
        return out
    if method == "tsne":
        from sklearn.manifold import TSNE

        perp = min(perplexity, max(1.0, (v.shape[0] - 1) / 3.0))
        return TSNE(n_components=2, perplexity=perp, random_state=seed, init="pca").fit_transform(v)
    raise ValueError(f"unknown projection {method!r}; choose 'pca' or 'tsne'")


@dataclass
class ExpertStats:
    """Routing statistics over one or more bags (see :func:`compute_expert_stats`)."""

    num_experts: int
    num_bags: int
    num_patches: int
    load: list[float]
    entropy_mean: float
    entropy_std: float
    dominant_counts: list[int]
    usage_per_class: list[list[float | None]] | None = None
    class_names: list[str] | None = None
    entropy: np.ndarray | None = field(default=None, repr=False)

    @property
    def load_balance(self) -> float:
        """``1 - 0.5 * sum |load - 1/E|`` in [0, 1]: 1 for perfectly balanced experts."""
        E = self.num_experts
        return float(1.0 - 0.5 * np.abs(np.asarray(self.load) - 1.0 / E).sum())

    @property
    def active_experts(self) -> int:
        """Experts that win at least one patch."""
        return int(sum(1 for c in self.dominant_counts if c > 0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_experts": self.num_experts,
            "num_bags": self.num_bags,
            "num_patches": self.num_patches,
            "load": self.load,
            "load_balance": self.load_balance,
            "entropy_mean": self.entropy_mean,
            "entropy_std": self.entropy_std,
            "active_experts": self.active_experts,
            "dominant_counts": self.dominant_counts,
            "usage_per_class": self.usage_per_class,
            "class_names": self.class_names,
        }


def compute_expert_stats(
    assignments: Any,
    labels: Sequence[int] | None = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> ExpertStats:
    """Load per expert, normalised routing entropy (mean ± std over patches), how many patches each expert
    wins, and (with ``labels``) usage per class.

    Args:
        assignments: ``(n, E)`` of one bag or a list of per-bag ``(n_i, E)``.
        labels: one class per bag (for usage per class).
        num_classes: number of classes (default ``max(labels) + 1`` or ``len(class_names)``).
        class_names: names of the classes.
    """
    bags = _bags(assignments)
    E = bags[0].shape[1]
    pooled = np.concatenate(bags)
    ent = routing_entropy(pooled)
    usage = None
    if labels is not None:
        C = num_classes or (len(class_names) if class_names else None)
        u = usage_per_class(bags, labels, C)
        usage = [[None if math.isnan(v) else float(v) for v in row] for row in u]
    return ExpertStats(
        num_experts=E,
        num_bags=len(bags),
        num_patches=int(pooled.shape[0]),
        load=[float(v) for v in expert_load(bags)],
        entropy_mean=float(ent.mean()),
        entropy_std=float(ent.std()),
        dominant_counts=[int(v) for v in np.bincount(pooled.argmax(1), minlength=E)],
        usage_per_class=usage,
        class_names=list(class_names) if class_names is not None else None,
        entropy=ent,
    )


# ---------------------------------------------------------------------------------------------- plots
def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike) -> Path:
    return save_figure(fig, path, dpi=110)


def plot_expert_load(load: Any, out_path: str | os.PathLike, title: str = "expert load") -> Path:
    """Bar plot of the share of routing mass per expert, with the uniform share ``1/E`` dashed."""
    plt = _plt()
    v = _np(load).reshape(-1)
    E = v.size
    fig, ax = plt.subplots(figsize=(max(4.0, 0.22 * E + 1.5), 2.8))
    ax.bar(np.arange(E), v, color="#4c72b0")
    ax.axhline(1.0 / E, color="k", ls="--", lw=1, label="uniform 1/E")
    ax.set_xlabel("expert")
    ax.set_ylabel("share of routing mass")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, out_path)


def plot_entropy_histogram(entropy: Any, out_path: str | os.PathLike, title: str = "routing entropy") -> Path:
    """Histogram of per-patch normalised routing entropy (0 = one expert, 1 = uniform)."""
    plt = _plt()
    v = _np(entropy).reshape(-1)
    fig, ax = plt.subplots(figsize=(4.2, 2.8))
    ax.hist(v, bins=30, range=(0, 1), color="#55a868")
    ax.set_xlabel("entropy / log E")
    ax.set_ylabel("patches")
    ax.set_title(f"{title} (mean {v.mean():.3f})", fontsize=10)
    return _save(fig, out_path)


def plot_usage_per_class(
    usage: Any, out_path: str | os.PathLike, class_names: Sequence[str] | None = None,
    title: str = "expert usage per class",
) -> Path:
    """Class x expert matrix of mean per-bag load, as an image with a colour bar."""
    plt = _plt()
    u = np.array([[np.nan if v is None else v for v in row] for row in usage], dtype=np.float64) \
        if isinstance(usage, list) else _np(usage)
    C, E = u.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.22 * E + 2.0), 0.45 * C + 1.6))
    im = ax.imshow(u, aspect="auto", cmap="viridis")
    ax.set_yticks(range(C), list(class_names) if class_names else [str(c) for c in range(C)])
    ax.set_xlabel("expert")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="mean load")
    return _save(fig, out_path)


def plot_slot_embedding(
    slot_tokens: Any,
    expert_ids: Any,
    out_path: str | os.PathLike,
    method: str = "pca",
    title: str | None = None,
) -> Path:
    """2-D map (PCA or t-SNE) of slot outputs ``(m, dim)`` coloured by their expert ``(m,)``."""
    from .heatmap import categorical_colors

    plt = _plt()
    x = _np(slot_tokens)
    if x.ndim == 3:
        x = x.reshape(-1, x.shape[-1])
    ids = np.asarray(expert_ids).astype(int).reshape(-1)
    if ids.shape[0] != x.shape[0]:
        raise ValueError(f"{ids.shape[0]} expert ids for {x.shape[0]} slot vectors")
    xy = embed_2d(x, method)
    E = int(ids.max()) + 1
    colours = categorical_colors(E)
    fig, ax = plt.subplots(figsize=(5.0, 4.2))
    ax.scatter(xy[:, 0], xy[:, 1], c=colours[ids], s=14, linewidths=0)
    if E <= 12:
        for e in range(E):
            ax.scatter([], [], c=[colours[e]], s=14, label=str(e))
        ax.legend(title="expert", fontsize=7, title_fontsize=8, loc="best")
    ax.set_title(title or f"slot outputs ({method.upper()}), coloured by expert", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    return _save(fig, out_path)
