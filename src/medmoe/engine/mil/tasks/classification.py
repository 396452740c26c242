"""Bag classification (``TrainConfig(task='classification')``, the default): one class label per bag.

The model has one output per class; training minimises the cross-entropy of ``softmax(logits)`` against the
bag labels (optionally class-balanced, :func:`class_weights`); the metrics are those of
:func:`~medmoe.engine.mil.metrics.compute_metrics` plus ``loss`` (mean cross-entropy); early stopping on
AUROC for two classes and quadratic kappa for more. Two-class models get a decision threshold chosen on the
validation set (:mod:`medmoe.engine.mil.thresholds`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..metrics import METRIC_NAMES, compute_metrics
from ..thresholds import (
    DecisionThresholds,
    checkpoint_thresholds,
    choose_thresholds,
    decide_classes,
    ensemble_thresholds,
    tuned_metrics,
)
from .base import Objective, Task, checkpoint_output_names, seed_rows
from .patients import mean_per_group

if TYPE_CHECKING:  # pragma: no cover
    from ..config import TrainConfig

__all__ = ["ClassificationTask", "checkpoint_classes", "class_weights", "metrics_with_loss"]

logger = logging.getLogger(__name__)


def class_weights(labels: Sequence[int], num_classes: int) -> Tensor:
    """Class-balanced cross-entropy weights ``(C,)``: ``n / (C * n_c)``, 0 for a class without training bags."""
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long), minlength=num_classes).double()
    weights = torch.where(
        counts > 0, len(labels) / (num_classes * counts.clamp_min(1)), torch.zeros_like(counts)
    )
    missing = (counts == 0).nonzero().flatten().tolist()
    if missing:
        logger.warning("classes %s have no training bags; their loss weight is 0", missing)
    return weights.float()


def metrics_with_loss(probs: Tensor, labels: Tensor) -> dict[str, float]:
    """:func:`~medmoe.engine.mil.metrics.compute_metrics` of ``probs (n, C)`` plus ``loss`` (mean cross-entropy)."""
    metrics = compute_metrics(probs, labels)
    p = probs.double().clamp_min(1e-12)
    metrics["loss"] = float(-p.gather(1, labels.view(-1, 1)).log().mean())
    return metrics


class _CrossEntropy(Objective):
    """Cross-entropy on the bag labels (which the model's auxiliary losses see too)."""

    def __init__(self, weight: Tensor | None) -> None:
        self.weight = weight

    def targets(self, batch: Any) -> tuple[Tensor | None, Any]:
        return batch.label, batch.label

    def loss(self, logits: Tensor, target: Any) -> Tensor:
        return F.cross_entropy(logits.float(), target, weight=self.weight)


class ClassificationTask(Task):
    """One class label per bag: softmax outputs, cross-entropy, classification metrics."""

    name: ClassVar[str] = "classification"
    monitor_metrics: ClassVar[Mapping[str, bool]] = {
        "auroc": True, "kappa": True, "balanced_accuracy": True, "accuracy": True, "f1": True, "loss": False,
    }
    summary_metrics: ClassVar[tuple[str, ...]] = METRIC_NAMES
    plots: ClassVar[tuple[str, ...]] = ("roc.png", "confusion.png")
    uses_class_labels: ClassVar[bool] = True
    draws_instance_maps: ClassVar[bool] = True

    def default_monitor(self, num_classes: int) -> str:
        return "auroc" if num_classes == 2 else "kappa"

    def check_training_set(self, train_set: Any) -> None:
        if train_set.num_classes < 2:
            raise ValueError(
                f"bag classification needs at least 2 classes, the training set has {train_set.num_classes}"
            )

    def num_outputs(self, dataset: Any, cfg: TrainConfig) -> int:
        return max(int(getattr(dataset, "num_classes", 2)), 2)

    def objective(self, train_set: Any, cfg: TrainConfig, state: Mapping[str, Any], device: Any) -> Objective:
        weight = None
        if cfg.class_weights == "balanced":
            weight = class_weights(list(train_set.labels), train_set.num_classes).to(device)
        return _CrossEntropy(weight)

    # ------------------------------------------------------------------------------------------
    # evaluation

    def metrics(self, logits: Tensor, dataset: Any, state: Mapping[str, Any], *, level: str = "bag",
                thresholds: Sequence[float] | None = None, cfg: TrainConfig | None = None) -> dict[str, float]:
        labels = torch.as_tensor(dataset.labels, dtype=torch.long)
        scores = torch.softmax(logits, dim=-1)
        if level == "group":
            scores, labels, _, _ = mean_per_group(scores, labels, dataset, None, None)
        metrics = metrics_with_loss(scores, labels)
        if thresholds is not None and scores.shape[1] == 2:
            metrics.update(tuned_metrics(compute_metrics(scores, labels, threshold=thresholds[0]), thresholds))
        return metrics

    def threshold_count(self, num_outputs: int) -> int:
        return 1 if num_outputs == 2 else 0

    def choose_thresholds(self, logits: Tensor | None, dataset: Any, level: str,
                          num_outputs: int) -> DecisionThresholds | None:
        if num_outputs != 2:
            return None
        if logits is None:
            return DecisionThresholds.default(1)
        labels = torch.as_tensor(dataset.labels, dtype=torch.long)
        probs = torch.softmax(logits, dim=-1)
        if level == "group":
            probs, labels, _, _ = mean_per_group(probs, labels, dataset, None, None)
        return choose_thresholds(probs[:, 1:].double(), (labels == 1).view(-1, 1))

    def probabilities(self, logits: Tensor, state: Mapping[str, Any]) -> Tensor:
        return torch.softmax(logits, dim=-1)

    # ------------------------------------------------------------------------------------------
    # predictions

    def test_prediction_table(self, dataset: Any, logits: Tensor) -> tuple[list[str], list[list[Any]]]:
        header = ["bag_id", "label", *(f"prob_{c}" for c in dataset.class_names)]
        probs = torch.softmax(logits, dim=-1).tolist()
        return header, [[b, y, *p] for b, y, p in zip(dataset.bag_ids, dataset.labels, probs)]

    def outcome_rows(self, dataset: Any) -> list[dict[str, Any]]:
        labels = list(getattr(dataset, "labels", [None] * len(dataset)))
        names = list(getattr(dataset, "class_names", None) or [])
        rows = []
        for b, y in zip(dataset.bag_ids, labels):
            known = y is not None and int(y) >= 0
            name = names[int(y)] if known and int(y) < len(names) else (str(int(y)) if known else None)
            rows.append({"bag_id": b, "label": int(y) if known else None, "label_name": name})
        return rows

    def add_predictions(self, rows: list[dict[str, Any]], logits: Tensor, info: Mapping[str, Any]) -> None:
        names = checkpoint_output_names(info)
        probs = torch.softmax(logits, dim=-1)
        thresholds = checkpoint_thresholds(info)  # two classes: the decision threshold chosen in training
        preds = decide_classes(probs, thresholds)
        for i, row in enumerate(rows):
            pred = int(preds[i])
            row.update({"pred": pred, "pred_name": names[pred] if pred < len(names) else str(pred)})
            row.update({f"prob_{name}": float(probs[i, c]) for c, name in enumerate(names)})
            if thresholds is not None:
                row["threshold"] = thresholds.values[0]

    def add_ensemble_predictions(self, rows: list[dict[str, Any]], outputs: Sequence[Tensor],
                                 infos: Sequence[Mapping[str, Any]]) -> None:
        n = len(outputs)
        names = checkpoint_output_names(infos[0])
        probs = torch.stack([torch.softmax(z, dim=-1) for z in outputs])  # (m, bags, C)
        mean = probs.mean(0)
        members = [checkpoint_thresholds(i) for i in infos]  # two classes: each fold's own threshold
        thresholds = ensemble_thresholds(members) if members[0] is not None else None
        preds = decide_classes(mean, thresholds)  # mean(p) >= mean(t): the mean margin over own thresholds
        votes = torch.stack([decide_classes(p, t) for p, t in zip(probs, members)])  # (m, bags)
        for i, row in enumerate(rows):
            pred = int(preds[i])
            row.update({"pred": pred, "pred_name": names[pred] if pred < len(names) else str(pred)})
            row.update({f"prob_{name}": float(mean[i, c]) for c, name in enumerate(names)})
            if thresholds is not None:
                row["threshold"] = thresholds[0]
            row.update({"n_models": n, "agreement": float((votes[:, i] == pred).double().mean())})

    def slide_prediction(self, logits: Tensor, probs: Any, class_names: Sequence[str] | None,
                         thresholds: Any) -> tuple[list[str], str, dict[str, Any]]:
        names = list(class_names or [str(i) for i in range(len(probs))])
        pred = int(decide_classes(torch.as_tensor(probs).view(1, -1), thresholds)[0])
        tag = f"pred {names[pred]} (p={probs[pred]:.2f})"
        prediction: dict[str, Any] = {"probs": {names[i]: float(p) for i, p in enumerate(probs)},
                                      "prediction": names[pred]}
        _add_thresholds(prediction, thresholds)
        return names, tag, prediction

    # ------------------------------------------------------------------------------------------
    # reading bags, plots

    def checkpoint_columns(self, info: Mapping[str, Any]) -> dict[str, Any]:
        return {"class_names": checkpoint_classes(info)}

    def plot_test_predictions(self, out_dir: Path, model_name: str, seed: int, dataset: Any) -> list[Path]:
        """ROC curve(s) and confusion matrix of one seed's out-of-fold test predictions (every bag once)."""
        import numpy as np

        from ....viz.roc import plot_confusion, plot_roc

        class_names = list(dataset.class_names)
        rows = seed_rows(out_dir / self.pooled_predictions_csv, seed)
        if not rows:
            return []
        labels = [int(r["label"]) for r in rows]
        probs = np.array([[float(r[f"prob_{c}"]) for c in class_names] for r in rows])
        title = f"{model_name}: out-of-fold test predictions (seed {seed})"
        return [plot_roc(labels, probs, class_names, out_dir / "roc.png", title=title),
                plot_confusion(labels, probs.argmax(1), class_names, out_dir / "confusion.png", title=title)]


def checkpoint_classes(info: Mapping[str, Any]) -> list[str]:
    """The classes a classification checkpoint (its ``info``) predicts: its ``class_names``, else ``'0'``,
    ``'1'``, ... up to its number of outputs."""
    names = list(info.get("class_names") or [])
    if names:
        return [str(n) for n in names]
    return [str(c) for c in range(int((info.get("model_config") or {}).get("num_classes") or 2))]


def _add_thresholds(prediction: dict[str, Any], thresholds: Any) -> None:
    """``decision_thresholds`` of a heatmap's prediction, when the model has them."""
    if thresholds is not None:
        values = thresholds.values if hasattr(thresholds, "values") else list(thresholds)
        prediction["decision_thresholds"] = [float(v) for v in values]
