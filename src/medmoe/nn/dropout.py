"""Counter-based dropout: the mask of element ``i`` is a pure function of a per-call seed and ``i``.

Element ``i`` is kept when the ``i``-th word of the SplitMix64 stream of a per-call seed is at least
``round(p * 2**32)`` (``kernels/splitmix64.h``); kept values are scaled by ``1 / (1 - p)`` as
:func:`torch.nn.functional.dropout` does. No mask is stored for the backward pass (it is the same operation on
the gradient with the same seed) and the result does not depend on the number of threads.

The operation is the custom operator ``torch.ops.medmoe.counter_dropout``. On CPU float32/float64 with the
native backend it runs on a compiled kernel (``kernels/dropout.cpp``, much faster than ``bernoulli_``);
everywhere else (no C++ compiler, GPU, other dtypes) it computes the very same words with PyTorch integer ops,
so **a seeded run draws the same masks with and without a compiler**. The seed is drawn from PyTorch's
default CPU generator (:func:`draw_seed`), so ``torch.manual_seed`` makes training repeatable and activation
checkpointing (which restores the generator before recomputing) sees the same mask.

Under the ``"torch"`` backend (:mod:`medmoe.nn.backend`) and for tensors on other devices (GPUs, whose fused
dropout is faster than computing the words) :func:`fast_dropout` is :func:`torch.nn.functional.dropout` itself.
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backend import apply_backend, native_enabled
from .native_kernels import load_kernel

__all__ = [
    "FastDropout",
    "counter_dropout",
    "draw_seed",
    "drop_threshold",
    "dropout_words",
    "fast_dropout",
    "native_dropout_available",
    "torch_counter_dropout",
    "use_fast_dropout",
]

_KERNEL = "dropout"
_FUNCTIONS = {torch.float32: ("dropout_f32", ctypes.c_float), torch.float64: ("dropout_f64", ctypes.c_double)}


_SIGNATURES = {
    name: (
        [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_uint64,
            ctypes.c_uint32,
            scalar,
            ctypes.c_int,
        ],
        None,
    )
    for name, scalar in _FUNCTIONS.values()
}


def _lib() -> ctypes.CDLL | None:
    return load_kernel(_KERNEL, _SIGNATURES)


def native_dropout_available() -> bool:
    """Whether the compiled dropout kernel can be used on this machine (builds it on first call)."""
    return _lib() is not None


def draw_seed() -> int:
    """A mask seed from PyTorch's default CPU generator (so ``torch.manual_seed`` fixes the masks)."""
    return int(torch.randint(0, 2**62, (), dtype=torch.int64))


def drop_threshold(p: float) -> int:
    """Element ``i`` is dropped when its 32-bit word is below this: ``round(p * 2**32)``."""
    return min(round(p * 2.0**32), 2**32 - 1)


def _signed(c: int) -> int:
    """A 64-bit unsigned constant as the int64 with the same bits."""
    return c - (1 << 64) if c >= (1 << 63) else c


_GAMMA, _MIX1, _MIX2 = (_signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _shift_right(z: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 bit patterns (torch's ``>>`` is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def dropout_words(seed: int, numel: int, device: torch.device | str = "cpu") -> Tensor:
    """The 32-bit words ``dropout_word(seed, i)`` of ``kernels/splitmix64.h`` for ``i < numel``, as int64.

    PyTorch integer ops with wrapping int64 products: bit for bit the compiled kernels' words.
    """
    z = torch.arange(1, numel + 1, dtype=torch.int64, device=device)
    z.mul_(_GAMMA).add_(_signed(seed % (1 << 64)))
    z = (z ^ _shift_right(z, 30)).mul_(_MIX1)
    z = (z ^ _shift_right(z, 27)).mul_(_MIX2)
    z ^= _shift_right(z, 31)
    return _shift_right(z, 32)


def torch_counter_dropout(x: Tensor, p: float, seed: int) -> Tensor:
    """The kernel's result with PyTorch ops: ``x * (keep ? 1 / (1 - p) : 0)`` (NaN stays NaN, as ``x * mask``)."""
    keep = dropout_words(seed, x.numel(), x.device) >= drop_threshold(p)
    # the kernel's factor: exactly 0 or 1 / (1 - p) in x's dtype
    scale = keep.to(x.dtype).mul_(1.0 / (1.0 - p))
    return (x.contiguous().reshape(-1) * scale).reshape(x.shape)


def _masked(x: Tensor, p: float, seed: int) -> Tensor:
    """``x * keep(seed) / (1 - p)`` on the kernel; ``x`` contiguous CPU float32/float64, the kernel built."""
    name, _ = _FUNCTIONS[x.dtype]
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    getattr(_lib(), name)(
        x.data_ptr(),
        out.data_ptr(),
        x.numel(),
        seed,
        drop_threshold(p),
        1.0 / (1.0 - p),
        torch.get_num_threads(),
    )
    return out


def _kernel_applies(x: Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype in _FUNCTIONS
        and x.numel() > 0
        and native_enabled()
        and native_dropout_available()
    )


@torch.library.custom_op("medmoe::counter_dropout", mutates_args=())
def counter_dropout(x: Tensor, p: float, seed: int) -> Tensor:
    """``x * keep(seed, i) / (1 - p)``, ``keep(seed, i) = word(seed, i) >= round(p * 2**32)``; any shape and device.

    Args:
        x: any shape; ``i`` counts its elements in row-major order.
        p: drop probability in ``[0, 1)``.
        seed: the stream's key, ``0 <= seed < 2**63``.

    Returns:
        a contiguous tensor of ``x``'s shape. The same on the compiled kernel and on PyTorch ops.
    """
    if _kernel_applies(x):
        return _masked(x.contiguous(), p, seed)
    return torch_counter_dropout(x, p, seed)


@counter_dropout.register_fake
def _(x: Tensor, p: float, seed: int) -> Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _dropout_setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    ctx.p, ctx.seed = inputs[1], inputs[2]


def _dropout_backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
    # the same mask and scale on the gradient; the operator is linear in x, so this is differentiable again
    return counter_dropout(grad, ctx.p, ctx.seed), None, None


counter_dropout.register_autograd(_dropout_backward, setup_context=_dropout_setup_context)


def fast_dropout(x: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Dropout with the semantics of :func:`torch.nn.functional.dropout`, on :func:`counter_dropout` for CPU
    tensors under the native backend (:func:`F.dropout` on other devices and under the torch backend).

    Args:
        x: any shape.
        p: drop probability in ``[0, 1]``.
        training: identity when False.
        inplace: honoured under the torch backend only; the counter path always returns a new tensor.

    Returns:
        a tensor of ``x``'s shape.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0 or x.numel() == 0 or x.device.type != "cpu" or not native_enabled():
        return F.dropout(x, p, training, inplace)  # GPUs: their own fused dropout is faster than the words
    return counter_dropout(x, float(p), draw_seed())


class FastDropout(nn.Dropout):
    """:class:`torch.nn.Dropout` computed with :func:`fast_dropout` (same arguments, same ``repr``).

    Shapes: any -> the same.
    """

    def forward(self, x: Tensor) -> Tensor:
        return fast_dropout(x, self.p, self.training, self.inplace)


def use_fast_dropout(module: nn.Module) -> nn.Module:
    """Replace every plain :class:`torch.nn.Dropout` inside ``module`` by a :class:`FastDropout` (native backend).

    Dropout layers hold no parameters or state, so the replacement is exact; subclasses are left alone.
    Returns ``module`` (or its replacement when ``module`` itself is an ``nn.Dropout``); under the torch
    backend ``module`` unchanged. See :func:`medmoe.nn.backend.apply_backend`.
    """
    return apply_backend(module, layers=("dropout",))
