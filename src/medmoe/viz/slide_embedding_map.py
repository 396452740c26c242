"""A 2-D map of slide embeddings (``medmoe mil embed --plot``): one dot per slide, coloured by its class.

The projection is PCA (the axes carry their share of the variance) or t-SNE (scikit-learn).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .expert_stats import embed_2d
from .figure_io import save_figure

__all__ = ["plot_slide_embeddings"]


def _explained_variance(features: np.ndarray) -> tuple[float, float]:
    """Share of the total variance along the first two principal axes."""
    centred = features - features.mean(0, keepdims=True)
    s = np.linalg.svd(centred, compute_uv=False) ** 2
    total = float(s.sum())
    if total <= 0:
        return 0.0, 0.0
    s = np.pad(s, (0, max(0, 2 - s.size)))
    return float(s[0] / total), float(s[1] / total)


def plot_slide_embeddings(
    features: Any,
    labels: Sequence[int] | None,
    class_names: Sequence[str],
    path: str | Path,
    *,
    method: str = "pca",
    title: str = "",
    seed: int = 0,
) -> Path:
    """Scatter the ``(N, d)`` slide vectors in 2-D; a PNG.

    Args:
        features: ``(N, d)`` array or tensor, ``N >= 2``.
        labels: class index per slide (``-1`` or ``None`` = unknown, drawn grey), or ``None`` for no colours.
        class_names: names of the class indices (the legend).
        path: output PNG.
        method: ``"pca"`` or ``"tsne"``.
        title: figure title.
        seed: t-SNE seed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.asarray(features.detach().cpu() if hasattr(features, "detach") else features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"a slide-embedding map needs at least two slides (N, d), got shape {x.shape}")
    if labels is not None and len(labels) != x.shape[0]:
        raise ValueError(f"{len(labels)} labels for {x.shape[0]} slides")
    xy = embed_2d(x, method=method, seed=seed)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    y = np.full(x.shape[0], -1) if labels is None else np.array([-1 if v is None else int(v) for v in labels])
    unknown = y < 0
    if unknown.any():
        ax.scatter(
            xy[unknown, 0], xy[unknown, 1], s=18, c="0.6", label="unknown" if labels is not None else None
        )
    cmap = plt.get_cmap("tab10" if max(len(class_names), 1) <= 10 else "tab20")
    for c in sorted(set(y[~unknown].tolist())):
        sel = y == c
        name = class_names[c] if c < len(class_names) else str(c)
        ax.scatter(xy[sel, 0], xy[sel, 1], s=18, color=cmap(c % cmap.N), label=f"{name} (n={int(sel.sum())})")
    if method == "pca":
        v1, v2 = _explained_variance(x)
        ax.set_xlabel(f"PC 1 ({100 * v1:.0f}% of variance)")
        ax.set_ylabel(f"PC 2 ({100 * v2:.0f}% of variance)")
    else:
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, frameon=False)
    ax.set_title(title or f"{x.shape[0]} slides, {x.shape[1]}-d embeddings", fontsize=10)
    return save_figure(fig, path)
