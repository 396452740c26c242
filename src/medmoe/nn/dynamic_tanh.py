"""Dynamic Tanh (DyT, Zhu et al. 2025): a normalisation-free replacement for LayerNorm, used by Mamba-HoME.

``y = weight * tanh(alpha * x) + bias`` with one learnable scalar ``alpha`` (initialised to 0.5 and clamped
to ``[0.1, 2.0]`` in the forward pass, as in Mamba-HoME) and per-channel ``weight`` (ones) and ``bias`` (zeros).
Parameter names ``alpha``, ``weight``, ``bias`` match the Mamba-HoME release, so its state dicts load.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["DynamicTanh"]

ALPHA_MIN, ALPHA_MAX = 0.1, 2.0


class DynamicTanh(nn.Module):
    """``weight * tanh(clamp(alpha, 0.1, 2.0) * x) + bias`` over the last dimension.

    Args:
        dim: channels ``d`` (size of the last dimension).
        alpha_init: initial value of the scalar ``alpha`` (0.5 in Mamba-HoME).

    Shapes: ``(..., d) -> (..., d)``.
    """

    def __init__(self, dim: int, alpha_init: float = 0.5) -> None:
        super().__init__()
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"DynamicTanh: dim must be a positive integer, got {dim!r}")
        if not isinstance(alpha_init, (int, float)) or isinstance(alpha_init, bool):
            raise ValueError(f"DynamicTanh: alpha_init must be a number, got {alpha_init!r}")
        self.dim = dim
        self.alpha_init = float(alpha_init)
        self.alpha = nn.Parameter(torch.full((1,), float(alpha_init)))
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"DynamicTanh expects (..., {self.dim}), got {tuple(x.shape)}")
        alpha = self.alpha.clamp(ALPHA_MIN, ALPHA_MAX)
        return torch.addcmul(self.bias, self.weight, torch.tanh(alpha * x))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, alpha_init={self.alpha_init}"
