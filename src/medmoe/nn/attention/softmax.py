"""Multi-head softmax self-attention on ``torch.nn.functional.scaled_dot_product_attention``.

``out = W_out softmax(Q K^T / sqrt(d) + mask) V`` with ``h`` heads of width ``d``; the fused SDPA kernel
never materialises the ``n x n`` attention matrix.

Parameter names follow the ViT-style ``Attention`` used by ``lin_mil`` (``to_qkv`` without bias,
``to_out.0`` Linear + ``to_out.1`` Dropout), so its state dict loads unchanged.

Attention map. On request the layer returns one score per key, the attention weight it receives
**averaged over the (real) queries** and the heads: ``map[b, j] = mean_h mean_{i real} A_h[i, j]``;
for each bag it sums to 1 over the real keys. ``lin_mil`` instead averages over the *key* axis, which
gives the constant ``1 / n`` for every token (softmax rows sum to one), so its map carries no
information. The map is computed without gradient, query chunk by query chunk, so memory stays
``O(chunk * n)`` instead of ``O(n^2)``; nothing extra is computed when it is not requested. With
``num_queries=1`` (only the first token, e.g. a cls token, is queried) the map is that token's
attention row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backend import make_dropout, make_linear
from ..checks import check_positive_ints
from ..onednn_linear import fast_linear
from .dropout_attention import blocked_attention_preferred, dropout_attention

__all__ = ["SoftmaxAttention"]

#: Budget (elements) for one chunk of the ``(b, h, chunk, n)`` score block of the attention map.
_MAP_CHUNK_ELEMENTS = 1 << 24


class SoftmaxAttention(nn.Module):
    """Multi-head self-attention ``(b, n, dim) -> (b, n, dim)`` with a key padding mask.

    Args:
        dim: token width.
        heads: number of heads.
        dim_head: width of one head (default ``dim // heads``).
        dropout: dropout after the output projection (Lin-MIL: 0.1).
        qkv_bias: bias of the fused ``to_qkv`` projection (Lin-MIL: ``False``).

    As in the reference, ``to_out`` is an identity when ``heads == 1`` and ``dim_head == dim``.
    """

    def __init__(
        self, dim: int, heads: int = 8, dim_head: int | None = None, dropout: float = 0.0, qkv_bias: bool = False
    ) -> None:
        super().__init__()
        if dim_head is None:
            if not isinstance(heads, int) or heads < 1 or dim % heads:
                raise ValueError(f"dim ({dim}) must be divisible by heads ({heads}) when dim_head is not given")
            dim_head = dim // heads
        check_positive_ints("SoftmaxAttention", dim=dim, heads=heads, dim_head=dim_head)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"SoftmaxAttention: dropout must be in [0, 1), got {dropout}")
        self.dim, self.heads, self.dim_head = dim, heads, dim_head
        self.scale = dim_head**-0.5
        inner = heads * dim_head
        self.to_qkv = make_linear(dim, inner * 3, bias=qkv_bias)
        project_out = not (heads == 1 and dim_head == dim)
        self.to_out: nn.Module = nn.Sequential(make_linear(inner, dim), make_dropout(dropout)) if project_out else nn.Identity()

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, dim_head={self.dim_head}"

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        *,
        return_attention: bool = False,
        num_queries: int | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend.

        Args:
            x: ``(b, n, dim)`` tokens.
            mask: optional bool ``(b, n)``, True = real token. Padded tokens are no keys (and are left
                out of the map's query average); their own outputs are meaningless.
            return_attention: also return the map ``(b, n)`` described in the module docstring.
            num_queries: compute outputs only for the first ``num_queries`` tokens (all tokens are keys).

        Returns:
            ``(out (b, n_q, dim), map (b, n) or None)`` with ``n_q = num_queries or n``.
        """
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"SoftmaxAttention expects (b, n, {self.dim}), got {tuple(x.shape)}")
        b, n, _ = x.shape
        if mask is not None:
            if mask.shape != (b, n):
                raise ValueError(f"mask must have shape {(b, n)}, got {tuple(mask.shape)}")
            mask = mask.to(device=x.device, dtype=torch.bool)
        nq = n if num_queries is None else int(num_queries)
        if not 1 <= nq <= n:
            raise ValueError(f"num_queries must be in [1, {n}], got {num_queries}")
        h, d = self.heads, self.dim_head
        inner = h * d
        weight, bias = self.to_qkv.weight, self.to_qkv.bias
        if nq == n:
            q, k, v = fast_linear(x, weight, bias).split(inner, dim=-1)
        else:
            q = fast_linear(x[:, :nq], weight[:inner], None if bias is None else bias[:inner])
            k, v = fast_linear(x, weight[inner:], None if bias is None else bias[inner:]).split(inner, dim=-1)
        q = q.reshape(b, nq, h, d).transpose(1, 2)  # (b, h, nq, d)
        k = k.reshape(b, n, h, d).transpose(1, 2)  # (b, h, n, d)
        v = v.reshape(b, n, h, d).transpose(1, 2)
        key_mask = None if mask is None else mask[:, None, None, :]  # (b, 1, 1, n)
        if blocked_attention_preferred(q, k):  # long bags on CPU: faster than PyTorch's fused kernel
            out = dropout_attention(q, k, v, mask, 0.0)  # its scale, dim_head ** -0.5, is self.scale
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=self.scale)
        out = self.to_out(out.transpose(1, 2).reshape(b, nq, inner))
        attn_map = None
        if return_attention:
            query_mask = None if mask is None else mask[:, :nq]
            attn_map = self._mean_over_queries(q.detach(), k.detach(), key_mask, query_mask)
        return out, attn_map

    def _mean_over_queries(
        self, q: Tensor, k: Tensor, key_mask: Tensor | None, query_mask: Tensor | None
    ) -> Tensor:
        """``mean_h mean_{i real} softmax(q_i k^T * scale)`` -> ``(b, n)``, chunked over queries."""
        b, h, nq, _ = q.shape
        n = k.shape[2]
        chunk = max(1, _MAP_CHUNK_ELEMENTS // max(1, b * h * n))
        acc = torch.promote_types(q.dtype, torch.float32)
        total = q.new_zeros((b, n), dtype=acc)
        with torch.no_grad():
            for start in range(0, nq, chunk):
                qc = q[:, :, start : start + chunk]
                scores = torch.matmul(qc, k.transpose(-1, -2)).to(acc) * self.scale  # (b, h, c, n)
                if key_mask is not None:
                    scores = scores.masked_fill(~key_mask, float("-inf"))
                probs = scores.softmax(dim=-1)
                if query_mask is not None:
                    probs = probs * query_mask[:, None, start : start + chunk, None].to(probs.dtype)
                total += probs.sum(dim=(1, 2))
            count = torch.full((b,), float(nq), dtype=acc, device=q.device) if query_mask is None else query_mask.sum(1).to(acc)
            total = total / (h * count.clamp_min(1.0)).unsqueeze(-1)
        return total
