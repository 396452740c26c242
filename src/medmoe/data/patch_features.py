"""Patch features for a slide: tiles -> any torch encoder -> TRIDENT-style ``.h5``.

* :class:`BuiltinPatchEncoder` — a deterministic, **not pretrained** feature extractor so the whole
  slide -> patches -> features -> model -> heatmap path runs without downloading encoder weights:
  fixed-seed random convolutions (96 features: average + max pooled), colour statistics (RGB, HSV
  saturation and an H&E colour deconvolution, 15 features) and texture statistics (gradients, Laplacian,
  a 14-bin grey histogram, 17 features) = :data:`BUILTIN_FEATURE_DIM` (128). Its features carry colour
  and texture, not semantics: use a pathology foundation model (UNI, CONCH, ...) for real studies.
* :func:`extract_features` — run an encoder (``nn.Module``: ``(b, 3, h, w)`` float in [0, 1] (or
  normalised with ``mean``/``std``) -> ``(b, d)``) over patches of a slide.
* :func:`extract_slide_features` — tissue grid + :func:`extract_features` + a TRIDENT-style ``.h5``
  (``features (n, d)``, ``coords (n, 2)`` level-0 px, attributes ``patch_size``, ``patch_size_level0``,
  ``patch_level``, ``encoder``, ...) that :class:`~medmoe.data.FeatureFolderBags` and ``medmoe mil``
  read like TRIDENT's output.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .slides import Slide, open_slide
from .tissue import TileGrid, tile_grid

__all__ = [
    "BUILTIN_FEATURE_DIM",
    "BuiltinPatchEncoder",
    "SlideFeatures",
    "extract_features",
    "extract_slide_features",
    "iter_patch_batches",
]

logger = logging.getLogger(__name__)

BUILTIN_FEATURE_DIM = 128

# Ruifrok & Johnston (2001) stain vectors (rows: haematoxylin, eosin, residual), as optical densities.
_HED_FROM_RGB = np.linalg.inv(
    np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64)
    / np.linalg.norm(np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]]), axis=1, keepdims=True)
)


class BuiltinPatchEncoder(nn.Module):
    """Deterministic hand-made + random-convolution patch features (NOT pretrained), 128-d.

    Shapes: ``(b, 3, h, w)`` float RGB in [0, 1] (any ``h, w >= 16``) -> ``(b, 128)``.

    The random convolution weights come from ``torch.Generator().manual_seed(seed)`` and are buffers,
    so two encoders with the same seed give the same features on any machine (up to float rounding)
    and a state dict is never needed.
    """

    name = "medmoe-builtin-v1"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(int(seed))

        def conv(cin: int, cout: int, k: int) -> Tensor:
            w = torch.randn(cout, cin, k, k, generator=g) * (2.0 / (cin * k * k)) ** 0.5
            return w - w.mean(dim=(1, 2, 3), keepdim=True)  # zero-mean filters: respond to texture

        self.register_buffer("w1", conv(3, 24, 5), persistent=False)
        self.register_buffer("w2", conv(24, 48, 3), persistent=False)
        self.register_buffer("w3", conv(48, 48, 3), persistent=False)
        self.register_buffer("hed", torch.tensor(_HED_FROM_RGB, dtype=torch.float32), persistent=False)
        self.register_buffer("lap", torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 1, 3, 3),
                             persistent=False)
        self.register_buffer("sobel", torch.tensor([[[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]],
                                                    [[-1.0, -2, -1], [0, 0, 0], [1, 2, 1]]]).unsqueeze(1) / 4,
                             persistent=False)
        self.out_dim = BUILTIN_FEATURE_DIM

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"BuiltinPatchEncoder expects (b, 3, h, w) RGB in [0, 1], got {tuple(x.shape)}")
        if min(x.shape[-2:]) < 16:
            raise ValueError(f"patches must be at least 16 px, got {tuple(x.shape[-2:])}")
        x = x.float().clamp(0, 1)
        b = x.shape[0]
        # random convolution features (96)
        h = F.relu(F.conv2d(x - 0.5, self.w1, stride=2, padding=2))
        h = F.relu(F.conv2d(h, self.w2, stride=2, padding=1))
        h = F.relu(F.conv2d(h, self.w3, stride=2, padding=1))
        conv_feats = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        # colour (15): RGB mean/std, saturation mean/std, H&E(+residual) OD mean/std, white fraction
        rgb = x.flatten(2)  # (b, 3, p)
        mx, mn = rgb.max(1).values, rgb.min(1).values
        sat = torch.where(mx > 0, (mx - mn) / mx.clamp_min(1e-6), torch.zeros_like(mx))
        od = -torch.log(rgb.clamp_min(1.0 / 255.0))  # optical density
        hed = torch.einsum("bcp,cs->bsp", od, self.hed)
        grey = rgb.mean(1)
        colour = torch.cat([
            rgb.mean(2), rgb.std(2), sat.mean(1, keepdim=True), sat.std(1, keepdim=True),
            hed.mean(2), hed.std(2), (grey > 0.85).float().mean(1, keepdim=True),
        ], dim=1)
        # texture (17): gradient magnitude mean/std, |Laplacian| mean, 14-bin grey histogram
        g = x.mean(1, keepdim=True)
        grad = F.conv2d(g, self.sobel, padding=1)
        mag = grad.pow(2).sum(1).sqrt().flatten(1)
        lap = F.conv2d(g, self.lap, padding=1).abs().flatten(1)
        bins = (grey * 14).long().clamp(0, 13)
        hist = torch.zeros(b, 14, device=x.device).scatter_add_(1, bins, torch.ones_like(grey)) / grey.shape[1]
        texture = torch.cat([mag.mean(1, keepdim=True), mag.std(1, keepdim=True), lap.mean(1, keepdim=True), hist],
                            dim=1)
        return torch.cat([conv_feats, colour, texture], dim=1)


def iter_patch_batches(
    slide: Slide, coords: np.ndarray, patch_size_level0: int, patch_size: int, batch_size: int = 32
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, patches (b, patch_size, patch_size, 3) uint8)`` for the patches at ``coords``."""
    n = len(coords)
    for start in range(0, n, batch_size):
        chunk = coords[start : start + batch_size]
        yield start, np.stack([slide.read_level0(c, patch_size_level0, patch_size) for c in chunk])


def _check_coords(coords: Any, dims: tuple[int, int], patch_size_level0: int, what: str = "slide") -> np.ndarray:
    arr = np.asarray(coords)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"coords must be (n, 2) level-0 (x, y), got shape {arr.shape}")
    w, h = dims
    outside = (arr[:, 0] < 0) | (arr[:, 1] < 0) | (arr[:, 0] >= w) | (arr[:, 1] >= h)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"{int(outside.sum())} of {len(arr)} patch coordinates lie outside the {what} ({w} x {h} level-0 px), "
            f"e.g. #{i} = ({arr[i, 0]}, {arr[i, 1]}); coords must be level-0 pixels of this slide "
            f"(patch size {patch_size_level0} level-0 px)"
        )
    return arr


def _encode(encoder: nn.Module, batch: Tensor) -> Tensor:
    out = encoder(batch)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, Tensor):
        raise ValueError(f"the encoder must return a tensor (b, d), got {type(out).__name__}")
    if out.shape[0] != batch.shape[0]:
        raise ValueError(f"the encoder returned {out.shape[0]} rows for {batch.shape[0]} patches")
    return out.reshape(out.shape[0], -1)


@torch.no_grad()
def extract_features(
    slide: Slide | str,
    coords: np.ndarray | Tensor,
    patch_size_level0: int,
    patch_size: int = 224,
    *,
    encoder: nn.Module | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> Tensor:
    """Encode the patches of ``slide`` at ``coords``.

    Args:
        slide: a :class:`Slide` or a path.
        coords: ``(n, 2)`` top-left level-0 ``(x, y)``.
        patch_size_level0: patch side in level-0 pixels.
        patch_size: side of the image given to the encoder (patches are resized to it).
        encoder: any ``nn.Module`` mapping ``(b, 3, patch_size, patch_size)`` float to ``(b, d)``
            (a tuple's first element is used); default :class:`BuiltinPatchEncoder`.
        mean, std: per-channel normalisation applied after scaling to [0, 1] (e.g. ImageNet's
            ``(0.485, 0.456, 0.406)``, ``(0.229, 0.224, 0.225)``); ``None`` = none.
        batch_size: patches per forward.
        device: where the encoder runs.
        progress: show a rich progress bar.

    Returns:
        ``(n, d)`` float32 features on the CPU, in the order of ``coords``.
    """
    slide = open_slide(slide)
    coords_np = _check_coords(coords.cpu().numpy() if isinstance(coords, Tensor) else coords,
                              slide.dimensions, patch_size_level0)
    if len(coords_np) == 0:
        raise ValueError("no patches to encode (coords is empty); lower tissue_threshold or check the slide")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    encoder = encoder if encoder is not None else BuiltinPatchEncoder()
    dev = torch.device(device)
    was_training = encoder.training
    encoder.to(dev).eval()
    m = torch.tensor(mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1) if mean is not None else None
    s = torch.tensor(std, dtype=torch.float32, device=dev).view(1, 3, 1, 1) if std is not None else None
    parts: list[Tensor] = []
    bar = _progress(progress, len(coords_np), f"encoding {slide.name}")
    try:
        for _, patches in iter_patch_batches(slide, coords_np, int(patch_size_level0), int(patch_size), batch_size):
            x = torch.from_numpy(patches).to(dev).permute(0, 3, 1, 2).float() / 255.0
            if m is not None:
                x = x - m
            if s is not None:
                x = x / s
            parts.append(_encode(encoder, x).float().cpu())
            if bar is not None:
                bar[0].advance(bar[1], len(patches))
    finally:
        if bar is not None:
            bar[0].stop()
        encoder.train(was_training)
    return torch.cat(parts, 0)


def _progress(enabled: bool, total: int, description: str) -> Any:
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    bar.start()
    return bar, bar.add_task(description, total=total)


@dataclass
class SlideFeatures:
    """Result of :func:`extract_slide_features`: ``features (n, d)``, the :class:`TileGrid` and the
    ``.h5`` written (or ``None``)."""

    features: Tensor
    grid: TileGrid
    path: Path | None

    @property
    def coords(self) -> np.ndarray:
        return self.grid.coords


def extract_slide_features(
    slide: Slide | str,
    out_path: str | os.PathLike | None = None,
    *,
    encoder: nn.Module | None = None,
    encoder_name: str | None = None,
    patch_size: int = 224,
    magnification: float | None = None,
    stride: int | None = None,
    tissue_threshold: float = 0.5,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> SlideFeatures:
    """Slide -> tissue patches -> features -> (optionally) a TRIDENT-style ``.h5``.

    Args:
        slide: a :class:`Slide` or a path.
        out_path: ``.h5`` to write (``None`` = do not write).
        encoder: see :func:`extract_features` (default: :class:`BuiltinPatchEncoder`, 128-d).
        encoder_name: stored in the file's ``encoder`` attribute (default: the encoder's ``name``
            attribute or class name).
        patch_size, magnification, stride, tissue_threshold: see :func:`~medmoe.data.tissue.tile_grid`.
        mean, std, batch_size, device, progress: see :func:`extract_features`.
    """
    slide = open_slide(slide)
    grid = tile_grid(slide, patch_size, magnification=magnification, stride=stride,
                     tissue_threshold=tissue_threshold)
    if len(grid) == 0:
        raise ValueError(
            f"{slide.name}: no patch has a tissue fraction >= {tissue_threshold}; lower tissue_threshold "
            "(0 keeps every patch) or check that the slide shows tissue"
        )
    encoder = encoder if encoder is not None else BuiltinPatchEncoder()
    feats = extract_features(slide, grid.coords, grid.patch_size_level0, patch_size, encoder=encoder, mean=mean,
                             std=std, batch_size=batch_size, device=device, progress=progress)
    path = None
    if out_path is not None:
        from .feature_files import write_trident_h5

        name = encoder_name or getattr(encoder, "name", None) or type(encoder).__name__
        attrs = {k: v for k, v in grid.attrs().items() if k != "patch_size_level0"}
        attrs.update(encoder=str(name), slide_name=slide.name, tissue_threshold=float(tissue_threshold))
        if slide.magnification is not None:
            attrs["level0_magnification"] = float(slide.magnification)
        if slide.mpp is not None:
            attrs["level0_mpp"] = float(slide.mpp)
        # ``patch_size`` (the encoder's input side) overrides write_trident_h5's default (= level-0 size)
        path = write_trident_h5(out_path, feats, grid.coords, patch_size_level0=grid.patch_size_level0, **attrs)
    return SlideFeatures(feats, grid, path)
