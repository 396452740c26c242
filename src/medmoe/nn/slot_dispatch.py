"""Mammoth's dispatch, "slots attend to patches" with the patches as keys and values, on a fused CPU kernel.

``slot_dispatch(keys, x, mask)`` computes, per batch row ``b`` and head ``h``::

    z[b, h, i] = sum_j softmax_j(<keys[h, i], x[b, h, j]>) x[b, h, j]       (scale 1, softmax over patches)

which is ``scaled_dot_product_attention(keys, x, x, scale=1)``. On CPU, in float32, with a head size of 16
(Mammoth's default: slot_dim 256 / 16 heads) it runs the compiled kernel ``kernels/slot_dispatch.cpp``
(see :mod:`medmoe.nn.native_kernels`): forward as an online softmax with the output block in registers,
backward without PyTorch's separate key and value gradients (``x`` is both, so one pass gives their sum)
and without zero-filled ``(b, h, n, 16)`` buffers; faster than PyTorch's flash attention at Mammoth's sizes
(docs/performance-notes.md). The kernel is the custom operator ``torch.ops.medmoe.slot_dispatch`` (its gradient
``medmoe::slot_dispatch_backward``). Anywhere else (GPU, other dtypes or head sizes, no compiler, the torch
backend) it is the SDPA call itself.

Shapes: ``keys (h, s, 16)``; ``x (b, h, n, 16)`` (any strides with the last dimension contiguous, e.g. the
transposed view of ``(b, n, h, 16)`` features); ``mask (b, n)`` bool, True = real patch, or ``None``.
Output ``(b, h, s, 16)``.
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from .backend import native_enabled
from .higher_order import higher_order_requested, reference_gradients
from .native_kernels import load_kernel

__all__ = ["native_slot_dispatch_available", "slot_dispatch"]

_KERNEL = "slot_dispatch"
_HEAD_DIM = 16


_i64, _ptr, _int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
_SIGNATURES = {
    "slot_dispatch_forward": ([_i64] * 4 + [_ptr] + [_i64] * 3 + [_ptr] * 5 + [_int], _int),
    "slot_dispatch_backward": ([_i64] * 4 + [_ptr] + [_i64] * 3 + [_ptr] * 8 + [_int], _int),
}


def _lib() -> ctypes.CDLL | None:
    return load_kernel(_KERNEL, _SIGNATURES)


def native_slot_dispatch_available() -> bool:
    """Whether the compiled kernel can be used on this machine (builds it on first call)."""
    return _lib() is not None


def _check(status: int) -> None:
    if status != 0:
        raise MemoryError("slot_dispatch: the native kernel could not allocate its work buffers (about 0.2 MB "
                          "per thread); free memory or set MEDMOE_BACKEND=torch")


def _patch_index(mask: Tensor | None, b: int, n: int) -> tuple[Tensor, Tensor]:
    """``(idx (b, n) int64, count (b,) int64)``: the real patches of each row first, in order."""
    if mask is None:
        return torch.arange(n, dtype=torch.int64).expand(b, n).contiguous(), torch.full((b,), n, dtype=torch.int64)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # real patches first, order kept
    return order.to(torch.int64).contiguous(), mask.sum(1).to(torch.int64).contiguous()


@torch.library.custom_op("medmoe::slot_dispatch", mutates_args=())
def _dispatch_op(keys: Tensor, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(z (b, h, s, 16), lse (b, h, s))`` on the kernel: contiguous ``keys (h, s, 16)``, ``x (b, h, n, 16)``
    dense with a contiguous last dimension (e.g. the transposed view of ``(b, n, h, 16)``)."""
    b, h, n, d = x.shape
    s = keys.shape[1]
    if not _kernel_ready():
        logits = torch.einsum("hsd,bhnd->bhsn", keys, x)
        if mask is not None:
            logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
        return _sdpa(keys, x, mask).contiguous(), logits.logsumexp(-1)
    xt = x.transpose(1, 2)  # (b, n, h, d) view: the kernel's stride convention
    idx, count = _patch_index(mask, b, n)
    z = torch.empty(b, h, s, d, dtype=x.dtype)
    lse = torch.empty(b, h, s, dtype=x.dtype)
    sb, sn, sh, _ = xt.stride()
    status = _lib().slot_dispatch_forward(  # type: ignore[union-attr]
        b, h, s, n, xt.data_ptr(), sb, sn, sh, keys.data_ptr(), idx.data_ptr(), count.data_ptr(),
        z.data_ptr(), lse.data_ptr(), torch.get_num_threads(),
    )
    _check(status)
    return z, lse


@_dispatch_op.register_fake
def _(keys: Tensor, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    b, h = x.shape[:2]
    s, d = keys.shape[1:]
    return x.new_empty((b, h, s, d)), x.new_empty((b, h, s))


@torch.library.custom_op("medmoe::slot_dispatch_backward", mutates_args=())
def _dispatch_backward_op(
    dz: Tensor, keys: Tensor, x: Tensor, z: Tensor, lse: Tensor, mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``(dkeys (h, s, 16), dx)`` of :func:`_dispatch_op` for a contiguous ``dz``; ``dx`` has ``x``'s strides."""
    b, h, n, d = x.shape
    s = keys.shape[1]
    if not _kernel_ready():  # softmax attention's gradients by hand (x is both keys and values)
        logits = torch.einsum("hsd,bhnd->bhsn", keys, x)
        probs = (logits - lse[..., None]).exp()
        if mask is not None:
            probs = probs.masked_fill(~mask[:, None, None, :], 0.0)
        dp = torch.einsum("bhsd,bhnd->bhsn", dz, x)
        dlogits = probs * (dp - (dz * z).sum(-1, keepdim=True))
        dk = torch.einsum("bhsn,bhnd->hsd", dlogits, x)
        dx = torch.einsum("bhsn,hsd->bhnd", dlogits, keys) + torch.einsum("bhsn,bhsd->bhnd", probs, dz)
        out = torch.empty_like(x)
        out.copy_(dx)
        return dk, out
    delta = (dz * z).sum(-1)  # (b, h, s)
    xt = x.transpose(1, 2)
    idx, count = _patch_index(mask, b, n)
    alloc = torch.zeros_like if mask is not None else torch.empty_like  # padded patches' rows stay zero
    dxt = alloc(xt)
    dk = torch.empty(b, h, s, d, dtype=x.dtype)
    sb, sn, sh, _ = xt.stride()
    status = _lib().slot_dispatch_backward(  # type: ignore[union-attr]
        b, h, s, n, xt.data_ptr(), sb, sn, sh, keys.data_ptr(), idx.data_ptr(), count.data_ptr(),
        dz.data_ptr(), lse.data_ptr(), delta.data_ptr(), dxt.data_ptr(), dk.data_ptr(), torch.get_num_threads(),
    )
    _check(status)
    return dk.sum(0), dxt.transpose(1, 2)


@_dispatch_backward_op.register_fake
def _(dz: Tensor, keys: Tensor, x: Tensor, z: Tensor, lse: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    return torch.empty_like(keys), torch.empty_like(x)


def _dispatch_setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    keys, x, mask = inputs
    ctx.save_for_backward(keys, x, output[0], output[1], mask)


def _dispatch_backward(ctx: Any, dz: Tensor, _: Tensor | None) -> tuple[Tensor | None, Tensor | None, None]:
    """The kernel's gradients; under ``create_graph=True`` those of :func:`_reference`, differentiable again."""
    keys, x, z, lse, mask = ctx.saved_tensors
    if higher_order_requested():
        needs = (*ctx.needs_input_grad[:2], False)
        dk, dx, _ = reference_gradients(_reference, (keys, x, mask), needs, dz)
        return dk, dx, None
    dk, dx = _dispatch_backward_op(dz.contiguous(), keys, x, z, lse, mask)
    return dk, dx, None


_dispatch_op.register_autograd(_dispatch_backward, setup_context=_dispatch_setup_context)


def _kernel_ready() -> bool:
    return native_enabled() and native_slot_dispatch_available()


def _use_kernel(keys: Tensor, x: Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and keys.device.type == "cpu"
        and x.dtype == keys.dtype == torch.float32
        and x.dim() == 4
        and keys.dim() == 3
        and x.shape[-1] == _HEAD_DIM
        and keys.shape[-1] == _HEAD_DIM
        and keys.shape[0] == x.shape[1]
        and x.stride(-1) == 1
        and x.shape[2] > 0
        and not torch.is_autocast_enabled("cpu")
        and _kernel_ready()
    )


def slot_dispatch(keys: Tensor, x: Tensor, mask: Tensor | None = None) -> Tensor:
    """``softmax_n(keys x^T) x`` per head: ``keys (h, s, d)``, ``x (b, h, n, d)``, ``mask (b, n)`` -> ``(b, h, s, d)``.

    Uses the native kernel when it applies (see the module docstring), else
    :func:`torch.nn.functional.scaled_dot_product_attention` with ``scale=1``.
    """
    if _use_kernel(keys, x):
        xt = x.transpose(1, 2)
        if torch.empty_like(xt).stride() != xt.stride():  # x has gaps; the kernel writes dx with x's strides
            x = xt.contiguous().transpose(1, 2)
        mask = None if mask is None else mask.contiguous()
        return _dispatch_op(keys.contiguous(), x, mask)[0]
    return _sdpa(keys, x, mask)


def _sdpa(keys: Tensor, x: Tensor, mask: Tensor | None) -> Tensor:
    """The fallback: :func:`torch.nn.functional.scaled_dot_product_attention` with ``scale=1``."""
    b = x.shape[0]
    key_mask = None if mask is None else mask[:, None, None, :]
    return F.scaled_dot_product_attention(
        keys.unsqueeze(0).expand(b, -1, -1, -1), x, x, attn_mask=key_mask, scale=1.0
    )


def _reference(keys: Tensor, x: Tensor, mask: Tensor | None) -> Tensor:
    """:func:`_sdpa` on the math backend: differentiable twice, unlike the CPU flash kernel."""
    with sdpa_kernel(SDPBackend.MATH):
        return _sdpa(keys, x, mask)
