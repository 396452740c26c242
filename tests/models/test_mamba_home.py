"""Mamba-HoME network (tiny preset on CPU; paper preset counted on the meta device) and the seg factory."""

import pytest
import torch

from medmoe.models.seg import (
    MambaHoME,
    MambaHoMEConfig,
    create_seg_model,
    list_seg_models,
    seg_model_from_config,
)


def _layers_available() -> bool:
    try:
        from medmoe.nn import DynamicTanh, GatedSpatialConv, HoME, Mamba  # noqa: F401
    except ImportError:
        return False
    return True


needs_layers = pytest.mark.skipif(not _layers_available(), reason="medmoe.nn Mamba/HoME/DyT/GSC layers not present")


@needs_layers
def test_paper_parameter_count_matches_the_reference():
    with torch.device("meta"):
        model = MambaHoME(MambaHoMEConfig.paper(in_channels=1, num_classes=16))
    groups = {k: v / 1e6 for k, v in model.parameter_groups().items()}
    # reference (systems.md §3.1): total 170.1M; encoder 118.4M (HoME 104.1M, Mamba 2.6M); UNETR blocks 51.7M
    assert groups["total"] == pytest.approx(170.1, abs=0.06)
    assert groups["encoder"] == pytest.approx(118.4, abs=0.06)
    assert groups["home"] == pytest.approx(104.1, abs=0.06)
    assert groups["mamba"] == pytest.approx(2.6, abs=0.06)
    assert groups["unetr"] == pytest.approx(51.7, abs=0.01)
    assert groups["gsc"] == pytest.approx(0.13 + 0.52 + 2.07 + 8.26, abs=0.02)
    per_stage_home = [sum(p.numel() for p in s.moes[0].parameters()) / 1e6 for s in model.encoder.stages]
    # as printed in the reference (2 decimals, stage 3 with 1)
    assert [round(v, 2) for v in per_stage_home[:3]] == [0.17, 1.34, 7.99] and round(per_stage_home[3], 1) == 42.5


@needs_layers
@pytest.mark.parametrize("in_channels,num_classes", [(1, 2), (3, 5)])
def test_tiny_forward_shape_and_gradients(in_channels, num_classes):
    model = create_seg_model("mamba_home.tiny", in_channels=in_channels, num_classes=num_classes)
    x = torch.randn(2, in_channels, 32, 32, 48)
    out = model(x)
    assert out.shape == (2, num_classes, 32, 32, 48) and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    assert sum(float(p.grad.abs().sum()) > 0 for p in model.parameters()) == len(list(model.parameters()))


@needs_layers
def test_tiny_bad_inputs_and_state_dict_round_trip():
    model = create_seg_model("mamba_home.tiny", in_channels=2, num_classes=3).eval()
    with pytest.raises(ValueError, match="divisible by 16"):
        model(torch.randn(1, 2, 32, 24, 32))
    with pytest.raises(ValueError, match="at least 32"):
        model(torch.randn(1, 2, 16, 32, 32))
    with pytest.raises(ValueError, match="in_channels=2"):
        model(torch.randn(1, 1, 32, 32, 32))
    with pytest.raises(ValueError, match=r"\(batch, channels, D, H, W\)"):
        model(torch.randn(2, 32, 32, 32))
    clone = seg_model_from_config(model.model_name, model.config.to_dict())
    clone.load_state_dict(model.state_dict())
    x = torch.randn(1, 2, 32, 32, 32)
    torch.testing.assert_close(clone.eval()(x), model(x))


def test_config_validation_and_presets():
    tiny = MambaHoMEConfig.tiny(in_channels=4, num_classes=7)
    assert tiny.feature_size == (8, 16, 32, 64) and tiny.in_channels == 4 and tiny.num_classes == 7
    paper = MambaHoMEConfig.preset("paper", num_classes=16)
    assert paper.group_sizes == (2048, 1024, 512, 256) and paper.num_experts_second == (8, 16, 24, 32)
    assert MambaHoMEConfig(feature_size=[8, 16, 32, 64]).feature_size == (8, 16, 32, 64)  # lists -> ints
    with pytest.raises(ValueError, match="4 values"):
        MambaHoMEConfig(depths=(2, 2, 2))
    with pytest.raises(ValueError, match="in_channels must be >= 1"):
        MambaHoMEConfig(in_channels=0)
    with pytest.raises(ValueError, match="unknown Mamba-HoME preset"):
        MambaHoMEConfig.preset("huge")


@pytest.mark.parametrize("name,divisor", [("unet.small", 8), ("segresnet.small", 8), ("unet", 16)])
def test_monai_baselines_any_channels(name, divisor):
    model = create_seg_model(name, in_channels=2, num_classes=4)
    assert model.divisor == divisor
    x = torch.randn(1, 2, 32, 32, 64)
    assert model(x).shape == (1, 4, 32, 32, 64)
    clone = seg_model_from_config(model.model_name, {**model.config.__dict__})
    clone.load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(1, 2, 36, 32, 32))


def test_factory_names():
    assert {"mamba_home.tiny", "mamba_home.paper", "unet.small", "swinunetr.base"} <= set(list_seg_models())
    with pytest.raises(ValueError, match="unknown segmentation model"):
        create_seg_model("vnet")
    swin = create_seg_model("swinunetr", 1, 3)
    assert swin.divisor == 32 and swin.config.kwargs["feature_size"] == 48


@needs_layers
def test_monai_meta_tensor_input_runs_through_the_torch_scan(monkeypatch):
    """MONAI pipelines hand networks ``MetaTensor`` volumes. With the native CPU kernels off (as on a GPU, where
    they step aside) such a tensor reaches the selective scan, which must not call ``new_empty(*sizes)``."""
    from monai.data import MetaTensor

    monkeypatch.setenv("MEDMOE_NATIVE_KERNELS", "0")
    torch.manual_seed(0)
    model = create_seg_model("mamba_home.tiny", in_channels=1, num_classes=2).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    out = model(MetaTensor(x.clone()))
    out.float().square().mean().backward()
    torch.testing.assert_close(torch.as_tensor(out), model(x), rtol=1e-5, atol=1e-6)
