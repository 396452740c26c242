"""The patch-embedding contract every MIL model relies on, and the plain linear / MLP embedding.

A patch embedding maps instance features ``x: (b, n, in_dim)`` (+ optional padding mask ``(b, n)``) to
tokens ``(b, t, out_dim)`` for the aggregator. ``t == n`` for linear, MLP and Soft MoE embeddings;
Mammoth with ``keep_slots=True`` returns ``t = experts * slots`` slot tokens instead. Models call
:meth:`PatchEmbedding.embed`, which returns an :class:`EmbeddedPatches` with the tokens, their mask and,
on request, the routing needed to carry token scores back to patches.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .backend import make_dropout, make_linear
from .checks import check_positive_ints
from .routing import Routing, check_mask

__all__ = ["EmbeddedPatches", "MLPEmbed", "PatchEmbedding", "make_activation"]


@dataclass
class EmbeddedPatches:
    """Output of :meth:`PatchEmbedding.embed`.

    Attributes:
        tokens: ``(b, t, out_dim)``.
        mask: ``(b, t)`` bool (True = real token) or ``None`` when every token is real.
        routing: :class:`~medmoe.nn.routing.Routing` when requested from an MoE embedding, else ``None``.
    """

    tokens: Tensor
    mask: Tensor | None
    routing: Routing | None = None

    def patch_scores(self, token_scores: Tensor) -> Tensor:
        """Map ``(b, k, t)`` token scores to ``(b, k, n)`` patch scores (identity when ``t == n``)."""
        if self.routing is None:
            return token_scores
        return self.routing.patch_scores(token_scores)


class PatchEmbedding(nn.Module):
    """Base class of patch embeddings. Subclasses set ``in_dim``/``out_dim`` and implement :meth:`embed`.

    Class attribute ``preserves_tokens`` is True when the output has one token per input patch.
    """

    in_dim: int
    out_dim: int
    preserves_tokens: bool = True
    is_moe: bool = False

    def embed(self, x: Tensor, mask: Tensor | None = None, return_routing: bool = False) -> EmbeddedPatches:
        raise NotImplementedError


_ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}


def make_activation(name: str | None) -> nn.Module:
    """Activation module by name (``relu``, ``gelu``, ``leaky_relu``, ``elu``, ``tanh``, ``silu``) or
    ``None``/``"none"``/``"identity"`` for no activation."""
    if name is None or name in ("none", "identity"):
        return nn.Identity()
    key = name.lower()
    if key not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)} or 'none'")
    return _ACTIVATIONS[key]()


class MLPEmbed(nn.Sequential, PatchEmbedding):
    """MIL-Lab's ``create_mlp`` patch embedding: ``num_layers`` x [Linear, act, Dropout], without the
    dropout after the last layer.

    ``num_layers=1`` gives exactly ``Linear(in_dim, out_dim) -> act`` (MIL-Lab's default for ABMIL,
    CLAM, DSMIL, TransMIL, Transformer, WiKG). Hidden layers have width ``out_dim`` (``hidden_dim``).
    ``final_dropout=True`` appends the dropout after the last activation too (RRT-MIL's embedding).
    State-dict keys are ``0.weight``, ``0.bias``, ``3.weight``, ... as in ``nn.Sequential``.

    Shapes: ``(b, n, in_dim) -> (b, n, out_dim)``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_layers: int = 1,
        act: str | None = "relu",
        dropout: float = 0.0,
        hidden_dim: int | None = None,
        final_dropout: bool = False,
    ) -> None:
        check_positive_ints("MLPEmbed", in_dim=in_dim, out_dim=out_dim, num_layers=num_layers)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MLPEmbed: dropout must be in [0, 1), got {dropout}")
        hidden_dim = hidden_dim or out_dim
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        for i in range(num_layers):
            layers += [make_linear(dims[i], dims[i + 1]), make_activation(act)]
            if i < num_layers - 1 or final_dropout:
                layers.append(make_dropout(dropout))
        super().__init__(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    def embed(self, x: Tensor, mask: Tensor | None = None, return_routing: bool = False) -> EmbeddedPatches:
        if x.ndim != 3 or x.shape[-1] != self.in_dim:
            raise ValueError(f"expected features (b, n, {self.in_dim}), got {tuple(x.shape)}")
        return EmbeddedPatches(self(x), check_mask(x, mask), None)
