"""Tissue detection on a slide thumbnail and a grid of tissue patches in level-0 coordinates.

* :func:`otsu_threshold` — Otsu's threshold of a 1-D sample (numpy only).
* :func:`tissue_mask` — bool ``(h, w)`` mask of a thumbnail: Otsu on the HSV saturation (default; H&E
  tissue is coloured, background glass is grey/white) or on the inverted greyscale, then small
  holes/specks removed with a morphological closing and opening.
* :func:`tile_grid` — non-overlapping (or strided) square patches over the slide whose tissue fraction
  is at least ``tissue_threshold``; returns a :class:`TileGrid` with ``coords (n, 2)`` in level-0
  pixels (top-left ``x, y``), the TRIDENT/CLAM convention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .slides import Slide, open_slide

__all__ = ["TileGrid", "otsu_threshold", "tile_grid", "tissue_mask"]


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut maximising the between-class variance of a histogram of ``values``.

    Returns the threshold in the units of ``values`` (values ``> t`` form the upper class).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("otsu_threshold needs at least one finite value")
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mean0 = m0 / np.maximum(w0, 1e-12)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mean0 - mean1) ** 2
    between[w1 == 0] = -1  # the last cut puts everything in one class
    # the maximum is flat across an empty gap between two modes: take the middle of that plateau
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float(edges[1:][best].mean())


def _saturation(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float32)
    mx, mn = rgb.max(-1), rgb.min(-1)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)


def tissue_mask(
    thumbnail: np.ndarray,
    method: str = "saturation",
    min_saturation: float = 0.05,
    max_brightness: float = 0.95,
    smooth: int = 2,
) -> np.ndarray:
    """Tissue mask of an RGB thumbnail ``(h, w, 3)`` uint8.

    Args:
        thumbnail: the slide thumbnail (e.g. from :meth:`Slide.thumbnail`).
        method: ``saturation`` (Otsu on HSV saturation, robust for H&E) or ``grey`` (Otsu on 1 - grey).
        min_saturation: saturation below this is never tissue (guards against Otsu splitting a blank
            background into two classes).
        max_brightness: pixels whose grey value (0..1) is above this are never tissue (white glass).
        smooth: radius of the closing/opening that removes specks and holes (0 = off).

    Returns:
        bool ``(h, w)``, True = tissue.
    """
    img = np.asarray(thumbnail)
    if img.ndim != 3 or img.shape[-1] < 3:
        raise ValueError(f"tissue_mask expects an RGB image (h, w, 3), got shape {img.shape}")
    rgb = img[..., :3]
    grey = rgb.astype(np.float32).mean(-1) / 255.0
    if method == "saturation":
        signal = _saturation(rgb)
        mask = (signal > otsu_threshold(signal)) & (signal >= min_saturation)
    elif method in ("grey", "gray"):
        signal = 1.0 - grey
        mask = (signal > otsu_threshold(signal)) & (signal >= 1.0 - max_brightness)
    else:
        raise ValueError(f"unknown tissue method {method!r}; choose 'saturation' or 'grey'")
    mask &= grey <= max_brightness
    if smooth > 0 and mask.any():
        from scipy import ndimage

        structure = np.ones((2 * smooth + 1, 2 * smooth + 1), dtype=bool)
        mask = ndimage.binary_closing(mask, structure=structure, border_value=0)
        mask = ndimage.binary_opening(mask, structure=structure, border_value=0)
    return mask.astype(bool)


@dataclass
class TileGrid:
    """Square patches over a slide.

    Attributes:
        coords: ``(n, 2)`` int64 top-left ``(x, y)`` in level-0 pixels.
        patch_size_level0: patch side in level-0 pixels.
        patch_size: patch side in pixels fed to the encoder (after resizing).
        tissue_fraction: ``(n,)`` share of tissue pixels in each patch (from the thumbnail mask).
        slide_dimensions: level-0 ``(width, height)``.
        target_magnification: the magnification the patches represent (``None`` = level 0's).
        mask: the thumbnail tissue mask used, ``mask_downsample`` its level-0 px per mask px.
    """

    coords: np.ndarray
    patch_size_level0: int
    patch_size: int
    tissue_fraction: np.ndarray
    slide_dimensions: tuple[int, int]
    target_magnification: float | None = None
    mask: np.ndarray | None = field(default=None, repr=False)
    mask_downsample: float = 1.0

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def attrs(self) -> dict[str, Any]:
        """TRIDENT-style attributes for the ``coords`` dataset of a feature ``.h5``."""
        out: dict[str, Any] = {
            "patch_size": int(self.patch_size),
            "patch_size_level0": int(self.patch_size_level0),
            "patch_level": 0,
            "level0_width": int(self.slide_dimensions[0]),
            "level0_height": int(self.slide_dimensions[1]),
        }
        if self.target_magnification is not None:
            out["target_magnification"] = float(self.target_magnification)
        return out


def tile_grid(
    slide: Slide | str,
    patch_size: int = 224,
    *,
    magnification: float | None = None,
    stride: int | None = None,
    tissue_threshold: float = 0.5,
    mask: np.ndarray | None = None,
    thumbnail_size: int = 1024,
    method: str = "saturation",
) -> TileGrid:
    """Grid of patches covering the tissue of a slide.

    Args:
        slide: an open :class:`~medmoe.data.slides.Slide` or a path.
        patch_size: patch side in pixels at the target magnification (what the encoder sees).
        magnification: target magnification (e.g. 20); patches are ``patch_size * mag0 / magnification``
            level-0 pixels wide. ``None`` = level-0 pixels (no rescaling). Needs the slide's
            magnification when given.
        stride: step between patches in target-magnification pixels (default ``patch_size``: no overlap).
        tissue_threshold: keep patches with at least this tissue fraction (0 keeps every patch).
        mask: a precomputed tissue mask of the thumbnail (default: :func:`tissue_mask`).
        thumbnail_size: longer side of the thumbnail used for the mask.
        method: tissue detection method, see :func:`tissue_mask`.

    Returns:
        :class:`TileGrid`, patches in row-major order (top to bottom, left to right).
    """
    if patch_size < 1:
        raise ValueError(f"patch_size must be positive, got {patch_size}")
    if not 0.0 <= tissue_threshold <= 1.0:
        raise ValueError(f"tissue_threshold must be in [0, 1], got {tissue_threshold}")
    slide = open_slide(slide)
    scale = 1.0
    if magnification is not None:
        if magnification <= 0:
            raise ValueError(f"magnification must be positive, got {magnification}")
        if slide.magnification is None:
            raise ValueError(
                f"{slide.name}: the slide does not record its magnification, so magnification="
                f"{magnification} cannot be converted to level-0 pixels; pass magnification=None"
            )
        scale = slide.magnification / float(magnification)
    size0 = max(1, round(patch_size * scale))
    step0 = max(1, round((stride or patch_size) * scale))
    w0, h0 = slide.dimensions
    thumb, ds = slide.thumbnail(thumbnail_size)
    if mask is None:
        mask = tissue_mask(thumb, method=method)
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (h, w), got shape {mask.shape}")
    mh, mw = mask.shape
    ds_x, ds_y = w0 / float(mw), h0 / float(mh)
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    xs = np.arange(0, max(w0 - size0, 0) + 1, step0)
    ys = np.arange(0, max(h0 - size0, 0) + 1, step0)
    gx, gy = np.meshgrid(xs, ys)
    gx, gy = gx.ravel(), gy.ravel()
    mx0 = np.clip(np.floor(gx / ds_x).astype(np.int64), 0, mw - 1)
    my0 = np.clip(np.floor(gy / ds_y).astype(np.int64), 0, mh - 1)
    mx1 = np.clip(np.ceil((gx + size0) / ds_x).astype(np.int64), mx0 + 1, mw)
    my1 = np.clip(np.ceil((gy + size0) / ds_y).astype(np.int64), my0 + 1, mh)
    count = integral[my1, mx1] - integral[my0, mx1] - integral[my1, mx0] + integral[my0, mx0]
    frac = count / ((mx1 - mx0) * (my1 - my0)).astype(np.float64)
    keep = frac >= tissue_threshold if tissue_threshold > 0 else np.ones_like(frac, dtype=bool)
    coords = np.stack([gx[keep], gy[keep]], axis=1).astype(np.int64).reshape(-1, 2)
    return TileGrid(
        coords=coords,
        patch_size_level0=size0,
        patch_size=int(patch_size),
        tissue_fraction=frac[keep].astype(np.float32),
        slide_dimensions=(int(w0), int(h0)),
        target_magnification=float(magnification) if magnification is not None else slide.magnification,
        mask=mask,
        mask_downsample=float(ds),
    )
