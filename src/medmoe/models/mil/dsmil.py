"""DSMIL — dual-stream MIL (Li, Li & Eliceiri, CVPR 2021) as in MIL-Lab.

Instance stream: ``c = Linear(embed_dim, C)(h)``. Bag stream: per class, the critical instance is the
argmax of ``c[:, :, class]``; attention ``A = softmax_n(q(h) . q(h_crit) / sqrt(attn_dim))``, bag
representation ``LayerNorm(A^T v(h))``, bag logits by ``Conv1d(C, C, kernel=embed_dim)``. Final logits
``= 0.5 * (bag logits + max_n instance logits)`` (MIL-Lab, one loss on the combined logits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ...nn.backend import make_dropout, make_linear
from ...nn.pooling import masked_softmax
from ...registry import register_model
from ._init import initialize_weights
from .base import MILConfig, MILModel, MILOutput

__all__ = ["DSMIL", "DSMILConfig"]


@dataclass
class DSMILConfig(MILConfig):
    """DSMIL hyper-parameters (MIL-Lab ``dsmil/base``: embed_dim 512, attn_dim 384, dropout_v 0).

    Attributes:
        attn_dim: width of the query projection ``q``.
        dropout_v: dropout before the value projection ``v``.

    ``dropout`` (0.25) is MIL-Lab's patch-embedding dropout, which only acts with more than one
    embedding layer (``patch_embed='mlp'``, give ``patch_embed_args={'dropout': ...}``); the DSMIL
    aggregator itself does not use it.
    """

    attn_dim: int = 384
    dropout_v: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.attn_dim, int) or isinstance(self.attn_dim, bool) or self.attn_dim < 1:
            raise ValueError(f"DSMILConfig.attn_dim must be a positive integer, got {self.attn_dim!r}")
        if not 0.0 <= float(self.dropout_v) < 1.0:
            raise ValueError(f"DSMILConfig.dropout_v must be in [0, 1), got {self.dropout_v}")


class _InstanceClassifier(nn.Module):
    """``Linear(embed_dim, C)`` applied per token (MIL-Lab key ``i_classifier.inst_classifier``)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.inst_classifier = make_linear(dim, num_classes)

    def forward(self, h: Tensor) -> Tensor:
        return self.inst_classifier(h)


class _BagClassifier(nn.Module):
    """Critical-instance attention (MIL-Lab key ``b_classifier``: ``q``, ``v.1``, ``norm``).

    MIL-Lab's ``BClassifier`` also builds an unused ``Conv1d(3, 3, embed_dim)`` (``fcc``); it is left out,
    so MIL-Lab checkpoints load after dropping ``b_classifier.fcc.*``.
    """

    def __init__(self, dim: int, attn_dim: int, dropout_v: float) -> None:
        super().__init__()
        self.q = make_linear(dim, attn_dim)
        self.v = nn.Sequential(make_dropout(dropout_v), make_linear(dim, dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: Tensor, inst_logits: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """``h (b, t, d)``, ``inst_logits (b, t, C)`` -> ``(bag (b, C, d), attn (b, t, C), crit (b, C))``."""
        masked_logits = inst_logits
        if mask is not None:
            masked_logits = inst_logits.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        critical = masked_logits.argmax(dim=1)  # (b, C): the top-scoring real token per class
        h_crit = torch.gather(h, 1, critical.unsqueeze(-1).expand(-1, -1, h.shape[-1]))  # (b, C, d)
        q = self.q(h)  # (b, t, a)
        q_crit = self.q(h_crit)  # (b, C, a)
        logits = torch.bmm(q, q_crit.transpose(1, 2)) / math.sqrt(q.shape[-1])  # (b, t, C)
        attn = masked_softmax(logits, None if mask is None else mask.unsqueeze(-1), dim=1)
        v = self.v(h)
        if mask is not None:
            v = v.masked_fill(~mask.unsqueeze(-1), 0.0)
        bag = self.norm(torch.bmm(attn.transpose(1, 2).to(v.dtype), v))  # (b, C, d)
        return bag, attn, critical


@register_model("dsmil")
class DSMIL(MILModel):
    """Dual-stream MIL with critical-instance attention (MIL-Lab's DSMIL), batched through the mask.

    Padded tokens are excluded from the critical-instance argmax, the attention softmax and the max over
    instance logits (MIL-Lab masks only the softmax).

    ``attention_kind = "post-softmax"``: ``attention (b, C, n)`` is the per-class attention weights ``A``
    (summing to 1 over the real patches; with Mammoth ``keep_slots`` the slot weights mapped to patches).

    Outputs: ``logits (b, C)`` = ``0.5 * (bag + max instance)``; ``instance_logits (b, n, C)`` when tokens
    are patches (``None`` for slot tokens); ``slide_features (b, C * embed_dim)`` (the flattened
    normalised bag representation); ``extras``: ``bag_logits (b, C)``, ``max_instance_logits (b, C)``
    (for DSMIL's original two-loss objective) and ``critical_tokens (b, C)`` token indices.
    """

    config_class: ClassVar[type[MILConfig]] = DSMILConfig
    attention_kind: ClassVar[str] = "post-softmax"

    def __init__(self, config: DSMILConfig) -> None:
        super().__init__(config)
        self.config: DSMILConfig
        c, d = config.num_classes, config.embed_dim
        self.i_classifier = _InstanceClassifier(d, c)
        self.b_classifier = _BagClassifier(d, config.attn_dim, config.dropout_v)
        self.classifier = nn.Conv1d(c, c, kernel_size=d)
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
        h, tmask = emb.tokens, emb.mask
        inst = self.i_classifier(h)  # (b, t, C)
        bag, attn, critical = self.b_classifier(h, inst, tmask)
        bag_logits = self.classifier(bag).squeeze(-1)  # (b, C)
        masked_inst = inst if tmask is None else inst.masked_fill(~tmask.unsqueeze(-1), float("-inf"))
        max_inst = masked_inst.amax(dim=1)  # (b, C)
        out = MILOutput(
            logits=0.5 * (bag_logits + max_inst),
            slide_features=bag.flatten(1),
            extras={"bag_logits": bag_logits, "max_instance_logits": max_inst, "critical_tokens": critical},
        )
        if getattr(self.patch_embed, "preserves_tokens", True):
            out.instance_logits = inst
        if return_attention:
            out.attention = self.to_patch_attention(emb, attn.transpose(1, 2))
        if return_routing:
            out.routing = emb.routing
        return out
