"""Higher-order gradients for custom autograd Functions whose fast backward autograd cannot differentiate.

Several :class:`torch.autograd.Function` s in :mod:`medmoe.nn` compute their gradients with operations that
have no derivative of their own: oneDNN calls (:func:`medmoe.nn.backend.onednn_linear`), compiled kernels
called through ctypes, hand-written in-place formulas. That is right for an ordinary ``backward()``, but
when the caller asks for ``create_graph=True`` (gradient penalties, MAML, Hessian-vector products) the
gradients they return would carry no (or a wrong) graph, and second-order gradients through them would
silently be zero.

Inside ``backward`` grad mode is enabled exactly when the caller passed ``create_graph=True``
(:func:`higher_order_requested`). Such a Function then returns :func:`reference_gradients` instead of its
fast gradients: the gradients of a *reference* of the same maths, written with ordinary differentiable
PyTorch ops (usually the Function's own fallback path), evaluated on the tensors it saved for backward.
Saved inputs stay connected to the caller's graph, so the gradients returned can be differentiated again,
to any order. The usual first-order ``backward()`` never takes this path and is unchanged.

Usage in a ``backward``::

    x, w = ctx.saved_tensors  # the Function's own inputs (not copies made inside forward)
    if higher_order_requested():
        return reference_gradients(F.linear, (x, w), ctx.needs_input_grad[:2], grad)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["higher_order_requested", "reference_gradients"]


def higher_order_requested() -> bool:
    """Inside a custom Function's ``backward``: whether the caller asked for ``create_graph=True``."""
    return torch.is_grad_enabled()


def reference_gradients(
    reference: Callable[..., Tensor | Sequence[Tensor]],
    inputs: Sequence[Any],
    needs_input_grad: Sequence[bool],
    grad_outputs: Tensor | Sequence[Tensor | None] | None,
) -> tuple[Tensor | None, ...]:
    """The gradients of ``reference(*inputs)`` with respect to ``inputs``, themselves differentiable.

    Args:
        reference: the Function's maths in differentiable PyTorch ops, ``reference(*inputs) -> output``
            or a tuple of outputs.
        inputs: the arguments of ``reference``: tensors from ``ctx.saved_tensors`` (they must be the
            Function's own inputs, still connected to the caller's graph, not copies made inside
            ``forward``) and any non-tensor arguments.
        needs_input_grad: one flag per entry of ``inputs``: whether its gradient is wanted.
        grad_outputs: the incoming gradient of each output of ``reference`` (a tensor for a single
            output); ``None`` where no gradient flows into an output.

    Returns:
        One entry per input: its gradient, a tensor with a graph back to the inputs and to
        ``grad_outputs`` (``create_graph=True``), or ``None`` when not wanted or when the output does not
        depend on it (autograd reads ``None`` as zero).

    Each wanted input enters ``reference`` through a fresh alias, so a gradient is that input's own
    (partial) derivative even when one input is a function of another (e.g. ``z0 = f(x)``): the
    differentiation stops at the alias instead of following ``z0`` back into ``x``. Autocast is off
    inside (the fast paths run in the inputs' own dtypes).
    """
    if len(needs_input_grad) != len(inputs):
        raise ValueError(
            f"reference_gradients: {len(needs_input_grad)} needs_input_grad flags for {len(inputs)} inputs"
        )
    wanted = [
        i
        for i, (x, need) in enumerate(zip(inputs, needs_input_grad))
        if need and isinstance(x, Tensor) and x.requires_grad
    ]
    result: list[Tensor | None] = [None] * len(inputs)
    if not wanted:
        return tuple(result)
    if grad_outputs is None or isinstance(grad_outputs, Tensor):
        grad_outputs = (grad_outputs,)
    device = inputs[wanted[0]].device.type
    with torch.enable_grad(), torch.autocast(device_type=device, enabled=False):
        args = list(inputs)
        for i in wanted:
            args[i] = inputs[i].view_as(inputs[i])
        outputs = reference(*args)
    if isinstance(outputs, Tensor):
        outputs = (outputs,)
    if len(outputs) != len(grad_outputs):
        raise ValueError(
            f"reference_gradients: the reference returned {len(outputs)} outputs for {len(grad_outputs)} "
            "gradients"
        )
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if g is not None and o.requires_grad]
    if not pairs:
        return tuple(result)
    grads = torch.autograd.grad(
        [o for o, _ in pairs],
        [args[i] for i in wanted],
        [g for _, g in pairs],
        create_graph=True,
        allow_unused=True,
    )
    for i, g in zip(wanted, grads):
        result[i] = g
    return tuple(result)
