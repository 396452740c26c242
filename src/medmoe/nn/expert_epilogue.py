"""Mammoth's expert epilogue ``dropout(relu(ExpertWiseRMSNorm(t + bias)))`` fused into one CPU kernel.

After the factorised expert projection, Mammoth adds the per-expert bias, RMS-normalises each expert's
``heads * head_dim`` features with a per-expert gain, applies ReLU and dropout. PyTorch evaluates that as a
dozen separate passes over ``(b, S, E, H, d)`` tensors, each allocating a fresh output: with DTFD-MIL's eight
pseudo-bags through Mammoth most of an expert block's time (docs/performance-notes.md). ``kernels/expert_epilogue.cpp``
does it in one pass forward and one backward (with the bias and gain gradients reduced per expert), and draws
the dropout mask exactly as :func:`medmoe.nn.dropout.fast_dropout` does (same seed, same words), so fused and
unfused paths drop the same elements.

The operation is the custom operator ``torch.ops.medmoe.expert_epilogue`` (with
``medmoe::expert_epilogue_backward`` as its registered gradient). Without a C++ compiler the operators compute
the same function with PyTorch ops (same dropout masks). Where the fused path does not apply (the torch
backend, GPU, dtypes other than float32/float64, autocast) :func:`expert_epilogue` returns ``None`` and the
caller runs the modules.
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .backend import native_enabled
from .dropout import counter_dropout, draw_seed, drop_threshold, torch_counter_dropout
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


def _kernel_applies(t: Tensor) -> bool:
    return native_enabled() and native_expert_epilogue_available()


def _torch_forward(
    t: Tensor, bias: Tensor, gamma: Tensor, scale: float, eps: float, p: float, seed: int
) -> tuple[Tensor, Tensor]:
    """The operator with PyTorch ops: the output and the per-row norms ``||t + bias||``."""
    out = _reference(t, bias, gamma, scale, eps, p, seed).contiguous()
    norms = (t + bias).reshape(-1, gamma.shape[1]).norm(dim=-1)
    return out, norms


@torch.library.custom_op("medmoe::expert_epilogue", mutates_args=())
def _epilogue_op(
    t: Tensor, bias: Tensor, gamma: Tensor, scale: float, eps: float, p: float, seed: int
) -> tuple[Tensor, Tensor]:
    """``(dropout(relu(l2norm(t + bias) * scale * gamma)), ||t + bias|| per (row, expert))`` on contiguous
    ``t (..., E, H, d)``, ``bias (E, H, d)``, ``gamma (E, H * d)``; the norms ``(rows,)`` serve the backward."""
    if not _kernel_applies(t):
        return _torch_forward(t, bias, gamma, scale, eps, p, seed)
    experts, features = gamma.shape
    rows = t.numel() // features
    out = torch.empty_like(t)
    norms = t.new_empty((rows,))
    getattr(_lib(), f"epilogue_forward_{_SCALARS[t.dtype][0]}")(
        t.data_ptr(),
        bias.data_ptr(),
        gamma.data_ptr(),
        out.data_ptr(),
        norms.data_ptr(),
        rows,
        experts,
        features,
        *_kernel_args(scale, eps, p, seed),
        torch.get_num_threads(),
    )
    return out, norms


@_epilogue_op.register_fake
def _(
    t: Tensor, bias: Tensor, gamma: Tensor, scale: float, eps: float, p: float, seed: int
) -> tuple[Tensor, Tensor]:
    return torch.empty_like(t), t.new_empty((t.numel() // gamma.shape[1],))


@torch.library.custom_op("medmoe::expert_epilogue_backward", mutates_args=())
def _epilogue_backward_op(
    dout: Tensor,
    t: Tensor,
    bias: Tensor,
    gamma: Tensor,
    norms: Tensor,
    scale: float,
    eps: float,
    p: float,
    seed: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients ``(dt, dbias, dgamma)`` of :func:`_epilogue_op`'s output for ``dout`` (contiguous)."""
    if not _kernel_applies(t):
        return _torch_backward(dout, t, bias, gamma, scale, eps, p, seed)
    experts, features = gamma.shape
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
        *_kernel_args(scale, eps, p, seed),
        torch.get_num_threads(),
    )
    return dt, dbias, dgamma


def _torch_backward(
    dout: Tensor, t: Tensor, bias: Tensor, gamma: Tensor, scale: float, eps: float, p: float, seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The kernel's backward with PyTorch ops (autograd does not run inside an operator), per row ``x = t + bias``:
    ``r = scale / max(|x|, eps)``, ``y = r x gamma``, ``dy = mask dout [y > 0]``, ``dgamma = sum dy r x``,
    ``dx = r gamma dy - [|x| > eps] r (dy . gamma x) / |x|^2 x``; ``dbias`` sums ``dx`` over rows."""
    experts, features = gamma.shape
    x = (t + bias).reshape(-1, experts, features)
    norm = x.norm(dim=-1, keepdim=True)
    r = scale / norm.clamp_min(eps)
    y = x * r * gamma
    dz = torch_counter_dropout(dout, p, seed) if p > 0.0 else dout
    dy = dz.reshape(x.shape) * (y > 0)
    dgamma = (dy * x * r).sum(0)
    vx = (dy * gamma * x).sum(-1, keepdim=True)
    c = torch.where(norm > eps, r * vx / norm.square(), torch.zeros_like(norm))
    dx = dy * gamma * r - c * x
    return dx.reshape(t.shape).contiguous(), dx.sum(0).reshape(bias.shape), dgamma


@_epilogue_backward_op.register_fake
def _(
    dout: Tensor,
    t: Tensor,
    bias: Tensor,
    gamma: Tensor,
    norms: Tensor,
    scale: float,
    eps: float,
    p: float,
    seed: int,
) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(t), torch.empty_like(bias), torch.empty_like(gamma)


def _kernel_args(scale: float, eps: float, p: float, seed: int) -> tuple[Any, ...]:
    drop = int(p > 0.0)
    return (scale, eps, drop, seed, drop_threshold(p) if drop else 0, 1.0 / (1.0 - p))


def _epilogue_setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    t, bias, gamma, *rest = inputs
    ctx.save_for_backward(t, bias, gamma, output[1])  # x = t + bias is recomputed, not stored
    ctx.rest = tuple(rest)


def _epilogue_backward(ctx: Any, dout: Tensor, _: Tensor | None) -> tuple[Tensor | None, ...]:
    t, bias, gamma, norms = ctx.saved_tensors
    if higher_order_requested():  # create_graph=True: the modules' gradients, differentiable again
        grads = reference_gradients(_reference, (t, bias, gamma, *ctx.rest), ctx.needs_input_grad, dout)
        return (*grads[:3], None, None, None, None)
    dt, dbias, dgamma = _epilogue_backward_op(dout.contiguous(), t, bias, gamma, norms, *ctx.rest)
    return dt, dbias, dgamma, None, None, None, None


_epilogue_op.register_autograd(_epilogue_backward, setup_context=_epilogue_setup_context)


def _reference(
    t: Tensor, bias: Tensor, gamma: Tensor, scale: float, eps: float, p: float, seed: int
) -> Tensor:
    """The kernel's maths in PyTorch ops: ``MammothExperts``' modules with the kernel's dropout mask."""
    flat = (t + bias).reshape(*t.shape[:-2], gamma.shape[1])
    out = F.relu(l2norm(flat, eps=eps) * scale * gamma).reshape(t.shape)
    if p == 0.0:
        return out
    return counter_dropout(out, p, seed)


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
        and native_enabled()
    ):
        return None
    seed = draw_seed() if p > 0.0 else 0
    out, _ = _epilogue_op(
        t.contiguous(), bias.contiguous(), gamma.contiguous(), float(scale), float(eps), float(p), seed
    )
    return out
