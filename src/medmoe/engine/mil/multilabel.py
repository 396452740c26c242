"""Multi-label slides (``TrainConfig(task='multilabel')``): several yes/no labels per bag.

The model has one output per label; ``p = sigmoid(logit)`` is the probability that the label is present,
independently of the others. Training minimises the binary cross-entropy averaged over bags and labels,
optionally with each label's positives weighted by its negative/positive ratio on the training fold
(:func:`positive_weights`). A label is called present when ``p >= 0.5``.

:func:`multilabel_metrics` reports, macro-averaged over the labels: ``auroc`` (over the labels that have both
outcomes in the evaluated set), ``balanced_accuracy``, ``f1`` (a label never present nor predicted counts
1, as scikit-learn's ``zero_division=1``), and ``accuracy`` (the share of correct bag-label decisions = 1 -
Hamming loss), ``subset_accuracy`` (bags with every label right), ``loss`` (mean BCE) and one
``auroc_<label>`` per label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .thresholds import apply_thresholds

__all__ = [
    "MULTILABEL_METRIC_NAMES",
    "check_multilabel_set",
    "multilabel_loss",
    "multilabel_metrics",
    "positive_weights",
]


#: Multi-label metrics in table order (each run also has ``loss`` and one ``auroc_<label>`` per label).
MULTILABEL_METRIC_NAMES: tuple[str, ...] = ("auroc", "balanced_accuracy", "accuracy", "f1", "subset_accuracy")


def check_multilabel_set(name: str, dataset: Any, label_names: Sequence[str] | None = None) -> None:
    """Raise a helpful ``ValueError`` unless ``dataset`` carries multi-label targets (with ``label_names``)."""
    if dataset is None:
        return
    if not getattr(dataset, "is_multilabel", False):
        raise ValueError(
            f"task='multilabel' needs multi-label targets on {name}: read the CSV with "
            "FeatureFolderBags(..., label_cols=['tumor', 'necrosis']) or call dataset.with_multilabel(targets, names)"
        )
    if label_names is not None and list(dataset.label_names) != list(label_names):
        raise ValueError(
            f"{name} has labels {dataset.label_names} but the training set has {list(label_names)}"
        )


def positive_weights(targets: Tensor) -> Tensor:
    """``(L,)`` negative/positive count ratio per label of ``(N, L)`` 0/1 targets (1 where a label has no
    positives or no negatives), for ``binary_cross_entropy_with_logits(pos_weight=...)``."""
    pos = targets.sum(0)
    neg = targets.shape[0] - pos
    ratio = neg / pos.clamp_min(1)
    return torch.where((pos > 0) & (neg > 0), ratio, torch.ones_like(ratio)).to(torch.float32)


def multilabel_loss(logits: Tensor, targets: Tensor, pos_weight: Tensor | None = None) -> Tensor:
    """Mean binary cross-entropy of ``(b, L)`` logits against ``(b, L)`` 0/1 targets (float32 maths)."""
    if logits.shape != targets.shape:
        raise ValueError(
            f"multi-label logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ"
        )
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=pos_weight)


def _binary_auroc(scores: Tensor, positive: Tensor) -> float:
    """Mann-Whitney AUROC (ties count one half); ``nan`` when one outcome is missing."""
    pos, neg = scores[positive], scores[~positive]
    if pos.numel() == 0 or neg.numel() == 0:
        return float("nan")
    greater = (pos.unsqueeze(1) > neg.unsqueeze(0)).double().sum()
    ties = (pos.unsqueeze(1) == neg.unsqueeze(0)).double().sum()
    return float((greater + 0.5 * ties) / (pos.numel() * neg.numel()))


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(sum(kept) / len(kept)) if kept else float("nan")


def multilabel_metrics(
    logits: Tensor,
    targets: Tensor,
    label_names: Sequence[str] | None = None,
    thresholds: Sequence[float] | None = None,
) -> dict[str, float]:
    """Metrics of ``(n, L)`` logits against ``(n, L)`` 0/1 targets (see the module docstring).

    ``label_names`` name the per-label ``auroc_<label>`` entries (default ``0, 1, ...``). ``thresholds``:
    one probability cut-off per label (a label is called present when ``sigmoid(logit) >= t``, see
    :mod:`medmoe.engine.mil.thresholds`); ``None`` = 0.5 for every label.
    """
    if logits.ndim != 2 or logits.shape != targets.shape:
        raise ValueError(
            f"multi-label metrics need (n, L) logits and targets of one shape, got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    names = (
        [str(n) for n in label_names] if label_names is not None else [str(j) for j in range(logits.shape[1])]
    )
    if len(names) != logits.shape[1]:
        raise ValueError(f"{len(names)} label names for {logits.shape[1]} labels")
    z = logits.double()
    y = targets.bool()
    if thresholds is None:
        pred = z >= 0  # sigmoid(z) >= 0.5
    else:
        pred = apply_thresholds(torch.sigmoid(z), list(thresholds))
    aurocs = [_binary_auroc(z[:, j], y[:, j]) for j in range(z.shape[1])]
    tp = (pred & y).sum(0).double()
    fp = (pred & ~y).sum(0).double()
    fn = (~pred & y).sum(0).double()
    tn = (~pred & ~y).sum(0).double()
    sens = torch.where(tp + fn > 0, tp / (tp + fn).clamp_min(1), torch.full_like(tp, float("nan")))
    spec = torch.where(tn + fp > 0, tn / (tn + fp).clamp_min(1), torch.full_like(tn, float("nan")))
    balanced = [_nanmean([float(a), float(b)]) for a, b in zip(sens, spec)]
    f1 = torch.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp_min(1), torch.ones_like(tp))
    metrics = {
        "auroc": _nanmean(aurocs),
        "balanced_accuracy": _nanmean(balanced),
        "accuracy": float((pred == y).double().mean()),
        "f1": float(f1.mean()),
        "subset_accuracy": float((pred == y).all(1).double().mean()),
        "loss": float(F.binary_cross_entropy_with_logits(z, targets.double())),
    }
    metrics.update({f"auroc_{name}": a for name, a in zip(names, aurocs)})
    return metrics
