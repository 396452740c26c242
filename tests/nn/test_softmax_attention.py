"""SoftmaxAttention (SDPA): explicit-formula check, key padding mask, mean-over-queries map, errors."""

from __future__ import annotations

import pytest
import torch

from medmoe.nn.attention import softmax as softmax_module
from medmoe.nn.attention.softmax import SoftmaxAttention


def naive(m: SoftmaxAttention, x: torch.Tensor, mask: torch.Tensor | None = None):
    """Explicit attention matrix; returns (out, A (b, h, n, n))."""
    b, n, _ = x.shape
    q, k, v = m.to_qkv(x).reshape(b, n, 3, m.heads, m.dim_head).permute(2, 0, 3, 1, 4)
    s = q @ k.transpose(-1, -2) * m.scale
    if mask is not None:
        s = s.masked_fill(~mask[:, None, None, :], float("-inf"))
    a = s.softmax(-1)
    return m.to_out((a @ v).transpose(1, 2).reshape(b, n, -1)), a


def test_matches_explicit_attention_and_map() -> None:
    m = SoftmaxAttention(32, heads=4).double().eval()
    x = torch.randn(2, 13, 32, dtype=torch.float64)
    mask = torch.ones(2, 13, dtype=torch.bool)
    mask[1, 8:] = False
    out, amap = m(x, mask, return_attention=True)
    ref, a = naive(m, x, mask)
    torch.testing.assert_close(out[0], ref[0])
    torch.testing.assert_close(out[1, :8], ref[1, :8])
    # map = mean over heads and real queries of the weights each key receives
    q_real = mask.to(a.dtype)[:, None, :, None]
    expected = (a * q_real).sum(dim=(1, 2)) / (4 * mask.sum(1, keepdim=True))
    torch.testing.assert_close(amap, expected)
    torch.testing.assert_close(amap.sum(-1), torch.ones(2, dtype=torch.float64))
    assert (amap[1, 8:] == 0).all()


def test_map_is_chunked_and_first_query_row(monkeypatch: pytest.MonkeyPatch) -> None:
    m = SoftmaxAttention(16, heads=2).double().eval()
    x = torch.randn(1, 20, 16, dtype=torch.float64)
    _, full_map = m(x, return_attention=True)
    monkeypatch.setattr(softmax_module, "_MAP_CHUNK_ELEMENTS", 2 * 20 * 3)  # 3 queries per chunk
    _, chunked = m(x, return_attention=True)
    torch.testing.assert_close(chunked, full_map)
    first, row = m(x, return_attention=True, num_queries=1)
    _, a = naive(m, x)
    torch.testing.assert_close(row, a[:, :, 0].mean(1))
    torch.testing.assert_close(first, naive(m, x)[0][:, :1])


def test_padding_is_invisible_and_gradients_flow() -> None:
    m = SoftmaxAttention(16, heads=4, dropout=0.1).eval()
    bag = torch.randn(1, 5, 16)
    x = torch.randn(1, 8, 16) * 4
    x[0, :5] = bag[0]
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[0, :5] = True
    torch.testing.assert_close(m(x, mask)[0][:, :5], m(bag)[0], atol=1e-6, rtol=1e-5)
    xg = x.clone().requires_grad_(True)
    m(xg, mask)[0][:, :5].sum().backward()
    assert (xg.grad[0, 5:] == 0).all() and xg.grad[0, :5].abs().sum() > 0


def test_state_dict_keys_and_errors() -> None:
    m = SoftmaxAttention(64, heads=8)
    assert set(m.state_dict()) == {"to_qkv.weight", "to_out.0.weight", "to_out.0.bias"}
    assert isinstance(SoftmaxAttention(8, heads=1, dim_head=8).to_out, torch.nn.Identity)
    with pytest.raises(ValueError):
        SoftmaxAttention(30, heads=8)
    with pytest.raises(ValueError):
        m(torch.randn(1, 3, 32))
    with pytest.raises(ValueError):
        m(torch.randn(1, 3, 64), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError):
        m(torch.randn(1, 3, 64), num_queries=0)
