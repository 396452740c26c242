"""Losses used inside models.

* :func:`smooth_top1_svm_loss` / :class:`SmoothTop1SVM` — the smooth top-1 multi-class SVM loss of
  Berrada, Zisserman & Kumar, "Smooth Loss Functions for Deep Top-k Classification" (ICLR 2018), the
  instance loss of CLAM's default configuration. Written from the paper's formula in plain PyTorch, so it
  runs on CPU and GPU without the ``smooth-topk`` package (which CLAM/MIL-Lab require, with CUDA).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["SmoothTop1SVM", "smooth_top1_svm_loss"]

_REDUCTIONS = ("mean", "sum", "none")


def smooth_top1_svm_loss(
    scores: Tensor,
    target: Tensor,
    *,
    alpha: float = 1.0,
    tau: float = 1.0,
    hard_threshold: float | None = 1e3,
    reduction: str = "mean",
) -> Tensor:
    """Smooth top-1 SVM loss (Berrada et al., 2018, with ``k = 1``).

    For scores ``s`` and true class ``y``, with the margin ``Delta_j = alpha * [j != y]``::

        L(s, y) = tau * log( sum_j exp((s_j + Delta_j - s_y) / tau) )

    i.e. the smooth top-k SVM ``L_{k,tau}`` for ``k = 1`` (the only size-1 set containing ``y`` is
    ``{y}``). As ``tau -> 0`` it becomes the hard multi-class SVM ``max_j(s_j + Delta_j) - s_y``.

    Like the authors' implementation (``smooth-topk``), a sample whose two largest scores differ by at
    least ``k * tau * log(hard_threshold)`` (``tau * log(1000)`` by default) uses the hard loss; the two
    differ there by less than ``tau * (C - 1) * exp(-(gap - alpha) / tau)``. ``hard_threshold=None``
    always uses the smooth formula (computed stably with ``logsumexp`` either way).

    Args:
        scores: ``(m, C)`` class scores, ``C >= 2``.
        target: ``(m,)`` integer class indices (a ``(m, 1)`` tensor is accepted).
        alpha: margin ``alpha`` (1).
        tau: temperature ``tau > 0`` (1).
        hard_threshold: switch to the hard loss above this ratio (``None`` = never).
        reduction: ``'mean'`` (default, as the reference), ``'sum'`` or ``'none'`` (per-sample ``(m,)``).

    Returns:
        The reduced loss (a scalar), or ``(m,)`` with ``reduction='none'``.
    """
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be (m, C) with C >= 2 classes, got shape {tuple(scores.shape)}")
    if target.ndim == 2 and target.shape[1] == 1:
        target = target[:, 0]
    if target.shape != scores.shape[:1]:
        raise ValueError(
            f"target must be ({scores.shape[0]},) class indices, got shape {tuple(target.shape)}"
        )
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    target = target.long()
    if scores.shape[0] and not target.is_cuda and (
        int(target.min()) < 0 or int(target.max()) >= scores.shape[1]
    ):
        raise ValueError(f"target classes must be in [0, {scores.shape[1] - 1}]")
    s = scores if scores.dtype == torch.float64 else scores.float()  # fp32 at least (also under autocast)
    margin = torch.full_like(s, float(alpha))
    margin.scatter_(1, target[:, None], 0.0)
    true_score = s.gather(1, target[:, None])
    augmented = s + margin - true_score  # (m, C); the true class entry is 0
    loss = tau * torch.logsumexp(augmented / tau, dim=1)
    if hard_threshold is not None:
        top2 = s.topk(2, dim=1).values
        hard = (top2[:, 0] - top2[:, 1]) >= tau * math.log(hard_threshold)
        loss = torch.where(hard.detach(), augmented.amax(dim=1), loss)
    loss = loss.to(scores.dtype)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


class SmoothTop1SVM(nn.Module):
    """Module form of :func:`smooth_top1_svm_loss`.

    Args:
        num_classes: number of classes ``C`` (checked against the scores).
        alpha: margin (1).
        tau: temperature (1).
        hard_threshold: see :func:`smooth_top1_svm_loss` (1000; ``None`` = always smooth).
        reduction: ``'mean'``, ``'sum'`` or ``'none'``.

    Shapes: ``scores (m, C)``, ``target (m,)`` -> scalar (or ``(m,)``).
    """

    def __init__(
        self,
        num_classes: int,
        alpha: float = 1.0,
        tau: float = 1.0,
        hard_threshold: float | None = 1e3,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"SmoothTop1SVM needs num_classes >= 2, got {num_classes!r}")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.num_classes, self.alpha, self.tau = num_classes, float(alpha), float(tau)
        self.hard_threshold, self.reduction = hard_threshold, reduction

    def forward(self, scores: Tensor, target: Tensor) -> Tensor:
        if scores.ndim != 2 or scores.shape[1] != self.num_classes:
            raise ValueError(f"expected scores (m, {self.num_classes}), got {tuple(scores.shape)}")
        return smooth_top1_svm_loss(
            scores, target, alpha=self.alpha, tau=self.tau, hard_threshold=self.hard_threshold,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, alpha={self.alpha}, tau={self.tau}"
