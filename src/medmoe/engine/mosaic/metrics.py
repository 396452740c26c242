"""Official MedMNIST ACC and AUC per task type, and MOSAIC's +-1 RetinaMNIST accuracy (labelled apart).

:func:`medmnist_acc` and :func:`medmnist_auc` compute exactly what ``medmnist.evaluator.getACC`` /
``getAUC`` (medmnist 3.0.2) compute on the same scores (``tests/engine/test_medmnist_metrics.py``
checks it against the package on random scores for every task type):

* ``multi-label, binary-class``: ACC = mean over labels of the accuracy of ``score > 0.5``;
  AUC = mean over labels of the per-label ROC AUC;
* ``binary-class``: the last score column; ACC of ``score > 0.5``, AUC of that score;
* ``multi-class`` and ``ordinal-regression``: ACC of ``argmax``; AUC = mean one-vs-rest ROC AUC.

Scores are probabilities: softmax for single-label tasks (binary ones have 2 logits), sigmoid for
multi-label (:func:`medmoe.models.vit.task_scores`). As in the package, an AUC is undefined (here
``nan``, the package raises) when a label column holds a single class.

:func:`retina_tolerant_acc` is the MOSAIC reference's RetinaMNIST accuracy, which counts
``|argmax - label| <= 1`` as correct. It is **not** the official metric; reports show it in its own
column (``acc_pm1``), never in place of ``acc``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

__all__ = [
    "TaskMetrics",
    "evaluate_scores",
    "medmnist_acc",
    "medmnist_auc",
    "retina_tolerant_acc",
]

_TASKS = ("multi-class", "binary-class", "multi-label, binary-class", "ordinal-regression")


def _prepare(y_true: np.ndarray, y_score: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    if task not in _TASKS:
        raise ValueError(f"unknown MedMNIST task {task!r}; expected one of {_TASKS}")
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.shape[0] != y_score.shape[0]:
        raise ValueError(f"{y_true.shape[0]} labels but {y_score.shape[0]} score rows")
    if y_true.shape[0] == 0:
        raise ValueError("cannot compute metrics on an empty set")
    if task == "multi-label, binary-class":
        y_true = y_true.reshape(y_true.shape[0], -1)
        y_score = y_score.reshape(y_score.shape[0], -1)
        if y_true.shape != y_score.shape:
            raise ValueError(f"multi-label labels {y_true.shape} and scores {y_score.shape} differ in shape")
    else:
        if y_true.ndim == 2 and y_true.shape[1] != 1:
            raise ValueError(f"single-label task {task!r} needs labels (n,) or (n, 1), got {y_true.shape}")
        y_true = y_true.reshape(-1)
        if y_score.ndim == 1:
            y_score = y_score[:, None]
    return y_true, y_score


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    if np.unique(y).size < 2:
        return math.nan
    return float(roc_auc_score(y, s))


def medmnist_acc(y_true: np.ndarray, y_score: np.ndarray, task: str, threshold: float = 0.5) -> float:
    """Official MedMNIST accuracy (``medmnist.evaluator.getACC``).

    Args:
        y_true: ``(n, L)`` or ``(n,)`` labels.
        y_score: ``(n, C)`` probabilities (``(n,)`` allowed for binary tasks).
        task: MedMNIST task string.
        threshold: decision threshold of multi-label and binary tasks.
    """
    y_true, y_score = _prepare(y_true, y_score, task)
    if task == "multi-label, binary-class":
        return float(np.mean([np.mean(y_true[:, j] == (y_score[:, j] > threshold)) for j in range(y_true.shape[1])]))
    if task == "binary-class":
        return float(np.mean(y_true == (y_score[:, -1] > threshold)))
    return float(np.mean(y_true == np.argmax(y_score, axis=-1)))


def medmnist_auc(y_true: np.ndarray, y_score: np.ndarray, task: str) -> float:
    """Official MedMNIST AUC (``medmnist.evaluator.getAUC``); ``nan`` where a column has one class."""
    y_true, y_score = _prepare(y_true, y_score, task)
    if task == "multi-label, binary-class":
        return float(np.mean([_auc(y_true[:, j], y_score[:, j]) for j in range(y_score.shape[1])]))
    if task == "binary-class":
        return _auc(y_true, y_score[:, -1])
    return float(np.mean([_auc((y_true == i).astype(float), y_score[:, i]) for i in range(y_score.shape[1])]))


def retina_tolerant_acc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """MOSAIC's RetinaMNIST accuracy: ``|argmax - label| <= 1`` counts as correct (**not official**)."""
    y_true, y_score = _prepare(y_true, y_score, "ordinal-regression")
    return float(np.mean(np.abs(np.argmax(y_score, axis=-1) - y_true) <= 1))


@dataclass
class TaskMetrics:
    """Metrics of one dataset on one split.

    Attributes:
        acc: official MedMNIST ACC.
        auc: official MedMNIST AUC (``nan`` when undefined).
        acc_pm1: the MOSAIC +-1 accuracy for ordinal tasks (RetinaMNIST), else ``None``.
        n: samples.
    """

    acc: float
    auc: float
    acc_pm1: float | None
    n: int

    def to_dict(self) -> dict[str, float | int | None]:
        return {"acc": self.acc, "auc": self.auc, "acc_pm1": self.acc_pm1, "n": self.n}


def evaluate_scores(y_true: np.ndarray, y_score: np.ndarray, task: str) -> TaskMetrics:
    """Official ACC and AUC (plus the labelled +-1 accuracy for ordinal tasks) of one dataset."""
    pm1 = retina_tolerant_acc(y_true, y_score) if task == "ordinal-regression" else None
    return TaskMetrics(
        acc=medmnist_acc(y_true, y_score, task),
        auc=medmnist_auc(y_true, y_score, task),
        acc_pm1=pm1,
        n=int(np.asarray(y_true).shape[0]),
    )
