"""Modality tokenizers: 2-D and 3-D convolutional patch embeddings and position-embedding resampling.

Notation: ``b`` batch, ``c`` channels, ``h, w`` image size, ``z`` depth, ``g`` patch-grid size,
``t`` tokens (``gh * gw`` or ``gz * gh * gw``), ``d`` features.

* :class:`PatchEmbed2d` — ``Conv2d(c, d, p, stride p)`` (timm name ``patch_embed.proj``), 16x16 patches
  for ViT-B/16 at 224^2 (196 tokens); 64^2 and 128^2 give 4x4 and 8x8 grids.
* :class:`PatchEmbed3d` — ``Conv3d(1, d, p, stride p)`` + LayerNorm, 8^3 patches at 64^3 (512 tokens).
* :func:`resample_pos_embed` — bicubic (2-D) / trilinear (3-D) resampling of a learned position
  embedding to another patch grid, prefix (cls) tokens kept as they are.

Inputs whose size is not a multiple of the patch size (MedMNIST's 28^2 and 28^3 with 16- or 8-pixel
patches) are first resized (bilinear / trilinear) **up** to the next multiple (28 -> 32), so no pixel
is dropped: 28^2 gives a 2x2 grid at patch 16, 28^3 a 4^3 grid at patch 8.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...nn.checks import check_positive_ints

__all__ = ["PatchEmbed2d", "PatchEmbed3d", "grid_size", "resample_pos_embed"]


def grid_size(size: int, patch: int) -> int:
    """Patches per side for an input side ``size`` (rounded up: the input is resized to a multiple)."""
    if size < 1:
        raise ValueError(f"input size must be positive, got {size}")
    return max(1, math.ceil(size / patch))


class PatchEmbed2d(nn.Module):
    """Image to patch tokens with one strided convolution (timm ``PatchEmbed``, flatten, no norm by default).

    Args:
        img_size: the nominal input size (sets the position-embedding grid of the ViT).
        patch_size: square patch side ``p``.
        in_chans: input channels ``c``.
        embed_dim: token features ``d``.
        norm: LayerNorm over the tokens (timm ViT-B/16: no; MOSAIC's 2-D tokenizer: yes).
        norm_eps: that LayerNorm's epsilon (1e-6 as timm; the MOSAIC reference uses PyTorch's 1e-5).

    Shapes:
        ``x: (b, c, h, w)`` -> ``(b, gh * gw, d)``; :meth:`forward` also returns the grid ``(gh, gw)``.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        *,
        norm: bool = False,
        norm_eps: float = 1e-6,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_ints("PatchEmbed2d", img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                            embed_dim=embed_dim)
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.grid = (grid_size(img_size, patch_size),) * 2
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size, device=device, dtype=dtype)
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps, device=device, dtype=dtype) if norm else nn.Identity()

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        if x.ndim != 4:
            raise ValueError(f"PatchEmbed2d expects (b, c, h, w) images, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"PatchEmbed2d expects {self.in_chans} channels, got {x.shape[1]} (shape {tuple(x.shape)})")
        p = self.patch_size
        h, w = x.shape[-2:]
        gh, gw = grid_size(h, p), grid_size(w, p)
        if (h, w) != (gh * p, gw * p):
            x = F.interpolate(x, size=(gh * p, gw * p), mode="bilinear", align_corners=False)
        x = self.proj(x).flatten(2).transpose(1, 2)  # (b, gh*gw, d)
        return self.norm(x), (gh, gw)


class PatchEmbed3d(nn.Module):
    """Volume to patch tokens with one strided 3-D convolution, then LayerNorm (MOSAIC's 3-D tokenizer).

    Args:
        vol_size: the nominal volume side (64 for MedMNIST+ 3-D; sets the position-embedding grid).
        patch_size: cubic patch side ``p`` (8).
        in_chans: input channels (1).
        embed_dim: token features ``d``.
        norm: LayerNorm over the tokens (default: yes, as MOSAIC).
        norm_eps: that LayerNorm's epsilon (1e-6; the MOSAIC reference uses PyTorch's 1e-5).

    Shapes:
        ``x: (b, c, z, h, w)`` -> ``(b, gz * gh * gw, d)``; :meth:`forward` also returns the grid.
    """

    def __init__(
        self,
        vol_size: int = 64,
        patch_size: int = 8,
        in_chans: int = 1,
        embed_dim: int = 768,
        *,
        norm: bool = True,
        norm_eps: float = 1e-6,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_ints("PatchEmbed3d", vol_size=vol_size, patch_size=patch_size, in_chans=in_chans,
                            embed_dim=embed_dim)
        self.vol_size, self.patch_size, self.in_chans = vol_size, patch_size, in_chans
        self.grid = (grid_size(vol_size, patch_size),) * 3
        self.proj = nn.Conv3d(in_chans, embed_dim, patch_size, stride=patch_size, device=device, dtype=dtype)
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps, device=device, dtype=dtype) if norm else nn.Identity()

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
        if x.ndim != 5:
            raise ValueError(f"PatchEmbed3d expects (b, c, z, h, w) volumes, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"PatchEmbed3d expects {self.in_chans} channels, got {x.shape[1]} (shape {tuple(x.shape)})")
        p = self.patch_size
        size = tuple(x.shape[-3:])
        grid = tuple(grid_size(s, p) for s in size)
        if size != tuple(g * p for g in grid):
            x = F.interpolate(x, size=tuple(g * p for g in grid), mode="trilinear", align_corners=False)
        x = self.proj(x).flatten(2).transpose(1, 2)  # (b, gz*gh*gw, d)
        return self.norm(x), grid  # type: ignore[return-value]


def resample_pos_embed(
    pos_embed: Tensor,
    new_grid: tuple[int, ...],
    old_grid: tuple[int, ...] | None = None,
    *,
    num_prefix_tokens: int = 1,
    antialias: bool = False,
) -> Tensor:
    """Resample a learned position embedding to another patch grid.

    Args:
        pos_embed: ``(1, num_prefix_tokens + prod(old_grid), d)``.
        new_grid: target grid, 2 sides (bicubic) or 3 sides (trilinear).
        old_grid: source grid; default: a square / cube inferred from the token count.
        num_prefix_tokens: leading tokens (cls) copied unchanged.
        antialias: antialias when shrinking a 2-D grid (timm's ``resample_abs_pos_embed`` default: True;
            ``False`` here matches the original ViT / MOSAIC interpolation).

    Returns:
        ``(1, num_prefix_tokens + prod(new_grid), d)`` in ``pos_embed``'s dtype (computed in float32).
    """
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed must be (1, tokens, d), got {tuple(pos_embed.shape)}")
    dims = len(new_grid)
    if dims not in (2, 3):
        raise ValueError(f"new_grid must have 2 or 3 sides, got {new_grid}")
    n = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = round(n ** (1.0 / dims))
        if side**dims != n:
            raise ValueError(
                f"cannot infer a {dims}-D grid from {n} position tokens (+{num_prefix_tokens} prefix); give old_grid"
            )
        old_grid = (side,) * dims
    if math.prod(old_grid) != n:
        raise ValueError(f"old_grid {old_grid} holds {math.prod(old_grid)} tokens but pos_embed has {n}")
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    d = grid.shape[-1]
    grid = grid.float().reshape(1, *old_grid, d).movedim(-1, 1)  # (1, d, *old_grid)
    if dims == 2:
        grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False, antialias=antialias)
    else:
        grid = F.interpolate(grid, size=tuple(new_grid), mode="trilinear", align_corners=False)
    grid = grid.movedim(1, -1).reshape(1, -1, d).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
