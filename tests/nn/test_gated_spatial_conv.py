"""medmoe.nn.GatedSpatialConv: SegMamba's GSC block, x + ReLU(IN(1x1(ReLU(IN(3x3(ReLU(IN(3x3 x))))) + ReLU(IN(1x1 x)))))."""

import pytest
import torch
import torch.nn.functional as F

from medmoe.nn import GatedSpatialConv


def test_formula_by_hand():
    torch.manual_seed(0)
    layer = GatedSpatialConv(3)
    x = torch.randn(2, 3, 5, 4, 6)

    def block(t, conv, pad):
        return F.relu(F.instance_norm(F.conv3d(t, conv.weight, conv.bias, padding=pad)))

    x1 = block(block(x, layer.proj, 1), layer.proj2, 1)
    x2 = block(x, layer.proj3, 0)
    expected = x + block(x1 + x2, layer.proj4, 0)
    out = layer(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected)


def test_parameter_counts_of_the_paper_stages():
    """§3.1: GSC per stage 0.13 / 0.52 / 2.07 / 8.26 M parameters."""
    for channels, millions in zip((48, 96, 192, 384), (0.13, 0.52, 2.07, 8.26)):
        with torch.device("meta"):
            layer = GatedSpatialConv(channels)
        total = sum(p.numel() for p in layer.parameters())
        assert total == 2 * (27 * channels**2 + channels) + 2 * (channels**2 + channels)
        assert round(total / 1e6, 2) == millions


def test_release_state_dict_names():
    names = sorted(GatedSpatialConv(4).state_dict())
    assert names == sorted(
        f"{conv}.{p}" for conv in ("proj", "proj2", "proj3", "proj4") for p in ("weight", "bias")
    )


def test_gradients_reach_every_parameter():
    layer = GatedSpatialConv(2)
    layer(torch.randn(1, 2, 4, 4, 4)).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_bad_input():
    with pytest.raises(ValueError, match="channels"):
        GatedSpatialConv(0)
    with pytest.raises(ValueError, match=r"\(b, 3, D, H, W\)"):
        GatedSpatialConv(3)(torch.randn(1, 4, 2, 2, 2))
    with pytest.raises(ValueError, match=r"\(b, 3, D, H, W\)"):
        GatedSpatialConv(3)(torch.randn(1, 3, 8, 8))
