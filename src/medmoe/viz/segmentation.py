"""Segmentation figures: one axial slice of an image, its ground truth and each model's prediction."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_segmentation_slices"]


def plot_segmentation_slices(
    case: Any,
    predictions: Mapping[str, str | os.PathLike],
    path: str | os.PathLike,
    class_names: Sequence[str],
    title: str = "held-out region",
) -> Path:
    """Draw the image, the ground truth and every prediction side by side at the axial slice (last axis) with
    the most foreground voxels, and save the figure as ``path`` (PNG, folders created).

    Args:
        case: a :class:`~medmoe.data.volumes.VolumeCase` with a label (its first image channel is drawn).
        predictions: ``{panel title: label-map NIfTI}`` in the case's voxel space, e.g. the files
            :func:`~medmoe.engine.seg.inference.predict_volumes` writes.
        path: the figure file.
        class_names: the label values' names, background first (fixes the colour scale).
        title: the figure's title, followed by the slice drawn.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib
    import numpy as np

    from .figure_io import save_figure

    image = np.asarray(nib.load(str(case.images[0])).dataobj, dtype=np.float32)
    label = np.asarray(nib.load(str(case.label)).dataobj)
    z = int(np.argmax((label > 0).sum(axis=(0, 1))))  # the slice with the most foreground
    panels = [("image", image[..., z], "gray"), ("ground truth", label[..., z], "viridis")]
    panels += [
        (name, np.asarray(nib.load(str(p)).dataobj)[..., z], "viridis") for name, p in predictions.items()
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    vmax = max(1, len(class_names) - 1)
    for ax, (panel, arr, cmap) in zip(axes, panels):
        kwargs = {} if cmap == "gray" else {"vmin": 0, "vmax": vmax, "interpolation": "nearest"}
        ax.imshow(np.rot90(arr), cmap=cmap, **kwargs)
        ax.set_title(panel, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{title}, axial slice {z}", fontsize=10)
    return save_figure(fig, path, dpi=110)
