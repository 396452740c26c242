"""ILRA-MIL (Xiang et al., ICLR 2023, "Exploring low-rank property in MIL") as in MIL-Lab.

Gated attention blocks (GAB) route the bag through a learned low-rank latent matrix
``L (topk, d)`` and back, then non-local pooling (a learned query) builds the slide feature::

    MHA_g(Q, K):  Q' = fc_q(Q), K' = fc_k(K), V' = fc_v(K)
                  O  = LN0(Q' + MHA(Q', K', V'))          (nn.MultiheadAttention, its own projections)
                  O  = LN1(O + ReLU(fc_o(O)))             (LN only when ``ln``)
                  O  = O * SiLU(W_g Q)                     (gated variant, used inside GABs)
    GAB(X):       H = MHA_g(L, X)      (topk latents attend to the tokens)
                  X = MHA_g(X, H)      (tokens attend to the latents)
    pooling:      S (1, d) -> MHA(S, X) (un-gated) -> Linear(d, C)

Everything is linear in the number of tokens ``t`` (``O(t * topk)``). Bags of a padded batch are
handled with key padding masks in the two places where tokens are keys, so padding never changes a
bag's output.

Patch embedding: ILRA has none (``patch_embed: none``), the first GAB reads ``in_dim`` features; with
any other kind (e.g. Mammoth, as in the MAMMOTH paper) the first GAB reads ``embed_dim``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...nn.backend import make_linear
from ...nn.onednn_linear import fast_linear
from ...registry import register_model
from ._init import initialize_weights
from .base import MILConfig, MILModel, MILOutput

__all__ = ["GAB", "ILRA", "GatedMultiheadAttention", "ILRAConfig", "NonLocalPooling"]


@dataclass
class ILRAConfig(MILConfig):
    """ILRA hyper-parameters (MIL-Lab ``ilra/base``: embed_dim 256, 2 GABs, 8 heads, topk 64, ln True).

    Attributes:
        patch_embed: ``none`` (ILRA's own design, no embedding) or any patch-embedding kind.
        num_attention_layers: number of GAB blocks.
        num_heads: heads of every attention (``embed_dim`` must be divisible by it).
        topk: rows of each GAB's latent (low-rank) matrix.
        ln: LayerNorms inside the attention blocks (MIL-Lab's model class ignores the config and always
            uses True; here it is honoured).
        gated: SiLU gates in the GABs (the paper's and MIL-Lab's choice); False gives plain MAB blocks.
        mode: ``classification`` (the only mode MIL-Lab implements).

    ``dropout`` is unused (ILRA has no dropout).
    """

    embed_dim: int = 256
    patch_embed: str = "none"
    num_attention_layers: int = 2
    num_heads: int = 8
    topk: int = 64
    ln: bool = True
    gated: bool = True
    mode: str = "classification"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("num_attention_layers", "num_heads", "topk"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ILRAConfig.{name} must be a positive integer, got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"ILRAConfig: embed_dim={self.embed_dim} must be divisible by num_heads={self.num_heads}"
            )
        if self.mode != "classification":
            raise ValueError(
                f"ILRAConfig.mode must be 'classification' (survival is not implemented), got {self.mode!r}"
            )


class GatedMultiheadAttention(nn.Module):
    """MIL-Lab's ILRA ``MultiHeadAttention`` block (see the module docstring for the maths).

    Args:
        dim_q: query token width.
        dim_k: key token width.
        dim: output width (``dim_V``).
        num_heads: heads of the inner ``nn.MultiheadAttention``.
        ln: use ``ln0`` / ``ln1``.
        gated: multiply the output by ``SiLU(Linear(dim_q, dim)(Q))``.

    Shapes: ``q (b, s, dim_q)``, ``k (b, t, dim_k)``, ``key_mask (b, t)`` -> ``(b, s, dim)`` and, on request,
    head-averaged attention weights ``(b, s, t)``.
    """

    def __init__(
        self, dim_q: int, dim_k: int, dim: int, num_heads: int, ln: bool = True, gated: bool = False
    ) -> None:
        super().__init__()
        self.multihead_attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.fc_q = make_linear(dim_q, dim)
        self.fc_k = make_linear(dim_k, dim)
        self.fc_v = make_linear(dim_k, dim)
        self.ln0: nn.Module | None = nn.LayerNorm(dim) if ln else None
        self.ln1: nn.Module | None = nn.LayerNorm(dim) if ln else None
        self.fc_o = make_linear(dim, dim)
        self.gate: nn.Module | None = nn.Sequential(make_linear(dim_q, dim), nn.SiLU()) if gated else None

    def forward(
        self, q: Tensor, k: Tensor, key_mask: Tensor | None = None, return_attention: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        q_in = q
        q = self.fc_q(q)
        kk, vv = self.fc_k(k), self.fc_v(k)
        if return_attention:
            a, weights = self.multihead_attention(
                q,
                kk,
                vv,
                key_padding_mask=None if key_mask is None else ~key_mask,
                need_weights=True,
                average_attn_weights=True,
            )
        else:
            a, weights = self._attend(q, kk, vv, key_mask), None
        o = q + a
        if self.ln0 is not None:
            o = self.ln0(o)
        o = o + F.relu(self.fc_o(o))
        if self.ln1 is not None:
            o = self.ln1(o)
        if self.gate is not None:
            o = o * self.gate(q_in)
        return o, weights

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
        """``self.multihead_attention(q, k, v)[0]`` with the same parameters, its four projections on
        :func:`fast_linear` (oneDNN on CPU) and SDPA: ``q (b, s, dim)``, ``k, v (b, t, dim)`` -> ``(b, s, dim)``."""
        mha = self.multihead_attention
        d, h = mha.embed_dim, mha.num_heads
        w, bias = mha.in_proj_weight, mha.in_proj_bias
        (b, s, _), t = q.shape, k.shape[1]
        qh, kh, vh = (
            fast_linear(x, w[i * d : (i + 1) * d], None if bias is None else bias[i * d : (i + 1) * d])
            .view(b, n, h, d // h)
            .transpose(1, 2)
            for i, (x, n) in enumerate(((q, s), (k, t), (v, t)))
        )
        mask = None if key_mask is None else key_mask[:, None, None, :].to(torch.bool)
        dropout = mha.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, dropout_p=dropout)
        return fast_linear(out.transpose(1, 2).reshape(b, s, d), mha.out_proj.weight, mha.out_proj.bias)


class GAB(nn.Module):
    """Gated attention block with a learned low-rank latent matrix ``latent (1, topk, dim_out)``.

    Shapes: ``x (b, t, dim_in)``, ``mask (b, t)`` -> ``(b, t, dim_out)``.
    """

    def __init__(
        self, dim_in: int, dim_out: int, num_heads: int, topk: int, ln: bool = True, gated: bool = True
    ) -> None:
        super().__init__()
        self.latent = nn.Parameter(torch.empty(1, topk, dim_out))
        nn.init.xavier_uniform_(self.latent)
        self.project_forward = GatedMultiheadAttention(
            dim_out, dim_in, dim_out, num_heads, ln=ln, gated=gated
        )
        self.project_backward = GatedMultiheadAttention(
            dim_in, dim_out, dim_out, num_heads, ln=ln, gated=gated
        )

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        latent = self.latent.expand(x.shape[0], -1, -1).to(x.dtype)
        h, _ = self.project_forward(latent, x, mask)  # (b, topk, d): latents attend to the real tokens
        out, _ = self.project_backward(x, h)  # (b, t, d): every token attends to the latents
        return out


class NonLocalPooling(nn.Module):
    """A learned query ``S (1, 1, dim)`` cross-attends to the tokens (un-gated ``MHA_g``).

    Shapes: ``x (b, t, dim)``, ``mask (b, t)`` -> ``(b, dim)`` and, on request, weights ``(b, t)``.
    """

    def __init__(self, dim: int, num_heads: int, ln: bool = True) -> None:
        super().__init__()
        self.S = nn.Parameter(torch.empty(1, 1, dim))
        nn.init.xavier_uniform_(self.S)
        self.mha = GatedMultiheadAttention(dim, dim, dim, num_heads, ln=ln, gated=False)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, return_attention: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        query = self.S.expand(x.shape[0], -1, -1).to(x.dtype)
        out, weights = self.mha(query, x, mask, return_attention=return_attention)
        return out[:, 0], None if weights is None else weights[:, 0]


@register_model("ilra")
class ILRA(MILModel):
    """ILRA-MIL: gated attention blocks through low-rank latents and non-local pooling.

    ``attention_kind = "post-softmax"``: ``MILOutput.attention (b, 1, n)`` is the head-averaged
    cross-attention of the pooling query over the tokens (0 at padded patches; per bag, unlike MIL-Lab's
    sum over the batch). With Mammoth ``keep_slots`` the slot weights are carried to the patches.

    Outputs: ``logits (b, C)``, ``slide_features (b, embed_dim)``. State-dict keys follow MIL-Lab
    (``gab_blocks.{i}.latent``, ``gab_blocks.{i}.project_{forward,backward}.{fc_q,fc_k,fc_v,fc_o,ln0,ln1,
    gate.0,multihead_attention}``, ``pooling.S``, ``pooling.mha.*``, ``classifier``).
    """

    config_class: ClassVar[type[MILConfig]] = ILRAConfig
    attention_kind: ClassVar[str] = "post-softmax"

    def __init__(self, config: ILRAConfig) -> None:
        has_embed = config.patch_embed not in ("none", "identity", None)
        super().__init__(config, build_patch_embed=has_embed)
        self.config: ILRAConfig
        d = config.embed_dim
        first_in = d if has_embed else config.in_dim
        self.gab_blocks = nn.ModuleList(
            GAB(first_in if i == 0 else d, d, config.num_heads, config.topk, ln=config.ln, gated=config.gated)
            for i in range(config.num_attention_layers)
        )
        self.pooling = NonLocalPooling(d, config.num_heads, ln=config.ln)
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
        h, tmask = emb.tokens, emb.mask
        keep = None if tmask is None else tmask.unsqueeze(-1)
        for block in self.gab_blocks:
            if keep is not None:  # padded tokens are never keys; zero them so junk (inf/nan) cannot leak
                h = h.masked_fill(~keep, 0.0)
            h = block(h, tmask)
        slide, weights = self.pooling(h, tmask, return_attention=return_attention)
        out = MILOutput(logits=self.classifier(slide), slide_features=slide)
        if return_attention and weights is not None:
            out.attention = self.to_patch_attention(emb, weights.unsqueeze(1))
            out.extras["attention_kind"] = "post-softmax"
        if return_routing:
            out.routing = emb.routing
        return out
