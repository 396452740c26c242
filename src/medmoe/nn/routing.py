"""Routing results shared by every mixture-of-experts patch embedding.

Soft routing assigns every patch a share in every slot. Two summaries are kept cheap enough to
return on every forward (they are linear in the number of patches ``n``):

* ``slot_composition (b, n, t)`` — how much of output token ``t`` comes from patch ``n`` (each column
  sums to 1 over the real patches). Used to carry token-level scores (attention over Mammoth's 300
  slot tokens) back onto the patches a pathologist can see.
* ``expert_assignment (b, n, e)`` — for each patch, the share of its routing mass that goes to each
  expert (each row sums to 1). Used for per-expert heatmaps and load statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Routing", "check_mask"]


@dataclass
class Routing:
    """Routing summary of one MoE forward pass.

    Attributes:
        expert_assignment: ``(b, n, e)``, rows sum to 1 over experts (zeros at padded patches).
        slot_composition: ``(b, n, t)`` for layers whose output tokens are slots (Mammoth with
            ``keep_slots=True``), else ``None``. Columns sum to 1 over real patches.
        dispatch: the full dispatch weights (Mammoth: ``(b, n, e, h, s)``) when asked for, else ``None``.
    """

    expert_assignment: Tensor
    slot_composition: Tensor | None = None
    dispatch: Tensor | None = None

    @property
    def num_experts(self) -> int:
        return self.expert_assignment.shape[-1]

    def patch_scores(self, token_scores: Tensor) -> Tensor:
        """Carry scores over output tokens back to patches.

        Args:
            token_scores: ``(b, k, t)`` scores over the layer's output tokens (``k`` branches/classes).

        Returns:
            ``(b, k, n)``: ``sum_t token_scores[b, k, t] * slot_composition[b, n, t]``. Post-softmax token
            attention (summing to 1 over ``t``) becomes a patch distribution summing to 1 over ``n``.
        """
        if self.slot_composition is None:
            return token_scores
        if token_scores.ndim != 3 or token_scores.shape[-1] != self.slot_composition.shape[-1]:
            raise ValueError(
                f"token_scores must be (b, k, {self.slot_composition.shape[-1]}), got {tuple(token_scores.shape)}"
            )
        return torch.einsum("bkt,bnt->bkn", token_scores.to(self.slot_composition.dtype), self.slot_composition)

    def expert_load(self, mask: Tensor | None = None) -> Tensor:
        """Mean expert assignment over real patches, ``(b, e)`` (each row sums to 1)."""
        a = self.expert_assignment
        if mask is None:
            return a.mean(dim=1)
        m = mask.to(a.dtype).unsqueeze(-1)
        return (a * m).sum(1) / m.sum(1).clamp_min(1.0)

    def entropy(self) -> Tensor:
        """Per-patch routing entropy over experts, ``(b, n)`` in nats."""
        a = self.expert_assignment.clamp_min(1e-12)
        return -(a * a.log()).sum(-1)


def check_mask(x: Tensor, mask: Tensor | None) -> Tensor | None:
    """Validate a padding mask for ``x: (b, n, d)``; returns a bool ``(b, n)`` mask or ``None``.

    Raises ``ValueError`` when the shape does not match or a bag has no real instance.
    """
    if mask is None:
        return None
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask must have shape (b, n) = {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
    mask = mask.to(device=x.device, dtype=torch.bool)
    if torch.compiler.is_compiling():
        # A Python branch on tensor values would split torch.compile's graph: checked inside it instead
        # (a RuntimeError when the compiled model runs).
        torch._assert_async(mask.any(dim=1).all(), "every bag needs at least one real instance; a bag is fully masked")
        return mask
    if not bool(mask.any(dim=1).all()):
        empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(f"every bag needs at least one real instance; bags {empty} are fully masked")
    return mask


def drop_full_mask(mask: Tensor | None) -> Tensor | None:
    """``None`` when ``mask`` marks every position real (callers then take their unmasked fast path).

    Under ``torch.compile`` the mask is kept (a masked computation with nothing masked gives the same
    result), so the graph does not split on the mask's values.
    """
    if mask is None or torch.compiler.is_compiling():
        return mask
    return None if bool(mask.all()) else mask
