"""Model sizes checked before anything is allocated: a hostile or mistyped config cannot ask for terabytes.

A checkpoint's ``config.json`` (or a ``--set embed_dim=1000000``) decides how large a network is. Building it
directly would allocate every weight before any shape is compared with the saved tensors, so a 2 kB config
with dimensions of 10^6 asks for terabytes. :func:`build_within_limit` first builds the network on PyTorch's
``meta`` device (shapes only, no memory, milliseconds), adds up its parameters and buffers, and refuses with a
:class:`~medmoe.errors.SizeLimitError` when they exceed :func:`max_model_bytes`: ``$MEDMOE_MAX_MODEL_GB`` when
set, else the memory this machine has available now.

The estimate counts the weights alone: training needs about four times as much (gradients, two optimiser
moments) plus activations, so the limit stops absurd configs, not every out-of-memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from .errors import SizeLimitError

__all__ = [
    "MAX_MODEL_GB_ENV",
    "available_memory_bytes",
    "build_within_limit",
    "check_model_size",
    "format_bytes",
    "gb_limit_from_env",
    "max_model_bytes",
    "meta_model_bytes",
    "physical_memory_bytes",
]

#: Environment variable: the largest model (weights, in GB = 1e9 bytes) medmoe builds; also ``medmoe
#: --max-model-gb``.
MAX_MODEL_GB_ENV = "MEDMOE_MAX_MODEL_GB"

M = TypeVar("M", bound=nn.Module)


def physical_memory_bytes(default: int) -> int:
    """The machine's physical memory from ``sysconf``, ``default`` where it cannot be read."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - platform without sysconf
        return default


def available_memory_bytes() -> int:
    """Memory available to a new allocation: ``MemAvailable`` of ``/proc/meminfo`` on Linux, else the
    physical memory (64 GB where neither can be read)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return physical_memory_bytes(64 * 10**9)


def gb_limit_from_env(name: str, error: type[Exception] = ValueError) -> int | None:
    """Bytes of the limit ``$NAME`` gives in GB (1e9 bytes), ``None`` when it is unset or empty; a value that
    is not a positive number raises ``error`` naming the variable."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        gb = float(raw)
    except ValueError:
        gb = float("nan")
    if not gb > 0:
        raise error(f"{name}={raw!r} must be a positive number of GB")
    return int(gb * 1e9)


def max_model_bytes() -> int:
    """The largest model (bytes of weights) medmoe builds: ``$MEDMOE_MAX_MODEL_GB`` GB when set, else
    :func:`available_memory_bytes`. A value that is not a positive number raises ``SizeLimitError``."""
    limit = gb_limit_from_env(MAX_MODEL_GB_ENV, SizeLimitError)
    return available_memory_bytes() if limit is None else limit


def meta_model_bytes(build: Callable[[], nn.Module]) -> int | None:
    """Bytes of the parameters and buffers ``build()`` would allocate, measured by building it on the
    ``meta`` device; ``None`` when the network cannot be built there (it reads tensor values while
    building), then no estimate is possible. A ``ValueError`` or ``TypeError`` of the config (an unknown
    ``patch_embed`` kind, a wrong type) is raised as the real build would raise it."""
    try:
        with torch.device("meta"):
            model = build()
    except (NotImplementedError, RuntimeError):
        return None
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def format_bytes(n: int) -> str:
    """``"3.7 MB"``, ``"12.5 GB"``, ``"4.0 TB"`` (powers of 1000)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n / 1e3:,.1f} kB"


def check_model_size(build: Callable[[], nn.Module], what: str) -> int | None:
    """Raise :class:`~medmoe.errors.SizeLimitError` when the network ``build()`` makes would not fit
    :func:`max_model_bytes`, measured on the ``meta`` device (nothing is allocated). Returns the estimate in
    bytes (``None`` when the network cannot be built on ``meta``).

    Args:
        build: makes the network.
        what: names the network and where its size comes from, for the message (``"model abmil.base"``).
    """
    need = meta_model_bytes(build)
    if need is not None:
        limit = max_model_bytes()
        if need > limit:
            source = (f"the limit set by {MAX_MODEL_GB_ENV}" if os.environ.get(MAX_MODEL_GB_ENV, "").strip()
                      else "the memory available on this machine")
            raise SizeLimitError(
                f"{what}: its config asks for {format_bytes(need)} of weights, more than {source} "
                f"({format_bytes(limit)}); check the config's dimensions, or if they are genuine raise the "
                f"limit with {MAX_MODEL_GB_ENV}=GB (or medmoe --max-model-gb GB)"
            )
    return need


def build_within_limit(build: Callable[[], M], what: str) -> M:
    """``build()``, after :func:`check_model_size` found on the ``meta`` device that its weights fit.

    Raises:
        SizeLimitError: the weights alone would exceed the limit (the message gives both sizes and how to
            raise the limit).
    """
    check_model_size(build, what)
    return build()
