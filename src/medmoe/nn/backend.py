"""The one switch between plain PyTorch and medmoe's fast CPU paths.

Two backends:

* ``"native"`` (the default): medmoe's fast paths — oneDNN products for CPU float32 linear layers
  (:class:`~medmoe.nn.onednn_linear.FastLinear`), counter-based dropout masks
  (:class:`~medmoe.nn.dropout.FastDropout`) and the compiled kernels of ``medmoe/nn/kernels``, each a
  ``torch.library`` custom operator (``torch.ops.medmoe.*``). Where a kernel cannot be built (no C++ compiler)
  its operator computes the same function with PyTorch ops: a seeded run gives the same numbers with and
  without a compiler (dropout masks included, drawn from the same SplitMix64 counter stream).
* ``"torch"``: PyTorch as it is — plain :class:`torch.nn.Linear` and :class:`torch.nn.Dropout` (Bernoulli
  masks from torch's generator), no compiled kernel, no oneDNN call. Tools that look modules up by exact type
  (eager quantisation, some exporters) see ordinary layers. Seeded dropout masks differ from ``"native"``'s:
  the backend is a setting of a run, like its seed.

The backend is chosen by :func:`set_backend`, else by the environment variable ``MEDMOE_BACKEND``
(``torch`` or ``native``); the older ``MEDMOE_NATIVE_KERNELS=0`` means ``torch``. Layers read it when they are
built: :func:`medmoe.create_model` gives a model its layer classes from the backend at construction time
(:func:`apply_backend`), and switching later leaves built models as they are. Functional fast paths
(``fast_linear``, ``fast_matmul``, the kernels) read it when called; under ``torch.compile`` tracing they
always take their PyTorch form, which the compiler optimises.

This is the only module of medmoe that calls a private PyTorch API (oneDNN's linear kernel,
:func:`onednn_linear`).
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = [
    "BACKENDS",
    "Backend",
    "apply_backend",
    "get_backend",
    "make_dropout",
    "make_linear",
    "native_enabled",
    "onednn_available",
    "onednn_linear",
    "set_backend",
    "warn_once",
]

logger = logging.getLogger(__name__)

Backend = Literal["torch", "native"]
BACKENDS: tuple[str, ...] = ("torch", "native")
_ENV = "MEDMOE_BACKEND"
_LEGACY_ENV = "MEDMOE_NATIVE_KERNELS"
_OFF = ("0", "false", "no", "off")

_chosen: str | None = None
_warned: set[str] = set()
_warn_lock = threading.Lock()


def set_backend(name: str | None) -> None:
    """Choose the backend for layers built from now on: ``"torch"``, ``"native"``, or ``None`` (back to the
    environment / default).

    Raises:
        ValueError: for any other name.
    """
    global _chosen
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    _chosen = name


def get_backend() -> str:
    """The backend in force: :func:`set_backend`'s choice, else ``$MEDMOE_BACKEND``, else ``"native"``.

    Raises:
        ValueError: when ``MEDMOE_BACKEND`` names no backend.
    """
    if _chosen is not None:
        return _chosen
    env = os.environ.get(_ENV, "").strip().lower()
    if env:
        if env not in BACKENDS:
            raise ValueError(f"{_ENV}={env!r} names no backend: set it to one of {', '.join(BACKENDS)}")
        return env
    if os.environ.get(_LEGACY_ENV, "1").strip().lower() in _OFF:
        return "torch"
    return "native"


def native_enabled() -> bool:
    """Whether fast paths may run now: the native backend, and not while ``torch.compile`` traces."""
    return get_backend() == "native" and not torch.compiler.is_compiling()


def warn_once(key: str, message: str) -> None:
    """A :class:`RuntimeWarning` (and a log line at WARNING) the first time ``key`` is seen in this process."""
    with _warn_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def onednn_available() -> bool:
    """Whether PyTorch was built with oneDNN and exposes its linear kernel."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_linear(a: Tensor, b_t: Tensor, bias: Tensor | None = None) -> Tensor:
    """``a (m, k) @ b_t (n, k).T (+ bias) -> (m, n)`` on oneDNN (CPU float32; callers check the guard)."""
    return torch.ops.mkldnn._linear_pointwise(a, b_t, bias, "none", [], "")


def apply_backend(
    model: nn.Module, backend: str | None = None, layers: tuple[str, ...] = ("linear", "dropout")
) -> nn.Module:
    """Give ``model``'s plain layers the classes of ``backend`` (default: :func:`get_backend`).

    Under ``"native"`` every module whose type is exactly :class:`torch.nn.Linear` or :class:`torch.nn.Dropout`
    is replaced in its parent by a :class:`~medmoe.nn.onednn_linear.FastLinear` /
    :class:`~medmoe.nn.dropout.FastDropout` holding the same parameter objects (no copy, same state-dict
    keys); a layer shared by two parents gets one replacement. Under ``"torch"`` nothing changes. medmoe's own
    layers and models never need it (they build :func:`make_linear` / :func:`make_dropout` layers); it is for a
    model written elsewhere, called right after its construction, before any hook or optimiser sees the
    layers. ``layers`` limits the replacement to ``"linear"`` and/or ``"dropout"`` layers.

    Returns:
        ``model``, or its replacement when ``model`` itself is such a layer.
    """
    backend = get_backend() if backend is None else backend
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return model
    from .dropout import FastDropout
    from .onednn_linear import FastLinear

    made: dict[int, nn.Module] = {}

    def fast(module: nn.Module) -> nn.Module | None:
        if id(module) in made:
            return made[id(module)]
        new: nn.Module | None = None
        if type(module) is nn.Linear and "linear" in layers:
            new = FastLinear.from_linear(module)
        elif type(module) is nn.Dropout and "dropout" in layers:
            new = FastDropout(module.p, module.inplace)
            new.train(module.training)
        if new is not None:
            made[id(module)] = new
        return new

    root = fast(model)
    if root is not None:
        return root
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = fast(child)
            if new is not None:
                setattr(parent, name, new)
    return model


def make_linear(
    in_features: int, out_features: int, bias: bool = True, device: Any = None, dtype: Any = None
) -> nn.Linear:
    """A linear layer of the backend in force: :class:`~medmoe.nn.onednn_linear.FastLinear` under
    ``"native"``, :class:`torch.nn.Linear` under ``"torch"``. Shapes: ``(..., in) -> (..., out)``."""
    if get_backend() == "native":
        from .onednn_linear import FastLinear

        return FastLinear(in_features, out_features, bias=bias, device=device, dtype=dtype)
    return nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)


def make_dropout(p: float = 0.5, inplace: bool = False) -> nn.Dropout:
    """A dropout layer of the backend in force: :class:`~medmoe.nn.dropout.FastDropout` (counter-based masks)
    under ``"native"``, :class:`torch.nn.Dropout` under ``"torch"``. Shapes: any -> the same."""
    if get_backend() == "native":
        from .dropout import FastDropout

        return FastDropout(p, inplace)
    return nn.Dropout(p, inplace)
