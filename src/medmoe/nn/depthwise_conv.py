"""Depthwise 2-D convolutions on channels-last token grids, and the pyramid position encoding built from them.

TransMIL's and RRT-MIL's PPEG lay the tokens ``(b, t, c)`` on a square grid and add depthwise convolutions
with 7 x 7, 5 x 5 and 3 x 3 kernels plus the identity. PyTorch's CPU depthwise convolution backward is slow
for these maps (a large share of a TransMIL training step; docs/performance-notes.md). Here:

* the convolutions and the identity are folded into one 7 x 7 kernel (``w7 + pad(w5) + pad(w3) + delta``,
  biases summed): the same linear map, one convolution instead of three, and the gradients of the three
  kernels follow through the fold by autograd;
* on CPU in float32/float64 that convolution runs on a compiled channels-last kernel
  (``kernels/depthwise_conv.cpp``, the custom operator ``torch.ops.medmoe.depthwise_conv_nhwc``) reading the
  tokens where they are (no transpose to ``(b, c, h, w)``); elsewhere (GPU, other dtypes, no C++ compiler,
  the torch backend) it is :func:`F.conv2d`.

Results equal the three separate convolutions up to floating-point summation order.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backend import native_enabled
from .higher_order import higher_order_requested, reference_gradients
from .native_kernels import Signature, load_kernel

__all__ = [
    "depthwise_conv2d_nhwc",
    "folded_depthwise_kernel",
    "head_sequence_conv",
    "native_depthwise_conv_available",
]

_KERNEL = "depthwise_conv"
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


_ARGS = {"forward": 4, "backward_input": 3, "backward_weight": 4}  # pointer arguments per function
_SIGNATURES: dict[str, Signature] = {
    f"dwconv_{name}_{suffix}": ([ctypes.c_void_p] * pointers + [ctypes.c_int64] * 6 + [ctypes.c_int], None)
    for name, pointers in _ARGS.items()
    for suffix in _SUFFIX.values()
}


def _lib() -> ctypes.CDLL | None:
    return load_kernel(_KERNEL, _SIGNATURES)


def native_depthwise_conv_available() -> bool:
    """Whether the compiled kernel can be used on this machine (builds it on first call)."""
    return _lib() is not None


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _kernel_ready(x: Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in _SUFFIX and native_enabled() and native_depthwise_conv_available()


@torch.library.custom_op("medmoe::depthwise_conv_nhwc", mutates_args=())
def _conv_op(x: Tensor, taps: Tensor, bias: Tensor | None) -> Tensor:
    """Depthwise "same" convolution of contiguous ``x (b, h, w, c)`` with ``taps (kh, kw, c)`` (+ ``bias (c,)``)
    -> ``(b, h, w, c)``: the compiled kernel, else the same with :func:`F.conv2d`."""
    if not _kernel_ready(x):
        return _conv2d_taps(x, taps, bias).contiguous()
    b, h, w, c = x.shape
    kh, kw = taps.shape[:2]
    y = torch.empty_like(x)
    getattr(_lib(), f"dwconv_forward_{_SUFFIX[x.dtype]}")(
        x.data_ptr(), taps.data_ptr(), _ptr(bias), y.data_ptr(), b, h, w, c, kh, kw, torch.get_num_threads()
    )
    return y


@_conv_op.register_fake
def _(x: Tensor, taps: Tensor, bias: Tensor | None) -> Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("medmoe::depthwise_conv_nhwc_backward", mutates_args=())
def _conv_backward_op(dy: Tensor, x: Tensor, taps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx (b, h, w, c), dtaps (kh, kw, c), dbias (c,))`` of :func:`_conv_op` for a contiguous ``dy``."""
    if not _kernel_ready(x):
        kh, kw = taps.shape[:2]
        weight = taps.permute(2, 0, 1).unsqueeze(1)  # (c, 1, kh, kw)
        x_nchw, dy_nchw = x.permute(0, 3, 1, 2), dy.permute(0, 3, 1, 2)
        pad, groups = (kh // 2, kw // 2), x.shape[-1]
        dx = torch.nn.grad.conv2d_input(x_nchw.shape, weight, dy_nchw, padding=pad, groups=groups)
        dw = torch.nn.grad.conv2d_weight(x_nchw, weight.shape, dy_nchw, padding=pad, groups=groups)
        return dx.permute(0, 2, 3, 1).contiguous(), dw.squeeze(1).permute(1, 2, 0).contiguous(), dy.sum((0, 1, 2))
    b, h, w, c = x.shape
    kh, kw = taps.shape[:2]
    suffix, threads, lib = _SUFFIX[x.dtype], torch.get_num_threads(), _lib()
    dx, dtaps, dbias = torch.empty_like(x), torch.empty_like(taps), x.new_empty((c,))
    getattr(lib, f"dwconv_backward_input_{suffix}")(
        dy.data_ptr(), taps.data_ptr(), dx.data_ptr(), b, h, w, c, kh, kw, threads
    )
    getattr(lib, f"dwconv_backward_weight_{suffix}")(
        dy.data_ptr(), x.data_ptr(), dtaps.data_ptr(), dbias.data_ptr(), b, h, w, c, kh, kw, threads
    )
    return dx, dtaps, dbias


@_conv_backward_op.register_fake
def _(dy: Tensor, x: Tensor, taps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(x), torch.empty_like(taps), x.new_empty((x.shape[-1],))


def _conv_setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    x, taps, bias = inputs
    ctx.save_for_backward(x, taps)
    ctx.has_bias = bias is not None


def _conv_backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The kernels' gradients; under ``create_graph=True`` those of :func:`F.conv2d`, differentiable again."""
    x, taps = ctx.saved_tensors
    want_b = ctx.has_bias and ctx.needs_input_grad[2]
    if higher_order_requested():
        dx, dtaps = reference_gradients(_conv2d_taps, (x, taps), ctx.needs_input_grad[:2], dy)
        return dx, dtaps, dy.sum((0, 1, 2)) if want_b else None
    dx, dtaps, dbias = _conv_backward_op(dy.contiguous(), x, taps)
    return (
        dx if ctx.needs_input_grad[0] else None,
        dtaps if ctx.needs_input_grad[1] else None,
        dbias if want_b else None,
    )


_conv_op.register_autograd(_conv_backward, setup_context=_conv_setup_context)


def _kernel_applies(*tensors: Tensor | None) -> bool:
    present = [t for t in tensors if t is not None]
    return (
        all(t.device.type == "cpu" and t.dtype == present[0].dtype for t in present)
        and present[0].dtype in _SUFFIX
        and present[0].numel() > 0
        and not torch.is_autocast_enabled("cpu")
        and native_enabled()
        and native_depthwise_conv_available()
    )


def depthwise_conv2d_nhwc(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Depthwise convolution, stride 1, zero "same" padding, on a channels-last map.

    Args:
        x: ``(b, h, w, c)`` (e.g. a ``(b, h * w, c)`` token tensor viewed as a grid).
        weight: ``(c, kh, kw)`` or ``nn.Conv2d``'s ``(c, 1, kh, kw)``, both sizes odd.
        bias: ``(c,)`` or ``None``.

    Returns:
        ``(b, h, w, c)``.
    """
    if weight.dim() == 4:
        weight = weight.squeeze(1)
    if (
        x.dim() != 4
        or weight.dim() != 3
        or weight.shape[0] != x.shape[-1]
        or not all(k % 2 for k in weight.shape[1:])
    ):
        raise ValueError(
            f"depthwise_conv2d_nhwc: expected x (b, h, w, c) and a kernel (c, kh, kw) with odd kh, kw, got x "
            f"{tuple(x.shape)} and weight {tuple(weight.shape)}"
        )
    if _kernel_applies(x, weight, bias):
        # the kernel's layouts, made here (tracked) so that the Function saves its own inputs
        bias_c = None if bias is None else bias.contiguous()
        return _conv_op(x.contiguous(), weight.permute(1, 2, 0).contiguous(), bias_c)
    return _conv2d_nhwc(x, weight, bias)


def _conv2d_nhwc(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The reference: :func:`F.conv2d` on ``x (b, h, w, c)``, ``weight (c, kh, kw)`` -> ``(b, h, w, c)``."""
    kh, kw = weight.shape[1:]
    y = F.conv2d(
        x.permute(0, 3, 1, 2), weight.unsqueeze(1), bias, padding=(kh // 2, kw // 2), groups=x.shape[-1]
    )
    return y.permute(0, 2, 3, 1)


def _conv2d_taps(x: Tensor, taps: Tensor, bias: Tensor | None = None) -> Tensor:
    """:func:`_conv2d_nhwc` with the kernel's ``taps (kh, kw, c)`` layout."""
    return _conv2d_nhwc(x, taps.permute(2, 0, 1), bias)


def head_sequence_conv(x: Tensor, conv: nn.Conv2d, identity: bool = False, use_bias: bool = True) -> Tensor:
    """``conv(x)`` for a per-head sequence convolution ``nn.Conv2d(h, h, (k, 1), padding=(k // 2, 0), groups=h)``.

    That layer (Nyström attention's residual on the values, RRT's EPEG) slides one ``k``-tap filter per head
    along the sequence, shared by all ``d`` features. On CPU it runs on the channels-last kernel with the
    ``h * d`` (head, feature) pairs as channels; elsewhere it is ``F.conv2d`` with the layer's parameters.

    Args:
        x: ``(b, h, n, d)``.
        conv: the layer (its parameters are used, gradients reach them).
        identity: return ``x + conv(x)`` (one pass: 1 is added to the centre tap).
        use_bias: add the layer's bias (if it has one).

    Returns:
        ``(b, h, n, d)``.
    """
    b, h, n, d = x.shape
    k = conv.kernel_size[0]
    if (
        conv.groups != h
        or conv.in_channels != h
        or conv.out_channels != h
        or conv.kernel_size != (k, 1)
        or conv.padding != (k // 2, 0)
        or conv.stride != (1, 1)
        or conv.dilation != (1, 1)
        or k % 2 == 0
    ):
        raise ValueError(
            f"head_sequence_conv: {conv} is not a per-head (k, 1) 'same' convolution over {h} heads"
        )
    taps = conv.weight.reshape(h, k)
    if identity:
        taps = taps + F.one_hot(torch.tensor(k // 2), k).to(taps)  # (h, k)
    bias = conv.bias if use_bias else None
    if not _kernel_applies(x, taps, bias):
        return F.conv2d(x, taps.view(h, 1, k, 1), bias, padding=(k // 2, 0), groups=h)
    # one channel per (head, feature); the sequence as the grid's width, where the kernel blocks its registers
    weight = taps.reshape(h, 1, k).expand(h, d, k).reshape(h * d, 1, k)
    bias = None if bias is None else bias.repeat_interleave(d)
    y = depthwise_conv2d_nhwc(x.permute(0, 2, 1, 3).reshape(b, 1, n, h * d), weight, bias)
    return y.view(b, n, h, d).permute(0, 2, 1, 3)


def folded_depthwise_kernel(
    convs: Sequence[nn.Conv2d], identity: bool = True
) -> tuple[Tensor, Tensor | None]:
    """One depthwise kernel ``(c, K, K)`` and bias equal to ``sum(conv(x) for conv in convs) (+ x)``.

    The convolutions must be depthwise, stride 1, with odd square kernels and "same" padding ``k // 2``;
    ``K`` is the largest kernel size, smaller kernels are zero-padded to it and the identity adds 1 at the
    centre tap. Differentiable: gradients reach every convolution's weight and bias.
    """
    if not convs:
        raise ValueError("folded_depthwise_kernel: give at least one depthwise convolution to fold")
    size = max(conv.kernel_size[0] for conv in convs)
    weight: Tensor | None = None
    bias: Tensor | None = None
    for conv in convs:
        k = conv.kernel_size[0]
        if (
            conv.kernel_size != (k, k)
            or k % 2 == 0
            or conv.stride != (1, 1)
            or conv.padding != (k // 2, k // 2)
            or conv.dilation != (1, 1)
            or conv.groups != conv.in_channels
            or conv.out_channels != conv.in_channels
        ):
            raise ValueError(
                f"folded_depthwise_kernel: {conv} is not a stride-1 'same' depthwise convolution"
            )
        pad = (size - k) // 2
        w = F.pad(conv.weight.squeeze(1), (pad, pad, pad, pad))
        weight = w if weight is None else weight + w
        if conv.bias is not None:
            bias = conv.bias if bias is None else bias + conv.bias
    assert weight is not None  # convs is not empty
    if identity:
        centre = torch.zeros(size, size, dtype=weight.dtype, device=weight.device)
        centre[size // 2, size // 2] = 1.0
        weight = weight + centre
    return weight, bias
