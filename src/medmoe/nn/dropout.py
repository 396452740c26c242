"""Fast dropout on CPU: a counter-based mask from a compiled kernel instead of Bernoulli sampling.

PyTorch draws CPU dropout masks with ``bernoulli_`` (Mersenne Twister, about 5 ns per element on a
2-core AMD EPYC), which made dropout 17 % of a Transformer+Mammoth training step and 15 % of DTFD+Mammoth.
:func:`fast_dropout` keeps element ``i`` when the ``i``-th word of the SplitMix64 stream of a per-call seed
is at least ``p * 2**32`` (``kernels/dropout.cpp``): about 10x faster, with no mask stored for the backward
pass (it is the same call on the gradient with the same seed) and the same result for any thread count.

The seed is drawn from PyTorch's default CPU generator, so ``torch.manual_seed`` makes training repeatable
and activation checkpointing (which restores the generator before recomputing) sees the same mask. The
keep probability is ``1 - p`` to within ``2**-32`` and kept values are scaled by ``1 / (1 - p)``, as
:func:`torch.nn.functional.dropout`.

Where the kernel does not apply (GPU, dtypes other than float32/float64, no C++ compiler,
``MEDMOE_NATIVE_KERNELS=0``) it is :func:`torch.nn.functional.dropout` itself: same distribution, a
different random stream, so a seeded run on such a machine draws other masks than one with the kernel.
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .native_kernels import load_kernel

__all__ = [
    "FastDropout",
    "draw_seed",
    "drop_threshold",
    "fast_dropout",
    "native_dropout_available",
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
    """The kernels drop element ``i`` when its 32-bit word is below this: ``round(p * 2**32)``."""
    return min(round(p * 2.0**32), 2**32 - 1)


def _masked(x: Tensor, p: float, seed: int) -> Tensor:
    """``x * keep(seed) / (1 - p)`` on the kernel; ``x`` contiguous CPU float32/float64."""
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


class _SeededDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, p: float, seed: int) -> Tensor:  # type: ignore[override]
        ctx.p, ctx.seed = p, seed
        return _masked(x.contiguous(), p, seed)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        # The same mask and scale on the gradient; through apply, so double backward works too.
        return _SeededDropout.apply(grad.contiguous(), ctx.p, ctx.seed), None, None


def _kernel_applies(x: Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in _FUNCTIONS and x.numel() > 0 and native_dropout_available()


def fast_dropout(x: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Dropout with the semantics of :func:`torch.nn.functional.dropout`, on the fast CPU kernel when it applies.

    Args:
        x: any shape.
        p: drop probability in ``[0, 1]``.
        training: identity when False.
        inplace: honoured on the fallback path only; the kernel path always returns a new tensor.

    Returns:
        a tensor of ``x``'s shape (contiguous on the kernel path).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0 or not _kernel_applies(x):
        return F.dropout(x, p, training, inplace)
    return _SeededDropout.apply(x, float(p), draw_seed())


class FastDropout(nn.Dropout):
    """:class:`torch.nn.Dropout` computed with :func:`fast_dropout` (same arguments, same ``repr``).

    Shapes: any -> the same.
    """

    def forward(self, x: Tensor) -> Tensor:
        return fast_dropout(x, self.p, self.training, self.inplace)


def use_fast_dropout(module: nn.Module) -> nn.Module:
    """Turn every plain :class:`torch.nn.Dropout` inside ``module`` into a :class:`FastDropout`, in place.

    Only the class changes (dropout layers have no parameters or state), subclasses are left alone.
    Returns ``module``.
    """
    for sub in module.modules():
        if type(sub) is nn.Dropout:
            sub.__class__ = FastDropout
    return module
