"""LongNet-style dilated attention (Ding et al. 2023), as in Lin-MIL's ablation and Prov-GigaPath.

Queries, keys and values are the input itself (``q = k = v = x``; the projections are identities, as in
``lin_mil``), split into ``h`` heads of width ``d``. For every branch ``i`` with segment length ``w_i``
and dilation ratio ``r_i`` (defaults ``w = (128, 64, 32)``, ``r = (2, 4, 8)``)::

    s        = min(w_i, n)                               effective segment length
    segments = consecutive blocks of s tokens (the last one zero padded)
    heads    split into r_i groups of ceil(h / r_i); group g keeps the tokens at in-segment offsets
             p with p mod r_i == g ("head-dependent offsets")
    o_i, lse_i = softmax attention (scale d^-1/2) inside every (segment, head) among the kept tokens,
             and the log-sum-exp of every query row
    out      = sum_i softmax_i(lse_i) * o_i              at every (token, head) the branch covers

Token/head pairs that no branch covers (e.g. odd positions of head 0 with the defaults) get zeros,
as in the reference. The branch weights are computed without gradient (``detach_branch_weights=True``,
as torchscale/LongNet); with ``False`` the mixture is exactly one softmax over the union of the
branches' keys, gradient included.

Implementation: plain PyTorch on ``scaled_dot_product_attention`` (no flash-attn / xformers; any dtype,
fp32 by default). ``lin_mil`` needs flash-attn and casts the block to fp16. The per-row log-sum-exp is
recomputed from the (small, ``(w/r)^2`` per segment) score blocks under ``no_grad``.

Padding. The reference attends to the zeros it pads each sequence with (to a multiple of the segment
length, and inside a segment to a multiple of the dilation ratio): they are keys with logit 0 and
value 0, so the output depends on ``n mod w``. Here those padding positions are masked out by default,
and a user ``mask`` is honoured by moving the real tokens of every bag to the front (in order) first, so
that a bag's output is the same whatever padding surrounds it. ``reference_padding=True`` reproduces
the reference's behaviour (zeros as keys); a masked batch is then processed bag by bag.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..routing import drop_full_mask

__all__ = ["DilatedAttention"]


class DilatedAttention(nn.Module):
    """Dilated multi-branch self-attention ``(b, n, dim) -> (b, n, dim)`` without learned weights.

    Args:
        dim: token width (``dim % num_heads == 0``).
        num_heads: heads ``h``; head width ``d = dim // h``.
        segment_lengths: segment length of every branch.
        dilation_ratios: dilation ratio of every branch (same length as ``segment_lengths``).
        dropout: dropout on the attention probabilities (training only; 0 in Lin-MIL).
        detach_branch_weights: compute the branch mixing weights without gradient (reference).
        reference_padding: let the zero padding take part as keys, as the reference does (see the
            module docstring); breaks padding invariance, off by default.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        segment_lengths: Sequence[int] = (128, 64, 32),
        dilation_ratios: Sequence[int] = (2, 4, 8),
        dropout: float = 0.0,
        detach_branch_weights: bool = True,
        reference_padding: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(dim, int) or not isinstance(num_heads, int) or dim < 1 or num_heads < 1:
            raise ValueError(f"dim and num_heads must be positive integers, got {dim!r}, {num_heads!r}")
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        segment_lengths, dilation_ratios = list(segment_lengths), list(dilation_ratios)
        if not segment_lengths or len(segment_lengths) != len(dilation_ratios):
            raise ValueError(
                f"segment_lengths {segment_lengths} and dilation_ratios {dilation_ratios} must be non-empty "
                "and of equal length"
            )
        for value in segment_lengths + dilation_ratios:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"segment lengths and dilation ratios must be positive integers, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.segment_lengths = segment_lengths
        self.dilation_ratios = dilation_ratios
        self.dropout = float(dropout)
        self.detach_branch_weights = bool(detach_branch_weights)
        self.reference_padding = bool(reference_padding)
        # identities, as in the reference (kept as named modules for a recognisable structure)
        self.q_proj = nn.Identity()
        self.k_proj = nn.Identity()
        self.v_proj = nn.Identity()
        self.out_proj = nn.Identity()

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, segment_lengths={self.segment_lengths}, "
                f"dilation_ratios={self.dilation_ratios}, reference_padding={self.reference_padding}")

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
            x: ``(b, n, dim)``.
            mask: optional bool ``(b, n)``, True = real token; padded tokens are no keys (their outputs
                are meaningless).
            return_attention: also return, per key, the effective attention weight (branch mixing
                included) averaged over heads and over the real queries among the first ``n_q`` tokens,
                ``(b, n)`` (no gradient).
            num_queries: return outputs only for the first ``num_queries`` tokens (``n_q``); all
                tokens are still computed (the segments need them).

        Returns:
            ``(out (b, n_q, dim), map (b, n) or None)``.
        """
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"DilatedAttention expects (b, n, {self.dim}), got {tuple(x.shape)}")
        b, n, _ = x.shape
        nq = n if num_queries is None else int(num_queries)
        if not 1 <= nq <= n:
            raise ValueError(f"num_queries must be in [1, {n}], got {num_queries}")
        if mask is not None:
            if mask.shape != (b, n):
                raise ValueError(f"mask must have shape {(b, n)}, got {tuple(mask.shape)}")
            mask = drop_full_mask(mask.to(device=x.device, dtype=torch.bool))
        x = self.q_proj(x)  # q = k = v = x
        query_weights = None
        if return_attention:
            qmask = torch.zeros(b, n, dtype=torch.bool, device=x.device)
            qmask[:, :nq] = True
            if mask is not None:
                qmask &= mask
            acc = torch.promote_types(x.dtype, torch.float32)
            query_weights = qmask.to(acc) / qmask.sum(1, keepdim=True).clamp_min(1).to(acc)

        if mask is None:
            out, attn_map = self._attend(x, None, query_weights)
        elif self.reference_padding:
            # the reference's padding semantics depend on each bag's own length: one bag at a time
            out = x.new_zeros(x.shape)
            attn_map = x.new_zeros((b, n)) if return_attention else None
            for i in range(b):
                idx = mask[i].nonzero().squeeze(1)
                qw = None if query_weights is None else query_weights[i : i + 1, idx]
                o_i, m_i = self._attend(x[i : i + 1, idx], None, qw)
                out[i, idx] = o_i[0]
                if attn_map is not None and m_i is not None:
                    attn_map[i, idx] = m_i[0]
        else:
            # move the real tokens of every bag to the front (stable), attend, move back
            order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # (b, n)
            inverse = torch.argsort(order, dim=1)
            xc = torch.gather(x, 1, order.unsqueeze(-1).expand(-1, -1, self.dim))
            lengths = mask.sum(dim=1)
            qw = None if query_weights is None else torch.gather(query_weights, 1, order)
            oc, mc = self._attend(xc, lengths, qw)
            out = torch.gather(oc, 1, inverse.unsqueeze(-1).expand(-1, -1, self.dim))
            attn_map = None if mc is None else torch.gather(mc, 1, inverse)
        out = self.out_proj(out)
        return out[:, :nq], attn_map

    def _attend(
        self, x: Tensor, lengths: Tensor | None, query_weights: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """Core on ``x (b, L, dim)`` whose bag ``i`` is real on its first ``lengths[i]`` tokens.

        ``lengths=None`` means every token is real (padding positions added here are still masked
        unless ``reference_padding``). ``query_weights (b, L)`` (summing to 1 per bag) requests the map.
        """
        b, length, _ = x.shape
        h, d = self.num_heads, self.head_dim
        xh = x.reshape(b, length, h, d)
        heads = torch.arange(h, device=x.device)
        acc = torch.promote_types(x.dtype, torch.float32)  # softmax statistics in >= fp32
        outs, lses = [], []
        attn_parts: list[tuple[Tensor, Tensor, Tensor, Tensor, int, int, int]] = []
        for seg_len, ratio in zip(self.segment_lengths, self.dilation_ratios):
            s = min(seg_len, length)
            nseg = math.ceil(length / s)
            m = math.ceil(s / ratio)  # kept tokens per (segment, head)
            g = m * ratio  # segment length padded to a multiple of the ratio
            group = math.ceil(h / ratio)
            offsets = heads // group  # (h,) in-segment offset of every head
            xs = F.pad(xh, (0, 0, 0, 0, 0, nseg * s - length)).reshape(b, nseg, s, h, d)
            xs = F.pad(xs, (0, 0, 0, 0, 0, g - s)).reshape(b, nseg, m, ratio, h, d)
            sparse = xs[:, :, :, offsets, heads, :]  # (b, nseg, m, h, d)
            qkv = sparse.permute(0, 1, 3, 2, 4).reshape(b * nseg, h, m, d)

            # in-segment and absolute position of every kept token: (nseg, m, h)
            p_in = torch.arange(m, device=x.device)[:, None] * ratio + offsets[None, :]  # (m, h)
            pos = torch.arange(nseg, device=x.device)[:, None, None] * s + p_in[None]
            if self.reference_padding:
                valid = torch.ones(b, nseg, m, h, dtype=torch.bool, device=x.device)
            else:
                limit = torch.full((b,), length, device=x.device) if lengths is None else lengths
                valid = (p_in < s)[None, None] & (pos[None] < limit[:, None, None, None])  # (b, nseg, m, h)
            key_mask = valid.permute(0, 1, 3, 2).reshape(b * nseg, h, 1, m)
            # (segment, head) groups without any valid key hold padded queries only: unmask to stay finite
            key_mask = key_mask | ~key_mask.any(dim=-1, keepdim=True)

            drop = self.dropout if self.training else 0.0
            o = F.scaled_dot_product_attention(qkv, qkv, qkv, attn_mask=key_mask, dropout_p=drop, scale=self.scale)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach_branch_weights):
                scores = torch.matmul(qkv, qkv.transpose(-1, -2)).to(acc) * self.scale
                scores = scores.masked_fill(~key_mask, float("-inf"))
                lse = torch.logsumexp(scores, dim=-1)  # (b*nseg, h, m)

            # back to dense positions: (b, nseg, m, h, d) -> (b, L, h, d); uncovered pairs get 0 / -inf
            o_dense = o.new_zeros((b, nseg, m, ratio, h, d))
            o_dense[:, :, :, offsets, heads, :] = o.reshape(b, nseg, h, m, d).permute(0, 1, 3, 2, 4)
            o_dense = o_dense.reshape(b, nseg, g, h, d)[:, :, :s].reshape(b, nseg * s, h, d)[:, :length]
            lse_dense = lse.new_full((b, nseg, m, ratio, h), float("-inf"))
            lse_dense[:, :, :, offsets, heads] = lse.reshape(b, nseg, h, m).permute(0, 1, 3, 2)
            lse_dense = lse_dense.reshape(b, nseg, g, h)[:, :, :s].reshape(b, nseg * s, h)[:, :length]
            outs.append(o_dense)
            lses.append(lse_dense)
            if query_weights is not None:
                attn_parts.append((scores.detach(), key_mask, offsets, heads, nseg, m, s))

        lse_all = torch.stack(lses)  # (branches, b, L, h)
        top = lse_all.amax(dim=0, keepdim=True)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        weights = torch.exp(lse_all - top)
        weights = weights / weights.sum(dim=0, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
        out = outs[0] * weights[0].unsqueeze(-1).to(outs[0].dtype)
        for w, o in zip(weights[1:], outs[1:]):
            out = out + o * w.unsqueeze(-1).to(o.dtype)
        out = out.reshape(b, length, h * d)

        attn_map = None
        if query_weights is not None:
            attn_map = self._effective_map(attn_parts, weights.detach(), query_weights, b, length)
        return out, attn_map

    def _effective_map(
        self,
        parts: list[tuple[Tensor, Tensor, Tensor, Tensor, int, int, int]],
        weights: Tensor,
        query_weights: Tensor,
        b: int,
        length: int,
    ) -> Tensor:
        """``sum_i sum_q qw[q] w_i[q, head] P_i[q -> key]`` averaged over heads -> ``(b, L)``."""
        h = self.num_heads
        total = query_weights.new_zeros((b, length))
        with torch.no_grad():
            for (scores, key_mask, offsets, heads, nseg, m, s), w, ratio in zip(parts, weights, self.dilation_ratios):
                probs = scores.softmax(dim=-1)  # (b*nseg, h, m, m)
                g = m * ratio
                # weight of every kept query: branch weight x query weight, sparse layout (b*nseg, h, m)
                qw = F.pad(query_weights, (0, nseg * s - length)).reshape(b, nseg, s)
                qw = F.pad(qw, (0, g - s)).reshape(b, nseg, m, ratio)[:, :, :, offsets]  # (b, nseg, m, h)
                wd = F.pad(w, (0, 0, 0, nseg * s - length)).reshape(b, nseg, s, h)
                wd = F.pad(wd, (0, 0, 0, g - s)).reshape(b, nseg, m, ratio, h)[:, :, :, offsets, heads]
                coef = (qw * wd).permute(0, 1, 3, 2).reshape(b * nseg, h, m)
                per_key = torch.einsum("zhq,zhqk->zhk", coef, probs)  # (b*nseg, h, m)
                dense = per_key.new_zeros((b, nseg, m, ratio, h))
                dense[:, :, :, offsets, heads] = per_key.reshape(b, nseg, h, m).permute(0, 1, 3, 2)
                total += dense.reshape(b, nseg, g, h)[:, :, :s].reshape(b, nseg * s, h)[:, :length].sum(-1)
        return total / h
