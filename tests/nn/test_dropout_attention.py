"""Blocked attention with dropout: against the same blocks as PyTorch ops, SDPA at p = 0, gradcheck."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medmoe.nn.attention.dropout_attention import _reference, dropout_attention, dropout_attention_applies
from medmoe.nn.dropout import draw_seed

pytestmark = pytest.mark.skipif(
    not dropout_attention_applies(torch.zeros(1)),
    reason="no C++ compiler here: the dropout kernel is not built",
)


def _qkv(b: int, h: int, tq: int, tk: int, d: int, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, tq, d, generator=gen, dtype=dtype).requires_grad_()
    k = torch.randn(b, h, tk, d, generator=gen, dtype=dtype).requires_grad_()
    v = torch.randn(b, h, tk, d, generator=gen, dtype=dtype).requires_grad_()
    return q, k, v


def _mask(b: int, tk: int) -> torch.Tensor:
    mask = torch.ones(b, tk, dtype=torch.bool)
    mask[-1, tk // 2 :] = False  # the last bag is half padding
    return mask


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("tq,rows", [(50, 20), (37, 37), (9, 4)])  # uneven last block, one block, many
def test_equals_the_same_blocks_as_pytorch_ops(dtype, masked, tq, rows) -> None:
    b, h, tk, d = 2, 3, 41, 16
    q, k, v = _qkv(b, h, tq, tk, d, dtype)
    mask = _mask(b, tk) if masked else None
    g = torch.randn(b, h, tq, d, dtype=dtype)
    torch.manual_seed(7)
    out = dropout_attention(q, k, v, mask, 0.3, block_rows=rows)
    grads = torch.autograd.grad(out, (q, k, v), g)
    torch.manual_seed(7)
    seeds = [draw_seed() for _ in range(b * h * -(-tq // rows))]
    ref = _reference(q, k, v, mask, 0.3, rows, seeds)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 2e-6}
    torch.testing.assert_close(out, ref, **tol)
    for a, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, r, **tol)


def test_without_dropout_it_is_sdpa() -> None:
    q, k, v = _qkv(2, 4, 30, 30, 8, torch.float64, seed=1)
    mask = _mask(2, 30)
    out = dropout_attention(q, k, v, mask, 0.0, block_rows=7)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    for a, r in zip(
        torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g), strict=True
    ):
        torch.testing.assert_close(a, r)


def test_dropout_rate_scale_and_seeding() -> None:
    # uniform attention (q = 0): each output is the mean of the kept values, scaled by 1 / (1 - p)
    q = torch.zeros(1, 2, 64, 4)
    k = torch.randn(1, 2, 4000, 4)
    v = torch.ones(1, 2, 4000, 4)
    torch.manual_seed(3)
    out = dropout_attention(q, k, v, None, 0.25, block_rows=16)
    kept = out[..., 0] * 0.75  # fraction of keys kept per query row
    assert abs(kept.mean().item() - 0.75) < 0.005
    assert kept.std().item() > 0  # rows draw different masks
    torch.manual_seed(3)
    assert torch.equal(dropout_attention(q, k, v, None, 0.25, block_rows=16), out)


def test_gradcheck_float64() -> None:
    q, k, v = _qkv(1, 2, 6, 5, 3, torch.float64, seed=2)
    mask = torch.tensor([[True, True, False, True, True]])

    def seeded(q, k, v):
        torch.manual_seed(11)  # the same masks on every evaluation
        return dropout_attention(q, k, v, mask, 0.4, block_rows=2)

    assert torch.autograd.gradcheck(seeded, (q, k, v))
    assert torch.autograd.gradgradcheck(seeded, (q, k, v))


def test_bad_arguments() -> None:
    q, k, v = _qkv(1, 2, 6, 5, 3, torch.float32)
    with pytest.raises(ValueError, match="expects q"):
        dropout_attention(q, k[..., :2], v, None, 0.1)
    with pytest.raises(ValueError, match="key_mask"):
        dropout_attention(q, k, v, torch.ones(1, 4, dtype=torch.bool), 0.1)
    with pytest.raises(ValueError, match="dropout_p"):
        dropout_attention(q, k, v, None, 1.0)
    with pytest.raises(ValueError, match="CPU"):
        dropout_attention(q.half(), k.half(), v.half(), None, 0.1)


def test_backward_twice_with_retain_graph() -> None:
    q, k, v = _qkv(1, 2, 12, 10, 4, torch.float32, seed=3)
    out = dropout_attention(q, k, v, None, 0.3, block_rows=5).square().sum()
    first = torch.autograd.grad(out, (q, k, v), retain_graph=True)
    second = torch.autograd.grad(out, (q, k, v))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_bad_block_rows() -> None:
    q, k, v = _qkv(1, 1, 4, 4, 8, torch.float32)
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="block_rows"):
            dropout_attention(q, k, v, None, 0.1, block_rows=bad)


def test_blocks_are_preferred_to_sdpa_only_where_measured_faster() -> None:
    from medmoe.nn.attention.dropout_attention import blocked_attention_preferred
    from medmoe.nn.onednn_linear import onednn_linear_available

    def qk(tq: int, tk: int, dtype: torch.dtype = torch.float32):
        return torch.zeros(1, 1, tq, 4, dtype=dtype), torch.zeros(1, 1, tk, 4, dtype=dtype)

    assert blocked_attention_preferred(*qk(3000, 3000)) == onednn_linear_available()
    assert not blocked_attention_preferred(*qk(2999, 5000))
    assert not blocked_attention_preferred(*qk(5000, 2999))
    assert not blocked_attention_preferred(*qk(3000, 3000, torch.float64))
    assert blocked_attention_preferred(*qk(12000, 12000)) == onednn_linear_available()
    assert not blocked_attention_preferred(*qk(12001, 12001))


def test_without_dropout_no_random_numbers_are_drawn() -> None:
    q, k, v = _qkv(1, 2, 9, 9, 4, torch.float32)
    state = torch.get_rng_state()
    dropout_attention(q, k, v, None, 0.0, block_rows=2)
    assert torch.equal(torch.get_rng_state(), state)


def test_long_bag_attention_without_dropout_uses_the_blocks_and_matches_sdpa(monkeypatch) -> None:
    """Transformer MIL and SoftmaxAttention take the blocks from 3,000 tokens on (CPU float32)."""
    from medmoe.models.mil import transformer
    from medmoe.nn.attention import dropout_attention as module
    from medmoe.nn.attention import softmax

    calls = []

    def counted(*args, **kwargs):
        calls.append(args[4])
        return dropout_attention(*args, **kwargs)

    monkeypatch.setattr(transformer, "dropout_attention", counted)
    monkeypatch.setattr(softmax, "dropout_attention", counted)
    monkeypatch.setattr(module, "_BLOCKS_BEAT_SDPA_TOKENS", (50, 100))  # small sizes for the test
    q, k, v = _qkv(2, 2, 60, 60, 8, torch.float32)
    mask = _mask(2, 60)
    g = torch.randn(2, 2, 60, 8)
    out = transformer.chunked_attention(q, k, v, mask, 0.0)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    torch.testing.assert_close(out, ref)
    for a, r in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g), strict=True):
        torch.testing.assert_close(a, r)
    layer = softmax.SoftmaxAttention(16, heads=2).eval()
    x = torch.randn(2, 60, 16)
    blocked, _ = layer(x, mask=mask)
    monkeypatch.setattr(module, "_BLOCKS_BEAT_SDPA_TOKENS", (10**9, 10**9))
    fused, _ = layer(x, mask=mask)
    torch.testing.assert_close(blocked, fused)
    assert calls == [0.0, 0.0]


def test_without_dropout_forward_and_backward_may_cut_different_blocks(monkeypatch) -> None:
    from medmoe.nn.attention import dropout_attention as module

    monkeypatch.setattr(module, "_BLOCK_ELEMENTS", 3 * 30)  # forward: 3 rows per block
    monkeypatch.setattr(module, "_MIN_BLOCK_ROWS", 7)  # backward: 7 rows per block
    q, k, v = _qkv(2, 2, 20, 30, 8, torch.float64, seed=3)
    mask = _mask(2, 30)
    out = dropout_attention(q, k, v, mask, 0.0)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    for a, r in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g), strict=True):
        torch.testing.assert_close(a, r)
