"""Bag-classification metrics (torchmetrics) and mean ± std summaries across folds and seeds.

:func:`compute_metrics` returns, from class probabilities ``(n, C)`` and integer labels ``(n,)``:

* ``accuracy`` — fraction of bags whose arg-max class is the label;
* ``balanced_accuracy`` — mean per-class recall over the classes present in ``labels``
  (scikit-learn's ``balanced_accuracy_score``);
* ``f1`` — macro F1 over the classes present in ``labels`` or predictions (scikit-learn's
  ``f1_score(average='macro')`` with ``zero_division=0``);
* ``auroc`` — binary AUROC of ``probs[:, 1]`` for two classes; for more classes the one-vs-rest macro
  mean over the classes present in the split (classes without positives or negatives are skipped with a
  warning, as MIL-Lab's evaluator). ``nan`` when no class can be scored;
* ``kappa`` — quadratic-weighted Cohen's kappa (for two classes equal to the plain kappa).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from .multilabel import MULTILABEL_METRIC_NAMES
from .survival import SURVIVAL_METRIC_NAMES
from .thresholds import THRESHOLD_METRIC_NAMES, decide_classes

__all__ = [
    "ALL_METRIC_NAMES",
    "METRIC_NAMES",
    "compute_metrics",
    "format_mean_std",
    "format_summary",
    "summarize",
]

logger = logging.getLogger(__name__)

#: Names returned by :func:`compute_metrics`, in table order.
METRIC_NAMES: tuple[str, ...] = ("auroc", "balanced_accuracy", "accuracy", "f1", "kappa")

#: Every test metric a fold can report (classification, then survival, then multi-label), without repeats.
#: Binary and multi-label runs add the metrics at the validation-chosen decision thresholds
#: (``balanced_accuracy_tuned``, ..., ``threshold``; :mod:`medmoe.engine.mil.thresholds`).
#: Multi-label runs add one ``auroc_<label>`` and one ``threshold_<label>`` per label on top of these.
ALL_METRIC_NAMES: tuple[str, ...] = tuple(
    dict.fromkeys((*METRIC_NAMES, *SURVIVAL_METRIC_NAMES, *MULTILABEL_METRIC_NAMES, *THRESHOLD_METRIC_NAMES))
)


def _tm():  # type: ignore[no-untyped-def]
    try:
        from torchmetrics.functional import classification
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "medmoe.engine metrics need torchmetrics; install the MIL extra: pip install 'medmoe[mil]'"
        ) from err
    return classification


def _check(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    probs = torch.as_tensor(probs).detach().to("cpu", torch.float64)
    labels = torch.as_tensor(labels).detach().to("cpu")
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probs must have shape (n, C) with C >= 2 classes, got {tuple(probs.shape)}")
    if labels.ndim != 1 or labels.shape[0] != probs.shape[0]:
        raise ValueError(
            f"labels must have shape (n,) = ({probs.shape[0]},) to match probs, got {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if probs.shape[0] == 0:
        raise ValueError("cannot compute metrics on an empty set (n = 0)")
    labels = labels.long()
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= probs.shape[1]:
        raise ValueError(f"labels must be in [0, {probs.shape[1] - 1}], got values in [{lo}, {hi}]")
    if not torch.isfinite(probs).all():
        raise ValueError("probs contain NaN or inf; check the model outputs (diverged training?)")
    return probs, labels


def compute_metrics(probs: Tensor, labels: Tensor, threshold: float | None = None) -> dict[str, float]:
    """Classification metrics of bags.

    Args:
        probs: ``(n, C)`` class probabilities (rows need not sum exactly to 1; only their order and, for
            AUROC, their ranking matter).
        labels: ``(n,)`` integer class indices in ``[0, C)``.
        threshold: two classes only: call a bag class 1 when ``probs[:, 1] >= threshold`` (a decision
            threshold chosen on validation data, :mod:`medmoe.engine.mil.thresholds`); ``None`` = arg-max.

    Returns:
        ``{'auroc', 'balanced_accuracy', 'accuracy', 'f1', 'kappa'}`` as Python floats (``nan`` where a
        metric is undefined on this split, e.g. AUROC with a single class present).
    """
    probs, labels = _check(probs, labels)
    tm = _tm()
    num_classes = probs.shape[1]
    if threshold is not None and num_classes != 2:
        raise ValueError(f"a decision threshold needs two classes, got probabilities for {num_classes}")
    preds = probs.argmax(1) if threshold is None else decide_classes(probs, [threshold])
    present = torch.bincount(labels, minlength=num_classes) > 0
    predicted = torch.bincount(preds, minlength=num_classes) > 0

    accuracy = float((preds == labels).double().mean())

    recall = tm.multiclass_recall(preds, labels, num_classes=num_classes, average="none")
    balanced_accuracy = float(recall[present].double().mean())

    f1_per_class = tm.multiclass_f1_score(preds, labels, num_classes=num_classes, average="none")
    f1 = float(f1_per_class[present | predicted].double().mean())

    auroc = _auroc(probs, labels, present, tm)

    if bool((preds == labels).all()) and int(present.sum()) == 1:
        kappa = float("nan")  # one class everywhere: kappa is 0/0
    else:
        kappa = float(tm.multiclass_cohen_kappa(preds, labels, num_classes=num_classes, weights="quadratic"))
    return {
        "auroc": auroc,
        "balanced_accuracy": balanced_accuracy,
        "accuracy": accuracy,
        "f1": f1,
        "kappa": kappa,
    }


def _auroc(probs: Tensor, labels: Tensor, present: Tensor, tm) -> float:  # type: ignore[no-untyped-def]
    num_classes = probs.shape[1]
    n = labels.shape[0]
    if num_classes == 2:
        if int(present.sum()) < 2:
            logger.warning("AUROC is undefined: only one class is present in this split (returning nan)")
            return float("nan")
        return float(tm.binary_auroc(probs[:, 1], labels))
    scores, skipped = [], []
    for c in range(num_classes):
        positives = int((labels == c).sum())
        if positives == 0 or positives == n:
            skipped.append(c)
            continue
        scores.append(float(tm.binary_auroc(probs[:, c], (labels == c).long())))
    if skipped:
        logger.warning(
            "one-vs-rest AUROC skips classes %s (no positive or no negative bags in this split)", skipped
        )
    return float(sum(scores) / len(scores)) if scores else float("nan")


def summarize(results: Iterable[Mapping[str, float]]) -> dict[str, tuple[float, float]]:
    """Mean and standard deviation of each metric over runs (folds × seeds).

    The standard deviation is the sample one (``ddof=1``), 0 for a single run. ``nan`` values (a metric
    undefined on some fold) are left out of that metric's mean and std; a metric that is ``nan``
    everywhere summarises to ``(nan, nan)``. Metric order follows the first run.
    """
    results = list(results)
    names: list[str] = []
    for r in results:
        for k in r:
            if k not in names:
                names.append(k)
    out: dict[str, tuple[float, float]] = {}
    for name in names:
        values = [float(r[name]) for r in results if name in r and r[name] is not None]
        values = [v for v in values if not math.isnan(v)]
        if not values:
            out[name] = (float("nan"), float("nan"))
            continue
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        out[name] = (mean, std)
    return out


def format_mean_std(mean: float, std: float, digits: int = 3) -> str:
    """``'0.912 ± 0.031'`` (``'nan'`` when undefined)."""
    if math.isnan(mean):
        return "nan"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_summary(
    summary: Mapping[str, tuple[float, float]],
    metrics: Sequence[str] | None = None,
    digits: int = 3,
    title: str = "value",
) -> str:
    """A two-column markdown table ``| metric | mean ± std |`` of a :func:`summarize` result."""
    names = list(metrics) if metrics is not None else list(summary)
    lines = [f"| metric | {title} |", "|---|---|"]
    for name in names:
        if name not in summary:
            raise ValueError(f"metric {name!r} is not in the summary; available: {sorted(summary)}")
        lines.append(f"| {name} | {format_mean_std(*summary[name], digits=digits)} |")
    return "\n".join(lines) + "\n"
