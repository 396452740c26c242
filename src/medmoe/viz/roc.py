"""ROC curves and confusion matrices of out-of-fold test predictions (``medmoe mil train``).

numpy only: :func:`roc_curve` groups tied scores into one step (the curve scikit-learn draws with
``drop_intermediate=False``), :func:`plot_roc` draws one curve for two classes and one-vs-rest curves
with their macro average for more, :func:`plot_label_rocs` one curve per label of multi-label slides, :func:`plot_confusion` draws counts shaded by the share of each true
class.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .figure_io import save_figure

__all__ = ["plot_confusion", "plot_label_rocs", "plot_roc", "roc_curve"]


def roc_curve(scores: Sequence[float], positive: Sequence[bool]) -> tuple[np.ndarray, np.ndarray, float]:
    """``(fpr, tpr, auc)`` of ``scores`` (higher = more positive) against boolean ``positive``.

    The curve starts at (0, 0) and has one point per distinct score; ``auc`` is its trapezoid area (ties
    count one half, as the Mann-Whitney statistic). ``nan`` AUC when one class is missing.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(positive).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"got {s.size} scores for {y.size} labels")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), s.size - 1] if s.size else np.array([], dtype=int)
    tp = np.cumsum(y)[last_of_tie]
    fp = np.cumsum(~y)[last_of_tie]
    pos, neg = int(y.sum()), int((~y).sum())
    tpr = np.r_[0.0, tp / pos] if pos else np.r_[0.0, np.zeros_like(tp, dtype=float)]
    fpr = np.r_[0.0, fp / neg] if neg else np.r_[0.0, np.zeros_like(fp, dtype=float)]
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)) if pos and neg else float("nan")
    return fpr, tpr, auc


def plot_roc(
    labels: Sequence[int], probs: np.ndarray, class_names: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """ROC curve(s) with their AUROC in the legend; a PNG.

    Args:
        labels: true class per bag, ``(n,)``.
        probs: class probabilities ``(n, C)``.
        class_names: ``C`` names; two classes draw the curve of the second (positive) class, more draw
            one-vs-rest curves and report their macro mean (over the classes present with both outcomes).
        path: output PNG.
    """
    y = np.asarray(labels).ravel()
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.size or p.shape[1] != len(class_names):
        raise ValueError(f"probs must be (n, {len(class_names)}) for {y.size} labels, got {p.shape}")
    classes = [1] if p.shape[1] == 2 else list(range(p.shape[1]))
    curves = []
    for c in classes:
        fpr, tpr, auc = roc_curve(p[:, c], y == c)
        if not np.isnan(auc):
            label = f"AUROC {auc:.3f}" if len(classes) == 1 else f"{class_names[c]} vs rest ({auc:.3f})"
            curves.append((fpr, tpr, auc, label))
    head = f"positive class: {class_names[1]}" if len(classes) == 1 else None
    return _roc_figure(curves, path, title, head)


def plot_label_rocs(
    targets: np.ndarray, probs: np.ndarray, label_names: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """One ROC curve per label of multi-label predictions, with the macro AUROC; a PNG.

    Args:
        targets: ``(n, L)`` 0/1 truth.
        probs: ``(n, L)`` label probabilities.
        label_names: ``L`` names.
        path: output PNG.
    """
    t = np.asarray(targets)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape != t.shape or p.shape[1] != len(label_names):
        raise ValueError(
            f"targets and probs must both be (n, {len(label_names)}), got {t.shape} and {p.shape}"
        )
    curves = []
    for j, name in enumerate(label_names):
        fpr, tpr, auc = roc_curve(p[:, j], t[:, j] == 1)
        if not np.isnan(auc):
            curves.append((fpr, tpr, auc, f"{name} ({auc:.3f})"))
    return _roc_figure(curves, path, title, None)


def _roc_figure(
    curves: list[tuple[np.ndarray, np.ndarray, float, str]], path: str | Path, title: str, head: str | None
) -> Path:
    """Draw ``(fpr, tpr, auc, legend)`` curves with the chance diagonal; ``head`` (default: the macro AUROC)
    goes under the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for fpr, tpr, _auc, label in curves:
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=7, loc="lower right")
    if head is None:
        head = f"macro AUROC {np.mean([c[2] for c in curves]):.3f}" if curves else "AUROC undefined"
    ax.set_title(f"{title}\n{head}" if title else head, fontsize=9)
    return save_figure(fig, path)


def plot_confusion(
    labels: Sequence[int], preds: Sequence[int], class_names: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """Confusion matrix (rows: true class, columns: predicted), counts written in the cells and colour =
    share of the true class; a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y, q = np.asarray(labels).ravel().astype(int), np.asarray(preds).ravel().astype(int)
    c = len(class_names)
    if y.shape != q.shape:
        raise ValueError(f"got {q.size} predictions for {y.size} labels")
    if y.size and (min(y.min(), q.min()) < 0 or max(y.max(), q.max()) >= c):
        raise ValueError(f"labels and predictions must lie in [0, {c})")
    counts = np.zeros((c, c), dtype=int)
    np.add.at(counts, (y, q), 1)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    side = 1.2 + 0.55 * c
    fig, ax = plt.subplots(figsize=(max(4.6, side + 0.8), max(3.8, side)))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(c):
        for j in range(c):
            ax.text(
                j,
                i,
                str(counts[i, j]),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if share[i, j] > 0.6 else "black",
            )
    ax.set_xticks(range(c), class_names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(c), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = float(np.trace(counts) / max(counts.sum(), 1))
    head = f"accuracy {accuracy:.3f} (n={int(counts.sum())})"
    ax.set_title(f"{title}\n{head}" if title else head, fontsize=9)
    return save_figure(fig, path)
