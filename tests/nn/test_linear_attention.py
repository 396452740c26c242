"""LinearAttention (Lin-MIL / L2ViT): explicit-formula check, mask, num_queries, scores, gradcheck, errors."""

from __future__ import annotations

import pytest
import torch

from medmoe.nn.attention.linear import LinearAttention, make_feature_map


def naive(module: LinearAttention, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The formula written out with an explicit (n x n) kernel matrix; returns (out, U averaged)."""
    b, n, c = x.shape
    h = module.num_heads
    d = c // h
    q, k, v = module.qkv(x).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)  # (b, h, n, d)
    q, k = module.act(q), module.act(k)
    if mask is not None:
        k = k * mask[:, None, :, None].to(k.dtype)
    kernel = q @ k.transpose(-1, -2)  # (b, h, n, n)
    u = (kernel @ v) * module.temperature
    z = kernel.sum(-1, keepdim=True).clamp_min(module.denominator_floor)
    out = module.proj((u / z).transpose(1, 2).reshape(b, n, c))
    return out, u.mean(dim=(1, 3))


@pytest.mark.parametrize("floor", [100.0, 1e-6])
@pytest.mark.parametrize("phi", ["relu", "GeLU", "elu", "softplus"])
def test_matches_explicit_formula(floor: float, phi: str) -> None:
    m = LinearAttention(32, 4, qkv_bias=True, feature_map=phi, denominator_floor=floor).double()
    x = 3 * torch.randn(2, 11, 32, dtype=torch.float64)
    out, scores = m(x, return_scores=True)
    ref_out, ref_scores = naive(m, x)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(scores, ref_scores)


def test_padding_is_invisible_at_real_positions() -> None:
    m = LinearAttention(16, 2, qkv_bias=True, denominator_floor=1e-3).double()
    bag = torch.randn(1, 6, 16, dtype=torch.float64)
    x = 5 * torch.randn(1, 10, 16, dtype=torch.float64)
    idx = torch.tensor([0, 2, 3, 6, 8, 9])  # real tokens scattered among junk
    x[0, idx] = bag[0]
    mask = torch.zeros(1, 10, dtype=torch.bool)
    mask[0, idx] = True
    alone, s_alone = m(bag, return_scores=True)
    padded, s_pad = m(x, mask, return_scores=True)
    torch.testing.assert_close(padded[0, idx], alone[0])
    torch.testing.assert_close(s_pad[0, idx], s_alone[0])


def test_num_queries_equals_first_rows() -> None:
    m = LinearAttention(16, 4, qkv_bias=True)
    x = torch.randn(2, 9, 16)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    full, _ = m(x, mask)
    first, scores = m(x, mask, num_queries=2, return_scores=True)
    assert first.shape == (2, 2, 16) and scores.shape == (2, 9)
    torch.testing.assert_close(first, full[:, :2])
    first_plain, none = m(x, mask, num_queries=1)
    assert none is None
    torch.testing.assert_close(first_plain, full[:, :1])


def test_state_dict_keys_and_temperature_init() -> None:
    m = LinearAttention(64, 8, qkv_bias=True)
    assert set(m.state_dict()) == {"temperature", "qkv.weight", "qkv.bias", "proj.weight", "proj.bias"}
    torch.testing.assert_close(m.temperature, torch.full((8, 1, 1), 8**-0.5))


@pytest.mark.parametrize("floor", [1e-3, 100.0])
def test_gradcheck_float64(floor: float) -> None:
    m = LinearAttention(8, 2, qkv_bias=True, feature_map="softplus", denominator_floor=floor).double()
    x = torch.randn(1, 5, 8, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True, False, True, True]])
    params = (x, m.temperature)
    assert torch.autograd.gradcheck(lambda t, _: torch.cat([m(t, mask, return_scores=True)[0].flatten(),
                                                            m(t, mask, return_scores=True)[1].flatten()]), params)
    assert torch.autograd.gradcheck(lambda t, _: m(t, num_queries=2)[0], params, fast_mode=True)


def test_feature_map_names() -> None:
    for name in ("ReLU", "GeLU", "ELU", "LeakyReLU", "TanH", "Softplus", "leaky_relu", "gelu"):
        assert isinstance(make_feature_map(name), torch.nn.Module)
    with pytest.raises(ValueError, match="unknown feature map"):
        make_feature_map("swish")


def test_bad_input_raises_value_error() -> None:
    with pytest.raises(ValueError):
        LinearAttention(30, 8)
    with pytest.raises(ValueError):
        LinearAttention(32, 8, denominator_floor=0.0)
    m = LinearAttention(16, 4)
    with pytest.raises(ValueError):
        m(torch.randn(2, 5, 8))
    with pytest.raises(ValueError):
        m(torch.randn(5, 16))
    with pytest.raises(ValueError):
        m(torch.randn(2, 5, 16), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError):
        m(torch.randn(2, 5, 16), num_queries=6)
