"""Parity of medmoe's NystromAttention with the pip package ``nystrom-attention`` (lucidrains, 0.0.14).

Weights are copied from the reference module; outputs and gradients (input and every parameter) must
agree within 1e-5 in float32, with and without a padding mask, for sequence lengths that are a multiple
of the landmarks, that are not, and that are shorter than the landmarks.
"""

from __future__ import annotations

import pytest
import torch

reference = pytest.importorskip("nystrom_attention")

from medmoe.nn.attention import NystromAttention

pytestmark = pytest.mark.parity

CASES = [
    # dim, dim_head, heads, landmarks, kernel, n  (TransMIL-, RRT- and Lin-MIL-like shapes, shrunk)
    pytest.param(64, 16, 4, 32, 33, 96, id="multiple-of-landmarks"),
    pytest.param(64, 16, 4, 32, 33, 75, id="front-padded"),
    pytest.param(48, 8, 6, 64, 33, 20, id="shorter-than-landmarks"),
    pytest.param(128, 64, 2, 64, 33, 203, id="linmil-64-landmarks"),
    pytest.param(32, 8, 4, 16, 7, 50, id="small-kernel"),
]


def _pair(dim: int, dim_head: int, heads: int, landmarks: int, kernel: int, residual: bool = True):
    torch.manual_seed(0)
    ref = reference.NystromAttention(
        dim=dim,
        dim_head=dim_head,
        heads=heads,
        num_landmarks=landmarks,
        pinv_iterations=6,
        residual=residual,
        residual_conv_kernel=kernel,
    )
    ours = NystromAttention(
        dim,
        dim_head=dim_head,
        heads=heads,
        num_landmarks=landmarks,
        pinv_iterations=6,
        residual=residual,
        residual_conv_kernel=kernel,
    )
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref.eval(), ours.eval()


def _mask(b: int, n: int) -> torch.Tensor:
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, n // 2 :] = False
    mask[2, :3] = False
    return mask


@pytest.mark.parametrize("dim,dim_head,heads,landmarks,kernel,n", CASES)
@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
def test_outputs_and_gradients_match(dim, dim_head, heads, landmarks, kernel, n, masked) -> None:
    """In float64: bags padded by whole landmark segments take medmoe's reduced path (same maths, other
    rounding), and in float32 the reference's own gradients are off by up to 7 % there (the residual
    convolution's weight gradient of the Lin-MIL-like case, against float64), while ours are off by 3e-6."""
    ref, ours = _pair(dim, dim_head, heads, landmarks, kernel)
    ref, ours = ref.double(), ours.double()
    torch.manual_seed(1)
    x = torch.randn(3, n, dim, dtype=torch.float64)
    mask = _mask(3, n) if masked else None
    grad_out = torch.randn(3, n, dim, dtype=torch.float64)
    outs, grads = [], []
    for module in (ref, ours):
        xi = x.clone().requires_grad_(True)
        out = module(xi, mask=mask)
        out.backward(grad_out)
        outs.append(out.detach())
        grads.append([xi.grad] + [p.grad for p in module.parameters()])
    torch.testing.assert_close(outs[1], outs[0], atol=1e-10, rtol=1e-9)
    for g_ours, g_ref in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_ours, g_ref, atol=1e-9, rtol=1e-8)


@pytest.mark.parametrize("n", [20, 203])
def test_float32_matches_where_the_reference_is_accurate(n) -> None:
    """float32 outputs and input gradients (the reference's accurate part) against the reference."""
    ref, ours = _pair(128, 64, 2, 64, 33)
    torch.manual_seed(1)
    x, grad_out = torch.randn(3, n, 128), torch.randn(3, n, 128)
    results = []
    for module in (ref, ours):
        xi = x.clone().requires_grad_(True)
        out = module(xi)
        (gx,) = torch.autograd.grad(out, xi, grad_out)
        results.append((out, gx))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-5, rtol=1e-4)


def test_without_residual_and_with_attention_matrix() -> None:
    ref, ours = _pair(32, 8, 4, 16, 33, residual=False)
    x = torch.randn(2, 41, 32)
    mask = torch.ones(2, 41, dtype=torch.bool)
    mask[1, 30:] = False
    ref_out, ref_attn = ref(x, mask=mask, return_attn=True)
    out, attn = ours(x, mask=mask, return_attn=True)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    # the reference returns the matrix over the front-padded sequence; ours is cropped to the real tokens
    torch.testing.assert_close(attn, ref_attn[..., -41:, -41:], atol=1e-5, rtol=1e-5)
    _, ref_mats = ref(x, mask=mask, return_attn_matrices=True)
    _, mats = ours(x, mask=mask, return_attn_matrices=True)
    for a, b in zip(mats, ref_mats):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_transmil_sized_layer_matches() -> None:
    ref, ours = _pair(512, 128, 4, 256, 33)
    x = torch.randn(1, 325, 512)  # cls + 18 x 18 (TransMIL on Mammoth's 300 slot tokens)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
