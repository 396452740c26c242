"""Hierarchical mixture of experts (HoME) of Mamba-HoME, and its second level, the dynamic-slots Soft MoE.

Notation: ``b`` batch, ``N`` tokens, ``d`` features, ``K`` tokens per group, ``G = ceil(N / K)`` groups,
``E1`` first-level experts with ``S`` slots each, ``M = E1 * S``, ``E2`` second-level experts.

**HoME** (:class:`HoME`, ``HierarchicalDynamicSlotsSoftMoE`` in the release):

1. Pad ``N`` with zeros to a multiple of ``K``; the groups are contiguous runs of ``K`` tokens.
2. ``x_hat = RMSNorm(x)``; ``mu_g`` = mean of the *raw* tokens of group ``g`` (padding zeros included).
3. Slots per group from one shared projection: ``Phi_g = RMSNorm(W mu_g)`` with ``W: d -> d * M`` (no bias),
   viewed as ``(M, d)``.
4. ``C = softmax_M(x_hat Phi_g^T)``: one distribution over the ``M`` slots per token. It is used as the
   combine weights *and* the dispatch weights: ``Z_g = C_g^T x_g`` (raw ``x``, not normalised over tokens).
5. Expert ``e`` runs its GEGLU FFN on its ``S`` slots of every group, times a learnable scalar
   ``gamma_e`` (init 1); every output of group ``g`` is scaled by ``clamp(sigmoid(w mu_g + b), 0.01, 1)``.
6. The ``G * M`` slot outputs, as one sequence, go through :class:`DynamicSlotsSoftMoE` (``E2`` experts).
7. ``out_g = C_g Y2_g``; the padding is cropped. No residual inside.

All experts of a level run in one batched matmul (:class:`~medmoe.nn.experts.BatchedFeedForward`); there is
no Python loop over experts or groups.

**DynamicSlotsSoftMoE** on ``(b, L, d)``: ``x_hat = RMSNorm(x)``, padded to a multiple of ``E2`` with a mask;
the means of consecutive chunks of ``E2`` tokens (real tokens only) give ``n = L / E2`` slot embeddings per
expert, ``RMSNorm(W' mean)`` with ``W': d -> d * E2`` viewed ``(E2, n, d)``; dispatch = softmax over tokens,
combine = softmax over all ``E2 * n`` slots (canonical Soft MoE); slots are dispatch-weighted sums of ``x_hat``.

**Masks** (``mask: (b, N)`` bool, True = real token; an extension, the release has none at the HoME level):
with ``mask=None`` the layer is the reference exactly, including the zero padding counted in the last
group's mean. With a mask, masked tokens *and the padding added to reach a multiple of K* are left out
of the group means (mean over the real tokens only) and get zero combine/dispatch weight, groups without
a real token are masked out of the second level, and masked tokens' outputs are zero. So a
right-padded batch gives the real tokens exactly the outputs of ``mask=torch.ones(...)`` on the unpadded
sequence (which differs from ``mask=None`` only in how a partial last group is averaged).
The second level treats masked tokens as the reference's ``DynamicSlotsSoftMoE`` does (excluded from
chunk means and dispatch, fully masked chunks' slots excluded from combine); their outputs are zero
(the reference's are a uniform mix of slots).

**State dicts.** Parameter names follow the release (``norm``, ``to_slot_embeds.0`` / ``.2``,
``experts_first``, ``expert_gates``, ``group_gate_mlp``, ``dynamic_slots_soft_moe``); the experts are stored
stacked (``experts_first.w1/b1/w2/b2``), and the release's per-expert keys
(``experts_first.{i}.0.weight``, ``dynamic_slots_soft_moe.experts.{i}.3.bias``, ...) are converted on load.

Softmaxes run in float32; their results are cast back to the input dtype.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backend import make_linear
from .checks import check_positive_ints
from .experts import BatchedFeedForward
from .norms import RMSNorm

__all__ = ["DynamicSlotsSoftMoE", "HoME"]


def _check_tokens(owner: str, x: Tensor, dim: int, mask: Tensor | None) -> Tensor | None:
    if x.ndim != 3 or x.shape[-1] != dim:
        raise ValueError(f"{owner} expects x of shape (b, N, {dim}), got {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"{owner}: the sequence is empty (N = 0)")
    if mask is None:
        return None
    if mask.shape != x.shape[:2]:
        raise ValueError(
            f"{owner}: mask must have shape (b, N) = {tuple(x.shape[:2])}, got {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"{owner}: mask must be a bool tensor (True = real token), got {mask.dtype}")
    return mask.to(x.device)


def _nest_reference_experts(state_dict: dict[str, Tensor], head: str) -> None:
    """Rename the release's ``{head}{i}.{j}.*`` expert keys to ``{head}experts.{i}.{j}.*`` in place, the
    layout :class:`BatchedFeedForward`'s load hook stacks."""
    pattern = re.compile(re.escape(head) + r"\d+\.")
    for key in [k for k in state_dict if pattern.match(k)]:
        state_dict[head + "experts." + key[len(head) :]] = state_dict.pop(key)


def _at_least_fp32(x: Tensor) -> Tensor:
    """Upcast half / bfloat16 to float32 (softmaxes run in at least fp32); float32 / float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class _SplitExperts(nn.Module):
    """``(b, n, e * d) -> (b, e, n, d)`` (the release's ``Rearrange('b n (e d) -> b e n d')``)."""

    def __init__(self, num_experts: int) -> None:
        super().__init__()
        self.num_experts = num_experts

    def forward(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.num_experts, -1)).transpose(1, 2)


class DynamicSlotsSoftMoE(nn.Module):
    """Soft MoE whose slot embeddings are computed from chunk means of the input (HoME's second level).

    Args:
        dim: features ``d``.
        num_experts: experts ``E2``; also the chunk length, so every expert gets ``ceil(L / E2)`` slots.
        mult: expert hidden-size multiplier (GEGLU: ``int(d * mult * 2 / 3)``).
        geglu: GEGLU experts (True) or GELU MLP experts.
        dropout: dropout inside the experts.

    Shapes: ``x: (b, L, d)``, optional ``mask: (b, L)`` bool -> ``(b, L, d)``. See the module docstring.
    """

    def __init__(
        self, dim: int, num_experts: int = 4, mult: float = 4, geglu: bool = False, dropout: float = 0.0
    ) -> None:
        super().__init__()
        check_positive_ints("DynamicSlotsSoftMoE", dim=dim, num_experts=num_experts)
        self.dim, self.num_experts = dim, num_experts
        self.norm = RMSNorm(dim)
        self.to_slot_embeds = nn.Sequential(
            make_linear(dim, dim * num_experts, bias=False), _SplitExperts(num_experts), RMSNorm(dim)
        )
        self.experts = BatchedFeedForward(num_experts, dim, mult=mult, geglu=geglu, dropout=dropout)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        _nest_reference_experts(state_dict, prefix + "experts.")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        mask = _check_tokens("DynamicSlotsSoftMoE", x, self.dim, mask)
        b, L, d = x.shape
        e = self.num_experts
        xn = self.norm(x)
        pad = (-L) % e
        if pad:
            xn = F.pad(xn, (0, 0, 0, pad))
            if mask is None:
                mask = x.new_ones((b, L), dtype=torch.bool)
            mask = F.pad(mask, (0, pad), value=False)
        n = (L + pad) // e
        chunks = xn.view(b, n, e, d)
        if mask is None:
            means = chunks.mean(dim=2)
            slot_ok = None
        else:
            chunk_mask = mask.view(b, n, e, 1)
            count = chunk_mask.sum(dim=2).clamp(min=1e-5)
            means = (chunks * chunk_mask).sum(dim=2) / count
            slot_ok = chunk_mask.any(dim=2).view(b, 1, n)  # chunks with a real token
        slots_embed = self.to_slot_embeds(means)  # (b, e, n, d)
        logits = _at_least_fp32(
            torch.matmul(xn, slots_embed.reshape(b, e * n, d).transpose(1, 2))
        )  # (b, L', e*n)
        if mask is not None:
            neg = -torch.finfo(logits.dtype).max
            logits = logits.masked_fill(~mask[:, :, None], neg)
            logits = logits.view(b, -1, e, n).masked_fill(~slot_ok[:, :, None, :], neg).view(b, -1, e * n)
        dispatch = logits.softmax(dim=1).to(xn.dtype)  # over tokens
        combine = logits.softmax(dim=-1).to(xn.dtype)  # over all slots
        slots = torch.matmul(dispatch.transpose(1, 2), xn)  # (b, e*n, d)
        out = self.experts(slots.view(b, e, n, d)).reshape(b, e * n, d)
        out = torch.matmul(combine, out)[:, :L]
        if mask is not None:
            out = out * mask[:, :L, None]
        return out

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_experts={self.num_experts}"


class HoME(nn.Module):
    """Hierarchical soft mixture of experts of Mamba-HoME (see the module docstring).

    Args:
        dim: features ``d``.
        num_experts: first-level experts ``E1``.
        num_experts_second: second-level experts ``E2``.
        group_size: tokens per group ``K``.
        slots_per_expert: first-level slots per expert and group ``S``.
        mult: expert hidden-size multiplier (2 in Mamba-HoME).
        geglu: GEGLU experts (True in Mamba-HoME) or GELU MLP experts.
        dropout: dropout inside the experts.

    Shapes: ``x: (b, N, d)``, optional ``mask: (b, N)`` bool (True = real token) -> ``(b, N, d)``.
    Paper stages (``d, K, E1, E2`` = 48/2048/4/8, 96/1024/8/16, 192/512/12/24, 384/256/16/32; ``S`` 4,
    ``mult`` 2, GEGLU) have 0.17M, 1.34M, 7.99M and 42.5M parameters.
    """

    def __init__(
        self,
        dim: int,
        num_experts: int,
        num_experts_second: int,
        group_size: int,
        slots_per_expert: int = 4,
        mult: float = 2,
        geglu: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_positive_ints(
            "HoME", dim=dim, num_experts=num_experts, num_experts_second=num_experts_second, group_size=group_size,
            slots_per_expert=slots_per_expert,
        )
        self.dim, self.group_size = dim, group_size
        self.num_experts, self.slots_per_expert = num_experts, slots_per_expert
        self.num_slots = num_experts * slots_per_expert
        self.norm = RMSNorm(dim)
        self.to_slot_embeds = nn.Sequential(
            make_linear(dim, dim * self.num_slots, bias=False),
            nn.Unflatten(-1, (self.num_slots, dim)),
            RMSNorm(dim),
        )
        self.experts_first = BatchedFeedForward(num_experts, dim, mult=mult, geglu=geglu, dropout=dropout)
        self.expert_gates = nn.Parameter(torch.ones(num_experts))
        self.group_gate_mlp = make_linear(dim, 1)
        self.dynamic_slots_soft_moe = DynamicSlotsSoftMoE(
            dim, num_experts_second, mult=mult, geglu=geglu, dropout=dropout
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        _nest_reference_experts(state_dict, prefix + "experts_first.")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        mask = _check_tokens("HoME", x, self.dim, mask)
        b, N, d = x.shape
        K, E, S, M = self.group_size, self.num_experts, self.slots_per_expert, self.num_slots
        pad = (-N) % K
        G = (N + pad) // K
        if mask is not None:
            x = x * mask[..., None]
            mask = F.pad(mask, (0, pad), value=False).view(b, G, K, 1)
        groups = F.pad(x, (0, 0, 0, pad)).view(b, G, K, d)
        if mask is None:
            means = groups.mean(dim=2)  # padding zeros included, as the reference
        else:
            means = groups.sum(dim=2) / mask.sum(dim=2).clamp(min=1)
        phi = self.to_slot_embeds(means)  # (b, G, M, d)
        # padded tokens have x_hat = 0, so logits 0: no masking needed without a user mask (cropped anyway)
        logits = torch.matmul(self.norm(groups), phi.transpose(-1, -2))  # (b, G, K, M)
        combine = _at_least_fp32(logits).softmax(dim=-1).to(x.dtype)
        if mask is not None:
            combine = combine * mask
        slots = torch.matmul(combine.transpose(-1, -2), groups)  # (b, G, M, d), raw x
        gates = torch.sigmoid(self.group_gate_mlp(means)).clamp(0.01, 1.0)  # (b, G, 1)
        out = self.experts_first(slots.view(b * G, E, S, d)) * self.expert_gates[:, None, None]
        out = out.reshape(b, G, M, d) * gates[..., None]
        second_mask = None
        if mask is not None:
            real_group = mask.any(dim=2).view(b, G)
            # (under torch.compile the mask is kept even when every group is real: no branch on its values)
            if torch.compiler.is_compiling() or not bool(real_group.all()):
                second_mask = real_group[:, :, None].expand(b, G, M).reshape(b, G * M)
        out = self.dynamic_slots_soft_moe(out.view(b, G * M, d), mask=second_mask).view(b, G, M, d)
        out = torch.matmul(combine, out)  # (b, G, K, d)
        return out.view(b, G * K, d)[:, :N]

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, group_size={self.group_size}, num_experts={self.num_experts}, "
            f"slots_per_expert={self.slots_per_expert}"
        )
