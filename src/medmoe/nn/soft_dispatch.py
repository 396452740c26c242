"""Soft MoE dispatch with the token RMSNorm folded into the matrix products (the dense path's fast core).

Soft MoE normalises the tokens, ``X = x * inv * gamma`` with ``inv = scale / |x|`` per token, and then
only ever uses ``X`` inside matrix products with small ``(t, d)`` or ``(b, n, t)`` operands (``t = e * s``
slots, usually ``t << d``). The per-token factor ``inv`` and the per-feature gain ``gamma`` can therefore
be moved onto those small operands, so the ``(b, n, d)`` normalised tokens are never written, and the
backward needs one pass over ``x`` besides its matrix products:

    forward    L_raw = x (phi * gamma)^T                     (b, n, t)    L = inv * L_raw
               D     = softmax_n(L masked)                   (b, n, t)    slots = ((D * inv)^T x) * gamma
    backward   dD_raw = x (dslots * gamma)^T                 (b, n, t)    dD = inv * dD_raw
               dL    = dL_combine + D * (dD - colsum(dD * D))
               dx    = [dL * inv, D * inv] [phi * gamma; dslots * gamma]  -  x * <x, g> inv^3 / scale^2
               with <x, g> = rowsum(dL * L_raw + D * dD_raw)  (g = dX * gamma, no (b, n, d) temporary)
               dphi  = ((dL * inv)^T x) * gamma,   dgamma = sum_t phi * (dL * inv)^T x + dslots * slots_raw

Five ``n x t x d`` matrix products in the backward (two of them merged into one with ``2t`` inner size)
instead of the composite graph's eight plus the norm's elementwise passes. The combine (``softmax_t(L) Y``)
stays ordinary autograd: ``L`` is an output of the dispatch, so its gradient flows back into
:class:`NormalizedDispatch`'s backward.

Shapes: ``x (b, n, d)``, ``gamma (d,)``, ``phi (t, d)``, ``mask (b, n)`` bool or ``None``; outputs
``slots (b, t, d)`` and ``logits (b, n, t)`` (unmasked).

Both backward passes are hand-written and not differentiable themselves: under ``create_graph=True``
(higher-order gradients) the gradients are those of the composite maths (:func:`_dispatch_reference`,
:func:`_combine_reference`) on the saved inputs instead (:mod:`medmoe.nn.higher_order`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .higher_order import higher_order_requested, reference_gradients
from .norms import l2norm
from .onednn_linear import matmul_nt

__all__ = ["NormalizedDispatch", "SoftCombine", "normalized_dispatch", "soft_combine"]


class NormalizedDispatch(torch.autograd.Function):
    """``(x, gamma, phi) -> (slots, logits)`` for RMS-normalised tokens; see the module docstring."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, gamma: Tensor, phi: Tensor, mask: Tensor | None, scale: float, eps: float
    ) -> tuple[Tensor, Tensor]:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)  # (b, n, 1)
        inv = scale / norm.clamp_min(eps)
        phi_g = phi * gamma  # (t, d)
        logits_raw = matmul_nt(x, phi_g)  # (b, n, t)
        logits = logits_raw * inv
        masked = logits if mask is None else logits.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        dispatch = masked.softmax(dim=1)  # over tokens
        slots_raw = matmul_nt((dispatch * inv).transpose(1, 2), x.transpose(1, 2))  # (b, t, d)
        ctx.save_for_backward(x, gamma, phi, inv, norm > eps, dispatch, logits_raw, slots_raw)
        ctx.scale, ctx.eps, ctx.masked = scale, eps, mask is not None
        return slots_raw * gamma, logits

    @staticmethod
    def backward(ctx: Any, d_slots: Tensor, d_logits: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, gamma, phi, inv, unclamped, dispatch, logits_raw, slots_raw = ctx.saved_tensors
        if higher_order_requested():  # create_graph=True: the composite's gradients, differentiable again
            # The mask is not saved: it is recomputed as "some slot's dispatch weight is not 0". A real token
            # whose weights all underflowed to 0 is then masked, which changes neither the values nor any
            # derivative (the softmax's derivatives at a token all carry its weight as a factor).
            mask = (dispatch != 0).any(-1) if ctx.masked else None
            inputs = (x, gamma, phi, mask, ctx.scale, ctx.eps)
            return reference_gradients(_dispatch_reference, inputs, ctx.needs_input_grad, (d_slots, d_logits))
        t = phi.shape[0]
        b, n, _ = x.shape
        d_slots_g = d_slots * gamma  # (b, t, d)
        d_dispatch_raw = matmul_nt(x, d_slots_g)  # (b, n, t)
        # softmax over tokens (dim 1); masked tokens have dispatch 0 and get no gradient from it.
        # In place on one (b, n, t) buffer: d_logits = dispatch * (dD - colsum(dD * dispatch)) (+ combine's)
        d_l = d_dispatch_raw * inv
        d_l.sub_((d_l * dispatch).sum(dim=1, keepdim=True)).mul_(dispatch)
        if d_logits is not None:
            d_l.add_(d_logits)
        # left = [d_logits * inv, dispatch * inv] (b, n, 2t): both halves of dx's merged product
        left = torch.empty(b, n, 2 * t, dtype=x.dtype, device=x.device)
        dl_inv = torch.mul(d_l, inv, out=left[..., :t])
        torch.mul(dispatch, inv, out=left[..., t:])

        dx = dgamma = dphi = None
        if ctx.needs_input_grad[0]:
            dot = (d_l * logits_raw).sum(-1, keepdim=True)  # <x, dX * gamma> per token
            dot += (dispatch * d_dispatch_raw).sum(-1, keepdim=True)
            del d_l, d_dispatch_raw
            right = torch.cat([(phi * gamma).expand(b, t, -1), d_slots_g], dim=1)  # (b, 2t, d)
            dx = matmul_nt(left, right.transpose(1, 2).contiguous())  # = inv * (dX * gamma)
            coef = (dot * inv.pow(3) / ctx.scale**2).masked_fill_(~unclamped, 0.0)
            dx.addcmul_(x, coef, value=-1.0)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dphi_raw = matmul_nt(dl_inv.transpose(1, 2), x.transpose(1, 2)).sum(0)  # (t, d)
            if ctx.needs_input_grad[2]:
                dphi = dphi_raw * gamma
            if ctx.needs_input_grad[1]:
                dgamma = (phi * dphi_raw).sum(0) + (d_slots * slots_raw).sum((0, 1))
        return dx, dgamma, dphi, None, None, None


def _dispatch_reference(
    x: Tensor, gamma: Tensor, phi: Tensor, mask: Tensor | None, scale: float, eps: float
) -> tuple[Tensor, Tensor]:
    """:class:`NormalizedDispatch`'s maths as the composite graph (normalised tokens materialised)."""
    xn = l2norm(x, eps=eps) * scale * gamma
    logits = torch.matmul(xn, phi.t())
    masked = logits if mask is None else logits.masked_fill(~mask.unsqueeze(-1), float("-inf"))
    return torch.matmul(masked.softmax(dim=1).transpose(1, 2), xn), logits


def _combine_reference(logits: Tensor, values: Tensor) -> Tensor:
    """:class:`SoftCombine`'s maths as the composite graph."""
    return torch.matmul(logits.softmax(dim=-1), values)


class SoftCombine(torch.autograd.Function):
    """``(logits (b, n, t), values (b, t, d)) -> softmax_t(logits) @ values (b, n, d)`` (tokens attend to slots).

    Saves ``logits`` (not their softmax, which backward recomputes): under ``create_graph=True`` the gradients
    come from :func:`_combine_reference` on the inputs, and a softmax computed in ``forward`` would have no graph
    back to ``logits``; saving both would cost one more ``(b, n, t)`` tensor per layer.
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, values: Tensor) -> Tensor:  # type: ignore[override]
        combine = logits.softmax(dim=-1)
        ctx.save_for_backward(logits, values)
        return matmul_nt(combine, values.transpose(1, 2).contiguous())

    @staticmethod
    def backward(ctx: Any, d_out: Tensor) -> tuple[Tensor | None, Tensor | None]:  # type: ignore[override]
        logits, values = ctx.saved_tensors
        if higher_order_requested():  # create_graph=True: the composite's gradients, differentiable again
            return reference_gradients(_combine_reference, (logits, values), ctx.needs_input_grad, d_out)
        combine = logits.softmax(dim=-1)
        d_out = d_out.contiguous()
        d_values = matmul_nt(combine.transpose(1, 2), d_out.transpose(1, 2)) if ctx.needs_input_grad[1] else None
        d_logits = None
        if ctx.needs_input_grad[0]:
            d_combine = matmul_nt(d_out, values)  # (b, n, t)
            d_logits = combine * (d_combine - (d_combine * combine).sum(-1, keepdim=True))
        return d_logits, d_values


def soft_combine(logits: Tensor, values: Tensor) -> Tensor:
    """``softmax(logits, -1) @ values``: ``(b, n, t), (b, t, d) -> (b, n, d)`` with oneDNN products on CPU."""
    return SoftCombine.apply(logits, values)


def normalized_dispatch(
    x: Tensor, gamma: Tensor, phi: Tensor, mask: Tensor | None, scale: float, eps: float = 1e-8
) -> tuple[Tensor, Tensor]:
    """Soft MoE dispatch of RMS-normalised tokens: returns ``slots (b, t, d)`` and ``logits (b, n, t)``.

    Equal to ``X = x / max(|x|, eps) * scale * gamma``, ``L = X phi^T``, ``slots = softmax_n(L)^T X`` (padded
    tokens masked out of the softmax), with gradients for ``x``, ``gamma`` and ``phi``.
    """
    return NormalizedDispatch.apply(x, gamma, phi, mask, float(scale), float(eps))
