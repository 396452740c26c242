"""The floor every segmentation table needs: a nearest-class-mean intensity classifier.

Each voxel gets the class whose mean intensity (over the training voxels of that class, after the same
preprocessing the networks see) is nearest to the voxel's intensity vector. No spatial context, no
training loop: a network that scores below it on held-out data has learnt nothing useful, and a
preprocessing bug that moves intensities between volumes (e.g. statistics over a different field of view)
pulls this baseline down too, so it shows at once.

It is an :class:`torch.nn.Module` with the segmentation-network contract (``(b, C, D, H, W) -> (b, K, D, H,
W)`` scores, ``num_classes``, ``in_channels``, ``divisor`` 1), so the same sliding-window evaluation scores it.
The per-voxel scores are the negative squared distances to the class means; sliding-window blending of
identical per-voxel values leaves them unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["NearestClassMean"]


class NearestClassMean(nn.Module):
    """Per-voxel nearest-class-mean classifier on intensities.

    Args:
        in_channels: image channels ``C``.
        num_classes: classes ``K`` including background.
    """

    divisor = 1
    min_size = 1

    def __init__(self, in_channels: int = 1, num_classes: int = 2) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 2:
            raise ValueError(f"in_channels must be >= 1 and num_classes >= 2, got {in_channels}, {num_classes}")
        self.model_name = "nearest_class_mean"
        # a (frozen) parameter rather than a buffer: evaluation code finds the device through parameters()
        self.means = nn.Parameter(torch.zeros(num_classes, in_channels), requires_grad=False)
        self.register_buffer("fitted", torch.zeros(num_classes, dtype=torch.bool))

    @property
    def in_channels(self) -> int:
        return int(self.means.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.means.shape[0])

    @torch.no_grad()
    def fit(self, images: list[Tensor], labels: list[Tensor]) -> NearestClassMean:
        """Class means from labelled volumes.

        Args:
            images: ``(C, D, H, W)`` tensors (preprocessed as the networks see them).
            labels: ``(D, H, W)`` or ``(1, D, H, W)`` integer label maps in ``[0, K)``.

        Returns:
            ``self``. Classes absent from every label map stay unfitted and are never predicted.
        """
        if not images or len(images) != len(labels):
            raise ValueError("fit needs the same number (>= 1) of images and label maps")
        k, c = self.means.shape
        sums = torch.zeros(k, c, dtype=torch.float64)
        counts = torch.zeros(k, dtype=torch.float64)
        for image, label in zip(images, labels):
            image = torch.as_tensor(image).double().cpu()
            label = torch.as_tensor(label).cpu().round().long().reshape(-1)
            if image.ndim != 4 or image.shape[0] != c or image[0].numel() != label.numel():
                raise ValueError(f"image {tuple(image.shape)} must be ({c}, D, H, W) matching its label map")
            if int(label.min()) < 0 or int(label.max()) >= k:
                raise ValueError(f"label values outside [0, {k}); check num_classes")
            flat = image.reshape(c, -1).T  # (voxels, C)
            sums.index_add_(0, label, flat)
            counts += torch.bincount(label, minlength=k).double()
        fitted = counts > 0
        self.means.copy_((sums / counts.clamp_min(1)[:, None]).float())
        self.fitted.copy_(fitted)
        return self

    def forward(self, x: Tensor) -> Tensor:
        """``(b, C, D, H, W)`` -> ``(b, K, D, H, W)`` scores: ``-||x - mean_k||^2`` (``-1e30`` for unfitted
        classes: finite, so window blending never forms ``0 * inf``)."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expects (batch, {self.in_channels}, D, H, W); got {tuple(x.shape)}")
        diff = x[:, None] - self.means.to(x.dtype)[None, :, :, None, None, None]  # (b, K, C, D, H, W)
        scores = -(diff**2).sum(2)
        never = torch.tensor(-1e30, dtype=scores.dtype, device=scores.device)
        return torch.where(self.fitted[None, :, None, None, None], scores, never)
