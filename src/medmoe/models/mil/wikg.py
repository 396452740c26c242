"""WiKG: dynamic graph representation with knowledge-aware attention (Li et al., CVPR 2024), MIL-Lab flavour.

Per bag (MIL-Lab ``models/wikg.py``; ``t`` tokens of width ``D = embed_dim``)::

    h    = patch_embed(x)                       (t, D)   Linear + ReLU, or Mammoth slot tokens
    h    = (h + mean_t(h)) / 2
    e_h  = W_head h,  e_t = W_tail h            (t, D)
    N(i) = top-k_j  <e_h[i], e_t[j]> / sqrt(D)  k neighbours per node (self included)
    p    = softmax_k(selected logits)           (t, k)
    nb   = e_t[N(i)]                            (t, k, D)
    gate = tanh(e_h + p * nb);  w = softmax_k(sum_D gate * nb);  e_N = sum_k w * nb
    emb  = act(W1(e_h + e_N)) + act(W2(e_h * e_N))      ('bi-interaction'; also 'gcn', 'sage')
    a    = softmax_t(gate_nn(dropout(emb)))     readout attention (torch_geometric GlobalAttention)
    z    = LayerNorm(sum_t a * emb)  ->  Linear(D, num_classes)

Differences from the reference (same maths otherwise):

* **Memory linear in the number of patches.** The reference builds the dense ``t x t`` logits matrix
  (and a second dense matrix for logging): 10 GB each at 50k patches. Here the neighbours are found in
  row chunks of ``chunk_size`` queries against all keys without autograd (keeping only the top-k of
  each chunk), and the ``k`` selected logits are then recomputed by gather, so autograd stores
  ``O(t * k * D)``. Outputs and gradients equal the dense computation (see
  :func:`topk_neighbours` and the tests).
* No torch_geometric: the readout is a plain attention pooling (softmax over the bag's tokens).
* ``topk`` is clipped to the number of tokens, so bags smaller than ``topk`` work.
* The reference's unused ``gate_U``/``gate_V``/``gate_W`` layers are not created (they never receive a
  gradient), so a MIL-Lab state dict loads with ``strict=False`` only.
* ``attention`` is the readout's attention over the input patches (``(b, 1, n)``, post-softmax), not
  the dense ``t x t`` neighbour matrix; the neighbour graph is returned sparsely in ``extras``.

Batches are handled by looping over the bags (each bag uses only its real tokens), so padding never
changes a bag's output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...nn.backend import make_dropout, make_linear
from ...nn.checks import check_positive_fields
from ...nn.onednn_linear import matmul_nt
from ...nn.patch_embedding import make_activation
from ...registry import register_model
from ._init import initialize_weights
from .base import MILConfig, MILModel, MILOutput

__all__ = ["WiKG", "WiKGConfig", "topk_neighbours"]

_AGG_TYPES = ("bi-interaction", "gcn", "sage")
_POOLS = ("attn", "mean", "max")


@dataclass
class WiKGConfig(MILConfig):
    """WiKG hyper-parameters (defaults = MIL-Lab ``wikg/base.yaml``).

    Attributes:
        topk: neighbours kept per node (4; MIL-Lab's core-class default is 6). Clipped to the bag size.
        agg_type: ``bi-interaction`` (default), ``gcn`` or ``sage`` neighbour aggregation.
        pool: readout, ``attn`` (attention pooling, default), ``mean`` or ``max``.
        act: activation of the aggregator (``leaky_relu``); the patch embedding always uses ReLU.
        chunk_size: query rows scored at a time when searching neighbours (memory ``chunk_size * t``).
    """

    embed_dim: int = 512
    dropout: float = 0.25
    topk: int = 4
    agg_type: str = "bi-interaction"
    pool: str = "attn"
    act: str = "leaky_relu"
    chunk_size: int = 2048

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_fields(self, "topk", "chunk_size")
        if self.agg_type not in _AGG_TYPES:
            raise ValueError(f"WiKGConfig.agg_type must be one of {_AGG_TYPES}, got {self.agg_type!r}")
        if self.pool not in _POOLS:
            raise ValueError(f"WiKGConfig.pool must be one of {_POOLS}, got {self.pool!r}")
        if self.embed_dim < 2:
            raise ValueError(f"WiKGConfig.embed_dim must be at least 2, got {self.embed_dim}")
        make_activation(self.act)  # raises ValueError for an unknown name


def _search_topk(e_h: Tensor, e_t: Tensor, k: int, scale: float, chunk_size: int,
                 key_mask: Tensor | None) -> Tensor:
    """Indices ``(t, k)`` of the top-k keys of every query, found in row chunks without autograd."""
    if e_h.ndim != 2 or e_t.ndim != 2 or e_h.shape[1] != e_t.shape[1]:
        raise ValueError(f"expected e_h (t, D) and e_t (t_k, D), got {tuple(e_h.shape)} and {tuple(e_t.shape)}")
    n_valid = e_t.shape[0] if key_mask is None else int(key_mask.sum())
    if not 1 <= k <= n_valid:
        raise ValueError(f"k must be in [1, {n_valid}] (the number of valid keys), got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    chunks = []
    with torch.no_grad():
        keys = e_t.detach()
        for start in range(0, e_h.shape[0], chunk_size):
            # (c, t_k); oneDNN for large CPU float32 chunks (faster than PyTorch's GEMM here)
            logits = matmul_nt(e_h[start : start + chunk_size].detach(), keys).mul_(scale)
            if key_mask is not None:
                logits.masked_fill_(~key_mask.unsqueeze(0), float("-inf"))
            chunks.append(torch.topk(logits, k, dim=-1).indices)
    return torch.cat(chunks, dim=0)


def topk_neighbours(
    e_h: Tensor,
    e_t: Tensor,
    k: int,
    scale: float,
    chunk_size: int = 2048,
    key_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Top-k keys of every query under ``scale * <e_h[i], e_t[j]>``, without the dense ``t x t`` graph.

    The search runs in row chunks without autograd (peak extra memory ``chunk_size * t`` floats); the
    selected logits are then recomputed from the gathered keys, so gradients flow to ``e_h`` and ``e_t``
    exactly as through ``torch.topk`` on the dense matrix, while autograd stores only ``O(t * k * D)``.

    Args:
        e_h: queries ``(t, D)``.
        e_t: keys ``(t_k, D)``.
        k: neighbours per query, ``1 <= k <= number of valid keys``.
        scale: logit scale (``D ** -0.5`` in WiKG).
        chunk_size: query rows per chunk.
        key_mask: optional bool ``(t_k,)``, True = selectable key; masked keys are never selected.

    Returns:
        ``(index (t, k) long, logits (t, k))`` sorted by decreasing logit, as ``torch.topk``.
    """
    index = _search_topk(e_h, e_t, k, scale, chunk_size, key_mask)
    return index, torch.einsum("td,tkd->tk", e_h, e_t[index]) * scale


class _AttentionReadout(nn.Module):
    """torch_geometric ``GlobalAttention`` with MIL-Lab's gate network, for one bag.

    ``gate_nn = Linear(D, D/2) -> LeakyReLU -> Linear(D/2, 1)``; weights = softmax over the tokens.
    Shapes: ``(t, D) -> pooled (D,), weights (t,)``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gate_nn = nn.Sequential(make_linear(dim, dim // 2), nn.LeakyReLU(), make_linear(dim // 2, 1))

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        weights = torch.softmax(self.gate_nn(h).squeeze(-1), dim=0)
        return weights @ h, weights


@register_model("wikg")
class WiKG(MILModel):
    """WiKG (knowledge-aware graph MIL) with chunked top-k neighbour search (memory linear in n).

    ``attention_kind = "post-softmax"``: ``attention`` is the readout's softmax weights ``(b, 1, n)``
    over the input patches (carried back from slot tokens through the routing with Mammoth); it is
    ``None`` for ``pool`` ``mean``/``max``. ``extras`` (only with ``return_attention``) holds the
    neighbour graph over the tokens: ``neighbour_index (b, t, k)`` (``-1`` at padding) and
    ``neighbour_weights (b, t, k)`` (softmax of the selected logits, the non-zero entries of MIL-Lab's
    dense attention matrix).
    """

    config_class: ClassVar[type[MILConfig]] = WiKGConfig
    attention_kind: ClassVar[str] = "post-softmax"

    def __init__(self, config: WiKGConfig) -> None:
        super().__init__(config)
        dim = config.embed_dim
        self.config: WiKGConfig = config
        self.W_head = make_linear(dim, dim)
        self.W_tail = make_linear(dim, dim)
        self.scale = dim**-0.5
        if config.agg_type == "bi-interaction":
            self.linear1 = make_linear(dim, dim)
            self.linear2 = make_linear(dim, dim)
        elif config.agg_type == "gcn":
            self.linear = make_linear(dim, dim)
        else:  # sage
            self.linear = make_linear(2 * dim, dim)
        self.activation = make_activation(config.act)
        self.message_dropout = make_dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.readout = _AttentionReadout(dim) if config.pool == "attn" else None
        self.norm = nn.LayerNorm(dim)
        self.classifier = make_linear(dim, config.num_classes)
        initialize_weights(self)

    def _aggregate(self, e_h: Tensor, e_n: Tensor) -> Tensor:
        """Node update from self ``e_h (t, D)`` and neighbourhood ``e_n (t, D)`` -> ``(t, D)``."""
        if self.config.agg_type == "bi-interaction":
            return self.activation(self.linear1(e_h + e_n)) + self.activation(self.linear2(e_h * e_n))
        if self.config.agg_type == "gcn":
            return self.activation(self.linear(e_h + e_n))
        return self.activation(self.linear(torch.cat([e_h, e_n], dim=-1)))

    def graph_layer(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Knowledge-aware graph layer on one bag.

        Args:
            h: token embeddings ``(t, D)`` of one bag (real tokens only).

        Returns:
            ``(node embeddings (t, D), neighbour index (t, k), neighbour weights (t, k))``.
        """
        h = (h + h.mean(dim=0, keepdim=True)) * 0.5
        e_h = self.W_head(h)
        e_t = self.W_tail(h)
        k = min(self.config.topk, h.shape[0])
        index = _search_topk(e_h, e_t, k, self.scale, self.config.chunk_size, None)  # (t, k)
        nb = e_t[index]  # (t, k, D)
        logits = torch.einsum("td,tkd->tk", e_h, nb) * self.scale  # the selected logits, with autograd
        prob = torch.softmax(logits, dim=-1)  # (t, k)
        gate = torch.tanh(e_h.unsqueeze(1) + prob.unsqueeze(-1) * nb)
        ka = torch.softmax((gate * nb).sum(-1), dim=-1)  # (t, k)
        e_n = torch.einsum("tk,tkd->td", ka, nb)
        return self._aggregate(e_h, e_n), index, prob

    def _pool(self, h: Tensor) -> tuple[Tensor, Tensor | None]:
        """Readout of one bag ``(t, D)`` -> ``(D,)`` and the attention weights ``(t,)`` (attn only)."""
        if self.readout is not None:
            return self.readout(h)
        if self.config.pool == "mean":
            return h.mean(dim=0), None
        return h.max(dim=0).values, None

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        *,
        label: Tensor | None = None,
        return_attention: bool = False,
        return_routing: bool = False,
    ) -> MILOutput:
        """Classify bags.

        Args:
            x: ``(b, n, in_dim)`` instance features (or an unbatched ``(n, in_dim)`` bag).
            mask: optional bool ``(b, n)``, True = real instance.
            label: unused (WiKG has no auxiliary loss); accepted for the common interface.
            return_attention: also return the readout attention ``(b, 1, n)`` and the neighbour graph.
            return_routing: return the patch embedding's routing (MoE embeddings only).

        Returns:
            :class:`MILOutput` with ``logits (b, C)``, ``slide_features (b, D)`` and optionally
            ``attention (b, 1, n)``.
        """
        x, mask = self.check_input(x, mask)
        want_attn = return_attention and self.readout is not None
        emb = self.embed(x, mask, return_routing=return_routing, return_attention=want_attn)
        tokens, tok_mask = emb.tokens, emb.mask
        b, t, _ = tokens.shape
        pooled, weights, nb_index, nb_weight = [], [], [], []
        for i in range(b):
            real = None if tok_mask is None else tok_mask[i].nonzero().squeeze(-1)
            h = tokens[i] if real is None else tokens[i, real]
            node, index, prob = self.graph_layer(h)
            z, w = self._pool(self.message_dropout(node))
            pooled.append(z)
            if return_attention:
                if w is not None:
                    weights.append(self._scatter(w.detach(), real, t, 0.0))
                if real is not None:
                    index = real[index]
                pad = self.config.topk - index.shape[1]  # bags smaller than topk
                index, prob = F.pad(index, (0, pad), value=-1), F.pad(prob.detach(), (0, pad), value=0.0)
                nb_index.append(self._scatter(index, real, t, -1))
                nb_weight.append(self._scatter(prob, real, t, 0.0))
        slide = self.norm(torch.stack(pooled))
        logits = self.classifier(slide)
        attention, extras = None, {}
        if return_attention:
            if weights:
                attention = self.to_patch_attention(emb, torch.stack(weights).unsqueeze(1))
            extras = {"neighbour_index": torch.stack(nb_index), "neighbour_weights": torch.stack(nb_weight)}
        return MILOutput(
            logits=logits,
            attention=attention,
            slide_features=slide,
            routing=emb.routing if return_routing else None,
            extras=extras,
        )

    @staticmethod
    def _scatter(values: Tensor, real: Tensor | None, t: int, fill: float) -> Tensor:
        """Place per-real-token ``values (t_i, ...)`` into a ``(t, ...)`` tensor filled with ``fill``."""
        if real is None:
            return values
        out = values.new_full((t, *values.shape[1:]), fill)
        out[real] = values
        return out
