"""MRI intensity normalisation with statistics over the foreground (nnU-Net's rule for MRI).

MRI intensities have no physical unit, so every volume is normalised on its own statistics. Computed over
the *whole* volume (background included) those statistics depend on the field of view: a crop with 99 %
background gets a much lower mean and standard deviation than the full head, and the same grey matter ends
up at z = 7.7 instead of z = 1.4. Computed over the foreground only (the non-zero voxels, or a body mask),
they describe the tissue and do not move when more background is added. This is what nnU-Net does for MRI
(``ZScoreNormalization`` with ``use_mask_for_norm``): z-score inside the mask, zero outside.

:func:`foreground_normalize` does it on a tensor; :class:`ForegroundNormalized` is the MONAI dictionary
transform used by :mod:`medmoe.data.seg_transforms`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["ForegroundNormalized", "foreground_mask", "foreground_normalize"]


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
    out = image.clone()
    for c in range(image.shape[0]):
        values = image[c][mask].double()
        if percentiles is not None:
            # numpy: torch.quantile refuses more than 2**24 values (a 256^3 volume)
            lo, hi = (float(v) for v in np.percentile(values.cpu().numpy(), percentiles))
            values = values.clamp(lo, hi)
        mean, std = float(values.mean()), float(values.std(unbiased=False))
        channel = out[c]
        if percentiles is not None:
            channel = channel.clamp(lo, hi)
        channel = (channel - mean) / (std + eps)
        out[c] = torch.where(mask, channel, torch.zeros((), dtype=channel.dtype, device=channel.device))
    return out


class ForegroundNormalized:
    """MONAI-style dictionary transform: :func:`foreground_normalize` on ``keys`` (``"image"``).

    Args:
        keys: dictionary keys to normalise.
        percentiles: foreground percentiles to clip to (``None``: no clipping).
        threshold: background threshold (``|x| <= threshold`` in every channel).
    """

    def __init__(self, keys: str | Sequence[str] = "image", percentiles: tuple[float, float] | None = (0.5, 99.5),
                 threshold: float = 0.0) -> None:
        self.keys = (keys,) if isinstance(keys, str) else tuple(keys)
        self.percentiles = percentiles
        self.threshold = threshold

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            d[key] = foreground_normalize(d[key], self.percentiles, threshold=self.threshold)
        return d
