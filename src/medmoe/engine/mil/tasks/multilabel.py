"""Multi-label slides (``TrainConfig(task='multilabel')``): several yes/no labels per bag.

One logit per label, binary cross-entropy (``class_weights='balanced'`` weighs each label's positives by its
negative/positive ratio on the training fold), the macro metrics of
:func:`~medmoe.engine.mil.multilabel.multilabel_metrics`, early stopping on the labels' macro AUROC and one
decision threshold per label chosen on the validation set. Folds are stratified on all labels at once
(:func:`~medmoe.data.splits.multilabel_group_kfold`). The maths live in :mod:`medmoe.engine.mil.multilabel`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from ..multilabel import (
    MULTILABEL_METRIC_NAMES,
    check_multilabel_set,
    multilabel_loss,
    multilabel_metrics,
    positive_weights,
)
from ..thresholds import (
    DecisionThresholds,
    apply_thresholds,
    checkpoint_thresholds,
    choose_thresholds,
    ensemble_thresholds,
    tuned_metrics,
)
from .base import Objective, Task, checkpoint_output_names, seed_rows
from .patients import mean_label_probability_per_group

if TYPE_CHECKING:  # pragma: no cover
    from ....data.splits import Split
    from ..config import TrainConfig

__all__ = ["MultilabelTask"]


class _BinaryCrossEntropy(Objective):
    """Mean BCE over bags and labels; the model sees no label (its auxiliary losses need one class per bag)."""

    def __init__(self, target_of: dict[str, Tensor], pos_weight: Tensor | None, device: Any) -> None:
        self.target_of, self.pos_weight, self.device = target_of, pos_weight, device

    def targets(self, batch: Any) -> tuple[Tensor | None, Any]:
        return None, torch.stack([self.target_of[b] for b in batch.bag_ids]).to(self.device)

    def loss(self, logits: Tensor, target: Any) -> Tensor:
        return multilabel_loss(logits, target, self.pos_weight)


def _add_label_probabilities(
    rows: list[dict[str, Any]], probs: Tensor, names: list[str], thresholds: Any = None
) -> None:
    """Multi-label rows: ``prob_<label>`` and ``pred_labels`` (the labels with probability at least their
    decision threshold, 0.5 without one; ``;``-joined)."""
    present = apply_thresholds(probs, thresholds if thresholds is not None else [0.5] * len(names))
    for i, row in enumerate(rows):
        row.update({f"prob_{n}": float(probs[i, j]) for j, n in enumerate(names)})
        row["pred_labels"] = ";".join(n for j, n in enumerate(names) if present[i, j])


class MultilabelTask(Task):
    """Several independent yes/no labels per bag: sigmoid outputs, BCE, macro metrics, a threshold per label."""

    name: ClassVar[str] = "multilabel"
    monitor_metrics: ClassVar[Mapping[str, bool]] = {
        "auroc": True, "balanced_accuracy": True, "accuracy": True, "f1": True, "subset_accuracy": True,
        "loss": False,
    }
    summary_metrics: ClassVar[tuple[str, ...]] = MULTILABEL_METRIC_NAMES
    plots: ClassVar[tuple[str, ...]] = ("roc.png",)
    uses_label_columns: ClassVar[bool] = True
    class_count_must_match: ClassVar[bool] = False  # the class labels are label combinations: they may differ

    def default_monitor(self, num_classes: int) -> str:
        return "auroc"

    def check_dataset(self, name: str, dataset: Any, train_set: Any = None) -> None:
        check_multilabel_set(name, dataset, None if train_set is None else list(train_set.label_names))

    def check_evaluation_set(self, dataset: Any, num_outputs: int) -> None:
        check_multilabel_set("the dataset", dataset)
        if len(dataset.label_names) != num_outputs:
            raise ValueError(f"the model predicts {num_outputs} labels but the dataset has {dataset.label_names}")

    def num_outputs(self, dataset: Any, cfg: TrainConfig) -> int:
        return len(getattr(dataset, "label_names", []) or [0, 1])

    def output_names(self, train_set: Any) -> list[str]:
        return list(train_set.label_names)

    def check_model(self, model: Any, model_name: str) -> None:
        if getattr(model, "requires_label_for_aux", False):
            raise ValueError(
                f"{model_name}: its auxiliary loss needs one class per bag, which multi-label bags do not have; "
                "pick a model without one (abmil, transmil, dsmil, ...)"
            )

    def objective(self, train_set: Any, cfg: TrainConfig, state: Mapping[str, Any], device: Any) -> Objective:
        targets = train_set.multilabel_targets
        pos_weight = positive_weights(targets).to(device) if cfg.class_weights == "balanced" else None
        return _BinaryCrossEntropy(dict(zip(train_set.bag_ids, targets)), pos_weight, device)

    def kfold(self, dataset: Any, k: int, seed: int, *, val_folds: int = 1, indices: Sequence[int] | None = None,
              bag_ids: Sequence[str] | None = None, class_names: Sequence[str] | None = None) -> list[Split]:
        """Folds stratified on all labels at once (iterative stratification; ``class_names`` is not used)."""
        from ....data.splits import multilabel_group_kfold

        groups = list(dataset.groups)
        if indices is None:
            targets: Any = dataset.multilabel_targets
        else:
            targets = [dataset.multilabel_targets[i] for i in indices]
            groups = [groups[i] for i in indices]
        extra: dict[str, Any] = {"bag_ids": bag_ids} if bag_ids is not None else {}
        return multilabel_group_kfold(targets, groups, k, seed, val_folds=val_folds, **extra)

    # ------------------------------------------------------------------------------------------
    # evaluation

    def metrics(self, logits: Tensor, dataset: Any, state: Mapping[str, Any], *, level: str = "bag",
                thresholds: Sequence[float] | None = None, cfg: TrainConfig | None = None) -> dict[str, float]:
        targets = dataset.multilabel_targets
        if level == "group":
            logits, targets = mean_label_probability_per_group(logits, targets, dataset)
        metrics = multilabel_metrics(logits, targets, dataset.label_names)
        if thresholds is not None:
            tuned = multilabel_metrics(logits, targets, dataset.label_names, thresholds)
            metrics.update(tuned_metrics(tuned, thresholds, dataset.label_names))
        return metrics

    def threshold_count(self, num_outputs: int) -> int:
        return num_outputs

    def choose_thresholds(self, logits: Tensor | None, dataset: Any, level: str,
                          num_outputs: int) -> DecisionThresholds | None:
        if logits is None:
            return DecisionThresholds.default(num_outputs)
        targets = dataset.multilabel_targets
        if level == "group":
            logits, targets = mean_label_probability_per_group(logits, targets, dataset)
        return choose_thresholds(torch.sigmoid(logits.double()), targets)

    def probabilities(self, logits: Tensor, state: Mapping[str, Any]) -> Tensor:
        return torch.sigmoid(logits)

    # ------------------------------------------------------------------------------------------
    # predictions

    def test_prediction_table(self, dataset: Any, logits: Tensor) -> tuple[list[str], list[list[Any]]]:
        names = dataset.label_names
        header = ["bag_id", *(f"target_{n}" for n in names), *(f"prob_{n}" for n in names)]
        targets = dataset.multilabel_targets.long().tolist()
        probs = torch.sigmoid(logits).tolist()
        return header, [[b, *t, *p] for b, t, p in zip(dataset.bag_ids, targets, probs)]

    def outcome_rows(self, dataset: Any) -> list[dict[str, Any]]:
        if not getattr(dataset, "is_multilabel", False):
            return [{"bag_id": b} for b in dataset.bag_ids]
        targets = dataset.multilabel_targets.long().tolist()
        names = dataset.label_names
        return [{"bag_id": b, **{f"target_{n}": v for n, v in zip(names, t)}} for b, t in zip(dataset.bag_ids, targets)]

    def add_predictions(self, rows: list[dict[str, Any]], logits: Tensor, info: Mapping[str, Any]) -> None:
        _add_label_probabilities(rows, torch.sigmoid(logits), checkpoint_output_names(info), checkpoint_thresholds(info))

    def add_ensemble_predictions(self, rows: list[dict[str, Any]], outputs: Sequence[Tensor],
                                 infos: Sequence[Mapping[str, Any]]) -> None:
        _add_label_probabilities(rows, torch.stack([torch.sigmoid(z) for z in outputs]).mean(0),
                                 checkpoint_output_names(infos[0]),
                                 ensemble_thresholds([checkpoint_thresholds(i) for i in infos]))
        for row in rows:
            row["n_models"] = len(outputs)

    def slide_prediction(self, logits: Tensor, probs: Any, class_names: Sequence[str] | None,
                         thresholds: Any) -> tuple[list[str], str, dict[str, Any]]:
        names = list(class_names or [str(i) for i in range(len(logits))])
        label_probs = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
        cut = thresholds if thresholds is not None else [0.5] * len(label_probs)
        called = apply_thresholds(torch.as_tensor(label_probs).view(1, -1), cut)[0].tolist()
        present = [n for n, keep in zip(names, called) if keep]
        tag = "labels " + (", ".join(present) if present else "none")
        prediction: dict[str, Any] = {"probs": {n: float(p) for n, p in zip(names, label_probs)}, "prediction": present}
        if thresholds is not None:
            values = thresholds.values if hasattr(thresholds, "values") else list(thresholds)
            prediction["decision_thresholds"] = [float(v) for v in values]
        return names, tag, prediction

    # ------------------------------------------------------------------------------------------
    # reading bags, plots

    def checkpoint_columns(self, info: Mapping[str, Any]) -> dict[str, Any]:
        return {"label_cols": list(info.get("class_names") or [])}

    def plot_test_predictions(self, out_dir: Path, model_name: str, seed: int, dataset: Any) -> list[Path]:
        """One ROC curve per label of one seed's out-of-fold multi-label test predictions."""
        from ....viz.roc import plot_label_rocs

        label_names = list(dataset.label_names)
        rows = seed_rows(out_dir / self.pooled_predictions_csv, seed)
        if not rows:
            return []
        targets = np.array([[int(r[f"target_{n}"]) for n in label_names] for r in rows])
        probs = np.array([[float(r[f"prob_{n}"]) for n in label_names] for r in rows])
        return [plot_label_rocs(targets, probs, label_names, out_dir / "roc.png",
                                title=f"{model_name}: out-of-fold test predictions (seed {seed})")]
