"""MRI intensity normalisation with statistics over the foreground (nnU-Net's rule for MRI).

MRI intensities have no physical unit, so every volume is normalised on its own statistics. Computed over
the *whole* volume (background included) those statistics depend on the field of view: a crop with 99 %
background gets a much lower mean and standard deviation than the full head, and the same grey matter ends
up at z = 7.7 instead of z = 1.4. Computed over the foreground only (the non-zero voxels, or a body mask),
they describe the tissue and do not move when more background is added. This is what nnU-Net does for MRI
(``ZScoreNormalization`` with ``use_mask_for_norm``): z-score inside the mask, zero outside.

:func:`foreground_normalize` does it on a tensor; :class:`ForegroundNormalized` is the MONAI dictionary
transform used by :mod:`medmoe.data.seg_transforms`.

Per-volume statistics still move with the *tissue mix*: a slab holding mostly cortex has a lower foreground
mean than the whole brain, so its grey matter lands higher. When all volumes come from one scanner and
protocol, statistics fitted once on the training volumes' foreground (:func:`fit_foreground_stats`, passed
as ``stats``) remove that too: the same raw intensity always maps to the same value (nnU-Net does this for CT).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["ForegroundNormalized", "fit_foreground_stats", "foreground_mask", "foreground_normalize"]


def foreground_mask(image: Tensor, threshold: float = 0.0) -> Tensor:
    """Voxels that belong to the body in any channel: ``|x| > threshold`` in at least one channel.

    Args:
        image: ``(C, *spatial)`` intensities.
        threshold: voxels with ``|x| <= threshold`` in every channel are background (0: the non-zero rule).

    Returns:
        Boolean mask ``(*spatial)`` shared by all channels (as nnU-Net, one mask for every channel).
    """
    if image.ndim < 2:
        raise ValueError(f"image must be (C, *spatial), got shape {tuple(image.shape)}")
    return (image.abs() > threshold).any(dim=0)


def foreground_normalize(
    image: Tensor,
    percentiles: tuple[float, float] | None = (0.5, 99.5),
    mask: Tensor | None = None,
    threshold: float = 0.0,
    eps: float = 1e-8,
    stats: Sequence[Sequence[float]] | None = None,
) -> Tensor:
    """Clip each channel to its foreground percentiles, then z-score it with the foreground mean and std.

    Background voxels (outside ``mask``) are set to 0, the foreground mean, so zero padding added later
    is background too. A volume without any foreground falls back to whole-volume statistics.

    Args:
        image: ``(C, *spatial)`` float intensities (a MONAI ``MetaTensor`` keeps its metadata).
        percentiles: ``(low, high)`` in ``[0, 100]`` computed over the foreground voxels, or ``None`` for
            no clipping.
        mask: optional boolean body mask ``(*spatial)``; default :func:`foreground_mask` (non-zero voxels).
        threshold: the background threshold of the default mask.
        eps: added to the standard deviation.
        stats: fixed ``(low, high, mean, std)`` per channel (from :func:`fit_foreground_stats`) instead of this
            volume's; the mask still decides which voxels are background.

    Returns:
        Tensor of the input's shape and float dtype: ``(clip(x) - mean_fg) / (std_fg + eps)`` inside the
        mask, 0 outside.
    """
    if not torch.is_floating_point(image):
        image = image.float()
    if mask is None:
        mask = foreground_mask(image, threshold)
    mask = torch.as_tensor(mask, dtype=torch.bool, device=image.device)
    if tuple(mask.shape) != tuple(image.shape[1:]):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the image's spatial shape "
                         f"{tuple(image.shape[1:])}")
    if not bool(mask.any()):
        mask = torch.ones_like(mask)
    if stats is not None and len(stats) != image.shape[0]:
        raise ValueError(f"stats has {len(stats)} channel(s), the image {image.shape[0]}")
    out = image.clone()
    for c in range(image.shape[0]):
        if stats is not None:
            lo, hi, mean, std = (float(v) for v in stats[c])
        else:
            lo, hi, mean, std = _channel_stats(image[c][mask], percentiles)
        channel = out[c]
        if stats is not None or percentiles is not None:
            channel = channel.clamp(lo, hi)
        channel = (channel - mean) / (std + eps)
        out[c] = torch.where(mask, channel, torch.zeros((), dtype=channel.dtype, device=channel.device))
    return out


def _channel_stats(values: Tensor, percentiles: tuple[float, float] | None) -> tuple[float, float, float, float]:
    """``(low, high, mean, std)`` of foreground values: percentiles, then mean/std of the clipped values."""
    values = values.double()
    lo, hi = float(values.min()), float(values.max())
    if percentiles is not None:
        # numpy: torch.quantile refuses more than 2**24 values (a 256^3 volume)
        lo, hi = (float(v) for v in np.percentile(values.cpu().numpy(), percentiles))
        values = values.clamp(lo, hi)
    return lo, hi, float(values.mean()), float(values.std(unbiased=False))


def fit_foreground_stats(
    images: Sequence[Tensor], percentiles: tuple[float, float] | None = (0.5, 99.5), threshold: float = 0.0
) -> list[tuple[float, float, float, float]]:
    """Dataset-level ``(low, high, mean, std)`` per channel over the foreground voxels of all ``images``.

    Args:
        images: ``(C, *spatial)`` volumes (the training set, after orientation and spacing).
        percentiles: clipping percentiles over the pooled foreground voxels (``None``: min/max).
        threshold: background threshold of :func:`foreground_mask`.

    Returns:
        One ``(low, high, mean, std)`` per channel, for ``stats=`` of :func:`foreground_normalize`.
    """
    if not images:
        raise ValueError("fit_foreground_stats needs at least one volume")
    channels = int(images[0].shape[0])
    pooled: list[list[Tensor]] = [[] for _ in range(channels)]
    for image in images:
        image = torch.as_tensor(image).float()
        if image.shape[0] != channels:
            raise ValueError(f"every volume needs {channels} channel(s); got {tuple(image.shape)}")
        mask = foreground_mask(image, threshold)
        if not bool(mask.any()):
            mask = torch.ones_like(mask)
        for c in range(channels):
            pooled[c].append(image[c][mask].reshape(-1))
    return [_channel_stats(torch.cat(v), percentiles) for v in pooled]


class ForegroundNormalized:
    """MONAI-style dictionary transform: :func:`foreground_normalize` on ``keys`` (``"image"``).

    Args:
        keys: dictionary keys to normalise.
        percentiles: foreground percentiles to clip to (``None``: no clipping).
        threshold: background threshold (``|x| <= threshold`` in every channel).
        stats: fixed per-channel ``(low, high, mean, std)`` (dataset-level statistics) or ``None`` (each
            volume's own).
    """

    def __init__(self, keys: str | Sequence[str] = "image", percentiles: tuple[float, float] | None = (0.5, 99.5),
                 threshold: float = 0.0, stats: Sequence[Sequence[float]] | None = None) -> None:
        self.keys = (keys,) if isinstance(keys, str) else tuple(keys)
        self.percentiles = percentiles
        self.threshold = threshold
        self.stats = stats

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            d[key] = foreground_normalize(d[key], self.percentiles, threshold=self.threshold, stats=self.stats)
        return d
