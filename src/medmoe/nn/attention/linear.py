"""Kernelised linear attention of Lin-MIL (adapted there from L2ViT), with a key padding mask.

For every head ``h`` (``d = dim // num_heads`` channels) and a feature map ``phi`` (ReLU by default)::

    Q~ = phi(Q),  K~ = phi(K)                                 (n, d) each
    KV = tau_h * K~^T V                                       (d, d)
    U  = Q~ KV                                                (n, d)   un-normalised numerator
    z  = max(Q~ sum_j K~_j, denominator_floor)                (n,)
    out = U / z

followed by the output projection. ``tau_h`` is a learnable per-head temperature initialised to
``d ** -0.5``. Cost and memory are ``O(n d^2)`` per head: the ``n x n`` attention matrix never exists.

Padded keys (``mask == False``) are removed from both ``K~^T V`` and ``sum_j K~_j`` by zeroing their
features, so padding never changes the output at real positions.

About ``denominator_floor`` (default ``100``, the reference's hard-coded clamp minimum). The clamp keeps
the division safe (a query whose features are all zero has ``z = 0``; feature maps such as GELU, ELU,
tanh or leaky ReLU can even make ``z`` negative), but whenever ``Q~ sum_j K~_j < 100`` the normaliser is
the constant 100 instead of the key sum, so the output is no longer a weighted average of the values:
it shrinks with the number and the scale of the keys, and small bags (or small feature magnitudes) are
damped relative to large ones. (The temperature scales the numerator only.) The default keeps parity
with ``lin_mil`` 1.0.1 and with weights trained there; with a non-negative feature map (``relu``,
``softplus``) a small floor such as ``1e-6`` gives a properly normalised attention.

The per-token score the reference uses for its attention map is the numerator ``U`` averaged over heads
and channels: ``score[b, n] = mean_h mean_e U[b, h, n, e]``; it is computed here without materialising
``U`` a second time.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..backend import make_dropout, make_linear
from ..onednn_linear import fast_linear

__all__ = ["FEATURE_MAPS", "LinearAttention", "make_feature_map"]

#: Feature maps phi by normalised name (lower case, no ``_``); the reference's spellings
#: (``GeLU``, ``ReLU``, ``ELU``, ``LeakyReLU``, ``TanH``, ``Softplus``) map onto these.
FEATURE_MAPS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "leakyrelu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
}


def make_feature_map(name: str) -> nn.Module:
    """The kernel feature map ``phi`` by name (case and ``_`` insensitive: ``relu``, ``gelu``, ``elu``,
    ``leaky_relu``, ``tanh``, ``softplus``; ``GeLU``/``TanH`` etc. as in ``lin_mil``)."""
    if not isinstance(name, str):
        raise ValueError(f"feature map must be a name, got {name!r}")
    key = name.lower().replace("_", "").replace("-", "")
    if key not in FEATURE_MAPS:
        raise ValueError(f"unknown feature map {name!r}; choose one of {sorted(FEATURE_MAPS)}")
    return FEATURE_MAPS[key]()


class LinearAttention(nn.Module):
    """Multi-head linear attention ``(b, n, dim) -> (b, n, dim)``.

    Parameter names follow ``lin_mil.attention.linear_attention.LinearAttention`` (``qkv``, ``proj``,
    ``temperature``), so its state dict loads unchanged.

    Args:
        dim: model width; must be divisible by ``num_heads``.
        num_heads: number of heads ``h`` (head width ``d = dim // h``).
        qkv_bias: bias of the fused ``qkv`` projection (Lin-MIL uses ``True``).
        qk_scale: initial temperature (default ``d ** -0.5``).
        feature_map: ``phi`` applied to queries and keys (see :func:`make_feature_map`).
        proj_drop: dropout after the output projection (0 in Lin-MIL).
        denominator_floor: lower clamp of the normaliser ``Q~ sum_j K~_j`` (reference: 100; see the
            module docstring for why that matters).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        feature_map: str = "relu",
        proj_drop: float = 0.0,
        denominator_floor: float = 100.0,
    ) -> None:
        super().__init__()
        if not isinstance(dim, int) or not isinstance(num_heads, int) or dim < 1 or num_heads < 1:
            raise ValueError(f"dim and num_heads must be positive integers, got {dim!r}, {num_heads!r}")
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        if not denominator_floor > 0:
            raise ValueError(f"denominator_floor must be > 0, got {denominator_floor}")
        if not 0.0 <= proj_drop < 1.0:
            raise ValueError(f"proj_drop must be in [0, 1), got {proj_drop}")
        self.dim = dim
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim**-0.5
        self.denominator_floor = float(denominator_floor)
        self.temperature = nn.Parameter(torch.full((num_heads, 1, 1), float(self.scale)))
        self.qkv = make_linear(dim, dim * 3, bias=qkv_bias)
        self.proj = make_linear(dim, dim)
        self.proj_drop = make_dropout(proj_drop)
        self.act = make_feature_map(feature_map)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, denominator_floor={self.denominator_floor:g}"

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        *,
        return_scores: bool = False,
        num_queries: int | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend.

        Args:
            x: ``(b, n, dim)`` tokens.
            mask: optional bool ``(b, n)``, True = real token. Padded tokens are no keys; their own
                outputs are computed but meaningless.
            return_scores: also return the per-token score ``mean_{h, e} U`` (the reference's map).
            num_queries: compute outputs only for the first ``num_queries`` tokens (all tokens stay
                keys). Used by Lin-MIL's last block with cls pooling, where only the cls output is read.

        Returns:
            ``(out, scores)``: ``out`` is ``(b, n_q, dim)`` with ``n_q = num_queries or n``; ``scores``
            is ``(b, n)`` (over *all* tokens) when ``return_scores`` else ``None``.
        """
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"LinearAttention expects (b, n, {self.dim}), got {tuple(x.shape)}")
        b, n, c = x.shape
        h = self.num_heads
        d = c // h
        if mask is not None and mask.shape != (b, n):
            raise ValueError(f"mask must have shape {(b, n)}, got {tuple(mask.shape)}")
        weight, bias = self.qkv.weight, self.qkv.bias
        nq = n if num_queries is None else int(num_queries)
        if not 1 <= nq <= n:
            raise ValueError(f"num_queries must be in [1, {n}], got {num_queries}")
        phi_q_all: Tensor | None = None
        if nq == n or return_scores:
            qkv = fast_linear(x, weight, bias)  # (b, n, 3c)
            q, k, v = qkv.split(c, dim=-1)
            phi_q_all = self.act(q)
            phi_q = phi_q_all[:, :nq]
        else:
            # only the first nq queries are needed: skip the query projection of the other tokens
            phi_q = self.act(fast_linear(x[:, :nq], weight[:c], None if bias is None else bias[:c]))
            k, v = fast_linear(x, weight[c:], None if bias is None else bias[c:]).split(c, dim=-1)
        k = self.act(k)
        if mask is not None:
            k = k * mask.to(k.dtype).unsqueeze(-1)
        kh = k.reshape(b, n, h, d)
        vh = v.reshape(b, n, h, d)
        # KV_h = K~_h^T V_h and the key sum, fused into one (b, h, d, d + 1) matrix so that a single
        # matmul with Q~ yields numerator and denominator together.
        kv = torch.matmul(kh.permute(0, 2, 3, 1), vh.transpose(1, 2)) * self.temperature  # (b, h, d, d)
        ksum = kh.sum(dim=1).unsqueeze(-1)  # (b, h, d, 1)
        kvz = torch.cat([kv, ksum], dim=-1)  # (b, h, d, d + 1)
        uz = torch.matmul(phi_q.reshape(b, nq, h, d).transpose(1, 2), kvz)  # (b, h, nq, d + 1)
        u, z = uz.split([d, 1], dim=-1)
        # multiply by the (b, h, nq, 1) reciprocal: cheaper than a division, also in the backward pass
        out = (u * z.clamp_min(self.denominator_floor).reciprocal()).transpose(1, 2).reshape(b, nq, c)
        out = self.proj_drop(self.proj(out))
        scores = None
        if phi_q_all is not None and return_scores:
            # mean_{h,e} U[b, h, n, e] = mean_h phi(q_h[n]) . mean_e KV_h[:, e]
            scores = torch.einsum("bnhd,bhd->bn", phi_q_all.reshape(b, n, h, d), kv.mean(dim=-1)) / h
        return out, scores
