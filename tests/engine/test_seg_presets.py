"""Named segmentation protocols: what they set, overrides winning, and the pieces they switch on."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from medmoe.data.seg_transforms import SegTransformConfig, build_train_transforms, build_val_transforms
from medmoe.data.volumes import VolumeCase
from medmoe.engine.seg.presets import get_seg_preset, inference_protocol, list_seg_presets, resolve_seg_preset
from medmoe.engine.seg.training import SegTrainConfig, evaluate_segmentation


def test_paper_preset_is_the_reference_protocol() -> None:
    preset, t, r = resolve_seg_preset("mamba-home-paper", num_train_cases=5, data_modality="mri")
    assert preset.model == "mamba_home.paper"
    assert t.modality == "ct" and t.ct_window == (-175.0, 250.0) and t.spacing == (0.8, 0.8, 3.0)
    assert t.roi_size == (128, 128, 128) and (t.pos, t.neg, t.num_samples) == (3.0, 1.0, 1)
    assert t.augmentation == "reference" and t.crop_foreground and t.orientation == "RAS"
    assert (r.epochs, r.batch_size, r.steps_per_epoch) == (800, 2, 3)  # one pass over 5 cases, batch 2
    assert (r.lr, r.weight_decay, r.eps, r.precision) == (1e-4, 1e-4, 1e-4, "32-true")
    assert (r.sw_overlap, r.sw_mode, r.dice_average) == (0.25, "constant", "cases-over-classes")
    assert inference_protocol(t.extra) == {"roi": (192, 192, 48), "overlap": 0.5, "mode": "constant",
                                           "sw_batch_size": 4}


def test_cpu_preset_is_the_old_default_and_flags_win() -> None:
    _, t, r = resolve_seg_preset("medmoe-cpu", 4, "mri", {"roi_size": (32, 32, 32), "augmentation": None},
                                 {"epochs": 2, "sw_mode": None})
    assert t.modality == "mri" and t.roi_size == (32, 32, 32) and t.augmentation == "medmoe"
    assert t.mri_stats == "foreground" and not t.crop_foreground and t.num_samples == 2
    assert (r.epochs, r.steps_per_epoch, r.batch_size, r.sw_mode, r.sw_overlap) == (2, 50, 1, "gaussian", 0.5)
    assert r.dice_average == "classes-over-cases"
    assert inference_protocol({})["mode"] == "gaussian" and "medmoe-cpu" in list_seg_presets()
    with pytest.raises(ValueError, match="choose from"):
        get_seg_preset("nnunet")


def _case(tmp_path, name: str, label: np.ndarray, pad: int = 0) -> VolumeCase:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(len(name))
    image = (np.choose(label, [0.0, 0.5, 0.9][: int(label.max()) + 1]) + (label > 0) * rng.normal(0, 0.02, label.shape))
    image = np.pad(image.astype(np.float32), pad)
    label = np.pad(label, pad)
    ip, lp = tmp_path / f"{name}.nii.gz", tmp_path / f"{name}_seg.nii.gz"
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(ip))
    nib.save(nib.Nifti1Image(label.astype(np.int16), np.eye(4)), str(lp))
    return VolumeCase(name, [ip], lp)


def test_reference_augmentation_and_foreground_crop(tmp_path) -> None:  # type: ignore[no-untyped-def]
    label = np.zeros((20, 20, 20), np.int16)
    label[2:18, 2:18, 2:18] = 1
    label[6:12, 6:12, 6:12] = 2
    case = _case(tmp_path, "a", label, pad=10)  # 40^3 with a 10-voxel empty border
    cfg = SegTransformConfig(modality="other", orientation=None, roi_size=(16, 16, 16), pos=3, neg=1,
                             num_samples=1, augmentation="reference", crop_foreground=True)
    val = build_val_transforms(cfg)(case.as_dict())
    assert tuple(val["image"].shape[1:]) == (16, 16, 16)  # cropped to the non-zero box (the labelled cube)
    tf = build_train_transforms(cfg)
    names = [type(t).__name__ for t in tf.transforms]
    assert names.index("CropForegroundd") < names.index("RandZoomd") < names.index("RandCropByPosNegLabeld")
    assert "RandGaussianSmoothd" in names and "RandFlipd" not in names and "RandScaleIntensityd" not in names
    tf.set_random_state(0)
    crops = tf(case.as_dict())
    assert len(crops) == 1 and tuple(crops[0]["image"].shape) == (1, 16, 16, 16)
    medmoe = [type(t).__name__ for t in build_train_transforms(SegTransformConfig(roi_size=(16, 16, 16))).transforms]
    assert "RandFlipd" in medmoe and "RandZoomd" not in medmoe and "CropForegroundd" not in medmoe
    with pytest.raises(ValueError, match="augmentation"):
        SegTransformConfig(augmentation="heavy")


class _Fixed(torch.nn.Module):
    """Predicts a stored label map (one-hot scores), whatever the input."""

    divisor = 1
    min_size = 1

    def __init__(self, pred: torch.Tensor, k: int) -> None:
        super().__init__()
        self.num_classes = k
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.pred = pred

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(self.pred[None].expand(x.shape[0], -1, -1, -1), self.num_classes
                                           ).permute(0, 4, 1, 2, 3).float() + self.w * 0


def test_dice_averages_differ_as_defined(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Case 1 has classes 1 and 2, case 2 only class 1; the orders of averaging give different means."""
    l1 = np.zeros((8, 8, 8), np.int16)
    l1[:4] = 1
    l1[4:6] = 2
    l2 = np.zeros((8, 8, 8), np.int16)
    l2[:4] = 1
    cases = [_case(tmp_path, "c1", l1), _case(tmp_path, "c2", l2)]
    pred = torch.zeros(8, 8, 8, dtype=torch.long)
    pred[:4] = 1  # class 1 perfect on both; class 2 missed on case 1 (Dice 0)
    cfg = SegTransformConfig(modality="other", orientation=None, roi_size=(8, 8, 8))
    model = _Fixed(pred, 3)
    a = evaluate_segmentation(model, cases, cfg, (8, 8, 8), 0.0, "constant", 1, False, None)
    b = evaluate_segmentation(model, cases, cfg, (8, 8, 8), 0.0, "constant", 1, False, None,
                              dice_average="cases-over-classes")
    assert a.dice == b.dice == {"1": 1.0, "2": 0.0}
    assert a.mean_dice == pytest.approx(0.5)  # mean(1, 0)
    assert b.mean_dice == pytest.approx(0.75)  # mean(mean(1, 0), 1)
    with pytest.raises(ValueError, match="dice_average"):
        SegTrainConfig(dice_average="median")
