"""DilatedAttention against a naive implementation with explicit loops over branches, segments and heads.

``lin_mil``'s dilated attention needs flash-attn (CUDA), so the unit tests compare with the naive
loops below, written from the algorithm's description (LongNet / torchscale): per branch, segments of
``min(w, n)`` tokens, head group ``g`` keeps in-segment offsets ``g, g + r, ...``, softmax attention with
scale ``d^-1/2`` inside every (segment, head), branches mixed by ``softmax(lse)`` computed without
gradient. ``reference_padding=True`` lets the zero padding act as keys (the reference's behaviour);
the default masks it. (``tests/parity/test_linmil_parity.py`` also runs lin_mil's own DilatedAttention
with a pure-PyTorch stand-in for the flash kernel.)
"""

from __future__ import annotations

import math

import pytest
import torch

from medmoe.nn.attention.dilated import DilatedAttention


def naive_dilated(
    x: torch.Tensor, heads: int, segment_lengths, ratios, reference_padding: bool = False,
    query_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One unpadded bag ``x (n, c)`` -> (out (n, c), map (n,) or None)."""
    n, c = x.shape
    d = c // heads
    xh = x.reshape(n, heads, d)
    outs, lses, probs_all = [], [], []
    for w, r in zip(segment_lengths, ratios):
        s = min(w, n)
        g = math.ceil(s / r) * r
        group = math.ceil(heads / r)
        o_b = x.new_zeros(n, heads, d)
        lse_b = x.new_full((n, heads), float("-inf"))
        probs_b = []  # (head, query positions, key positions, P)
        for start in range(0, n, s):
            for j in range(heads):
                off = j // group
                slots = [start + p for p in range(off, g, r)]
                real = [p for p in slots if p < n and p - start < s]
                if not real:
                    continue
                keys = [xh[p, j] if (p < n and p - start < s) else x.new_zeros(d) for p in slots]
                if not reference_padding:
                    keys = [xh[p, j] for p in real]
                k = torch.stack(keys)
                key_pos = slots if reference_padding else real
                q = torch.stack([xh[p, j] for p in real])
                logits = q @ k.T * d**-0.5
                p_mat = logits.softmax(-1)
                o_b[real, j] = p_mat @ k
                with torch.no_grad():
                    lse_b[real, j] = logits.logsumexp(-1)
                probs_b.append((j, real, key_pos, p_mat.detach()))
        outs.append(o_b)
        lses.append(lse_b)
        probs_all.append(probs_b)
    with torch.no_grad():
        stacked = torch.stack(lses)
        top = stacked.amax(0).nan_to_num(neginf=0.0)
        e = torch.exp(stacked - top)
        weights = e / e.sum(0).clamp_min(1e-300)
    out = sum(wi.unsqueeze(-1) * oi for wi, oi in zip(weights, outs)).reshape(n, c)
    amap = None
    if query_weights is not None:
        amap = x.new_zeros(n)
        for wi, probs_b in zip(weights, probs_all):
            for j, real, key_pos, p_mat in probs_b:
                coef = query_weights[real] * wi[real, j]
                contrib = coef @ p_mat
                for kp, value in zip(key_pos, contrib):
                    if kp in real:  # zero padding keys (reference_padding) are no tokens
                        amap[kp] += value / heads
    return out, amap


CASES = [1, 3, 5, 33, 64, 130, 257]


@pytest.mark.parametrize("reference_padding", [False, True], ids=["masked-padding", "reference-padding"])
@pytest.mark.parametrize("n", CASES)
def test_matches_naive_loops(n: int, reference_padding: bool) -> None:
    m = DilatedAttention(32, 8, reference_padding=reference_padding).double()
    x = torch.randn(2, n, 32, dtype=torch.float64)
    out, amap = m(x, return_attention=True)
    for i in range(2):
        qw = torch.full((n,), 1.0 / n, dtype=torch.float64)
        ref, ref_map = naive_dilated(x[i], 8, m.segment_lengths, m.dilation_ratios, reference_padding, qw)
        torch.testing.assert_close(out[i], ref)
        torch.testing.assert_close(amap[i], ref_map)


@pytest.mark.parametrize("heads,segments,ratios", [(6, [10, 7], [4, 3]), (4, [8], [1]), (2, [16, 4], [4, 2])])
def test_uneven_heads_and_segments(heads: int, segments: list[int], ratios: list[int]) -> None:
    m = DilatedAttention(heads * 3, heads, segments, ratios).double()
    x = torch.randn(1, 23, heads * 3, dtype=torch.float64)
    out, _ = m(x)
    torch.testing.assert_close(out[0], naive_dilated(x[0], heads, segments, ratios)[0])


def test_gradients_match_naive_and_gradcheck() -> None:
    m = DilatedAttention(16, 4, [8, 4], [2, 4]).double()
    x = torch.randn(1, 19, 16, dtype=torch.float64, requires_grad=True)
    g = torch.randn(19, 16, dtype=torch.float64)
    (m(x)[0][0] * g).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    (naive_dilated(x2[0], 4, [8, 4], [2, 4])[0] * g).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    small = torch.randn(1, 7, 8, dtype=torch.float64, requires_grad=True)
    tiny = DilatedAttention(8, 2, [4, 2], [2, 1], detach_branch_weights=False).double()
    # with detached branch weights (the default, as the reference) the gradient is not the function's
    # true derivative by design, so gradcheck runs on the exact mixture
    assert torch.autograd.gradcheck(lambda t: tiny(t)[0], (small,), fast_mode=True)


def test_padding_invariance_and_num_queries() -> None:
    m = DilatedAttention(32, 8).double()
    sizes = [70, 5, 140]
    n_max = 150
    x = 3 * torch.randn(3, n_max, 32, dtype=torch.float64)
    mask = torch.zeros(3, n_max, dtype=torch.bool)
    bags = []
    for i, size in enumerate(sizes):
        idx = torch.randperm(n_max)[:size].sort().values  # padding interleaved with the real tokens
        mask[i, idx] = True
        bags.append(x[i, idx])
    out, amap = m(x, mask, return_attention=True)
    first, row = m(x, mask, return_attention=True, num_queries=1)
    for i, bag in enumerate(bags):
        alone, alone_map = m(bag.unsqueeze(0), return_attention=True)
        torch.testing.assert_close(out[i, mask[i]], alone[0])
        torch.testing.assert_close(amap[i, mask[i]], alone_map[0])
        assert (amap[i, ~mask[i]] == 0).all()
        if mask[i, 0]:
            _, alone_row = m(bag.unsqueeze(0), return_attention=True, num_queries=1)
            torch.testing.assert_close(row[i, mask[i]], alone_row[0])
            torch.testing.assert_close(first[i, 0], alone[0, 0])
    ref_pad = DilatedAttention(32, 8, reference_padding=True).double()
    out_ref, _ = ref_pad(x, mask)
    for i, bag in enumerate(bags):
        torch.testing.assert_close(out_ref[i, mask[i]], ref_pad(bag.unsqueeze(0))[0][0])


def test_no_parameters_and_errors() -> None:
    m = DilatedAttention(32, 8)
    assert len(list(m.parameters())) == 0
    with pytest.raises(ValueError):
        DilatedAttention(30, 8)
    with pytest.raises(ValueError):
        DilatedAttention(32, 8, [128, 64], [2])
    with pytest.raises(ValueError):
        DilatedAttention(32, 8, [0], [1])
    with pytest.raises(ValueError):
        m(torch.randn(1, 5, 16))
    with pytest.raises(ValueError):
        m(torch.randn(1, 5, 32), torch.ones(1, 6, dtype=torch.bool))
    with pytest.raises(ValueError):
        m(torch.randn(1, 5, 32), num_queries=9)
