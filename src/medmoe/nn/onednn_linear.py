"""A linear layer whose CPU float32 matmuls run on oneDNN.

On x86 CPUs without Intel MKL's fast paths (e.g. AMD EPYC) PyTorch's default ``addmm`` for tall-skinny
patch matrices (``n`` = 10k-200k patches) is slower than the oneDNN (mkldnn) matmul that ships inside every
PyTorch build (docs/performance-notes.md). :func:`fast_linear` computes ``x @ W.T + b`` and both of its gradients with
oneDNN when that can help (native backend, CPU, float32, no autocast, oneDNN available) and falls back to
:func:`torch.nn.functional.linear` otherwise, so results agree with ``F.linear`` to float32 rounding.

:class:`FastLinear` is a drop-in :class:`torch.nn.Linear` (same parameters and state-dict keys).

Higher-order gradients (``create_graph=True``) through the oneDNN paths are those of ``F.linear`` and
:func:`torch.matmul` (:mod:`medmoe.nn.higher_order`): the oneDNN backward itself is not differentiable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backend import apply_backend, native_enabled, onednn_available, onednn_linear
from .higher_order import higher_order_requested, reference_gradients

__all__ = [
    "FastLinear",
    "dense_matrices",
    "fast_linear",
    "fast_matmul",
    "matmul_nt",
    "onednn_applies",
    "onednn_linear_available",
    "use_fast_linear",
]

# The size rules below are where oneDNN measured faster than PyTorch's default GEMM on the machines we timed
# (docs/performance-notes.md): tall products from some rows and work, short inputs only for large weights
# (PyTorch's weight-gradient GEMM with a short inner dimension is slow on AMD CPUs), never one row (PyTorch's
# matrix-vector path wins there).
_MIN_ROWS = 2048  # matmul_nt: the longer side from which oneDNN pays off for its skinny products
_LINEAR_MIN_ROWS = 64
_LINEAR_MIN_WORK = 2**24
_SHORT_MIN_ROWS = 4
_SHORT_MIN_WEIGHT = 2**18


def onednn_linear_available() -> bool:
    """Whether PyTorch was built with oneDNN and exposes its linear kernel."""
    return onednn_available()


def onednn_applies(*tensors: Tensor) -> bool:
    """The guard all oneDNN paths share: the native backend, CPU float32 operands, no autocast, oneDNN built in."""
    return (
        all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and not torch.is_autocast_enabled("cpu")
        and native_enabled()  # also off while torch.compile traces: inductor optimises F.linear itself
        and onednn_available()
    )


def _onednn_linear(a: Tensor, b_t: Tensor, bias: Tensor | None = None) -> Tensor:
    """``a (m, k) @ b_t (n, k).T (+ bias) -> (m, n)`` on oneDNN."""
    return onednn_linear(a, b_t, bias)


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x2, weight)
        ctx.has_bias = bias is not None
        return _onednn_linear(x2, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:  # type: ignore[override]
        x2, weight = ctx.saved_tensors
        if higher_order_requested():  # create_graph=True: F.linear's gradients, differentiable again
            gx, gw = reference_gradients(F.linear, (x2, weight), ctx.needs_input_grad[:2], grad)
            return gx, gw, grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        grad = grad.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            # (n, out) @ (out, in); oneDNN reads the transposed view directly (copying it first was slower)
            gx = _onednn_linear(grad, weight.t())
        if ctx.needs_input_grad[1]:
            gw = _onednn_linear(grad.t(), x2.t())  # (out, n) @ (n, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum(0)
        return gx, gw, gb


def fast_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)`` (``x (..., in) -> (..., out)``), on oneDNN for large CPU fp32 inputs."""
    rows = x.numel() // max(x.shape[-1], 1)
    tall = rows >= _LINEAR_MIN_ROWS and rows * weight.numel() >= _LINEAR_MIN_WORK
    wide = rows >= _SHORT_MIN_ROWS and weight.numel() >= _SHORT_MIN_WEIGHT
    if not (tall or wide) or not onednn_applies(x, weight):
        return F.linear(x, weight, bias)
    lead = x.shape[:-1]
    out = _OneDNNLinear.apply(x.reshape(rows, x.shape[-1]).contiguous(), weight.contiguous(), bias)
    return out.reshape(*lead, weight.shape[0])


def matmul_nt(a: Tensor, b_t: Tensor) -> Tensor:
    """``a @ b_t.transpose(-1, -2)``: ``a (m, k)`` or ``(b, m, k)``, ``b_t (p, k)`` or ``(b, p, k)``.

    Runs on oneDNN when that pays off (CPU float32, no autocast, a single matrix (``b == 1``) with a
    side of at least 2048), else :func:`torch.matmul`. Either operand may be a transposed view.
    """
    if (
        (a.dim() == 2 or a.shape[0] == 1)
        and (b_t.dim() == 2 or b_t.shape[0] == 1)
        and max(a.shape[-2], a.shape[-1]) >= _MIN_ROWS
        and onednn_applies(a, b_t)
    ):
        out = _onednn_linear(dense_matrices(a.reshape(a.shape[-2:])), dense_matrices(b_t.reshape(b_t.shape[-2:])))
        return out.unsqueeze(0) if max(a.dim(), b_t.dim()) == 3 else out
    return torch.matmul(a, b_t.transpose(-1, -2))


_MIN_MATMUL_WORK = 64**3  # m * k * n per matrix below which the per-call overhead outweighs the gain
_MAX_MATMUL_BATCH = 256  # one oneDNN call per matrix: keep the Python loop short


def _bmm_nt(a: Tensor, b_t: Tensor) -> Tensor:
    """``a[i] @ b_t[i].T`` for 3-D ``a (B, m, k)``, ``b_t (B, n, k)``, one oneDNN call per matrix.

    Operands whose matrices are neither row- nor column-major are copied first: oneDNN falls back to a
    reference kernel (far slower: docs/performance-notes.md) for padded row strides, e.g. one head of a
    ``(b, n, h, d)`` projection.
    """
    a, b_t = dense_matrices(a), dense_matrices(b_t)
    return torch.stack([_onednn_linear(a[i], b_t[i]) for i in range(a.shape[0])])


def dense_matrices(t: Tensor) -> Tensor:
    """``t (..., r, c)`` whose matrices are row-major or column-major (a plain transpose), copying otherwise."""
    r, c = t.shape[-2:]
    s_r, s_c = t.stride(-2), t.stride(-1)
    if (s_c == 1 and s_r == c) or (s_r == 1 and s_c == r):
        return t
    return t.contiguous()


class _OneDNNMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(a, b)
        return _bmm_nt(a, b.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:  # type: ignore[override]
        a, b = ctx.saved_tensors
        if higher_order_requested():  # create_graph=True: torch.matmul's gradients, differentiable again
            return reference_gradients(torch.matmul, (a, b), ctx.needs_input_grad, grad)
        grad = grad.contiguous()
        da = _bmm_nt(grad, b) if ctx.needs_input_grad[0] else None  # grad @ b.T
        db = _bmm_nt(a.transpose(1, 2), grad.transpose(1, 2)) if ctx.needs_input_grad[1] else None  # a.T @ grad
        return da, db


def fast_matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for batched matrices of the same batch shape (``(..., m, k) @ (..., k, n)``).

    On CPU in float32 (no autocast, native backend) with matrices large enough (``m * k * n >= 64**3``) each
    product runs on oneDNN, forward and backward (faster than PyTorch's default batched GEMM for TransMIL's
    Nyström products on AMD CPUs, docs/performance-notes.md). Anything else is :func:`torch.matmul`.
    """
    if (
        a.dim() == b.dim() >= 3
        and a.shape[:-2] == b.shape[:-2]
        and a.shape[-1] == b.shape[-2]
        and a.shape[-2] * a.shape[-1] * b.shape[-1] >= _MIN_MATMUL_WORK
        and 0 < a.shape[:-2].numel() <= _MAX_MATMUL_BATCH
        and onednn_applies(a, b)
    ):
        lead = a.shape[:-2]
        out = _OneDNNMatmul.apply(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]))
        return out.reshape(*lead, a.shape[-2], b.shape[-1])
    return torch.matmul(a, b)


class FastLinear(nn.Linear):
    """:class:`torch.nn.Linear` computed with :func:`fast_linear` (same parameters, same state dict).

    Shapes: ``(..., in_features) -> (..., out_features)``.
    """

    def forward(self, x: Tensor) -> Tensor:
        return fast_linear(x, self.weight, self.bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> FastLinear:
        """A FastLinear holding ``linear``'s own parameter objects (nothing copied or allocated)."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        new.weight = linear.weight
        new.bias = linear.bias
        new.train(linear.training)
        return new


def use_fast_linear(module: nn.Module) -> nn.Module:
    """Replace every plain :class:`torch.nn.Linear` inside ``module`` by a :class:`FastLinear` (native backend).

    The replacement holds the same parameter objects (same state-dict keys, nothing copied); subclasses of
    ``nn.Linear`` are left alone. Returns ``module`` (or its replacement when ``module`` itself is an
    ``nn.Linear``); under the torch backend ``module`` unchanged. See :func:`medmoe.nn.backend.apply_backend`.
    """
    return apply_backend(module, layers=("linear",))
