"""Top-k patches per expert / attention branch, saved as image grids.

* :func:`top_k_indices` — indices of the ``k`` highest finite scores (descending).
* :func:`patch_grid` — tile ``(h, w, 3)`` patch images into one grid image with captions (matplotlib).
* :func:`save_top_k_grids` — for every named score vector (``{"attention": (n,), "expert_03": (n,)}``)
  crop the top-k patches from the slide and save ``<out_dir>/<name>_top<k>.png``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.slides import Slide, open_slide

__all__ = ["patch_grid", "save_top_k_grids", "top_k_indices"]


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def top_k_indices(scores: Any, k: int) -> np.ndarray:
    """Indices of the ``k`` largest finite scores, highest first (fewer if fewer are finite)."""
    s = _np(scores).astype(np.float64).reshape(-1)
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    finite = np.flatnonzero(np.isfinite(s))
    order = finite[np.argsort(-s[finite], kind="stable")]
    return order[:k]


def patch_grid(
    patches: Sequence[np.ndarray],
    captions: Sequence[str] | None = None,
    *,
    ncols: int | None = None,
    title: str | None = None,
    out_path: str | os.PathLike | None = None,
    tile_inches: float = 1.6,
) -> Path | None:
    """Lay ``patches`` (each ``(h, w, 3)`` uint8) out in a grid with optional captions; save a PNG.

    Returns the path when ``out_path`` is given.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(patches) == 0:
        raise ValueError("patch_grid needs at least one patch")
    if captions is not None and len(captions) != len(patches):
        raise ValueError(f"{len(captions)} captions for {len(patches)} patches")
    n = len(patches)
    ncols = ncols or min(n, 5)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(tile_inches * ncols, tile_inches * nrows + (0.4 if title else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < n:
            ax.imshow(patches[i])
            if captions is not None:
                ax.set_title(captions[i], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if out_path is None:
        plt.close(fig)
        return None
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_top_k_grids(
    slide: Slide | str | os.PathLike,
    coords: Any,
    patch_size_level0: int,
    scores: Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    k: int = 10,
    thumb_size: int = 128,
    ncols: int = 5,
) -> dict[str, Path]:
    """Save the top-``k`` patches of every score vector as a grid ``<out_dir>/<name>_top<k>.png``.

    Args:
        slide: the slide the coordinates belong to.
        coords: ``(n, 2)`` level-0 top-left ``(x, y)``.
        patch_size_level0: patch side in level-0 pixels.
        scores: ``{name: (n,) scores}``, e.g. attention per branch and routing share per expert.
        out_dir: output folder.
        k: patches per grid.
        thumb_size: side of each patch image in the grid.

    Returns:
        ``{name: path}``.
    """
    sl = open_slide(slide)
    c = _np(coords)
    if c.ndim != 2 or c.shape[1] != 2:
        raise ValueError(f"coords must be (n, 2), got shape {c.shape}")
    w, h = sl.dimensions
    if ((c[:, 0] < 0) | (c[:, 1] < 0) | (c[:, 0] >= w) | (c[:, 1] >= h)).any():
        raise ValueError(f"some coords lie outside the slide {sl.name} ({w} x {h} level-0 px)")
    out: dict[str, Path] = {}
    for name, s in scores.items():
        s = _np(s).reshape(-1)
        if s.shape[0] != c.shape[0]:
            raise ValueError(f"scores {name!r} has {s.shape[0]} values for {c.shape[0]} coords")
        idx = top_k_indices(s, k)
        if idx.size == 0:
            continue
        patches = [sl.read_level0(c[i], int(patch_size_level0), thumb_size) for i in idx]
        captions = [f"#{r + 1} ({int(c[i, 0])},{int(c[i, 1])})\n{s[i]:.3g}" for r, i in enumerate(idx)]
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        path = patch_grid(patches, captions, ncols=ncols, title=f"{name}: top {len(idx)} patches",
                          out_path=Path(out_dir) / f"{safe}_top{k}.png")
        assert path is not None
        out[name] = path
    return out
