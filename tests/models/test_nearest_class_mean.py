"""The nearest-class-mean baseline: fitted class means, per-voxel prediction, scored like a network."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from medmoe.data.seg_transforms import SegTransformConfig
from medmoe.data.volumes import VolumeCase
from medmoe.engine.seg.baseline import fit_nearest_class_mean
from medmoe.engine.seg.training import evaluate_segmentation
from medmoe.models.seg import NearestClassMean


def test_fit_means_and_predict() -> None:
    image = torch.tensor([0.0, 0.0, 1.0, 1.2, 3.0, 2.8]).view(1, 1, 1, 6)
    label = torch.tensor([0, 0, 1, 1, 2, 2]).view(1, 1, 6)
    model = NearestClassMean(1, 3).fit([image], [label])
    torch.testing.assert_close(model.means[:, 0], torch.tensor([0.0, 1.1, 2.9]))
    scores = model(torch.tensor([0.1, 1.9, 2.1, 5.0]).view(1, 1, 1, 1, 4))
    assert scores.shape == (1, 3, 1, 1, 4)
    assert scores.argmax(1).flatten().tolist() == [0, 1, 2, 2]


def test_unseen_class_never_predicted() -> None:
    model = NearestClassMean(1, 3).fit([torch.ones(1, 2, 2, 2)], [torch.ones(2, 2, 2)])
    assert bool(model.fitted[1]) and not bool(model.fitted[0])
    assert (model(torch.zeros(1, 1, 2, 2, 2)).argmax(1) == 1).all()
    assert torch.isfinite(model(torch.zeros(1, 1, 2, 2, 2))).all()


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        NearestClassMean(1, 1)
    with pytest.raises(ValueError, match="outside"):
        NearestClassMean(1, 2).fit([torch.ones(1, 2, 2, 2)], [torch.full((2, 2, 2), 5)])
    with pytest.raises(ValueError, match="D, H, W"):
        NearestClassMean(1, 2)(torch.ones(1, 2, 2, 2))


def test_fitted_on_files_and_scored_by_sliding_window(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    cases = []
    for i in range(2):
        label = np.zeros((24, 24, 24), np.int16)
        label[4:14, 4:14, 4:20] = 1
        label[14:22, 6:20, 2:12] = 2
        image = (np.choose(label, [0.0, 50.0, 90.0]) + (label > 0) * rng.normal(0, 4, label.shape)).astype(np.float32)
        ip, lp = tmp_path / f"c{i}.nii.gz", tmp_path / f"c{i}_seg.nii.gz"
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(ip))
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(lp))
        cases.append(VolumeCase(f"c{i}", [ip], lp))
    cfg = SegTransformConfig(modality="mri", orientation=None, roi_size=(16, 16, 16))
    model = fit_nearest_class_mean(cases[:1], cfg, 3)
    result = evaluate_segmentation(model, cases[1:], cfg, (16, 16, 16), 0.25, "gaussian", 2, False, ["bg", "a", "b"])
    assert result.dice["a"] > 0.95 and result.dice["b"] > 0.95
