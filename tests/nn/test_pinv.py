"""The Moore–Penrose iterations: the one-node oneDNN path against autograd through the loop."""

from __future__ import annotations

import pytest
import torch

from medmoe.nn.attention import pinv as pinv_module
from medmoe.nn.attention.pinv import _autograd_iterations, moore_penrose_pinv, pinv_iterations


def _softmax_matrices(*shape: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(*shape, generator=gen)).softmax(dim=-1)


def _start(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-1, -2) / (x.abs().sum(-1).max() * x.abs().sum(-2).max())


def _value_and_grads(fn, x: torch.Tensor, z_from_x: bool, iters: int, seed: int = 1):
    x = x.clone().requires_grad_()
    z = _start(x) if z_from_x else _start(x.detach()).requires_grad_()
    out = fn(x, z, iters)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    grads = torch.autograd.grad((out * weights).sum(), [x] if z_from_x else [x, z])
    return out.detach(), grads


@pytest.mark.parametrize("shape", [(4, 80, 80), (1, 2, 3, 96, 96)])
@pytest.mark.parametrize("iters", [1, 6])
@pytest.mark.parametrize("z_from_x", [True, False])
def test_one_node_path_equals_autograd_through_the_loop_bit_for_bit(shape, iters, z_from_x) -> None:
    # the same oneDNN products in the same order (m >= 64: the loop's products run on oneDNN too)
    x = _softmax_matrices(*shape)
    out, grads = _value_and_grads(pinv_iterations, x, z_from_x, iters)
    ref_out, ref_grads = _value_and_grads(_autograd_iterations, x, z_from_x, iters)
    assert torch.equal(out, ref_out)
    for g, ref in zip(grads, ref_grads, strict=True):
        assert torch.equal(g, ref)


@pytest.mark.parametrize("m", [5, 40])
def test_small_matrices_agree_with_float64_autograd(m: int) -> None:
    x = _softmax_matrices(3, m, m, seed=2)
    out, (gx, gz) = _value_and_grads(pinv_iterations, x, False, 6)
    ref_out, (rgx, rgz) = _value_and_grads(_autograd_iterations, x.double(), False, 6)
    torch.testing.assert_close(out, ref_out.float(), rtol=1e-4, atol=1e-4 * ref_out.abs().max().item())
    torch.testing.assert_close(gx, rgx.float(), rtol=1e-3, atol=1e-4 * rgx.abs().max().item())
    torch.testing.assert_close(gz, rgz.float(), rtol=1e-3, atol=1e-4 * rgz.abs().max().item())


def test_without_gradients_the_same_values() -> None:
    x = _softmax_matrices(2, 70, 70, seed=3)
    with_grad, _ = _value_and_grads(pinv_iterations, x, True, 6)
    with torch.no_grad():
        plain = pinv_iterations(x, _start(x), 6)
    assert torch.equal(plain, with_grad)
    assert not plain.requires_grad


def test_transposed_and_sliced_operands() -> None:
    base = _softmax_matrices(2, 72, 144, seed=4)
    x = base[..., :72].transpose(-1, -2)  # neither contiguous nor a plain transpose of a dense matrix
    out, grads = _value_and_grads(pinv_iterations, x, True, 3)
    ref, ref_grads = _value_and_grads(_autograd_iterations, x.contiguous(), True, 3)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grads[0], ref_grads[0], rtol=1e-5, atol=1e-6 * ref_grads[0].abs().max().item())


def test_converges_to_the_inverse_and_falls_back_without_onednn(monkeypatch) -> None:
    x = _softmax_matrices(3, 66, 66, seed=5) + torch.eye(66)
    fused = moore_penrose_pinv(x, iters=25)
    torch.testing.assert_close(fused @ x, torch.eye(66).expand(3, 66, 66), atol=1e-4, rtol=0)
    monkeypatch.setattr(pinv_module, "onednn_applies", lambda *tensors: False)
    torch.testing.assert_close(moore_penrose_pinv(x, iters=25), fused, atol=1e-5, rtol=1e-5)


def test_zero_iterations_and_bad_shapes() -> None:
    x = _softmax_matrices(2, 8, 8)
    z = _start(x)
    assert pinv_iterations(x, z, 0) is z
    with pytest.raises(ValueError, match="one shape"):
        pinv_iterations(x, z[:1], 2)
    with pytest.raises(ValueError, match="one shape"):
        pinv_iterations(x[..., :4], z[..., :4], 2)


def test_second_order_gradients_follow_the_loop() -> None:
    # create_graph=True differentiates the plain loop inside the backward pass: gradients of gradients are right
    x0 = _softmax_matrices(2, 64, 64, seed=6)
    weights = torch.randn(2, 64, 64, generator=torch.Generator().manual_seed(7))
    results = []
    for fn in (pinv_iterations, _autograd_iterations):
        x = x0.clone().requires_grad_()
        (g,) = torch.autograd.grad((fn(x, _start(x), 2) * weights).sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad((g * weights).sum(), x)
        results.append((g.detach(), gg))
    torch.testing.assert_close(
        results[0][0], results[1][0], rtol=1e-5, atol=1e-6 * results[1][0].abs().max().item()
    )
    torch.testing.assert_close(
        results[0][1], results[1][1], rtol=1e-4, atol=1e-5 * results[1][1].abs().max().item()
    )


def test_backward_twice_with_retain_graph() -> None:
    x = _softmax_matrices(2, 64, 64, seed=8).requires_grad_()
    out = pinv_iterations(x, _start(x), 3).square().sum()
    (first,) = torch.autograd.grad(out, x, retain_graph=True)
    (second,) = torch.autograd.grad(out, x)
    assert torch.equal(first, second)
