"""medmoe.nn.soft_dispatch: the RMSNorm-folded dispatch equals the composite maths, values and gradients."""

import pytest
import torch

from medmoe.nn.soft_dispatch import normalized_dispatch


def composite(x, gamma, phi, mask, scale, eps=1e-8):
    xn = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(eps) * scale * gamma
    logits = xn @ phi.t()
    masked = logits if mask is None else logits.masked_fill(~mask[..., None], float("-inf"))
    return masked.softmax(dim=1).transpose(1, 2) @ xn, logits


def inputs(b=2, n=9, d=6, t=4, dtype=torch.float64, with_mask=True, zero_token=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, n, d, generator=g, dtype=dtype)
    if zero_token:
        x[0, 3] = 0.0  # norm below eps: the clamped branch
    gamma = 1 + 0.3 * torch.randn(d, generator=g, dtype=dtype)
    phi = torch.randn(t, d, generator=g, dtype=dtype)
    mask = None
    if with_mask:
        mask = torch.ones(b, n, dtype=torch.bool)
        mask[1, -3:] = False
    return [v.requires_grad_() for v in (x, gamma, phi)], mask


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("zero_token", [False, True])
def test_values_and_gradients_match_composite(with_mask, zero_token):
    (x, gamma, phi), mask = inputs(with_mask=with_mask, zero_token=zero_token)
    scale = x.shape[-1] ** 0.5
    slots, logits = normalized_dispatch(x, gamma, phi, mask, scale)
    ref_slots, ref_logits = composite(x, gamma, phi, mask, scale)
    torch.testing.assert_close(slots, ref_slots, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-12, atol=1e-12)
    g = torch.Generator().manual_seed(1)
    w_s = torch.randn(slots.shape, generator=g, dtype=slots.dtype)
    w_l = torch.randn(logits.shape, generator=g, dtype=logits.dtype)
    ours = torch.autograd.grad((slots * w_s).sum() + (logits.softmax(-1) * w_l).sum(), (x, gamma, phi))
    ref = torch.autograd.grad((ref_slots * w_s).sum() + (ref_logits.softmax(-1) * w_l).sum(), (x, gamma, phi))
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)


def test_gradcheck_with_mask():
    (x, gamma, phi), mask = inputs(b=2, n=5, d=4, t=3)
    scale = 2.0
    assert torch.autograd.gradcheck(
        lambda a, b_, c: normalized_dispatch(a, b_, c, mask, scale), (x, gamma, phi), eps=1e-6, atol=1e-7
    )


def test_masked_tokens_get_no_dispatch_weight_and_float32_close():
    (x, gamma, phi), mask = inputs(dtype=torch.float32)
    slots, _ = normalized_dispatch(x, gamma, phi, mask, 3.0)
    x2 = x.detach().clone()
    x2[1, -3:] = 1e3  # padded tokens' values must not matter
    slots2, _ = normalized_dispatch(x2, gamma, phi, mask, 3.0)
    torch.testing.assert_close(slots, slots2)
    ref, _ = composite(x, gamma, phi, mask, 3.0)
    torch.testing.assert_close(slots, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [7, 3000])
def test_soft_combine_matches_composite_float32(n):
    """n = 3000 takes the oneDNN products on CPU; n = 7 the plain matmul."""
    from medmoe.nn.soft_dispatch import soft_combine

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, n, 8, generator=g).requires_grad_()
    values = torch.randn(1, 8, 32, generator=g).requires_grad_()
    w = torch.randn(1, n, 32, generator=g)
    out = soft_combine(logits, values)
    ref = logits.softmax(-1) @ values
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    ours = torch.autograd.grad((out * w).sum(), (logits, values))
    theirs = torch.autograd.grad((ref * w).sum(), (logits, values))
    for a, r in zip(ours, theirs):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)


def test_large_float32_dispatch_matches_float64():
    """The oneDNN products (n >= 2048) agree with a float64 composite."""
    (x, gamma, phi), _ = inputs(b=1, n=4096, d=32, t=8, dtype=torch.float64, with_mask=False)
    scale = 32**0.5
    ref_slots, ref_logits = composite(x, gamma, phi, None, scale)
    w = torch.randn(ref_slots.shape, dtype=torch.float64)
    ref_grads = torch.autograd.grad((ref_slots * w).sum() + ref_logits.square().sum(), (x, gamma, phi))
    x32, g32, p32 = (v.detach().float().requires_grad_() for v in (x, gamma, phi))
    slots, logits = normalized_dispatch(x32, g32, p32, None, scale)
    torch.testing.assert_close(slots.double(), ref_slots, rtol=1e-4, atol=1e-4)
    grads = torch.autograd.grad((slots * w.float()).sum() + logits.square().sum(), (x32, g32, p32))
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a.double(), r, rtol=1e-3, atol=1e-3 * r.abs().max().item())
