"""Expert layers evaluated for all experts at once (one einsum, no Python loop over experts).

* :class:`FactorizedLinear` — Mammoth's low-rank expert linear: a (shared or per-expert) projection to
  rank ``r`` followed by a per-expert projection, per head. State-dict compatible with
  ``mammoth.mammoth.FactorizedLinear`` (``shared_weight``, ``shared_bias``, ``expert_weights``, ``bias``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["FactorizedLinear"]


class FactorizedLinear(nn.Module):
    """Per-expert, per-head low-rank linear map ``y = (x A + a) B + c``.

    Args:
        in_dim: input features per head ``d_in``.
        out_dim: output features per head ``d_out``.
        rank: inner rank ``r`` (>= 1).
        num_experts: experts ``e``.
        num_heads: heads ``h``.
        share_weights: share ``A`` and ``a`` across experts (``A: (h, d_in, r)``) instead of one per
            expert (``A: (e, h, d_in, r)``).

    Shapes: ``(..., e, h, d_in) -> (..., e, h, d_out)``.

    Parameter count: ``h*d_in*r + h*r`` (shared) + ``e*h*r*d_out + e*h*d_out``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        rank: int,
        num_experts: int,
        num_heads: int,
        share_weights: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_dim", in_dim),
            ("out_dim", out_dim),
            ("rank", rank),
            ("num_experts", num_experts),
            ("num_heads", num_heads),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"FactorizedLinear: {name} must be a positive integer, got {value!r}")
        self.in_dim, self.out_dim, self.rank = in_dim, out_dim, rank
        self.num_experts, self.num_heads = num_experts, num_heads
        self.share_weight = share_weights
        lead = (num_heads,) if share_weights else (num_experts, num_heads)
        self.shared_weight = nn.Parameter(torch.empty(*lead, in_dim, rank))
        # The reference leaves this bias at randn (no init override); we keep that distribution.
        self.shared_bias = nn.Parameter(torch.randn(*lead, rank))
        self.expert_weights = nn.Parameter(torch.empty(num_experts, num_heads, rank, out_dim))
        self.bias = nn.Parameter(torch.empty(num_experts, num_heads, out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform weights and a fan-in uniform bias, as ``mammoth-moe`` initialises them."""
        nn.init.kaiming_uniform_(self.shared_weight, a=math.sqrt(5), nonlinearity="relu")
        nn.init.kaiming_uniform_(self.expert_weights, a=math.sqrt(5), nonlinearity="relu")
        fan_in, _ = nn.init._calculate_fan_in_and_fan_out(self.expert_weights)
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-3:] != (self.num_experts, self.num_heads, self.in_dim):
            raise ValueError(
                f"FactorizedLinear expects (..., {self.num_experts}, {self.num_heads}, {self.in_dim}), "
                f"got {tuple(x.shape)}"
            )
        if self.share_weight:
            u = torch.einsum("...ehi,hir->...ehr", x, self.shared_weight)
        else:
            u = torch.einsum("...ehi,ehir->...ehr", x, self.shared_weight)
        u = u + self.shared_bias
        return torch.einsum("...ehr,ehro->...eho", u, self.expert_weights) + self.bias

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.in_dim}, out_dim={self.out_dim}, rank={self.rank}, "
            f"num_experts={self.num_experts}, num_heads={self.num_heads}, share_weights={self.share_weight}"
        )
