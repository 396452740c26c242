"""``create_patch_embed`` — the one factory every MIL model uses for its ``patch_embed``.

Kinds:

* ``linear``   — ``Linear(in_dim, embed_dim) -> act`` (MIL-Lab's default, act ``relu``).
* ``mlp``      — ``num_layers`` (default 2) x [Linear, act, Dropout] (no dropout after the last layer).
* ``mammoth``  — :class:`medmoe.nn.Mammoth` (low-rank mixture of experts, soft slot routing).
* ``soft_moe`` — :class:`medmoe.nn.SoftMoEEmbed` (``Linear`` to ``embed_dim`` then a Soft MoE layer).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .patch_embedding import MLPEmbed, PatchEmbedding

__all__ = ["PATCH_EMBED_KINDS", "create_patch_embed"]


def _mlp(in_dim: int, embed_dim: int, **kwargs: Any) -> PatchEmbedding:
    kwargs.setdefault("num_layers", 2)
    return MLPEmbed(in_dim, embed_dim, **kwargs)


def _linear(in_dim: int, embed_dim: int, **kwargs: Any) -> PatchEmbedding:
    if kwargs.get("num_layers", 1) != 1:
        raise ValueError("patch_embed 'linear' has one layer; use kind 'mlp' with num_layers=N for more")
    kwargs.pop("num_layers", None)
    return MLPEmbed(in_dim, embed_dim, num_layers=1, **kwargs)


def _mammoth(in_dim: int, embed_dim: int, **kwargs: Any) -> PatchEmbedding:
    from .mammoth import Mammoth

    return Mammoth(in_dim, embed_dim, **kwargs)


def _soft_moe(in_dim: int, embed_dim: int, **kwargs: Any) -> PatchEmbedding:
    from .soft_moe import SoftMoEEmbed

    return SoftMoEEmbed(in_dim, embed_dim, **kwargs)


PATCH_EMBED_KINDS: dict[str, Callable[..., PatchEmbedding]] = {
    "linear": _linear,
    "mlp": _mlp,
    "mammoth": _mammoth,
    "soft_moe": _soft_moe,
}


def _accepted_args(kind: str) -> list[str]:
    if kind == "mammoth":
        from .mammoth import Mammoth as target
    elif kind == "soft_moe":
        from .soft_moe import SoftMoEEmbed as target
    else:
        target = MLPEmbed
    return [p for p in inspect.signature(target.__init__).parameters if p not in ("self", "in_dim", "out_dim",
            "input_dim", "dim", "kwargs")]


def create_patch_embed(kind: str, in_dim: int, embed_dim: int, **kwargs: Any) -> PatchEmbedding:
    """Build a patch embedding ``(b, n, in_dim) -> (b, t, embed_dim)``.

    Args:
        kind: ``linear``, ``mlp``, ``mammoth`` or ``soft_moe``.
        in_dim: instance feature size (any positive integer; 166, 230, 708 are fine).
        embed_dim: output width.
        **kwargs: passed to the embedding's constructor (e.g. ``num_experts=30`` for Mammoth).

    Raises:
        ValueError: unknown kind or an argument the chosen kind does not take.
    """
    if kind not in PATCH_EMBED_KINDS:
        raise ValueError(f"unknown patch_embed kind {kind!r}; choose one of {sorted(PATCH_EMBED_KINDS)}")
    try:
        return PATCH_EMBED_KINDS[kind](in_dim, embed_dim, **kwargs)
    except TypeError as err:
        if "unexpected keyword argument" not in str(err):
            raise
        raise ValueError(f"patch_embed {kind!r}: {err}; accepted arguments: {_accepted_args(kind)}") from None
