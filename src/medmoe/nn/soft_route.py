"""Soft MoE routing with many slots: both softmaxes from one logits matrix, fused, with few passes over it.

With normalised tokens ``X (b, n, d)``, normalised slot embeddings ``phi (t, d)`` (``t = e * s`` slots) and
the logits ``L = X phi^T (b, n, t)``::

    forward    D = softmax_n(L masked)    C = softmax_t(L)    slots = D^T X (b, t, d)      (C is returned)
    backward   dD = X dslots^T            dL = C * (dC - rowsum(C * dC)) + D * (dD - <slots, dslots>)
               dX = dL phi + D dslots     dphi = dL^T X

(``colsum(D * dD) = <slots_j, dslots_j>`` per slot, a ``(t, d)`` product instead of a pass over ``(n, t)``.)
When the slots are as many as the tokens (soft-moe-pytorch's ``seq_len = n`` default, one slot per token) the
``(b, n, t)`` tensors are the largest of the layer and every pass over them costs about as much as a matrix
product; PyTorch evaluates the two softmaxes, their gradients and the sum of the two logit gradients as a
dozen passes, each allocating a fresh output. Here the compiled kernel ``kernels/soft_route.cpp`` computes
``D`` and ``C`` in two reads of ``L`` (``C`` written over ``L``, no third buffer) and ``dL`` in one pass
written over ``dD``; the six matrix products run on oneDNN (:func:`~medmoe.nn.onednn_linear.matmul_nt`).
:func:`soft_combine_weights` is the combine product ``C Y`` with its gradient (``dC = dout Y^T``, ``dY = C^T dout``).

The kernels are the custom operators ``torch.ops.medmoe.soft_route_softmax_`` and
``torch.ops.medmoe.soft_route_grad_`` (in place: they write into their first arguments). Without a compiler,
under the torch backend, off CPU or for dtypes other than float32 they compute the same function with PyTorch
ops. Under ``create_graph=True`` the gradients are those of :func:`_route_reference` (differentiable again,
:mod:`medmoe.nn.higher_order`).

Shapes: ``x (b, n, d)``, ``phi (t, d)``, ``mask (b, n)`` bool (True = real token) or ``None``; outputs
``slots (b, t, d)`` and the combine weights ``(b, n, t)``.
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch
from torch import Tensor

from .backend import native_enabled
from .higher_order import higher_order_requested, reference_gradients
from .native_kernels import load_kernel
from .onednn_linear import matmul_nt

__all__ = ["native_soft_route_available", "soft_combine_weights", "soft_route"]

_KERNEL = "soft_route"
_ptr, _i64, _int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SIGNATURES = {
    "soft_route_forward": ([_ptr] * 3 + [_i64] * 3 + [_int], None),
    "soft_route_backward": ([_ptr] * 5 + [_i64] * 3 + [_int], None),
}


def _lib() -> ctypes.CDLL | None:
    return load_kernel(_KERNEL, _SIGNATURES)


def native_soft_route_available() -> bool:
    """Whether the compiled kernel can be used on this machine (builds it on first call)."""
    return _lib() is not None


def _kernel_applies(*tensors: Tensor) -> bool:
    return (
        all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors)
        and native_enabled()
        and native_soft_route_available()
    )


@torch.library.custom_op("medmoe::soft_route_softmax_", mutates_args=("logits", "dispatch"))
def _softmax_op(logits: Tensor, dispatch: Tensor, mask: Tensor | None) -> None:
    """Write ``softmax_n(logits masked)`` into ``dispatch`` and ``softmax_t(logits)`` over ``logits`` (both
    ``(b, n, t)``; ``mask (b, n)`` bool or ``None``)."""
    if not _kernel_applies(logits, dispatch):
        masked = logits if mask is None else logits.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        dispatch.copy_(masked.softmax(dim=1))
        logits.copy_(logits.softmax(dim=-1))
        return
    b, n, t = logits.shape
    mask_bytes = None if mask is None else mask.to(torch.uint8).contiguous()
    _lib().soft_route_forward(  # type: ignore[union-attr]
        logits.data_ptr(),
        dispatch.data_ptr(),
        None if mask_bytes is None else mask_bytes.data_ptr(),
        b,
        n,
        t,
        torch.get_num_threads(),
    )


@_softmax_op.register_fake
def _(logits: Tensor, dispatch: Tensor, mask: Tensor | None) -> None:
    return None


@torch.library.custom_op("medmoe::soft_route_grad_", mutates_args=("d_dispatch",))
def _grad_op(
    d_dispatch: Tensor, dispatch: Tensor, combine: Tensor, d_combine: Tensor | None, colsum: Tensor
) -> None:
    """Overwrite ``d_dispatch (b, n, t)`` with the logits' gradient
    ``combine * (d_combine - rowsum(combine * d_combine)) + dispatch * (d_dispatch - colsum[:, None, :])``."""
    tensors = [d_dispatch, dispatch, combine, colsum] + ([] if d_combine is None else [d_combine])
    if not _kernel_applies(*tensors):
        d_dispatch.sub_(colsum.unsqueeze(1)).mul_(dispatch)
        if d_combine is not None:
            d_dispatch.add_(combine * (d_combine - (combine * d_combine).sum(-1, keepdim=True)))
        return
    b, n, t = d_dispatch.shape
    _lib().soft_route_backward(  # type: ignore[union-attr]
        d_dispatch.data_ptr(),
        dispatch.data_ptr(),
        combine.data_ptr(),
        None if d_combine is None else d_combine.data_ptr(),
        colsum.data_ptr(),
        b,
        n,
        t,
        torch.get_num_threads(),
    )


@_grad_op.register_fake
def _(
    d_dispatch: Tensor, dispatch: Tensor, combine: Tensor, d_combine: Tensor | None, colsum: Tensor
) -> None:
    return None


def _mm_nt(a: Tensor, b_t: Tensor) -> Tensor:
    """``a @ b_t^T`` for ``a (b, m, k)`` and ``b_t (p, k)`` or ``(b, p, k)`` (transposed views allowed): oneDNN
    per batch row where :func:`~medmoe.nn.onednn_linear.matmul_nt` applies."""
    if a.shape[0] == 1:
        return matmul_nt(a, b_t)
    if b_t.dim() == 2:
        b_t = b_t.unsqueeze(0).expand(a.shape[0], -1, -1)
    return torch.stack([matmul_nt(a[i], b_t[i]) for i in range(a.shape[0])])


def _mm_tn(a: Tensor, b: Tensor) -> Tensor:
    """``a^T @ b`` for ``a (b, n, p)``, ``b (b, n, q)`` -> ``(b, p, q)`` (the product over the tokens).

    Computed as ``(b^T a)^T`` when ``q < p``: oneDNN measured faster with the short side as the output rows.
    """
    if b.shape[-1] < a.shape[-1]:
        return _mm_nt(b.transpose(1, 2), a.transpose(1, 2)).transpose(1, 2).contiguous()
    return _mm_nt(a.transpose(1, 2), b.transpose(1, 2))


def _route_reference(x: Tensor, phi: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """:class:`SoftRoute`'s maths as the composite graph: ``(slots, combine)``."""
    logits = torch.matmul(x, phi.t())
    masked = logits if mask is None else logits.masked_fill(~mask.unsqueeze(-1), float("-inf"))
    return torch.matmul(masked.softmax(dim=1).transpose(1, 2), x), logits.softmax(dim=-1)


class SoftRoute(torch.autograd.Function):
    """``(x, phi, mask) -> (slots, combine)``; see the module docstring."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, phi: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        x = x.contiguous()
        combine = _mm_nt(x, phi).contiguous()  # the logits (b, n, t), overwritten by the combine weights
        dispatch = torch.empty_like(combine)
        _softmax_op(combine, dispatch, mask)
        slots = _mm_tn(dispatch, x)  # (b, t, d)
        ctx.save_for_backward(x, phi, mask, dispatch, combine, slots)
        return slots, combine

    @staticmethod
    def backward(ctx: Any, d_slots: Tensor | None, d_combine: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, phi, mask, dispatch, combine, slots = ctx.saved_tensors
        if higher_order_requested():  # create_graph=True: the composite's gradients, differentiable again
            needs = (*ctx.needs_input_grad[:2], False)
            return reference_gradients(_route_reference, (x, phi, mask), needs, (d_slots, d_combine))
        if d_slots is None:
            d_slots = torch.zeros_like(slots)
        d_slots = d_slots.contiguous()
        d_combine = None if d_combine is None else d_combine.contiguous()
        d_logits = _mm_nt(x, d_slots).contiguous()  # dD (b, n, t), overwritten by dL
        colsum = (slots * d_slots).sum(-1)  # (b, t): sum_i D[i, j] dD[i, j]
        _grad_op(d_logits, dispatch, combine, d_combine, colsum)
        dx = dphi = None
        if ctx.needs_input_grad[0]:
            dx = _mm_nt(d_logits, phi.t()).add_(_mm_nt(dispatch, d_slots.transpose(1, 2)))  # (b, n, d)
        if ctx.needs_input_grad[1]:
            dphi = _mm_tn(d_logits, x).sum(0)  # (t, d)
        return dx, dphi, None


def soft_route(x: Tensor, phi: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Soft MoE dispatch of normalised tokens: ``slots (b, t, d)`` and the combine weights ``(b, n, t)``.

    ``slots = softmax_n(x phi^T)^T x`` (padded tokens masked out of the softmax over tokens) and
    ``combine = softmax_t(x phi^T)``, with gradients for ``x (b, n, d)`` and ``phi (t, d)``.
    """
    return SoftRoute.apply(x, phi, mask)


class _CombineProduct(torch.autograd.Function):
    """``combine (b, n, t) @ values (b, t, d)`` with oneDNN products and no copy of ``(b, n, t)`` gradients."""

    @staticmethod
    def forward(ctx: Any, combine: Tensor, values: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(combine, values)
        return _mm_nt(combine, values.transpose(1, 2).contiguous())

    @staticmethod
    def backward(ctx: Any, d_out: Tensor) -> tuple[Tensor | None, Tensor | None]:  # type: ignore[override]
        combine, values = ctx.saved_tensors
        if higher_order_requested():
            return reference_gradients(torch.matmul, (combine, values), ctx.needs_input_grad, d_out)
        d_out = d_out.contiguous()
        d_combine = _mm_nt(d_out, values.contiguous()) if ctx.needs_input_grad[0] else None  # (b, n, t)
        d_values = _mm_tn(combine, d_out) if ctx.needs_input_grad[1] else None  # (b, t, d)
        return d_combine, d_values


def soft_combine_weights(combine: Tensor, values: Tensor) -> Tensor:
    """``combine @ values``: ``(b, n, t), (b, t, d) -> (b, n, d)`` (tokens gather their slots' outputs)."""
    return _CombineProduct.apply(combine, values)
