"""Softmax attention with attention dropout on CPU, in cache-sized blocks of queries (no ``(t, t)`` weights).

PyTorch's fused attention kernels skip dropout on CPU: with ``dropout_p > 0`` SDPA forms the whole
``(b, h, tq, tk)`` weight matrix and samples its mask with ``bernoulli_``: gigabytes per layer at 10k patches,
and every element-wise pass over it (mask, softmax, dropout, their gradients) runs from main memory.

:func:`dropout_attention` computes the same thing block by block, in the manner of flash attention: for one
``(bag, head)`` and a block of queries it forms the logits against all keys (oneDNN, the queries scaled
once beforehand), their softmax (PyTorch's fused kernel), the dropout mask (the compiled counter-based
stream of :mod:`medmoe.nn.dropout`, one seed per block) and the block's output, and keeps only the output.
The backward pass recomputes each block's weights the same way, draws its mask once from the seed (``dS =
kept * dP - P * (dO . O)`` needs no second masking), and accumulates ``dk`` and ``dv`` transposed, so oneDNN
reads the long block as a transposed weight view instead of copying it. Memory is ``O(t d)`` plus one block;
no autograd graph is built inside (faster than the previous blocked version with log-sum-exp and masks drawn
twice; docs/performance-notes.md).

Maths, per query row ``i`` (``s`` = ``d ** -0.5``, ``M`` the keep mask, ``p`` the drop probability)::

    P_i = softmax_j(s q_i . k_j)   (masked keys: -inf)      O_i = sum_j M_ij / (1 - p) P_ij v_j
    dP_ij = M_ij / (1 - p) dO_i . v_j          dS_ij = P_ij (dP_ij - dO_i . O_i)
    dq_i = s sum_j dS_ij k_j       dk_j = s sum_i dS_ij q_i       dv_j = sum_i M_ij / (1 - p) P_ij dO_i

Under ``create_graph=True`` the gradients are those of the same blocks written as differentiable PyTorch ops
with the same masks (:func:`_reference`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from ..backend import native_enabled, onednn_linear
from ..dropout import counter_dropout, draw_seed
from ..higher_order import higher_order_requested, reference_gradients
from ..onednn_linear import onednn_linear_available

__all__ = ["blocked_attention_preferred", "dropout_attention", "dropout_attention_applies"]

# Query rows per block: about 2**20 logits (4 MiB in float32), so that a block stays in cache, and in the
# backward pass at least 64 rows, because with fewer the per-block (d, tk) updates of dk and dv dominate at long
# sequences (measurements in docs/performance-notes.md). The forward pass alone prefers cache-sized blocks; with
# dropout both passes must cut the same blocks (one mask seed per block), so they use the backward's.
_BLOCK_ELEMENTS = 1 << 20
_MIN_BLOCK_ROWS = 64


# Between these sizes (queries and keys) the blocks without dropout beat PyTorch's fused CPU attention in every
# run we measured (docs/performance-notes.md). Longer sequences won in some runs and lost in others: the blocks
# stream through the shared L3 cache where flash attention stays in L1/L2, so they suffer more from other
# processes on the machine. There the fused kernel is kept.
_BLOCKS_BEAT_SDPA_TOKENS = (3000, 12000)


def _blocks_apply(q: Tensor) -> bool:
    """The native backend, CPU, float32/float64, outside autocast and outside torch.compile's tracing."""
    return (
        q.device.type == "cpu"
        and q.dtype in (torch.float32, torch.float64)
        and not torch.is_autocast_enabled("cpu")
        and native_enabled()
    )


def dropout_attention_applies(q: Tensor) -> bool:
    """Whether :func:`dropout_attention` runs its blocked CPU path with dropout for queries like ``q``."""
    return _blocks_apply(q)


def blocked_attention_preferred(q: Tensor, k: Tensor) -> bool:
    """Whether :func:`dropout_attention` with ``dropout_p = 0`` is faster than
    ``F.scaled_dot_product_attention`` for ``q (b, h, tq, d)`` and ``k (b, h, tk, d)``: CPU float32 with
    oneDNN and 3,000 to 12,000 queries and keys (measured; see ``_BLOCKS_BEAT_SDPA_TOKENS``)."""
    low, high = _BLOCKS_BEAT_SDPA_TOKENS
    return (
        q.dtype == torch.float32
        and _blocks_apply(q)
        and onednn_linear_available()
        and low <= min(q.shape[2], k.shape[2])
        and max(q.shape[2], k.shape[2]) <= high
    )


def dropout_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_mask: Tensor | None,
    dropout_p: float,
    block_rows: int | None = None,
) -> Tensor:
    """``softmax(q k^T / sqrt(d)) -> dropout(p) -> @ v`` without ever holding the ``(t, t)`` weights.

    Args:
        q: ``(b, h, tq, d)``.
        k, v: ``(b, h, tk, d)``.
        key_mask: ``(b, tk)`` bool (True = real key) or ``None``.
        dropout_p: attention dropout probability in ``[0, 1)``.
        block_rows: queries per block (``>= 1``); default about ``2**20`` logits per block (at least 64 rows
            where gradients or dropout masks follow).

    Returns:
        ``(b, h, tq, d)``. Masks are drawn from PyTorch's default CPU generator (one seed per block), so
        ``torch.manual_seed`` repeats them (none are drawn at ``dropout_p = 0``). With dropout it requires
        :func:`dropout_attention_applies`.
    """
    if q.ndim != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"dropout_attention expects q (b, h, tq, d) and k, v (b, h, tk, d), got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if key_mask is not None and key_mask.shape != (k.shape[0], k.shape[2]):
        raise ValueError(f"key_mask must have shape {(k.shape[0], k.shape[2])}, got {tuple(key_mask.shape)}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_attention: dropout_p must be in [0, 1), got {dropout_p}")
    if not (dropout_attention_applies(q) if dropout_p > 0 else _blocks_apply(q)):
        raise ValueError(
            "dropout_attention runs on CPU float32/float64 under the native backend (outside autocast and "
            "torch.compile)"
        )
    if block_rows is None:
        cache_rows = max(1, _BLOCK_ELEMENTS // max(k.shape[2], 1))
        backward_rows = max(_MIN_BLOCK_ROWS, cache_rows)
        rows = backward_rows if dropout_p > 0 else cache_rows
    elif not isinstance(block_rows, int) or isinstance(block_rows, bool) or block_rows < 1:
        raise ValueError(f"dropout_attention: block_rows must be a positive integer, got {block_rows!r}")
    else:
        rows = backward_rows = block_rows
    n_blocks = q.shape[0] * q.shape[1] * -(-q.shape[2] // rows)
    seeds = [draw_seed() for _ in range(n_blocks)] if dropout_p > 0 else []  # p = 0 leaves the RNG alone
    return _BlockedDropoutAttention.apply(q, k, v, key_mask, float(dropout_p), rows, seeds, backward_rows)


def _block_product(a: Tensor, b: Tensor) -> Tensor:
    """``a (m, c) @ b (n, c).T``, on oneDNN in float32 whatever the size (``matmul_nt`` keeps short products
    on PyTorch's GEMM, but a block's are short on one side and long on the other)."""
    if a.dtype == torch.float32 and onednn_linear_available():
        return onednn_linear(a, b)
    return a @ b.t()


def _scaled_queries(q: Tensor) -> Tensor:
    """``q / sqrt(d)``, contiguous: the logits' scale applied once to the ``(t, d)`` queries."""
    return q.mul(q.shape[-1] ** -0.5).contiguous()


def _probabilities(qs_blk: Tensor, k: Tensor, bias: Tensor | None) -> Tensor:
    """Softmax weights ``(rows, tk)`` of one block: ``softmax(qs k^T (+ bias))`` (bias 0 or -inf per key),
    one fused pass over the cache-resident logits."""
    logits = _block_product(qs_blk, k)
    if bias is not None:
        logits.add_(bias)
    return torch.softmax(logits, dim=-1)


def _blocks(q: Tensor, rows: int) -> Iterator[tuple[int, int, int, slice]]:
    """``(index, bag, head, query slice)`` of every block, in seed order."""
    index = 0
    for bag in range(q.shape[0]):
        for head in range(q.shape[1]):
            for start in range(0, q.shape[2], rows):
                yield index, bag, head, slice(start, start + rows)
                index += 1


def _key_bias(key_mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """``(b, tk)``: 0 for real keys, -inf for masked ones."""
    if key_mask is None:
        return None
    return torch.zeros(key_mask.shape, dtype=dtype).masked_fill_(~key_mask.bool(), float("-inf"))


class _BlockedDropoutAttention(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        key_mask: Tensor | None,
        p: float,
        rows: int,
        seeds: list[int],
        backward_rows: int,
    ) -> Tensor:
        qs, kc, vc = _scaled_queries(q), k.contiguous(), v.contiguous()
        bias = _key_bias(key_mask, q.dtype)
        out = torch.empty_like(qs)
        for index, bag, head, sl in _blocks(qs, rows):
            probs = _probabilities(qs[bag, head, sl], kc[bag, head], None if bias is None else bias[bag])
            weights = counter_dropout(probs, p, seeds[index]) if p > 0 else probs
            out[bag, head, sl] = _block_product(weights, vc[bag, head].t())
        ctx.save_for_backward(q, k, v, key_mask, out)
        ctx.p, ctx.rows, ctx.seeds = p, backward_rows, seeds  # without dropout the blocks may differ
        return out

    @staticmethod
    def backward(ctx: Any, d_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        q, k, v, key_mask, out = ctx.saved_tensors
        p, rows, seeds = ctx.p, ctx.rows, ctx.seeds
        if higher_order_requested():
            grads = reference_gradients(
                _reference, (q, k, v, key_mask, p, rows, seeds), ctx.needs_input_grad[:7], d_out
            )
            return (*grads[:3], None, None, None, None, None)
        qs, kc, vc = _scaled_queries(q), k.contiguous(), v.contiguous()
        d_out = d_out.contiguous()
        bias = _key_bias(key_mask, q.dtype)
        scale = q.shape[-1] ** -0.5
        delta = (d_out * out).sum(-1)  # (b, h, tq): dO_i . O_i
        dq = torch.empty_like(qs)
        # dk and dv are accumulated transposed, (d, tk): the long (rows, tk) block is then read as a
        # transposed weight view by oneDNN, where a transposed input would be copied first
        dk_t = kc.new_zeros(kc.shape[:2] + kc.shape[:1:-1])  # (b, h, d, tk)
        dv_t = vc.new_zeros(vc.shape[:2] + vc.shape[:1:-1])
        for index, bag, head, sl in _blocks(qs, rows):
            qs_blk, do_blk = qs[bag, head, sl], d_out[bag, head, sl]
            probs = _probabilities(qs_blk, kc[bag, head], None if bias is None else bias[bag])  # (rows, tk)
            d_probs = _block_product(do_blk, vc[bag, head])  # (rows, tk): dO v^T
            row_delta = delta[bag, head, sl, None]
            if p > 0:  # dS = P (M / (1 - p) dP - delta) = kept dP - P delta: the mask is drawn once
                kept = counter_dropout(probs, p, seeds[index])
                d_logits = d_probs.mul_(kept).sub_(probs.mul_(row_delta))
            else:
                kept = probs
                d_logits = d_probs.sub_(row_delta).mul_(probs)
            dv_t[bag, head] += _block_product(do_blk.t().contiguous(), kept.t())  # dO^T kept
            dq[bag, head, sl] = _block_product(d_logits, kc[bag, head].t()).mul_(scale)
            dk_t[bag, head] += _block_product(qs_blk.t().contiguous(), d_logits.t())  # (scale q)^T dS
        return dq, dk_t.transpose(-1, -2), dv_t.transpose(-1, -2), None, None, None, None, None


def _reference(
    q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None, p: float, rows: int, seeds: list[int]
) -> Tensor:
    """The same blocks and masks as differentiable PyTorch ops (for higher-order gradients and tests)."""
    scale = q.shape[-1] ** -0.5
    bias = _key_bias(key_mask, q.dtype)
    per_head: dict[tuple[int, int], list[Tensor]] = {}
    for index, bag, head, sl in _blocks(q, rows):
        logits = (q[bag, head, sl] * scale) @ k[bag, head].t()
        if bias is not None:
            logits = logits + bias[bag]
        weights = logits.softmax(dim=-1)
        if p > 0:
            weights = counter_dropout(weights, p, seeds[index])
        per_head.setdefault((bag, head), []).append(weights @ v[bag, head])
    b, h = q.shape[:2]
    return torch.stack(
        [torch.stack([torch.cat(per_head[bag, head]) for head in range(h)]) for bag in range(b)]
    )
