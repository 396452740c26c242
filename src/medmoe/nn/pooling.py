"""Pooling over a bag of tokens, with padding masks.

* :func:`masked_softmax` — softmax that gives exactly zero weight to padded positions.
* :func:`masked_mean`, :func:`masked_max` — mean / max over the real tokens of each bag.
* :class:`AttentionPool` — (gated) attention pooling of Ilse et al. (2018), MIL-Lab's
  ``GlobalAttention`` / ``GlobalGatedAttention`` plus the softmax and the weighted sum.

Masks are bool ``(b, t)`` with True = real token, or ``None`` when every token is real. Every bag must
have at least one real token (the models validate this before pooling).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .backend import make_dropout, make_linear
from .checks import check_positive_ints

__all__ = ["AttentionPool", "AttentionPoolOutput", "masked_max", "masked_mean", "masked_softmax"]


def masked_softmax(scores: Tensor, mask: Tensor | None, dim: int = -1) -> Tensor:
    """Softmax along ``dim`` in float32, with padded positions given weight exactly 0.

    Args:
        scores: logits of any shape, e.g. ``(b, k, t)``.
        mask: bool tensor broadcastable to ``scores`` (True = real), or ``None``.
        dim: the axis to normalise over.

    Returns:
        Weights with the dtype of ``scores``; they sum to 1 along ``dim`` over the real positions.
    """
    logits = scores.float()
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return torch.softmax(logits, dim=dim).to(scores.dtype)


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over the token axis of ``x: (b, t, d)`` using only real tokens -> ``(b, d)``."""
    if mask is None:
        return x.mean(dim=1)
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def masked_max(x: Tensor, mask: Tensor | None) -> Tensor:
    """Element-wise max over the token axis of ``x: (b, t, d)`` using only real tokens -> ``(b, d)``."""
    if mask is not None:
        x = x.masked_fill(~mask.unsqueeze(-1), float("-inf"))
    return x.amax(dim=1)


class AttentionPoolOutput(NamedTuple):
    """Result of :class:`AttentionPool`.

    Attributes:
        pooled: ``(b, k, d)`` attention-weighted sums of the tokens, one per branch.
        scores: ``(b, k, t)`` pre-softmax attention logits (raw, also at padded positions).
        weights: ``(b, k, t)`` post-softmax weights (0 at padded positions, sum 1 over real tokens).
    """

    pooled: Tensor
    scores: Tensor
    weights: Tensor


class AttentionPool(nn.Module):
    """Attention pooling (Ilse et al., 2018), gated or plain, with ``k`` attention branches.

    Gated (MIL-Lab ``GlobalGatedAttention``)::

        a = Dropout(tanh(W_a h)),  g = Dropout(sigmoid(W_b h)),  score = W_c (a * g)

    Plain (MIL-Lab ``GlobalAttention``)::

        score = W_c Dropout(tanh(W_a h))

    then ``weights = softmax_t(score)`` (padded tokens excluded) and ``pooled = weights @ h``.

    Args:
        dim: token width ``d``.
        attn_dim: hidden width of the attention network (MIL-Lab ``D``, 384 in the base configs).
        dropout: dropout after the tanh / sigmoid branches.
        gated: use the sigmoid gate.
        num_branches: number of attention branches ``k`` (ABMIL heads, CLAM-MB classes).

    State-dict keys: ``attention_a.0.*``, ``attention_b.0.*`` (gated only) and ``attention_c.*``, as in
    MIL-Lab's gated attention. Checkpoints of MIL-Lab's plain attention (keys ``module.0.*`` and
    ``module.3.*``) are renamed on load.

    Shapes:
        ``h (b, t, dim)``, ``mask (b, t)`` -> :class:`AttentionPoolOutput` with ``pooled (b, k, dim)``,
        ``scores (b, k, t)`` and ``weights (b, k, t)``.
    """

    def __init__(
        self, dim: int, attn_dim: int = 384, dropout: float = 0.0, gated: bool = True, num_branches: int = 1
    ) -> None:
        super().__init__()
        check_positive_ints("AttentionPool", dim=dim, attn_dim=attn_dim, num_branches=num_branches)
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"AttentionPool: dropout must be in [0, 1), got {dropout}")
        self.dim, self.attn_dim, self.num_branches, self.gated = dim, attn_dim, num_branches, bool(gated)
        self.attention_a = nn.Sequential(make_linear(dim, attn_dim), nn.Tanh(), make_dropout(dropout))
        self.attention_b: nn.Module | None = (
            nn.Sequential(make_linear(dim, attn_dim), nn.Sigmoid(), make_dropout(dropout)) if self.gated else None
        )
        self.attention_c = make_linear(attn_dim, num_branches)

    def scores(self, h: Tensor) -> Tensor:
        """Pre-softmax attention logits: ``(b, t, dim) -> (b, k, t)``."""
        a = self.attention_a(h)
        if self.attention_b is not None:
            a = a * self.attention_b(h)
        return self.attention_c(a).transpose(1, 2)

    def forward(self, h: Tensor, mask: Tensor | None = None) -> AttentionPoolOutput:
        """Pool ``h: (b, t, dim)`` with an optional bool ``mask: (b, t)`` (True = real token)."""
        if h.ndim != 3 or h.shape[-1] != self.dim:
            raise ValueError(f"AttentionPool expects tokens (b, t, {self.dim}), got {tuple(h.shape)}")
        if mask is not None and mask.shape != h.shape[:2]:
            raise ValueError(
                f"AttentionPool: mask must have shape {tuple(h.shape[:2])}, got {tuple(mask.shape)}"
            )
        scores = self.scores(h)
        weights = masked_softmax(scores, None if mask is None else mask.unsqueeze(1), dim=-1)
        if mask is not None:  # padded tokens get weight 0; zero them too so that junk padding cannot leak
            h = h.masked_fill(~mask.unsqueeze(-1), 0.0)
        pooled = torch.bmm(weights.to(h.dtype), h)
        return AttentionPoolOutput(pooled, scores, weights)

    def _load_from_state_dict(  # type: ignore[override]
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # MIL-Lab's plain GlobalAttention stores Sequential(Linear, Tanh, Dropout, Linear) as `module`.
        renames = {"module.0.": "attention_a.0.", "module.3.": "attention_c."}
        for key in [k for k in state_dict if k.startswith(prefix + "module.")]:
            rest = key[len(prefix):]
            for old, new in renames.items():
                if rest.startswith(old):
                    state_dict[prefix + new + rest[len(old):]] = state_dict.pop(key)
                    break
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, attn_dim={self.attn_dim}, gated={self.gated}, "
            f"num_branches={self.num_branches}"
        )
