"""Normalisation layers used by the expert-routing references.

* :class:`LayerNorm` — learnable gain, *fixed zero* bias (a buffer), as in ``mammoth-moe`` and
  ``soft-moe-pytorch``; state-dict keys ``gamma`` and ``beta``.
* :class:`RMSNorm` — ``l2norm(x) * sqrt(dim) * gamma``.
* :class:`ExpertWiseRMSNorm` — RMS norm over the concatenated heads of each expert, one gain per expert.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ExpertWiseRMSNorm", "LayerNorm", "RMSNorm", "l2norm"]


def l2norm(x: Tensor, eps: float = 1e-8) -> Tensor:
    """L2-normalise the last dimension (``F.normalize`` with a small ``eps``)."""
    return F.normalize(x, dim=-1, eps=eps)


def _check_dim(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class LayerNorm(nn.Module):
    """Layer norm over the last dimension with a learnable gain and a fixed zero bias.

    Args:
        dim: size of the normalised (last) dimension.

    Shapes: ``(..., dim) -> (..., dim)``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        _check_dim("dim", dim)
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], self.gamma, self.beta)


class RMSNorm(nn.Module):
    """RMS norm written as ``l2norm(x) * sqrt(dim) * gamma`` (the lucidrains / mammoth-moe form).

    Shapes: ``(..., dim) -> (..., dim)``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        _check_dim("dim", dim)
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return l2norm(x) * self.scale * self.gamma


class ExpertWiseRMSNorm(nn.Module):
    """RMS norm over the concatenated heads of each expert, with one gain vector per expert.

    Args:
        head_dim: features per head ``d``.
        num_heads: heads ``h``.
        num_experts: experts ``e``.

    Shapes: ``(..., e, h, d) -> (..., e, h, d)``; the norm runs over ``h * d``. The gain ``gamma`` has
    shape ``(e, h * d)`` (state-dict compatible with ``mammoth-moe``).
    """

    def __init__(self, head_dim: int, num_heads: int, num_experts: int) -> None:
        super().__init__()
        for name, value in (("head_dim", head_dim), ("num_heads", num_heads), ("num_experts", num_experts)):
            _check_dim(name, value)
        self.head_dim = head_dim
        self.num_heads = num_heads
        self.num_experts = num_experts
        self.scale = (head_dim * num_heads) ** 0.5
        self.gamma = nn.Parameter(torch.ones(num_experts, head_dim * num_heads))

    def forward(self, x: Tensor, eps: float = 1e-8) -> Tensor:
        if x.shape[-3:] != (self.num_experts, self.num_heads, self.head_dim):
            raise ValueError(
                f"ExpertWiseRMSNorm expects (..., {self.num_experts}, {self.num_heads}, {self.head_dim}), "
                f"got {tuple(x.shape)}"
            )
        flat = x.reshape(*x.shape[:-2], self.num_heads * self.head_dim)
        out = l2norm(flat, eps=eps) * self.scale * self.gamma
        return out.reshape(x.shape)
