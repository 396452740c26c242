"""medmoe.nn.DynamicTanh: y = weight * tanh(clamp(alpha, 0.1, 2) * x) + bias."""

import pytest
import torch

from medmoe.nn import DynamicTanh


def test_init_and_formula():
    layer = DynamicTanh(6)
    assert sorted(layer.state_dict()) == ["alpha", "bias", "weight"]
    assert layer.alpha.shape == (1,) and layer.alpha.item() == 0.5
    torch.testing.assert_close(layer.weight, torch.ones(6))
    torch.testing.assert_close(layer.bias, torch.zeros(6))
    with torch.no_grad():
        layer.weight.copy_(torch.arange(6.0))
        layer.bias.fill_(0.25)
    x = torch.randn(2, 3, 6)
    torch.testing.assert_close(layer(x), torch.arange(6.0) * torch.tanh(0.5 * x) + 0.25)


@pytest.mark.parametrize("alpha, used", [(5.0, 2.0), (0.01, 0.1), (-3.0, 0.1), (1.3, 1.3)])
def test_alpha_is_clamped(alpha, used):
    layer = DynamicTanh(4, alpha_init=alpha)
    x = torch.randn(5, 4)
    torch.testing.assert_close(layer(x), torch.tanh(used * x))
    layer(x).sum().backward()
    clamped = used != alpha
    assert (layer.alpha.grad.abs().item() == 0.0) == clamped


def test_bad_input():
    with pytest.raises(ValueError, match="dim"):
        DynamicTanh(0)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        DynamicTanh(4)(torch.randn(2, 5))
