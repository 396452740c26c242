"""TransMIL (Shao et al., NeurIPS 2021) as in MIL-Lab: Nyström transformer with a PPEG positional layer.

Per bag of ``n`` tokens (after the patch embedding)::

    square pad  n -> s*s with s = ceil(sqrt(n)), filling by repeating the first s*s - n tokens
    prepend     a learned cls token                                  (1 + s*s, d)
    layer 1     x + NystromAttention(LN(x))      (heads = num_heads, dim_head = d / heads,
                                                  landmarks = d / 2, 6 pinv iterations, dropout 0.1)
    PPEG        on the s x s grid: x + DWConv7(x) + DWConv5(x) + DWConv3(x); the cls token passes through
    layers 2..L x + NystromAttention(LN(x))
    head        LN, cls token -> Linear(d, C)

The square padding, the PPEG grid and the Nyström landmarks depend on the bag length, so bags of a
padded batch are processed one at a time on their real tokens (a batch without padding runs at once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ...nn.attention.nystrom import NystromAttention
from ...nn.backend import make_linear
from ...nn.checks import check_positive_fields
from ...nn.depthwise_conv import depthwise_conv2d_nhwc, folded_depthwise_kernel
from ...registry import register_model
from ._init import initialize_weights
from .base import MILConfig, MILModel, MILOutput

__all__ = ["PPEG", "NystromTransLayer", "TransMIL", "TransMILConfig"]


@dataclass
class TransMILConfig(MILConfig):
    """TransMIL hyper-parameters (MIL-Lab ``transmil/base``: embed_dim 512, 2 layers, 4 heads).

    Attributes:
        num_attention_layers: Nyström layers (PPEG sits after the first).
        num_heads: attention heads; ``embed_dim`` must be divisible by it (``dim_head = embed_dim / heads``).
        num_landmarks: Nyström landmarks; ``None`` means ``embed_dim // 2`` (MIL-Lab: 256).
        pinv_iterations: Moore–Penrose iterations.
        attn_dropout: dropout after each Nyström output projection (MIL-Lab hard-codes 0.1).

    ``dropout`` (0.25) is used by MIL-Lab only between the layers of a multi-layer patch embedding
    (``num_fc_layers > 1``); here that is ``patch_embed='mlp'`` with
    ``patch_embed_args={'num_layers': N, 'dropout': 0.25}``.
    """

    num_attention_layers: int = 2
    num_heads: int = 4
    num_landmarks: int | None = None
    pinv_iterations: int = 6
    attn_dropout: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_fields(self, "num_attention_layers", "num_heads")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"TransMILConfig: embed_dim={self.embed_dim} must be divisible by num_heads={self.num_heads}"
            )
        if self.num_landmarks is not None and (
            not isinstance(self.num_landmarks, int) or self.num_landmarks < 1
        ):
            raise ValueError(
                f"TransMILConfig.num_landmarks must be a positive integer or None, got {self.num_landmarks!r}"
            )
        if not 0.0 <= float(self.attn_dropout) < 1.0:
            raise ValueError(f"TransMILConfig.attn_dropout must be in [0, 1), got {self.attn_dropout}")


class NystromTransLayer(nn.Module):
    """Pre-norm residual Nyström attention: ``x + NystromAttention(LN(x))``.

    Keys ``norm.*`` and ``attention.*`` as MIL-Lab's ``TransLayer``. Shapes: ``(b, t, dim) -> (b, t, dim)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        dim_head: int,
        num_landmarks: int,
        pinv_iterations: int = 6,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attention = NystromAttention(
            dim,
            dim_head=dim_head,
            heads=num_heads,
            num_landmarks=num_landmarks,
            pinv_iterations=pinv_iterations,
            residual=True,
            dropout=dropout,
            pinv_scale="sample",
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.attention(self.norm(x))


class PPEG(nn.Module):
    """Pyramid position encoding generator: depthwise convolutions (7, 5, 3) on the token grid.

    Computed as one folded depthwise 7 x 7 convolution on the channels-last grid
    (:mod:`medmoe.nn.depthwise_conv`); parameters and state-dict keys are the three ``nn.Conv2d`` layers.

    ``x (b, 1 + H*W, dim)`` (cls first) -> same shape; the cls token is passed through unchanged.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 7, 1, 3, groups=dim)
        self.proj1 = nn.Conv2d(dim, dim, 5, 1, 2, groups=dim)
        self.proj2 = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        b, t, c = x.shape
        if t != 1 + height * width:
            raise ValueError(f"PPEG expects 1 + {height}*{width} tokens, got {t}")
        cls_token, feat = x[:, :1], x[:, 1:]
        # proj(g) + g + proj1(g) + proj2(g) as one folded 7 x 7 kernel on the channels-last grid
        weight, bias = folded_depthwise_kernel((self.proj, self.proj1, self.proj2), identity=True)
        grid = depthwise_conv2d_nhwc(feat.reshape(b, height, width, c), weight, bias)
        return torch.cat((cls_token, grid.reshape(b, height * width, c)), dim=1)


def _ceil_sqrt(n: int) -> int:
    return math.isqrt(n - 1) + 1 if n > 0 else 0


@register_model("transmil")
class TransMIL(MILModel):
    """TransMIL: Nyström-attention transformer with a PPEG layer and a cls token (MIL-Lab's version).

    ``attention_kind = "pre-softmax"``: ``MILOutput.attention (b, 1, n)`` is the dot product of every
    token with the cls token after layer 1 (MIL-Lab's definition), cropped to the real tokens (the square
    padding's duplicates are dropped) and ``-inf`` at padded patches. With a patch embedding that does
    not keep one token per patch (Mammoth with ``keep_slots``), the scores are softmax-normalised over the
    tokens and carried to the patches (``extras['attention_kind'] == 'post-softmax'``).

    Outputs: ``logits (b, C)``, ``slide_features (b, embed_dim)`` (normed cls token). State-dict keys
    follow MIL-Lab (``patch_embed``, ``pos_layer.proj{,1,2}``, ``cls_token``, ``blocks.{i}.norm``,
    ``blocks.{i}.attention.{to_qkv,to_out.0,res_conv}``, ``norm``, ``classifier``).

    Cost: linear in the number of tokens (Nyström, ``O(n * landmarks)``), plus the per-bag loop for
    padded batches.
    """

    config_class: ClassVar[type[MILConfig]] = TransMILConfig
    attention_kind: ClassVar[str] = "pre-softmax"

    def __init__(self, config: TransMILConfig) -> None:
        super().__init__(config)
        self.config: TransMILConfig
        d = config.embed_dim
        landmarks = config.num_landmarks or max(1, d // 2)
        self.pos_layer = PPEG(d)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d))
        self.blocks = nn.ModuleList(
            NystromTransLayer(
                d,
                config.num_heads,
                d // config.num_heads,
                landmarks,
                config.pinv_iterations,
                config.attn_dropout,
            )
            for _ in range(config.num_attention_layers)
        )
        self.norm = nn.LayerNorm(d)
        self.classifier = make_linear(d, config.num_classes)
        initialize_weights(self)

    def _aggregate(self, h: Tensor, return_attention: bool) -> tuple[Tensor, Tensor | None]:
        """Unpadded bags of equal length ``h (b, t, d)`` -> ``(slide (b, d), scores (b, t) | None)``."""
        b, t, _ = h.shape
        side = _ceil_sqrt(t)
        extra = side * side - t
        if extra > 0:
            h = torch.cat([h, h[:, :extra]], dim=1)
        h = torch.cat([self.cls_token.expand(b, -1, -1).to(h.dtype), h], dim=1)
        scores = None
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == 0:
                if return_attention:
                    scores = torch.einsum("btd,bd->bt", h[:, 1 : 1 + t], h[:, 0])
                h = self.pos_layer(h, side, side)
        return self.norm(h)[:, 0], scores

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
        if tmask is None:
            slide, scores = self._aggregate(tokens, return_attention)
        else:
            slides, score_rows = [], []
            for i in range(tokens.shape[0]):
                s, sc = self._aggregate(tokens[i : i + 1, tmask[i]], return_attention)
                slides.append(s)
                if sc is not None:
                    row = sc.new_full((1, tokens.shape[1]), float("-inf"))
                    row[:, tmask[i]] = sc
                    score_rows.append(row)
            slide = torch.cat(slides, dim=0)
            scores = torch.cat(score_rows, dim=0) if return_attention else None
        out = MILOutput(logits=self.classifier(slide), slide_features=slide)
        if return_attention and scores is not None:
            self.attach_attention(out, emb, scores.unsqueeze(1))  # (b, 1, t) token scores
        if return_routing:
            out.routing = emb.routing
        return out
