"""Fit the nearest-class-mean intensity baseline on labelled volumes (the floor of every segmentation table).

:func:`fit_nearest_class_mean` runs the validation transforms of a :class:`~medmoe.data.seg_transforms.
SegTransformConfig` (orientation, spacing, intensity: what the networks see) on the training cases and fits
a :class:`~medmoe.models.seg.nearest_class_mean.NearestClassMean`; score it with
:func:`medmoe.engine.seg.training.evaluate_segmentation` like any network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...data.seg_transforms import SegTransformConfig, build_val_transforms
from ...data.volumes import VolumeCase
from ...models.seg.nearest_class_mean import NearestClassMean
from .inference import plain_tensor

__all__ = ["fit_nearest_class_mean"]


def fit_nearest_class_mean(
    cases: Sequence[VolumeCase], transform_config: SegTransformConfig, num_classes: int
) -> NearestClassMean:
    """Class-mean intensities over every voxel of the labelled ``cases`` after the validation transforms.

    Args:
        cases: labelled training cases (``VolumeCase`` with ``label``).
        transform_config: the preprocessing the networks are trained with.
        num_classes: classes including background.

    Returns:
        A fitted :class:`NearestClassMean` (``(b, C, D, H, W) -> (b, K, D, H, W)`` scores).
    """
    if not cases:
        raise ValueError("fit_nearest_class_mean needs at least one labelled case")
    pre = build_val_transforms(transform_config)
    images, labels = [], []
    for case in cases:
        if case.label is None:
            raise ValueError(f"case {case.case_id} has no label; the baseline is fitted on labelled cases")
        data = pre(case.as_dict())
        images.append(plain_tensor(torch.as_tensor(data["image"])).float())
        labels.append(plain_tensor(torch.as_tensor(data["label"]))[0])
    model = NearestClassMean(in_channels=int(images[0].shape[0]), num_classes=int(num_classes))
    return model.fit(images, labels).eval()
