"""Transformer MIL (MIL-Lab ``transformer``): a cls token and pre-norm softmax-attention blocks.

::

    h   = [cls; patch_embed(x)]                          (b, 1 + t, d)
    h   = h + MHA(LN(h))                                 per block (heads 8, attention dropout = dropout)
    h   = h + MLP(LN2(h))    if encoder_mlp_dim > 0:     Linear(d, m), ReLU, Dropout, Linear(m, d), ReLU
    out = Linear(d, C)(LN(h)[:, 0])

Unlike MIL-Lab (which reshapes to batch 1), batches of bags of different sizes work through a key
padding mask: padded tokens are never attended to, so padding does not change a bag's output.

Memory. Attention runs through ``scaled_dot_product_attention``; its fused kernels (flash attention on
CPU and CUDA) never materialise the ``(t, t)`` weights, so memory is linear in ``t``. On CPU, attention
dropout in training forces PyTorch's explicit path (``h * t * t`` floats: 80 GB at 50k patches); above
``attn_chunk_elements`` weights the attention then runs in blocks of queries with a hand-written backward
(:func:`medmoe.nn.attention.dropout_attention`, several times faster than checkpointed chunks). On CUDA
without padding, SDPA's fused kernels sample the dropout themselves, in one call (the chunked path was
impractically slow at 50k patches on an H100: docs/performance.md). Elsewhere
(padded batches on CUDA, other devices) the queries are processed in chunks of about
``attn_chunk_elements / (h * t)`` rows, each recomputed in the backward pass (activation checkpointing).
Either way memory stays ``O(chunk * t)``. Without dropout, bags of 3k-12k tokens on CPU take the same blocks
too, which beat the fused kernel there (docs/performance-notes.md). Time is quadratic in ``t``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ...nn.attention.dropout_attention import (
    blocked_attention_preferred,
    dropout_attention,
    dropout_attention_applies,
)
from ...nn.backend import make_dropout, make_linear
from ...nn.dropout import fast_dropout
from ...nn.onednn_linear import fast_linear, fast_matmul
from ...registry import register_model
from ._init import initialize_weights
from .base import MILConfig, MILModel, MILOutput

__all__ = ["TransformerBlock", "TransformerConfig", "TransformerMIL", "chunked_attention"]


@dataclass
class TransformerConfig(MILConfig):
    """Transformer hyper-parameters (MIL-Lab ``transformer/base``: embed_dim 512, 2 layers, 8 heads,
    MLP width 2048, dropout 0.25).

    Attributes:
        num_attention_layers: number of blocks.
        num_heads: attention heads (``embed_dim`` must be divisible by it).
        encoder_mlp_dim: hidden width of each block's MLP; ``<= 0`` means no MLP (the config-class default).
        attn_chunk_elements: memory budget (floats) of one query chunk of the explicit attention used with
            attention dropout in training; ``<= 0`` disables chunking.

    ``dropout`` is used as attention dropout and in the MLP, as in MIL-Lab.
    """

    num_attention_layers: int = 2
    num_heads: int = 8
    encoder_mlp_dim: int = -1
    attn_chunk_elements: int = 1 << 26

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("num_attention_layers", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TransformerConfig.{name} must be a positive integer, got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"TransformerConfig: embed_dim={self.embed_dim} must be divisible by "
                f"num_heads={self.num_heads}"
            )
        if not isinstance(self.encoder_mlp_dim, int):
            raise ValueError(
                f"TransformerConfig.encoder_mlp_dim must be an integer, got {self.encoder_mlp_dim!r}"
            )


def _dropout_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float) -> Tensor:
    """Softmax attention with attention dropout; ``mask`` broadcasts to ``(b, h, tq, tk)`` (True = attend).

    On CPU with the native dropout kernel the weights are formed explicitly with oneDNN products and
    :func:`~medmoe.nn.dropout.fast_dropout` (PyTorch's own dropout path in SDPA materialises the same
    ``(tq, tk)`` weights, then samples the mask with ``bernoulli_``, which cost more than both products
    together for 300 tokens); elsewhere SDPA.
    """
    if (
        q.device.type != "cpu"
        or not dropout_attention_applies(q)  # the native backend (compiled kernel or not: the same masks)
        or q.dtype not in (torch.float32, torch.float64)
    ):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    scores = fast_matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))  # (b, h, tq, tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = fast_dropout(scores.softmax(dim=-1), dropout_p)
    return fast_matmul(weights, v)


def chunked_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_mask: Tensor | None,
    dropout_p: float = 0.0,
    chunk_elements: int = 1 << 26,
) -> Tensor:
    """Softmax attention with a key padding mask, without ever holding ``(t, t)`` weights for all queries.

    Args:
        q, k, v: ``(b, h, t, d)``.
        key_mask: ``(b, t)`` bool (True = real key) or ``None``.
        dropout_p: attention dropout (pass 0 in eval).
        chunk_elements: with dropout, queries are processed in chunks of ``chunk_elements / (h * t)``
            rows, each under activation checkpointing (recomputed in backward with the same dropout mask).

    Returns:
        ``(b, h, t, d)``.
    """
    _b, h, t, _ = q.shape
    attn_mask = None if key_mask is None else key_mask[:, None, None, :]
    if dropout_p == 0.0 or chunk_elements <= 0 or h * t * t <= chunk_elements:
        if dropout_p == 0.0:
            if blocked_attention_preferred(q, k):  # long bags on CPU: the blocks beat PyTorch's fused kernel
                return dropout_attention(q, k, v, key_mask, 0.0)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return _dropout_attention(q, k, v, attn_mask, dropout_p)
    if dropout_attention_applies(q):  # CPU: cache-sized blocks with a hand-written backward, no checkpointing
        return dropout_attention(q, k, v, key_mask, dropout_p)
    if q.device.type == "cuda" and key_mask is None:  # the fused kernels sample dropout themselves: no chunks
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    rows = max(1, chunk_elements // (h * t))
    need_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    outs = []
    for start in range(0, t, rows):
        qc = q[:, :, start : start + rows]
        if need_grad:
            outs.append(checkpoint(_dropout_attention, qc, k, v, attn_mask, dropout_p, use_reentrant=False))
        else:
            outs.append(_dropout_attention(qc, k, v, attn_mask, dropout_p))
    return torch.cat(outs, dim=2)


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + MHA(LN(x))`` then, if ``mlp_dim > 0``, ``x + MLP(LN2(x))``.

    The attention's parameters live in an ``nn.MultiheadAttention`` (keys ``attention.in_proj_weight``,
    ``attention.in_proj_bias``, ``attention.out_proj.*``) as in MIL-Lab; the computation uses SDPA with a
    key padding mask. MLP keys ``mlp.0`` and ``mlp.3`` as MIL-Lab's ``create_mlp``.

    Shapes: ``x (b, t, dim)``, ``key_mask (b, t)`` -> ``(b, t, dim)``.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float, mlp_dim: int, chunk_elements: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = float(dropout)
        self.chunk_elements = chunk_elements
        self.norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        if mlp_dim > 0:
            self.mlp: nn.Module | None = nn.Sequential(
                make_linear(dim, mlp_dim), nn.ReLU(), make_dropout(dropout), make_linear(mlp_dim, dim), nn.ReLU()
            )
            self.norm2: nn.Module | None = nn.LayerNorm(dim)
        else:
            self.mlp = None
            self.norm2 = None

    def _qkv(self, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, t, d = y.shape
        qkv = fast_linear(y, self.attention.in_proj_weight, self.attention.in_proj_bias)
        q, k, v = qkv.view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v  # (b, h, t, dh)

    def forward(
        self, x: Tensor, key_mask: Tensor | None = None, return_cls_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Returns the new tokens and, if asked, the head-averaged softmax weights of query 0 (the cls
        token) over all keys, ``(b, t)`` (0 at padded keys; before dropout)."""
        b, t, d = x.shape
        y = self.norm(x)
        q, k, v = self._qkv(y)
        p = self.dropout if self.training else 0.0
        a = chunked_attention(q, k, v, key_mask, p, self.chunk_elements)
        out_proj = self.attention.out_proj  # an nn.Linear subclass: FastLinear does not replace it
        a = fast_linear(a.transpose(1, 2).reshape(b, t, d), out_proj.weight, out_proj.bias)
        cls_weights = None
        if return_cls_weights:
            logits = (q[:, :, :1].float() @ k.float().transpose(-1, -2)).squeeze(2) * q.shape[-1] ** -0.5
            if key_mask is not None:
                logits = logits.masked_fill(~key_mask[:, None, :], float("-inf"))
            cls_weights = logits.softmax(dim=-1).mean(dim=1).to(x.dtype)  # (b, t)
        x = x + a
        if self.mlp is not None and self.norm2 is not None:
            x = x + self.mlp(self.norm2(x))
        return x, cls_weights


@register_model("transformer")
class TransformerMIL(MILModel):
    """Transformer MIL with a cls token and pre-norm multi-head softmax attention (MIL-Lab ``transformer``).

    ``attention_kind = "post-softmax"``: ``MILOutput.attention (b, 1, n)`` holds the head-averaged
    attention weights of the cls token in the first block over the patch tokens (MIL-Lab returns the
    whole ``(n + 1) x (n + 1)`` matrix; its cls row without the cls column is what heatmaps use). The
    weights are taken before attention dropout; padded patches get 0. With Mammoth ``keep_slots`` the
    slot weights are carried to the patches.

    Outputs: ``logits (b, C)``, ``slide_features (b, embed_dim)``. Cost: time quadratic in the number
    of tokens, memory linear (see the module docstring).
    """

    config_class: ClassVar[type[MILConfig]] = TransformerConfig
    attention_kind: ClassVar[str] = "post-softmax"

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config)
        self.config: TransformerConfig
        d = config.embed_dim
        self.cls_token = nn.Parameter(torch.randn(1, 1, d))
        self.blocks = nn.ModuleList(
            TransformerBlock(
                d, config.num_heads, config.dropout, config.encoder_mlp_dim, config.attn_chunk_elements
            )
            for _ in range(config.num_attention_layers)
        )
        self.norm = nn.LayerNorm(d)
        self.classifier = make_linear(d, config.num_classes)
        initialize_weights(self)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        *,
        label: Tensor | None = None,
        return_attention: bool = False,
        return_routing: bool = False,
    ) -> MILOutput:
        """Classify bags ``x: (b, n, in_dim)`` with optional bool ``mask: (b, n)`` (True = real patch).

        ``label`` is accepted for the common interface and unused.
        """
        x, mask = self.check_input(x, mask)
        emb = self.embed(x, mask, return_routing=return_routing, return_attention=return_attention)
        tokens, tmask = emb.tokens, emb.mask
        if tmask is not None:  # padded tokens are never keys; zero them so junk (inf/nan) cannot leak
            tokens = tokens.masked_fill(~tmask.unsqueeze(-1), 0.0)
        b = tokens.shape[0]
        h = torch.cat([self.cls_token.expand(b, -1, -1).to(tokens.dtype), tokens], dim=1)
        key_mask = None if tmask is None else torch.cat([tmask.new_ones(b, 1), tmask], dim=1)
        cls_weights = None
        for i, block in enumerate(self.blocks):
            h, w = block(h, key_mask, return_cls_weights=return_attention and i == 0)
            if w is not None:
                cls_weights = w
        slide = self.norm(h[:, 0])
        out = MILOutput(logits=self.classifier(slide), slide_features=slide)
        if return_attention and cls_weights is not None:
            out.attention = self.to_patch_attention(emb, cls_weights[:, 1:].unsqueeze(1))
            out.extras["attention_kind"] = "post-softmax"
        if return_routing:
            out.routing = emb.routing
        return out
