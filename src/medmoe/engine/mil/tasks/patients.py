"""Metrics per patient (``metrics_level='group'``): a patient's bags are averaged before the metrics.

:func:`mean_per_group` averages per-bag scores (class probabilities, or survival hazard logits) over each
group (patient / case) and checks that the bags of a group share their label (and survival target);
:func:`mean_label_probability_per_group` does the same for multi-label bags in probability space.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ....errors import InputError

__all__ = ["mean_label_probability_per_group", "mean_per_group"]


def mean_per_group(
    scores: Tensor, labels: Tensor, dataset: Any, times: list[float] | None, events: list[int] | None
) -> tuple[Tensor, Tensor, list[float] | None, list[int] | None]:
    """Average the bags' scores ``(n, C)`` (class probabilities, or hazard logits for survival) over each
    group (patient / case) of ``dataset.groups``, in order of first appearance; the bags of a group must share
    their label and survival target.

    Returns:
        ``(scores (g, C), labels (g,), times or None, events or None)`` per group.
    """
    groups = list(dataset.groups)
    order = list(dict.fromkeys(groups))
    index = {g: i for i, g in enumerate(order)}
    gid = torch.tensor([index[g] for g in groups])
    sums = torch.zeros(len(order), scores.shape[1], dtype=scores.dtype).index_add_(0, gid, scores)
    counts = torch.bincount(gid, minlength=len(order)).to(scores.dtype).unsqueeze(1)
    targets: dict[str, tuple[Any, ...]] = {}
    for i, g in enumerate(groups):
        target = (int(labels[i]),) + ((times[i], events[i]) if times is not None and events is not None else ())
        if targets.setdefault(g, target) != target:
            raise InputError(
                f"metrics per patient: the bags of {g!r} have different labels or survival targets "
                f"({targets[g]} and {target}); use {{metrics_level}}", metrics_level="bag"
            )
    first = [targets[g] for g in order]
    group_labels = torch.tensor([t[0] for t in first], dtype=torch.long)
    if times is None:
        return sums / counts, group_labels, None, None
    return sums / counts, group_labels, [t[1] for t in first], [t[2] for t in first]


def mean_label_probability_per_group(logits: Tensor, targets: Tensor, dataset: Any) -> tuple[Tensor, Tensor]:
    """Per patient: the logit of the mean label probability of its bags ``(g, L)``, and its targets
    ``(g, L)`` (the bags of a patient must share them)."""
    groups = list(dataset.groups)
    index: dict[str, int] = {}
    first: list[Tensor] = []
    for i, g in enumerate(groups):
        if g not in index:
            index[g] = len(first)
            first.append(targets[i])
        elif not torch.equal(first[index[g]], targets[i]):
            raise InputError(
                f"metrics per patient: the bags of {g!r} have different multi-label targets; use {{metrics_level}}",
                metrics_level="bag",
            )
    gid = torch.tensor([index[g] for g in groups])
    probs = torch.sigmoid(logits.double())
    sums = torch.zeros(len(first), probs.shape[1], dtype=probs.dtype).index_add_(0, gid, probs)
    counts = torch.bincount(gid, minlength=len(first)).to(probs.dtype).unsqueeze(1)
    mean = (sums / counts).clamp(1e-12, 1 - 1e-12)
    return torch.logit(mean).to(logits.dtype), torch.stack(first)
