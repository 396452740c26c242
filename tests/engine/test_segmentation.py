"""Segmentation engine: training loop, checkpoints, resume, metrics, sliding-window inference in the
original image space (with a UNet baseline and an exact "oracle" network)."""

import csv

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from medmoe.data.seg_transforms import SegTransformConfig
from medmoe.data.volumes import VolumeCase, VolumeError, make_synthetic_volumes, write_nifti
from medmoe.engine.checkpoint import load_checkpoint
from medmoe.engine.seg.inference import predict_volumes, sliding_window_logits
from medmoe.engine.seg.training import (
    SegTrainConfig,
    evaluate_segmentation,
    train_segmentation,
    transform_config_from_info,
)
from medmoe.models.seg import create_seg_model


class Oracle(nn.Module):
    """Reads the class back from an image equal to ``label / (K - 1)``: logits = -100 (x - k/(K-1))^2."""

    divisor = 1

    def __init__(self, num_classes=3):
        super().__init__()
        self.num_classes, self.in_channels = num_classes, 1
        self.dummy = nn.Parameter(torch.zeros(()))
        self.register_buffer("levels", torch.linspace(0, 1, num_classes).view(1, -1, 1, 1, 1))

    def forward(self, x):
        return -100.0 * (x - self.levels) ** 2 + 0 * self.dummy


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_volumes(tmp_path_factory.mktemp("vols"), n_cases=2, shape=(24, 20, 16), num_classes=3)


TCFG = SegTransformConfig(modality="other", roi_size=(16, 16, 16), num_samples=2)


def _exact_case(tmp_path, affine):
    label = np.zeros((13, 11, 9), np.uint8)
    label[2:7, 3:9, 1:5], label[8:12, 1:4, 5:9] = 1, 2
    img = write_nifti(tmp_path / "img.nii.gz", label.astype(np.float32) / 2, affine)
    lab = write_nifti(tmp_path / "lab.nii.gz", label, affine)
    return VolumeCase("exact", (img,), lab), label


def test_metrics_are_exact_for_a_perfect_prediction(tmp_path):
    case, _ = _exact_case(tmp_path, np.diag([0.5, 0.5, 2.0, 1.0]))
    cfg = SegTransformConfig(modality="other", percentiles=(0, 100), roi_size=(8, 8, 8))
    result = evaluate_segmentation(Oracle(), [case], cfg, class_names=["bg", "a", "b"])
    assert result.dice == {"a": 1.0, "b": 1.0} and result.hd95 == {"a": 0.0, "b": 0.0}
    assert result.per_case[0]["case_id"] == "exact"


def test_predictions_are_written_in_the_original_space(tmp_path):
    affine = np.array([[-0.8, 0, 0, 10.0], [0, 0, 1.5, -4.0], [0, 1.2, 0, 3.0], [0, 0, 0, 1]])  # not RAS
    case, label = _exact_case(tmp_path, affine)
    cfg = SegTransformConfig(modality="other", percentiles=(0, 100), roi_size=(8, 8, 8), orientation="RAS")
    (out,) = predict_volumes(Oracle(), [case], tmp_path / "pred", cfg, save_probabilities=True, progress=False)
    pred = nib.load(str(out))
    assert pred.shape == label.shape and np.allclose(pred.affine, affine)
    np.testing.assert_array_equal(np.asarray(pred.dataobj), label)
    prob = nib.load(str(tmp_path / "pred" / "exact_prob.nii.gz"))
    assert prob.shape == (*label.shape, 3)
    # with resampling the map still comes back on the original grid
    cfg2 = SegTransformConfig(modality="other", percentiles=(0, 100), roi_size=(8, 8, 8), spacing=(1.0, 1.0, 1.0))
    (out2,) = predict_volumes(Oracle(), [case.images], tmp_path / "pred2", cfg2, progress=False)
    pred2 = nib.load(str(out2))
    assert pred2.shape == label.shape and np.allclose(pred2.affine, affine)
    assert (np.asarray(pred2.dataobj) == label).mean() > 0.85


def test_sliding_window_pads_small_volumes_and_checks_arguments():
    model = Oracle()
    x = torch.rand(1, 1, 5, 7, 3)
    for mode in ("gaussian", "constant"):
        out = sliding_window_logits(model, x, (8, 8, 8), overlap=0.5, mode=mode)
        assert out.shape == (1, 3, 5, 7, 3)
        assert not out.requires_grad  # inference: no autograd graph over the windows
        torch.testing.assert_close(out, model(x).detach())
    unet = create_seg_model("unet.small", 1, 2)
    with pytest.raises(ValueError, match="divisible by 8"):
        sliding_window_logits(unet, x, (12, 8, 8))
    with pytest.raises(ValueError, match="overlap"):
        sliding_window_logits(model, x, (8, 8, 8), overlap=1.0)
    with pytest.raises(ValueError, match="mode must be"):
        sliding_window_logits(model, x, (8, 8, 8), mode="median")


def test_train_checkpoint_reload_and_resume(data, tmp_path):
    torch.manual_seed(0)
    model = create_seg_model("unet.small", 1, 3)
    cfg = SegTrainConfig(epochs=1, steps_per_epoch=3, lr=3e-3, progress=False, hd95=False, accelerator="cpu")
    result = train_segmentation(model, data.cases[:1], data.cases[1:], TCFG, cfg, tmp_path / "run",
                                class_names=["bg", "box1", "box2"])
    assert result.steps == 3 and result.best_epoch == 0 and set(result.val.dice) == {"box1", "box2"}
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert len(rows) == 1 and {"train_loss", "val_dice", "val_dice_box1", "lr"} <= set(rows[0])
    assert np.isfinite(float(rows[0]["train_loss"]))

    loaded, info = load_checkpoint(tmp_path / "run", family="seg")
    assert info["model_name"] == "unet.small" and info["class_names"] == ["bg", "box1", "box2"]
    assert transform_config_from_info(info) == TCFG
    x = torch.randn(1, 1, 16, 16, 16)
    model.eval()
    torch.testing.assert_close(loaded(x), model(x))

    cfg2 = SegTrainConfig(epochs=2, steps_per_epoch=3, lr=3e-3, progress=False, hd95=False,
                          accelerator="cpu")
    resumed = train_segmentation(create_seg_model("unet.small", 1, 3), data.cases[:1], data.cases[1:], TCFG, cfg2,
                                 tmp_path / "run", resume=True)
    assert resumed.steps == 6 and len(resumed.history) == 2 and resumed.epochs_run == 2


def test_training_learns_the_boxes(tmp_path):
    data = make_synthetic_volumes(tmp_path / "vols", n_cases=2, shape=(24, 20, 16), num_classes=2)
    torch.manual_seed(0)
    model = create_seg_model("unet.small", 1, 2)
    before = evaluate_segmentation(model, data.cases[1:], TCFG, hd95=False).mean_dice
    cfg = SegTrainConfig(epochs=1, steps_per_epoch=16, lr=1e-2, progress=False)
    result = train_segmentation(model, data.cases[:1], data.cases[1:], TCFG, cfg, tmp_path / "learn")
    assert result.val.mean_dice > max(0.7, before + 0.3), (before, result.val.mean_dice)
    assert 0.0 <= result.val.mean_hd95 < 10.0  # mm, on a 24 x 20 x 24 mm volume


def test_bad_inputs_fail_before_training(data, tmp_path):
    model = create_seg_model("unet.small", 1, 2)  # labels have values 0..2
    cfg = SegTrainConfig(epochs=1, steps_per_epoch=1, progress=False)
    with pytest.raises(VolumeError, match=r"values \[2\] outside \[0, 2\)"):
        train_segmentation(model, data.cases, [], TCFG, cfg, tmp_path / "bad")
    with pytest.raises(ValueError, match="divisible by 8"):
        train_segmentation(model, data.cases, [], SegTransformConfig(roi_size=(12, 16, 16)), cfg, tmp_path / "bad")
    with pytest.raises(VolumeError, match="in_channels=2"):
        train_segmentation(create_seg_model("unet.small", 2, 3), data.cases, [], TCFG, cfg, tmp_path / "bad")
    with pytest.raises(ValueError, match="precision"):
        SegTrainConfig(precision="fp8")


def test_resume_refuses_a_trainer_state_of_other_settings(data, tmp_path):
    """The run folder's manifest is checked first; the trainer state must record the same settings too (a state
    copied from another run is refused, naming what differs)."""
    from medmoe.engine.checkpoint import load_trainer_state, save_trainer_state

    cfg = SegTrainConfig(epochs=1, steps_per_epoch=1, progress=False, hd95=False, accelerator="cpu")
    train_segmentation(create_seg_model("unet.small", 1, 3), data.cases[:1], [], TCFG, cfg, tmp_path / "run")
    state_path = tmp_path / "run" / "trainer_state.pt"
    state = load_trainer_state(state_path)
    assert state["signature"]["train_config"]["lr"] == cfg.lr and state["epoch"] == 0
    state["signature"]["train_config"]["lr"] = 0.5
    save_trainer_state(state_path, state)
    with pytest.raises(ValueError, match=r"different settings \(lr: 0.5 in the folder, 0.0001 now\)"):
        train_segmentation(create_seg_model("unet.small", 1, 3), data.cases[:1], [], TCFG,
                           SegTrainConfig(**{**cfg.__dict__, "epochs": 2}), tmp_path / "run", resume=True)


def test_num_nodes_reaches_fabric_counts_in_steps_and_leaves_old_run_folders_resumable(data, monkeypatch):
    """``num_nodes`` (``seg train --num-nodes``): validated, handed to Fabric, counted in the preset's steps per
    epoch (each process draws its own batch), and recorded in a run's identity only when set, so that a run
    folder written before the setting existed (no ``num_nodes`` in its manifest) still resumes."""
    import lightning_fabric

    from medmoe.engine.loop import launch_fabric
    from medmoe.engine.seg.presets import resolve_seg_preset
    from medmoe.engine.seg.training import _seg_manifest

    with pytest.raises(ValueError, match="num_nodes must be >= 1"):
        SegTrainConfig(num_nodes=0)

    seen = {}

    class FakeFabric:
        def __init__(self, **kwargs):
            seen.update(kwargs)

        def launch(self):
            seen["launched"] = True

    monkeypatch.setattr(lightning_fabric, "Fabric", FakeFabric)
    launch_fabric("cpu", 1, "32-true", num_nodes=2)
    assert seen["num_nodes"] == 2 and seen["devices"] == 1 and seen["launched"]

    steps = [resolve_seg_preset("mamba-home-paper", 40, "ct", {}, {"num_nodes": n})[2].steps_per_epoch
             for n in (1, 2)]
    assert steps[0] == 2 * steps[1]

    model = create_seg_model("unet.small", 1, 3)
    default = _seg_manifest(model, data.cases[:1], data.cases[1:], TCFG, SegTrainConfig()).identity
    two = _seg_manifest(model, data.cases[:1], data.cases[1:], TCFG, SegTrainConfig(num_nodes=2)).identity
    assert "num_nodes" not in default["train_config"] and two["train_config"]["num_nodes"] == 2
    assert {k: v for k, v in two["train_config"].items() if k != "num_nodes"} == default["train_config"]
