"""Vision Transformer (ViT-B/16 and smaller) with timm-compatible parameter names.

Notation: ``b`` batch, ``t`` tokens (1 cls + patches), ``d`` features, ``h`` heads.

Parameter names follow timm's ``VisionTransformer`` (``class_token=True``, ``global_pool='token'``,
no register tokens), so a timm state dict loads with ``strict=True``::

    patch_embed.proj.{weight,bias}   cls_token (1, 1, d)   pos_embed (1, 1 + g*g, d)
    blocks.N.norm1 / attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2   norm   head

Attention runs through :func:`torch.nn.functional.scaled_dot_product_attention`. Blocks can carry a
:class:`~medmoe.nn.adapters.MixtureOfSpecialists` (``blocks.N.adapter``) that runs in parallel to the
MLP (AdaptFormer)::

    x = x + attn(norm1(x));   n = norm2(x);   x = x + mlp(n) + adapter(n, specialist)

Inputs of another size than ``img_size`` use a resampled (bicubic) position embedding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...nn.adapters import MixtureOfSpecialists, RoutingTable
from ...nn.backend import make_linear
from ...nn.checks import check_positive_fields
from .tokenizers import PatchEmbed2d, resample_pos_embed

__all__ = ["Attention", "Block", "Mlp", "VisionTransformer", "VisionTransformerConfig"]


@dataclass
class VisionTransformerConfig:
    """Architecture of a :class:`VisionTransformer` (defaults: ViT-B/16 at 224^2, no classifier).

    Attributes:
        img_size: nominal input side (sets the position-embedding grid ``img_size // patch_size``).
        patch_size: patch side.
        in_chans: input channels.
        embed_dim: token features ``d`` (B: 768).
        depth: blocks (B: 12).
        num_heads: attention heads (B: 12).
        mlp_ratio: MLP hidden size ``/ d`` (B: 4).
        qkv_bias: bias in the qkv projection (B: True).
        num_classes: classifier outputs (0 = ``head`` is an identity).
        norm_eps: LayerNorm epsilon (timm / JAX ViT: 1e-6; the MOSAIC reference's PyTorch ViT: 1e-5).
        patch_norm: LayerNorm over the patch tokens after the patch convolution (``patch_embed.norm``;
            timm ViT-B/16: no; MOSAIC's 2-D tokenizer: yes). Uses ``norm_eps``.
    """

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    num_classes: int = 0
    norm_eps: float = 1e-6
    patch_norm: bool = False

    def __post_init__(self) -> None:
        check_positive_fields(self, "img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio}")

    @property
    def mlp_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @classmethod
    def base_patch16(cls, **overrides: Any) -> VisionTransformerConfig:
        """ViT-B/16 (86M parameters with a 1000-class head, 85.8M without)."""
        return cls(**{"embed_dim": 768, "depth": 12, "num_heads": 12, **overrides})

    @classmethod
    def tiny_test(cls, **overrides: Any) -> VisionTransformerConfig:
        """A tiny ViT for tests and demos (dim 32, depth 2, 2 heads, 16-pixel patches)."""
        return cls(**{"embed_dim": 32, "depth": 2, "num_heads": 2, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (timm names ``qkv``, ``proj``).

    Shapes: ``x: (b, t, d)`` -> ``(b, t, d)``.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, *, device=None, dtype=None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = make_linear(dim, 3 * dim, bias=qkv_bias, device=device, dtype=dtype)
        self.proj = make_linear(dim, dim, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (b, h, t, d/h)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    """``fc2(gelu(fc1(x)))`` (timm names ``fc1``, ``fc2``; exact GELU as in ViT)."""

    def __init__(self, dim: int, hidden: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.fc1 = make_linear(dim, hidden, device=device, dtype=dtype)
        self.act = nn.GELU()
        self.fc2 = make_linear(hidden, dim, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with an optional parallel adapter (``adapter``, ``None`` by default).

    Shapes: ``x: (b, t, d)`` -> ``(b, t, d)``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, qkv_bias: bool = True, norm_eps: float = 1e-6,
                 *, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps, **dd)
        self.attn = Attention(dim, num_heads, qkv_bias, **dd)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps, **dd)
        self.mlp = Mlp(dim, mlp_dim, **dd)
        self.adapter: MixtureOfSpecialists | None = None

    def forward(self, x: Tensor, specialist: str | Sequence[str] | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x))
        n = self.norm2(x)
        if self.adapter is None or specialist is None:
            return x + self.mlp(n)
        return x + self.mlp(n) + self.adapter(n, specialist)


class VisionTransformer(nn.Module):
    """ViT with a cls token, learned absolute position embedding and timm-compatible names.

    Args:
        config: a :class:`VisionTransformerConfig` (or its fields as keyword arguments).
        device, dtype: where to build the parameters (``device="meta"`` to count parameters for free).

    Shapes:
        ``forward(x: (b, c, h, w)) -> (b, num_classes)`` (or ``(b, d)`` features with ``num_classes=0``).
    """

    def __init__(self, config: VisionTransformerConfig | None = None, *, device=None, dtype=None,
                 **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = VisionTransformerConfig(**kwargs)
        elif kwargs:
            config = dataclasses.replace(config, **kwargs)
        self.config = cfg = config
        dd = {"device": device, "dtype": dtype}
        d = cfg.embed_dim
        self.num_prefix_tokens = 1
        self.patch_embed = PatchEmbed2d(cfg.img_size, cfg.patch_size, cfg.in_chans, d, norm=cfg.patch_norm,
                                        norm_eps=cfg.norm_eps, **dd)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d, **dd))
        grid = self.patch_embed.grid
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid[0] * grid[1], d, **dd))
        self.blocks = nn.ModuleList(
            Block(d, cfg.num_heads, cfg.mlp_dim, cfg.qkv_bias, cfg.norm_eps, **dd) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps, **dd)
        self.head: nn.Module = make_linear(d, cfg.num_classes, **dd) if cfg.num_classes else nn.Identity()
        self.reset_parameters()

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def reset_parameters(self) -> None:
        """Original-ViT (JAX) init: xavier-uniform linear weights, zero biases, position embedding
        normal(0.02), cls token normal(1e-6).

        Only matters for a randomly initialised backbone (``weights='none'``): timm's default
        trunc-normal(0.02) makes a *frozen* random ViT nearly blind (attention almost uniform, the cls
        feature nearly constant across images), the xavier init keeps it an informative random feature
        extractor, so adapter-only training still learns.
        """
        if self.pos_embed.is_meta:
            return
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and ".adapter." not in f".{name}.":
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # --------------------------------------------------------------------------------------------
    def add_adapters(self, table: str | RoutingTable = "mosaic", *, scale: float = 0.1, dropout: float = 0.0,
                     layer_norm: bool = True) -> None:
        """Attach a :class:`MixtureOfSpecialists` to every block (``blocks.N.adapter.specialists.*``)."""
        p = self.pos_embed
        for block in self.blocks:
            block.adapter = MixtureOfSpecialists(
                self.embed_dim, table, scale=scale, dropout=dropout, layer_norm=layer_norm,
                device=p.device, dtype=p.dtype,
            )

    def pos_embed_for(self, grid: tuple[int, int]) -> Tensor:
        """``(1, 1 + gh * gw, d)``: the position embedding, resampled when ``grid`` differs."""
        return resample_pos_embed(self.pos_embed, grid, self.patch_embed.grid)

    def embed(self, x: Tensor) -> Tensor:
        """Images ``(b, c, h, w)`` -> tokens ``(b, 1 + gh * gw, d)`` with cls token and positions."""
        tokens, grid = self.patch_embed(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.pos_embed_for(grid)

    def forward_tokens(self, tokens: Tensor, specialist: str | Sequence[str] | None = None) -> Tensor:
        """Run the blocks and the final norm on embedded tokens ``(b, t, d)`` -> ``(b, t, d)``."""
        for block in self.blocks:
            tokens = block(tokens, specialist)
        return self.norm(tokens)

    def forward_features(self, x: Tensor, specialist: str | Sequence[str] | None = None) -> Tensor:
        """Images ``(b, c, h, w)`` -> normalised tokens ``(b, t, d)``."""
        return self.forward_tokens(self.embed(x), specialist)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Tokens ``(b, t, d)`` -> cls feature ``(b, d)`` (``pre_logits``) or ``head`` output."""
        x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor, specialist: str | Sequence[str] | None = None) -> Tensor:
        return self.forward_head(self.forward_features(x, specialist))
