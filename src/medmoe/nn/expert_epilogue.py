"""Mammoth's expert epilogue ``dropout(relu(ExpertWiseRMSNorm(t + bias)))`` fused into one CPU kernel.

After the factorised expert projection, Mammoth adds the per-expert bias, RMS-normalises each expert's
``heads * head_dim`` features with a per-expert gain, applies ReLU and dropout. PyTorch evaluates that as a
dozen separate passes over ``(b, S, E, H, d)`` tensors, each allocating a fresh output: with DTFD-MIL's eight
pseudo-bags through Mammoth it was about 20 of a 24 ms expert block (1 thread). ``kernels/expert_epilogue.cpp``
does it in one pass forward and one backward (with the bias and gain gradients reduced per expert), and draws
the dropout mask exactly as :func:`medmoe.nn.dropout.fast_dropout` does (same seed, same words), so fused and
unfused paths drop the same elements.

Where the kernel does not apply (GPU, dtypes other than float32/float64, autocast, no C++ compiler,
``MEDMOE_NATIVE_KERNELS=0``) :func:`expert_epilogue` returns ``None`` and the caller runs the modules.
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .dropout import _SeededDropout, draw_seed, drop_threshold, native_dropout_available
from .higher_order import higher_order_requested, reference_gradients
from .native_kernels import Signature, load_kernel
from .norms import l2norm

__all__ = ["expert_epilogue", "native_expert_epilogue_available"]

_KERNEL = "expert_epilogue"
_SCALARS = {torch.float32: ("f32", ctypes.c_float), torch.float64: ("f64", ctypes.c_double)}


def _signatures() -> dict[str, Signature]:
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    out: dict[str, Signature] = {}
    for suffix, scalar in _SCALARS.values():
        tail = [scalar, scalar, ctypes.c_int, ctypes.c_uint64, ctypes.c_uint32, scalar, ctypes.c_int]
        out[f"epilogue_forward_{suffix}"] = ([ptr] * 5 + [i64] * 3 + tail, None)
        out[f"epilogue_backward_{suffix}"] = ([ptr] * 8 + [i64] * 3 + tail, None)
    return out


_SIGNATURES = _signatures()


def _lib() -> ctypes.CDLL | None:
    return load_kernel(_KERNEL, _SIGNATURES)


def native_expert_epilogue_available() -> bool:
    """Whether the compiled kernel can be used on this machine (builds it on first call)."""
    return _lib() is not None


class _ExpertEpilogue(torch.autograd.Function):
    """The fused kernel on contiguous ``t``, ``bias``, ``gamma`` (made so by :func:`expert_epilogue`, so that
    the tensors saved for backward are this Function's own inputs). Under ``create_graph=True`` the
    gradients are those of :func:`_reference` (:mod:`medmoe.nn.higher_order`), differentiable again.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, t: Tensor, bias: Tensor, gamma: Tensor, scale: float, eps: float, p: float, seed: int
    ) -> Tensor:
        experts, features = gamma.shape
        rows = t.numel() // features
        out = torch.empty_like(t)
        norms = t.new_empty((rows,))
        drop = int(p > 0.0)
        args = (scale, eps, drop, seed, drop_threshold(p) if drop else 0, 1.0 / (1.0 - p))
        getattr(_lib(), f"epilogue_forward_{_SCALARS[t.dtype][0]}")(
            t.data_ptr(),
            bias.data_ptr(),
            gamma.data_ptr(),
            out.data_ptr(),
            norms.data_ptr(),
            rows,
            experts,
            features,
            *args,
            torch.get_num_threads(),
        )
        ctx.save_for_backward(t, bias, gamma, norms)  # x = t + bias is recomputed, not stored
        ctx.args = args
        ctx.reference_args = (scale, eps, p, seed)
        return out

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        t, bias, gamma, norms = ctx.saved_tensors
        if higher_order_requested():  # create_graph=True: the modules' gradients, differentiable again
            inputs = (t, bias, gamma, *ctx.reference_args)
            grads = reference_gradients(_reference, inputs, ctx.needs_input_grad, dout)
            return (*grads[:3], None, None, None, None)
        experts, features = gamma.shape
        dout = dout.contiguous()
        dt = torch.empty_like(t)
        dbias, dgamma = torch.empty_like(bias), torch.empty_like(gamma)
        getattr(_lib(), f"epilogue_backward_{_SCALARS[t.dtype][0]}")(
            dout.data_ptr(),
            t.data_ptr(),
            bias.data_ptr(),
            norms.data_ptr(),
            gamma.data_ptr(),
            dt.data_ptr(),
            dbias.data_ptr(),
            dgamma.data_ptr(),
            norms.numel(),
            experts,
            features,
            *ctx.args,
            torch.get_num_threads(),
        )
        return dt, dbias, dgamma, None, None, None, None


def _reference(
    t: Tensor, bias: Tensor, gamma: Tensor, scale: float, eps: float, p: float, seed: int
) -> Tensor:
    """The kernel's maths in PyTorch ops: ``MammothExperts``' modules with the kernel's dropout mask."""
    flat = (t + bias).reshape(*t.shape[:-2], gamma.shape[1])
    out = F.relu(l2norm(flat, eps=eps) * scale * gamma).reshape(t.shape)
    if p == 0.0:
        return out
    if not native_dropout_available():  # the mask is the dropout kernel's; nothing else can redraw it
        raise RuntimeError("expert_epilogue: create_graph=True with dropout needs the native dropout kernel")
    return _SeededDropout.apply(out, p, seed)


def expert_epilogue(
    t: Tensor, bias: Tensor, gamma: Tensor, scale: float, p: float, eps: float = 1e-8
) -> Tensor | None:
    """``dropout(relu(l2norm(t + bias) * scale * gamma), p)`` on the fused kernel, or ``None`` where it does not apply.

    Args:
        t: ``(..., E, H, d)`` expert projections without their bias.
        bias: ``(E, H, d)``.
        gamma: ``(E, H * d)`` per-expert gain.
        scale: ``sqrt(H * d)``.
        p: dropout probability (pass 0 in eval); the mask is drawn as :func:`fast_dropout` draws it.
        eps: the norm's lower clamp.

    Returns:
        ``(..., E, H, d)`` (contiguous), or ``None``: then compute it with the modules.
    """
    experts, features = gamma.shape
    if not (
        t.device.type == "cpu"
        and t.dtype in _SCALARS
        and bias.dtype == gamma.dtype == t.dtype
        and bias.device.type == gamma.device.type == "cpu"
        and t.dim() >= 3
        and t.shape[-3] == experts
        and t.shape[-2] * t.shape[-1] == features
        and bias.shape == t.shape[-3:]
        and t.numel() > 0
        and 0.0 <= p < 1.0
        and not torch.is_autocast_enabled("cpu")
        and native_expert_epilogue_available()
    ):
        return None
    seed = draw_seed() if p > 0.0 else 0
    return _ExpertEpilogue.apply(
        t.contiguous(), bias.contiguous(), gamma.contiguous(), float(scale), float(eps), float(p), seed
    )
