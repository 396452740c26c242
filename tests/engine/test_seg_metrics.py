"""Dice and HD95 per class from label maps equal MONAI's metrics on one-hot volumes."""

import warnings

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.networks.utils import one_hot

from medmoe.engine.seg.training import dice_per_class, hd95_per_class


@pytest.mark.parametrize("seed", range(3))
def test_per_class_metrics_equal_monai_one_hot(seed):
    g = torch.Generator().manual_seed(seed)
    k = 5
    target = torch.randint(0, k - 1, (12, 14, 10), generator=g)  # class 4 never in the truth: nan
    target[2:6, 3:9, 2:7] = 2  # a solid block so distances are not all one voxel
    pred = target.clone()
    flip = torch.rand(target.shape, generator=g) < 0.2
    pred[flip] = torch.randint(0, k, (int(flip.sum()),), generator=g)
    p1, t1 = one_hot(pred[None, None], k), one_hot(target[None, None], k)
    spacing = [1.0, 0.5, 2.0]
    with warnings.catch_warnings():  # MONAI warns about the empty class and a deprecated argument
        warnings.simplefilter("ignore")
        ref_dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)(p1, t1)[0]
        hd_metric = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
        ref_hd = hd_metric(p1, t1, spacing=spacing)[0]
        got_hd = hd95_per_class(pred, target, k, spacing)
    got_dice = dice_per_class(pred, target, k)
    torch.testing.assert_close(got_dice, ref_dice.float(), equal_nan=True, rtol=1e-6, atol=1e-7)
    assert torch.isnan(got_dice[-1])
    finite = torch.isfinite(ref_hd)
    torch.testing.assert_close(got_hd[finite], ref_hd[finite].float(), rtol=1e-6, atol=1e-6)
    assert np.array_equal(torch.isfinite(got_hd).numpy(), finite.numpy())


def test_shapes_must_match():
    with pytest.raises(ValueError, match="differ in shape"):
        dice_per_class(torch.zeros(2, 3, 4, dtype=torch.long), torch.zeros(2, 3, 5, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="differ in shape"):
        hd95_per_class(torch.zeros(2, 3, 4, dtype=torch.long), torch.zeros(2, 3, 5, dtype=torch.long), 3, None)
