"""Iterative Moore–Penrose pseudo-inverse (Razavi et al. 2014), as used by Nyström attention.

``Z <- Z (13 I - X Z (15 I - X Z (7 I - X Z))) / 4``, four matrix products per iteration. On CPU in float32
the iterations run as one autograd node (:class:`_PinvIterations`): each matrix is iterated on oneDNN and the
backward pass is written out by hand. It performs the same products as autograd through the loop, in the same
order (results and gradients agree bit for bit in the tests), without autograd's per-product graph nodes,
stacked copies of every batched product and separate ``c I - M`` temporaries, which makes forward + backward
faster at TransMIL's sizes (``benchmarks/bench_pinv.py``; timings in docs/performance.md). Other devices and
dtypes run the loop on :func:`fast_matmul`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..backend import onednn_linear
from ..higher_order import higher_order_requested, reference_gradients
from ..onednn_linear import dense_matrices, fast_matmul, onednn_applies

__all__ = ["moore_penrose_pinv", "pinv_iterations"]

# one iteration's saved matrices: Z, A = X Z, B = 7 I - A, D = 15 I - A B, F = 13 I - A D
_Saved = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


def moore_penrose_pinv(x: Tensor, iters: int = 6, per_sample: bool = False) -> Tensor:
    """Iterative Moore–Penrose pseudo-inverse of square matrices.

    Args:
        x: ``(..., m, m)``; for Nyström attention ``(b, h, m, m)`` softmax matrices.
        iters: number of iterations (6 in the Nyström paper).
        per_sample: scale the starting point with maxima taken per leading index (dim 0) instead of
            over the whole tensor (the reference's behaviour).

    Returns:
        ``(..., m, m)`` approximate pseudo-inverse.
    """
    if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"moore_penrose_pinv expects square matrices (..., m, m), got {tuple(x.shape)}")
    abs_x = x.abs()
    row_sums = abs_x.sum(dim=-1)  # (..., m)
    col_sums = abs_x.sum(dim=-2)  # (..., m)
    if per_sample and x.ndim > 2:
        reduce_dims = tuple(range(1, row_sums.ndim))
        denom = row_sums.amax(dim=reduce_dims) * col_sums.amax(dim=reduce_dims)  # (b,)
        denom = denom.reshape((-1,) + (1,) * (x.ndim - 1))
    else:
        denom = row_sums.max() * col_sums.max()
    return pinv_iterations(x, x.transpose(-1, -2) / denom, iters)


def pinv_iterations(x: Tensor, z: Tensor, iters: int) -> Tensor:
    """``iters`` steps ``Z <- Z (13 I - X Z (15 I - X Z (7 I - X Z))) / 4`` from ``z``.

    Args:
        x: ``(..., m, m)`` matrices to invert.
        z: ``(..., m, m)`` starting point (e.g. ``x.T / (max row sum * max column sum)``).
        iters: number of iterations (``>= 0``).

    Returns:
        ``(..., m, m)``; gradients reach ``x`` and ``z``.
    """
    if x.shape != z.shape or x.ndim < 2 or x.shape[-1] != x.shape[-2]:
        raise ValueError(
            f"pinv_iterations expects x and z of one shape (..., m, m), got {tuple(x.shape)} and {tuple(z.shape)}"
        )
    if iters == 0:
        return z
    if not (x.numel() > 0 and onednn_applies(x, z)):
        return _autograd_iterations(x, z, iters)
    if torch.is_grad_enabled() and (x.requires_grad or z.requires_grad):
        return _PinvIterations.apply(x, z, iters)
    return _iterate_all(x, z, iters, None)


def _autograd_iterations(x: Tensor, z: Tensor, iters: int) -> Tensor:
    """The iterations as plain tensor operations (any device and dtype; autograd differentiates them)."""
    eye = torch.eye(x.shape[-1], device=x.device, dtype=x.dtype)
    for _ in range(iters):
        xz = fast_matmul(x, z)
        z = 0.25 * fast_matmul(z, 13 * eye - fast_matmul(xz, 15 * eye - fast_matmul(xz, 7 * eye - xz)))
    return z


def _matrices(t: Tensor) -> Tensor:
    """``t (..., m, m)`` as ``(B, m, m)`` whose matrices are row- or column-major (oneDNN reads both)."""
    return dense_matrices(t.reshape(-1, *t.shape[-2:]))


def _mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for 2-D float32 CPU matrices on oneDNN."""
    return onednn_linear(a, b.t())


def _scaled_identity_minus(c: float, m: Tensor) -> Tensor:
    """``c I - m`` as a new tensor."""
    out = m.neg()
    out.diagonal().add_(c)
    return out


def _iterate(x: Tensor, z: Tensor, iters: int, saved: list[_Saved] | None) -> Tensor:
    """The iterations for one ``(m, m)`` matrix; appends each iteration's matrices to ``saved`` if given."""
    for _ in range(iters):
        a = _mm(x, z)
        b = _scaled_identity_minus(7.0, a)
        d = _scaled_identity_minus(15.0, _mm(a, b))
        f = _scaled_identity_minus(13.0, _mm(a, d))
        if saved is not None:
            saved.append((z, a, b, d, f))
        z = _mm(z, f).mul_(0.25)
    return z


def _iterate_all(x: Tensor, z: Tensor, iters: int, saved: list[list[_Saved]] | None) -> Tensor:
    """The iterations for every matrix of ``x (..., m, m)`` from ``z``; ``saved[i]`` gets matrix ``i``'s."""
    xs, zs = _matrices(x), _matrices(z)
    if saved is not None:
        saved.extend([] for _ in range(xs.shape[0]))
    per_matrix = [
        _iterate(xs[i], zs[i], iters, None if saved is None else saved[i]) for i in range(xs.shape[0])
    ]
    return torch.stack(per_matrix).reshape(x.shape)


class _PinvIterations(torch.autograd.Function):
    """:func:`pinv_iterations` on oneDNN as one autograd node (CPU float32)."""

    @staticmethod
    def forward(ctx, x: Tensor, z: Tensor, iters: int) -> Tensor:  # type: ignore[override]
        ctx.saved_iterations = []
        out = _iterate_all(x, z, iters, ctx.saved_iterations)
        ctx.iters = iters
        ctx.save_for_backward(x, z)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        x, z0 = ctx.saved_tensors
        if higher_order_requested():  # create_graph=True: the plain loop's gradients, differentiable again
            return reference_gradients(_autograd_iterations, (x, z0, ctx.iters), ctx.needs_input_grad, grad)
        xs = _matrices(x)
        grads = _matrices(grad)
        gx_list, gz0_list = [], []
        for i, saved in enumerate(ctx.saved_iterations):
            x_t = xs[i].t()
            gz, gxi = grads[i], None
            # reverse of: A = X Z, B = 7I - A, C = A B, D = 15I - C, E = A D, F = 13I - E, Z' = Z F / 4
            for z, a, b, d, f in reversed(saved):
                gf = _mm(z.t(), gz).mul_(0.25)
                gz_prev = _mm(gz, f.t()).mul_(0.25)
                ge = gf.neg_()
                ga = _mm(ge, d.t())
                gc = _mm(a.t(), ge).neg_()  # gD = A^T gE, gC = -gD
                ga += _mm(gc, b.t())
                ga -= _mm(a.t(), gc)  # gB = A^T gC, gA -= gB
                gxi = _mm(ga, z.t()) if gxi is None else gxi.add_(_mm(ga, z.t()))
                gz = gz_prev.add_(_mm(x_t, ga))
            gx_list.append(gxi)
            gz0_list.append(gz)
        shape = x.shape
        return torch.stack(gx_list).reshape(shape), torch.stack(gz0_list).reshape(shape), None
