"""Ilse et al. (ICML 2018) — the attention-MIL network of the paper's MIL-benchmark experiments.

The embedding-based network the paper evaluates on MUSK1, MUSK2, FOX, TIGER and ELEPHANT (Table 1),
built on the MI-Net embedding (Wang et al., 2018)::

    patch_embed (Linear(in_dim, 256) + ReLU)  -> Dropout
    -> Linear(256, 128) + ReLU -> Dropout -> Linear(128, 64) + ReLU -> Dropout
    -> attention pooling (gated or plain, hidden width 64) -> Linear(64, C)

Configs: ``ilse.base`` (gated attention, the network the ``ilse2018`` run configuration names) and
``ilse.attention`` (plain tanh attention). The sources and the differences from the paper are listed in
``docs/reproducing-ilse2018.md``.

Differences from the paper, as named options or documented choices:

* The paper's output is ``Linear(64, 1) + sigmoid`` trained with the Bernoulli log-likelihood; here the
  classifier has ``num_classes`` logits trained with cross-entropy (the same function class for two
  classes: ``sigmoid(l_1 - l_0)``), so the model works with every medmoe task.
* ``init='xavier'`` (default): Glorot-uniform weights and zero biases, the paper's initialisation;
  ``init='mil_lab'`` gives MIL-Lab's Kaiming initialisation instead.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor, nn

from ...nn.backend import make_dropout, make_linear
from ...nn.patch_embedding import MLPEmbed
from ...nn.pooling import AttentionPool
from ...registry import register_model
from ._init import initialize_weights
from .base import MILConfig, MILModel, MILOutput

__all__ = ["IlseMIL", "IlseMILConfig"]

_INITS = ("xavier", "mil_lab")
_DROPOUT_AFTER = ("every", "last")


@dataclass
class IlseMILConfig(MILConfig):
    """Hyper-parameters of the Ilse et al. (2018) MIL-benchmark network.

    Attributes:
        embed_dim: width of the first layer (the patch embedding; 256 in the paper).
        hidden_dims: widths of the fully connected ReLU layers after the patch embedding (paper:
            ``[128, 64]``); the last one is the width of the pooled bag feature.
        dropout: dropout rate of the embedding's dropout layers (paper: 0.5 in MI-Net).
        dropout_after: ``'every'`` (a dropout after every fully connected layer of the embedding, as recalled
            from the paper) or ``'last'`` (one dropout, after the last layer, as MI-Net's reference code).
        gate: gated attention (``tanh * sigmoid``) or plain ``tanh`` attention.
        attn_dim: hidden width ``L`` of the attention network (paper: 64).
        init: ``'xavier'`` (Glorot-uniform weights, zero biases: the paper) or ``'mil_lab'`` (Kaiming).
    """

    embed_dim: int = 256
    hidden_dims: list[int] = field(default_factory=lambda: [128, 64])
    dropout: float = 0.5
    dropout_after: str = "every"
    gate: bool = True
    attn_dim: int = 64
    init: str = "xavier"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.attn_dim, int) or isinstance(self.attn_dim, bool) or self.attn_dim < 1:
            raise ValueError(f"IlseMILConfig.attn_dim must be a positive integer, got {self.attn_dim!r}")
        if not isinstance(self.hidden_dims, (list, tuple)) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in self.hidden_dims
        ):
            raise ValueError(
                f"IlseMILConfig.hidden_dims must be a list of positive integers (e.g. [128, 64]), "
                f"got {self.hidden_dims!r}"
            )
        self.hidden_dims = [int(d) for d in self.hidden_dims]
        if self.dropout_after not in _DROPOUT_AFTER:
            raise ValueError(
                f"IlseMILConfig.dropout_after must be one of {list(_DROPOUT_AFTER)}, got {self.dropout_after!r}"
            )
        if self.init not in _INITS:
            raise ValueError(f"IlseMILConfig.init must be one of {list(_INITS)}, got {self.init!r}")


@register_model("ilse")
class IlseMIL(MILModel):
    """The attention-MIL network of Ilse, Tomczak and Welling (2018) for the classic MIL benchmarks.

    ``patch_embed -> Dropout -> [Linear, ReLU, Dropout] x len(hidden_dims) -> AttentionPool -> Linear``
    (``dropout_after='last'``: only the last Dropout).
    The patch embedding is swappable (``patch_embed: mammoth`` replaces the first layer).

    ``attention_kind = "pre-softmax"``: ``MILOutput.attention`` ``(b, 1, n)`` holds the raw attention
    logits (``-inf`` at padded patches); with Mammoth's slot tokens, the post-softmax slot weights
    carried to the patches (``extras['attention_kind']`` says which).

    Outputs: ``logits (b, C)``, ``slide_features (b, hidden_dims[-1])``.
    """

    config_class: ClassVar[type[MILConfig]] = IlseMILConfig
    attention_kind: ClassVar[str] = "pre-softmax"

    def __init__(self, config: IlseMILConfig) -> None:
        super().__init__(config)
        self.config: IlseMILConfig
        dims = [config.embed_dim, *config.hidden_dims]
        last = len(dims) - 1  # the dropout after the last layer (position 0: after the patch embedding)

        def dropout_at(position: int) -> nn.Module:
            # nn.Identity keeps the layer indices (and so the state-dict keys) of the 'every' layout
            keep = config.dropout_after == "every" or position == last
            return make_dropout(config.dropout) if keep else nn.Identity()

        layers: list[nn.Module] = [dropout_at(0)]
        for position, (d_in, d_out) in enumerate(itertools.pairwise(dims), start=1):
            layers += [make_linear(d_in, d_out), nn.ReLU(), dropout_at(position)]
        self.fc = nn.Sequential(*layers)
        self.attention = AttentionPool(dims[-1], config.attn_dim, dropout=0.0, gated=config.gate)
        self.classifier = make_linear(dims[-1], config.num_classes)
        own_embed = isinstance(self.patch_embed, MLPEmbed)
        if config.init == "mil_lab":
            initialize_weights(self, skip=() if own_embed else (self.patch_embed,))
        else:
            skipped = set() if own_embed else {id(m) for m in self.patch_embed.modules()}
            for layer in self.modules():
                if isinstance(layer, nn.Linear) and id(layer) not in skipped:
                    nn.init.xavier_uniform_(layer.weight)
                    nn.init.zeros_(layer.bias)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        *,
        label: Tensor | None = None,
        return_attention: bool = False,
        return_routing: bool = False,
    ) -> MILOutput:
        """Classify bags ``x: (b, n, in_dim)`` with optional bool ``mask: (b, n)`` (True = real instance).

        ``label`` is accepted for the common interface and unused (no auxiliary loss).
        """
        x, mask = self.check_input(x, mask)
        emb = self.embed(x, mask, return_routing=return_routing, return_attention=return_attention)
        tokens = self.fc(emb.tokens)
        pooled, scores, weights = self.attention(tokens, emb.mask)
        slide = pooled.flatten(1)
        out = MILOutput(logits=self.classifier(slide), slide_features=slide)
        if return_attention:
            self.attach_attention(out, emb, scores, weights)
        if return_routing:
            out.routing = emb.routing
        return out
