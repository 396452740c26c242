"""MeanMIL — mean pooling baseline from the MAMMOTH paper (not in MIL-Lab).

``patch_embed (Linear(in_dim, 512), or Mammoth) -> masked mean over tokens -> Linear(512, C)``, as the
MAMMOTH README's ``MeanMIL`` (config ``meanmil.base``: a plain ``nn.Linear``, no activation). The config
field ``act`` puts an activation after a linear patch embedding: ``meanmil.base_relu`` (``act: relu``) is
medmoe's ReLU variant. With Mammoth ``keep_slots`` the mean runs over the slot tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ...nn.backend import make_dropout, make_linear
from ...nn.embed import create_patch_embed
from ...nn.patch_embedding import make_activation
from ...nn.pooling import masked_mean
from ...registry import register_model
from ._init import initialize_weights
from .base import MILConfig, MILModel, MILOutput

__all__ = ["MeanMIL", "PoolMIL", "PoolMILConfig"]


@dataclass
class PoolMILConfig(MILConfig):
    """Config of the pooling baselines (MeanMIL, MaxMIL).

    ``dropout`` is applied to the pooled bag feature before the classifier (0 in the shipped configs,
    which reproduces the paper's ``fc -> pool -> Linear``).

    Attributes:
        act: activation after a ``linear``/``mlp`` patch embedding: ``none`` (the MAMMOTH README's plain
            ``nn.Linear``; configs ``base``) or e.g. ``relu`` (MIL-Lab's ``create_mlp`` style; configs
            ``base_relu``). Ignored by routed embeddings (``mammoth``, ``soft_moe``), whose experts end in
            their own activation. An ``act`` in ``patch_embed_args`` takes precedence. The dataclass
            default stays ``relu`` so that checkpoints written before the field existed (which store every
            other field, and had the ReLU) rebuild the model they were trained as; the packaged configs
            always name it.
    """

    act: str = "relu"

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            make_activation(self.act)
        except ValueError as err:
            raise ValueError(f"{type(self).__name__}.act: {err}") from None


class PoolMIL(MILModel):
    """Shared body of MeanMIL and MaxMIL: ``patch_embed -> pool -> Dropout -> Linear(embed_dim, C)``.

    ``patch_embed`` is ``Linear(in_dim, embed_dim)`` followed by ``config.act`` (none in ``base``), or the
    configured routed embedding; state-dict keys ``patch_embed.0.*`` either way for ``linear``.

    Subclasses implement :meth:`pool`. ``attention_kind = "none"``: no attention is returned.

    Outputs: ``logits (b, C)``, ``slide_features (b, embed_dim)`` and, when tokens are patches,
    ``instance_logits (b, n, C)`` = the classifier applied to every token (``None`` for slot tokens).
    """

    config_class: ClassVar[type[MILConfig]] = PoolMILConfig
    attention_kind: ClassVar[str] = "none"

    def __init__(self, config: PoolMILConfig) -> None:
        super().__init__(config, build_patch_embed=False)
        args = dict(config.patch_embed_args)
        if config.patch_embed in ("linear", "mlp"):
            args.setdefault("act", config.act)
        self.patch_embed = create_patch_embed(config.patch_embed, config.in_dim, config.embed_dim, **args)
        self.dropout = make_dropout(config.dropout)
        self.classifier = make_linear(config.embed_dim, config.num_classes)
        initialize_weights(self)

    def pool(self, tokens: Tensor, mask: Tensor | None) -> Tensor:  # pragma: no cover - abstract
        """``(b, t, d)`` tokens and ``(b, t)`` mask -> ``(b, d)``."""
        raise NotImplementedError

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

        ``label`` and ``return_attention`` are accepted for the common interface (no auxiliary loss, no
        attention).
        """
        x, mask = self.check_input(x, mask)
        emb = self.embed(x, mask, return_routing=return_routing)
        slide = self.pool(emb.tokens, emb.mask)
        out = MILOutput(logits=self.classifier(self.dropout(slide)), slide_features=slide)
        if getattr(self.patch_embed, "preserves_tokens", True):
            out.instance_logits = self.classifier(emb.tokens)
        if return_routing:
            out.routing = emb.routing
        return out


@register_model("meanmil")
class MeanMIL(PoolMIL):
    """MeanMIL: mean of the (real) patch embeddings, then a linear classifier (MAMMOTH paper baseline).

    ``attention_kind = "none"``. Since the classifier is linear, ``logits`` equal the mean of
    ``instance_logits`` over the real patches (without dropout).
    """

    def pool(self, tokens: Tensor, mask: Tensor | None) -> Tensor:
        return masked_mean(tokens, mask)
