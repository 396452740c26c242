"""Lin-MIL (Richter et al., COMPAYL @ MICCAI 2025): a linear-attention MIL transformer.

Per batch of bags ``x: (b, n, in_dim)``::

    tokens   = patch_embed(x)                     Linear(in_dim, 512), no activation (or Mammoth)
    [cls]    prepend a learned cls token           (pooling 'cls')
    tokens   = Dropout(emb_dropout)(tokens)
    depth x  x = x + DropPath(Attn(LN1(x)));  x = x + DropPath(MLP(LN2(x)))   MLP: 512 -> 2048 GELU -> 512
    pool     cls token, or the mean over the real tokens
    logits   = Linear(LN(LN(pooled)))              ``norm`` then ``mlp_head`` = LN + Linear, as the reference

``attention`` selects the attention of every block:

* ``linear`` (default): kernelised linear attention, ``phi = act`` (:class:`LinearAttention`), O(n).
* ``softmax``: exact multi-head attention on SDPA (:class:`SoftmaxAttention`), O(n^2) time.
* ``nystrom``: Nyström attention with 64 landmarks (:class:`NystromAttention`), O(n).
* ``dilated``: LongNet dilated attention, no QKV weights (:class:`DilatedAttention`), O(n).

``ablation`` follows ``lin_mil.Config``: the reference builds the ``attention`` variant only when
``ablation=True`` (otherwise it silently uses linear attention), and its ablation blocks fix the linear
variant's feature map to ReLU, ignoring ``act``. Here ``ablation=None`` (default) means "``True``
unless ``attention == 'linear'``"; ``ablation=False`` with another variant is refused.

Speed. With cls pooling only the cls token of the last block is read, so that block computes the
query projection, the attention output, the output projection and the MLP for the cls token only
(keys and values still come from every token): the same logits as running the full block, about a
fifth fewer FLOPs in total at depth 4.

Attention map (``return_attention=True``, ``MILOutput.attention (b, 1, n)`` over input patches, last
block, averaged over heads, padded patches 0):

* linear: the reference's score, the attention numerator ``U = phi(Q) KV`` averaged over heads and
  channels (``extras['attention_kind'] = 'pre-softmax'``: a score, not a distribution);
* softmax / nystrom / dilated (``'post-softmax'``): the attention weights the pooled query gives each
  token: the cls token's attention row (cls pooling), or the weights averaged over the real queries
  (mean pooling). For Nyström these are the rows of its approximate attention ``A1 pinv(A2) A3``
  (computed from the ``(n, m)`` factors, never ``n x n``; entries can be slightly negative). The
  reference returns ``None`` for Nyström and dilated, and for softmax the mean over *keys*, which is the
  constant ``1 / n``. The cls token's weight on itself is dropped.

With a patch embedding that outputs slot tokens (Mammoth ``keep_slots``) the token map is carried to
the patches through the routing (:meth:`MILModel.to_patch_attention`).

Padding never changes a bag's output: padded tokens are masked as keys (linear, softmax, dilated) and
left out of the mean pooling; Nyström's landmarks depend on the bag length, so a padded batch runs its
Nyström blocks bag by bag. Weights load from ``lin_mil.Lin_MIL`` with :meth:`LinMIL.load_reference_state_dict`
(only ``projection.*`` is renamed, to ``patch_embed.0.*``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ...nn.attention.dilated import DilatedAttention
from ...nn.attention.linear import LinearAttention, make_feature_map
from ...nn.attention.nystrom import NystromAttention
from ...nn.attention.softmax import SoftmaxAttention
from ...nn.backend import make_dropout, make_linear
from ...nn.checks import check_positive_fields
from ...nn.embed import create_patch_embed
from ...registry import register_model
from .base import MILConfig, MILModel, MILOutput

__all__ = ["DropPath", "LinMIL", "LinMILBlock", "LinMILConfig", "reference_key_map"]

ATTENTION_VARIANTS = ("linear", "softmax", "nystrom", "dilated")


@dataclass
class LinMILConfig(MILConfig):
    """Lin-MIL hyper-parameters (``lin_mil.Config`` defaults).

    Attributes:
        embed_dim: latent width (reference ``latent_dim`` = 512).
        dropout: **DropPath** rate of the residual branches (reference ``Config.dropout`` = 0).
        emb_dropout: dropout on the tokens after the embedding and cls token (0.1).
        depth: number of transformer blocks (``transformer_depth`` = 4).
        num_heads: attention heads (8).
        dim_head: head width of the softmax and Nyström variants; the reference fixes it at 64 whatever
            ``embed_dim`` is (linear and dilated attention use ``embed_dim // num_heads``).
        mlp_ratio: MLP hidden width / ``embed_dim`` (4 -> 2048).
        act: linear attention's feature map ``phi`` (``relu``, ``gelu``, ``elu``, ``leaky_relu``, ``tanh``,
            ``softplus``; the reference spellings ``ReLU``, ``GeLU``, ``TanH`` ... work too). Ignored (ReLU)
            when ``ablation`` is on, as in the reference.
        attention: ``linear`` | ``softmax`` | ``nystrom`` | ``dilated``.
        pooling: ``cls`` | ``mean``.
        ablation: the reference's ablation switch; ``None`` = ``attention != 'linear'``.
        denominator_floor: linear attention's lower clamp of the normaliser (reference 100; see
            :mod:`medmoe.nn.attention.linear`).
        softmax_dropout: dropout after the softmax attention's output projection (reference 0.1).
        nystrom_landmarks: Nyström landmarks (reference 64).
        nystrom_pinv_scale: ``sample`` (a bag's output does not depend on the rest of its batch) or
            ``batch`` (the reference: the pinv starting point is scaled with batch-wide maxima).
        dilated_segment_lengths, dilated_ratios: the dilated branches (reference [128, 64, 32], [2, 4, 8]).
    """

    embed_dim: int = 512
    dropout: float = 0.0
    emb_dropout: float = 0.1
    depth: int = 4
    num_heads: int = 8
    dim_head: int = 64
    mlp_ratio: float = 4.0
    act: str = "relu"
    attention: str = "linear"
    pooling: str = "cls"
    ablation: bool | None = None
    denominator_floor: float = 100.0
    softmax_dropout: float = 0.1
    nystrom_landmarks: int = 64
    nystrom_pinv_scale: str = "sample"
    dilated_segment_lengths: list[int] = field(default_factory=lambda: [128, 64, 32])
    dilated_ratios: list[int] = field(default_factory=lambda: [2, 4, 8])

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_positive_fields(self, "depth", "num_heads", "dim_head", "nystrom_landmarks")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"{name}: embed_dim={self.embed_dim} must be divisible by num_heads={self.num_heads}")
        if self.attention not in ATTENTION_VARIANTS:
            raise ValueError(f"{name}.attention must be one of {ATTENTION_VARIANTS}, got {self.attention!r}")
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"{name}.pooling must be 'cls' or 'mean', got {self.pooling!r}")
        if self.ablation is None:
            self.ablation = self.attention != "linear"
        elif not isinstance(self.ablation, bool):
            raise ValueError(f"{name}.ablation must be true, false or null, got {self.ablation!r}")
        elif not self.ablation and self.attention != "linear":
            raise ValueError(
                f"{name}: attention={self.attention!r} is an ablation variant; set ablation=True (or leave it "
                "null). lin_mil would silently build linear attention here."
            )
        make_feature_map(self.act)  # validates the name
        for key in ("emb_dropout", "softmax_dropout"):
            if not 0.0 <= float(getattr(self, key)) < 1.0:
                raise ValueError(f"{name}.{key} must be in [0, 1), got {getattr(self, key)}")
        if not float(self.mlp_ratio) > 0:
            raise ValueError(f"{name}.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not float(self.denominator_floor) > 0:
            raise ValueError(f"{name}.denominator_floor must be > 0, got {self.denominator_floor}")
        if self.nystrom_pinv_scale not in ("sample", "batch"):
            raise ValueError(f"{name}.nystrom_pinv_scale must be 'sample' or 'batch', got {self.nystrom_pinv_scale!r}")
        self.dilated_segment_lengths = [int(v) for v in self.dilated_segment_lengths]
        self.dilated_ratios = [int(v) for v in self.dilated_ratios]
        if len(self.dilated_segment_lengths) != len(self.dilated_ratios) or not self.dilated_ratios:
            raise ValueError(f"{name}: dilated_segment_lengths and dilated_ratios must be non-empty, equal length")
        if min(self.dilated_segment_lengths + self.dilated_ratios) < 1:
            raise ValueError(f"{name}: dilated segment lengths and ratios must be positive")


class DropPath(nn.Module):
    """Stochastic depth: zero a whole sample's residual branch with probability ``p`` (training only),
    scaling kept samples by ``1 / (1 - p)``. ``(b, ...) -> (b, ...)``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"DropPath probability must be in [0, 1), got {p}")
        self.p = float(p)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)


class Mlp(nn.Module):
    """``fc1 -> GELU -> fc2`` (keys ``fc1``/``fc2`` as the reference). ``(..., dim) -> (..., dim)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = make_linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = make_linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LinMILBlock(nn.Module):
    """Pre-LN transformer block with a selectable attention. Keys as ``lin_mil``'s blocks:
    ``norm1``, ``attn.*``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``."""

    def __init__(self, dim: int, config: LinMILConfig) -> None:
        super().__init__()
        heads = config.num_heads
        self.attention_type = config.attention
        self.norm1 = nn.LayerNorm(dim)
        self.attn: nn.Module
        if config.attention == "linear":
            phi = "relu" if config.ablation else config.act
            self.attn = LinearAttention(dim, heads, qkv_bias=True, feature_map=phi,
                                        denominator_floor=config.denominator_floor)
        elif config.attention == "softmax":
            self.attn = SoftmaxAttention(dim, heads=heads, dim_head=config.dim_head, dropout=config.softmax_dropout)
        elif config.attention == "nystrom":
            self.attn = NystromAttention(dim, dim_head=config.dim_head, heads=heads,
                                         num_landmarks=config.nystrom_landmarks,
                                         pinv_scale=config.nystrom_pinv_scale)
        else:
            self.attn = DilatedAttention(dim, heads, config.dilated_segment_lengths, config.dilated_ratios)
        self.drop_path = DropPath(config.dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio))

    def forward(
        self, x: Tensor, mask: Tensor | None = None, *, return_attention: bool = False, num_queries: int | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """``x (b, t, dim)`` -> ``(x' (b, t_q, dim), map (b, t) or None)``; ``t_q = num_queries or t``."""
        y = self.norm1(x)
        y, attn_map = self._attend(y, mask, return_attention, num_queries)
        x = x[:, : y.shape[1]] + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, attn_map

    def _attend(
        self, y: Tensor, mask: Tensor | None, return_attention: bool, num_queries: int | None
    ) -> tuple[Tensor, Tensor | None]:
        if self.attention_type == "linear":
            return self.attn(y, mask, return_scores=return_attention, num_queries=num_queries)
        if self.attention_type in ("softmax", "dilated"):
            return self.attn(y, mask, return_attention=return_attention, num_queries=num_queries)
        return self._nystrom(y, mask, return_attention, num_queries)

    def _nystrom(
        self, y: Tensor, mask: Tensor | None, return_attention: bool, num_queries: int | None
    ) -> tuple[Tensor, Tensor | None]:
        """Nyström on unpadded bags (one at a time when there is padding)."""
        b, t, _ = y.shape
        nq = t if num_queries is None else num_queries
        if mask is None:
            out, attn_map = self._nystrom_bags(y, return_attention, nq)
            return out[:, :nq], attn_map
        outs, maps = [], []
        for i in range(b):
            idx = mask[i].nonzero().squeeze(1)
            o_i, m_i = self._nystrom_bags(y[i : i + 1, idx], return_attention, int((idx < nq).sum()))
            full = o_i.new_zeros(1, t, o_i.shape[-1])
            outs.append(full.index_copy(1, idx, o_i))
            if m_i is not None:
                maps.append(m_i.new_zeros(1, t).index_copy(1, idx, m_i))
        out = torch.cat(outs, dim=0)[:, :nq]
        return out, (torch.cat(maps, dim=0) if return_attention else None)

    def _nystrom_bags(self, y: Tensor, return_attention: bool, nq: int) -> tuple[Tensor, Tensor | None]:
        """``y (b, t, dim)`` without padding -> ``(out (b, t, dim), map (b, t) or None)``; the map is the
        attention ``A1 pinv(A2) A3`` averaged over heads and the first ``nq`` queries."""
        if not return_attention:
            return self.attn(y), None
        out, (a1, a2_inv, a3) = self.attn(y, return_attn_matrices=True)
        b, t, _ = y.shape
        pad = a1.shape[2] - t  # the Nyström layer front-pads to a multiple of the landmarks
        with torch.no_grad():
            qw = a1.new_zeros(b, a1.shape[2])
            qw[:, pad : pad + max(nq, 1)] = 1.0 / max(nq, 1)
            row = torch.einsum("bq,bhqm->bhm", qw, a1)
            attn_map = ((row.unsqueeze(2) @ a2_inv) @ a3).squeeze(2)[..., pad:].mean(dim=1)  # (b, t)
        return out, attn_map


def reference_key_map(key: str) -> str:
    """Map a ``lin_mil.Lin_MIL`` state-dict key to :class:`LinMIL`'s (``projection.*`` -> ``patch_embed.0.*``)."""
    if key.startswith("projection."):
        return "patch_embed.0." + key[len("projection."):]
    return key


@register_model("linmil", description="Lin-MIL: linear-attention MIL transformer (+ softmax/Nyström/dilated)")
class LinMIL(MILModel):
    """Lin-MIL transformer (see the module docstring).

    Args:
        config: :class:`LinMILConfig`.
        pos_enc: optional callable ``(tokens (b, t, d), coords) -> tokens`` applied after the patch
            embedding (the reference's ``pos_enc``); needs an embedding with one token per patch.

    Outputs: ``logits (b, C)``, ``slide_features (b, d)`` (the normed pooled token, input of
    ``mlp_head``), ``attention (b, 1, n)`` on request, ``routing`` for MoE embeddings on request.
    State-dict keys equal ``lin_mil.Lin_MIL``'s except ``projection`` -> ``patch_embed.0``.
    """

    config_class: ClassVar[type[MILConfig]] = LinMILConfig
    attention_kind: ClassVar[str] = "post-softmax"

    def __init__(self, config: LinMILConfig, pos_enc: Callable[[Tensor, Any], Tensor] | None = None) -> None:
        if not isinstance(config, LinMILConfig):
            raise ValueError(f"LinMIL needs a LinMILConfig, got {type(config).__name__}")
        super().__init__(config, build_patch_embed=False)
        self.config: LinMILConfig
        d = config.embed_dim
        args = dict(config.patch_embed_args)
        if config.patch_embed == "linear":
            args.setdefault("act", None)  # Lin-MIL's projection has no activation
        self.patch_embed = create_patch_embed(config.patch_embed, config.in_dim, d, **args)
        if pos_enc is not None and not getattr(self.patch_embed, "preserves_tokens", True):
            raise ValueError("pos_enc needs one token per patch; this patch embedding outputs slot tokens")
        self.pos_enc = pos_enc
        self.pool = config.pooling
        if self.pool == "cls":
            self.cls_token = nn.Parameter(torch.randn(1, 1, d))
        self.dropout = make_dropout(config.emb_dropout)
        self.transformer = nn.ModuleList(LinMILBlock(d, config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(d)
        self.mlp_head = nn.Sequential(nn.LayerNorm(d), make_linear(d, config.num_classes))
        self.attention_kind = "pre-softmax" if config.attention == "linear" else "post-softmax"  # type: ignore[misc]

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        *,
        label: Tensor | None = None,
        return_attention: bool = False,
        return_routing: bool = False,
        coords: Tensor | None = None,
    ) -> MILOutput:
        """Classify bags ``x: (b, n, in_dim)`` with an optional bool ``mask: (b, n)`` (True = real patch).

        ``coords (b, n, 2)`` are passed to ``pos_enc`` when one was given; ``label`` is unused.
        """
        x, mask = self.check_input(x, mask)
        emb = self.embed(x, mask, return_routing=return_routing, return_attention=return_attention)
        tokens, tmask = emb.tokens, emb.mask
        if self.pos_enc is not None:
            tokens = self.pos_enc(tokens, coords)
        b = tokens.shape[0]
        cls = self.pool == "cls"
        if cls:
            tokens = torch.cat([self.cls_token.expand(b, -1, -1).to(tokens.dtype), tokens], dim=1)
            if tmask is not None:
                tmask = torch.cat([tmask.new_ones(b, 1), tmask], dim=1)
        h = self.dropout(tokens)
        attn_map = None
        depth = len(self.transformer)
        for i, block in enumerate(self.transformer):
            last = i == depth - 1
            h, amap = block(h, tmask, return_attention=return_attention and last,
                            num_queries=1 if (cls and last) else None)
            if last:
                attn_map = amap
        if cls:
            pooled = h[:, 0]
        elif tmask is None:
            pooled = h.mean(dim=1)
        else:
            w = tmask.to(h.dtype).unsqueeze(-1)
            pooled = (h * w).sum(dim=1) / w.sum(dim=1)
        feats = self.norm(pooled)
        out = MILOutput(logits=self.mlp_head(feats), slide_features=feats)
        if return_attention and attn_map is not None:
            scores = attn_map[:, 1:] if cls else attn_map  # (b, t)
            if emb.mask is not None:
                scores = scores.masked_fill(~emb.mask, 0.0)
            out.attention = self.to_patch_attention(emb, scores.unsqueeze(1).to(h.dtype))
            out.extras["attention_kind"] = self.attention_kind
        if return_routing:
            out.routing = emb.routing
        return out

    def load_reference_state_dict(self, state_dict: Mapping[str, Tensor], strict: bool = True) -> Any:
        """Load the weights of a ``lin_mil.Lin_MIL`` (same architecture and config) into this model."""
        if self.config.patch_embed != "linear":
            raise ValueError("reference weights need patch_embed='linear' (lin_mil's projection is one Linear)")
        mapped = {reference_key_map(k): v for k, v in state_dict.items()}
        return self.load_state_dict(mapped, strict=strict)

    @classmethod
    def config_from_reference(cls, ref_config: Any, *, input_dim: int, num_classes: int, heads: int = 8) -> LinMILConfig:
        """Translate a ``lin_mil.Config`` (+ the ``Lin_MIL`` arguments) into a :class:`LinMILConfig`.

        The reference builds linear attention whenever ``ablation`` is off, whatever ``attention`` says;
        that is reproduced here, and so is its batch-wide Nyström pinv scaling (``nystrom_pinv_scale =
        'batch'``). The dilated variant matches the reference's maths in fp32 (the reference runs it in
        fp16 through flash-attn); set ``block.attn.reference_padding = True`` to also let the zero padding
        act as keys, as the reference does.
        """
        ablation = bool(ref_config.ablation)
        return LinMILConfig(
            in_dim=input_dim, num_classes=num_classes, embed_dim=ref_config.latent_dim,
            depth=ref_config.transformer_depth, dropout=ref_config.dropout, emb_dropout=ref_config.emb_dropout,
            act=ref_config.act, attention=ref_config.attention if ablation else "linear",
            pooling=ref_config.pooling, ablation=ablation, num_heads=heads, nystrom_pinv_scale="batch",
        )
