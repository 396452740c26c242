"""ABMIL — attention-based MIL (Ilse et al., 2018) as in MIL-Lab (gated by default).

``patch_embed -> AttentionPool (gated or plain, k heads) -> concat heads -> Linear(k * embed_dim, C)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ...nn.backend import make_linear
from ...nn.pooling import AttentionPool
from ...registry import register_model
from ._init import initialize_weights
from .base import MILConfig, MILModel, MILOutput

__all__ = ["ABMIL", "ABMILConfig"]


@dataclass
class ABMILConfig(MILConfig):
    """ABMIL hyper-parameters (MIL-Lab ``abmil/base``: gate True, embed_dim 512, attn_dim 384,
    dropout 0.25, one head).

    Attributes:
        gate: gated attention (tanh * sigmoid, MIL-Lab's default) or plain tanh attention.
        attn_dim: hidden width of the attention network.
        num_heads: attention heads ``k``; the ``k`` pooled features are concatenated for the classifier.

    MIL-Lab's ``num_fc_layers`` is expressed as the patch embedding: ``patch_embed='mlp'`` with
    ``patch_embed_args={'num_layers': N, 'dropout': 0.25}``.
    """

    gate: bool = True
    attn_dim: int = 384
    num_heads: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("attn_dim", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ABMILConfig.{name} must be a positive integer, got {value!r}")


@register_model("abmil")
class ABMIL(MILModel):
    """Attention-based MIL with (gated) attention pooling, MIL-Lab's ABMIL / FEATHER architecture.

    ``attention_kind = "pre-softmax"``: ``MILOutput.attention`` ``(b, k, n)`` holds the raw attention
    logits of the ``k`` heads (MIL-Lab's ``log_dict['attention']``), ``-inf`` at padded patches. When the
    patch embedding does not keep one token per patch (Mammoth with ``keep_slots``), raw slot logits
    cannot be carried to patches, so ``attention`` is then the post-softmax slot weights mapped to the
    patches (a distribution over patches; ``extras['attention_kind'] == 'post-softmax'``).

    Outputs: ``logits (b, C)``, ``slide_features (b, k * embed_dim)``; ``extras['attention_kind']``
    when attention is returned. State-dict keys match MIL-Lab's (``patch_embed.0``,
    ``global_attn.attention_{a,b,c}``, ``classifier``) without the ``model.`` prefix.
    """

    config_class: ClassVar[type[MILConfig]] = ABMILConfig
    attention_kind: ClassVar[str] = "pre-softmax"

    def __init__(self, config: ABMILConfig) -> None:
        super().__init__(config)
        self.config: ABMILConfig
        self.global_attn = AttentionPool(
            config.embed_dim, config.attn_dim, dropout=config.dropout, gated=config.gate,
            num_branches=config.num_heads,
        )
        self.classifier = make_linear(config.embed_dim * config.num_heads, config.num_classes)
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

        ``label`` is accepted for the common interface and unused (ABMIL has no auxiliary loss).
        """
        x, mask = self.check_input(x, mask)
        emb = self.embed(x, mask, return_routing=return_routing, return_attention=return_attention)
        pooled, scores, weights = self.global_attn(emb.tokens, emb.mask)
        slide = pooled.flatten(1)
        out = MILOutput(logits=self.classifier(slide), slide_features=slide)
        if return_attention:
            self.attach_attention(out, emb, scores, weights)
        if return_routing:
            out.routing = emb.routing
        return out
