"""Decision thresholds of binary decisions, chosen on validation data.

A model that ranks bags well (high AUROC) can still call every bag one class at the fixed probability
cut-off 0.5: its scores are shifted, not wrong. The usual remedy is to choose the cut-off on the
validation set, never on the test set. Here:

* **Which decisions.** Binary classification (two classes: the score is ``p = P(class 1)``, the second
  of the checkpoint's ``class_names``) and multi-label tasks (one score ``p = sigmoid(logit)`` and one
  threshold per label). Multi-class (arg-max) and survival have no threshold.
* **Rule.** A bag is called positive when ``p >= t`` (:func:`apply_thresholds`).
* **Choice** (:func:`choose_threshold`): the ``t`` that maximises balanced accuracy
  ``(TPR + TNR) / 2`` on the validation scores. Every cut between two neighbouring distinct validation
  scores gives the same decisions, so the candidates are 0.5 itself, the midpoints between neighbouring
  distinct scores, and one point below the lowest and one above the highest score (all bags positive /
  negative). Ties in balanced accuracy (compared exactly, as integer counts) go to the candidate nearest
  0.5, then to the lower one; so 0.5 is kept whenever it is as good as any other cut.
* **Fallbacks.** Without a validation set, or when the validation set has only one class for a label
  (balanced accuracy would then reward calling everything that class), the threshold stays at 0.5, and
  :class:`DecisionThresholds` records why (``sources``).
* **Ensembles** (:func:`ensemble_thresholds`): the mean of the members' thresholds, applied to the mean
  of their probabilities. ``mean(p) >= mean(t)`` is the same as ``mean(p_m - t_m) >= 0``: the average of
  each model's margin over its *own* threshold, so every member decides with its own cut-off, weighted
  by how sure it is, and no vote can tie.
* **Checkpoints** store the record under :data:`THRESHOLDS_KEY` in ``config.json``
  (:meth:`DecisionThresholds.to_record`); :func:`checkpoint_thresholds` reads it back, and gives 0.5 per
  decision for binary and multi-label checkpoints written before thresholds existed.
* **Metrics.** The threshold-dependent metrics (:data:`THRESHOLD_DEPENDENT_METRICS`) are reported twice:
  under their plain names at the fixed 0.5 (arg-max for two classes, as always) and with the suffix
  :data:`TUNED_SUFFIX` at the chosen thresholds, next to ``threshold`` (or ``threshold_<label>``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_THRESHOLD",
    "SOURCE_DEFAULT",
    "SOURCE_NO_VALIDATION",
    "SOURCE_ONE_CLASS",
    "SOURCE_VALIDATION",
    "THRESHOLDS_KEY",
    "THRESHOLD_DEPENDENT_METRICS",
    "THRESHOLD_METRIC_NAMES",
    "TUNED_SUFFIX",
    "DecisionThresholds",
    "apply_thresholds",
    "checkpoint_thresholds",
    "choose_threshold",
    "choose_thresholds",
    "decide_classes",
    "ensemble_thresholds",
    "thresholds_note",
    "tuned_metric_names",
    "tuned_metrics",
]

#: The fixed cut-off used without a validation choice.
DEFAULT_THRESHOLD = 0.5
#: ``config.json`` key of a checkpoint's :meth:`DecisionThresholds.to_record`.
THRESHOLDS_KEY = "decision_thresholds"
#: Suffix of the metrics computed at the chosen thresholds (``balanced_accuracy_tuned``).
TUNED_SUFFIX = "_tuned"
#: Metrics that depend on the cut-off (AUROC, loss and the survival metrics do not).
THRESHOLD_DEPENDENT_METRICS: tuple[str, ...] = ("balanced_accuracy", "accuracy", "f1", "kappa", "subset_accuracy")

SOURCE_VALIDATION = "validation"
SOURCE_NO_VALIDATION = "default: no validation set"
SOURCE_ONE_CLASS = "default: the validation set has one class"
SOURCE_DEFAULT = "default: checkpoint without thresholds"


def tuned_metric_names(names: Sequence[str] = THRESHOLD_DEPENDENT_METRICS) -> tuple[str, ...]:
    """``('balanced_accuracy_tuned', ...)``: the names of ``names`` at the chosen thresholds."""
    return tuple(f"{n}{TUNED_SUFFIX}" for n in names)


#: The extra metric names a fold reports for a binary or multi-label task, in table order (multi-label runs
#: have one ``threshold_<label>`` per label instead of ``threshold``).
THRESHOLD_METRIC_NAMES: tuple[str, ...] = (*tuned_metric_names(), "threshold")


@dataclass
class DecisionThresholds:
    """The thresholds of one model: one per binary decision (1 for two classes, ``L`` for ``L`` labels).

    Attributes:
        values: threshold per decision, each in ``[0, 1]`` (a probability cut-off; above 1 only when every
            validation score was 1 and "all negative" won).
        sources: per decision, how it was set (:data:`SOURCE_VALIDATION` or a ``'default: ...'`` reason).
        criterion: what the choice maximised.
    """

    values: list[float]
    sources: list[str]
    criterion: str = "balanced_accuracy"
    rule: str = field(default="positive when p >= t", repr=False)

    def __post_init__(self) -> None:
        self.values = [float(v) for v in self.values]
        self.sources = [str(s) for s in self.sources]
        if len(self.values) != len(self.sources):
            raise ValueError(f"{len(self.values)} thresholds but {len(self.sources)} sources")
        bad = [v for v in self.values if not math.isfinite(v)]
        if bad:
            raise ValueError(f"decision thresholds must be finite numbers, got {self.values}")

    @property
    def tuned(self) -> bool:
        """Whether at least one threshold was chosen on validation data."""
        return SOURCE_VALIDATION in self.sources

    def describe(self) -> str:
        """One log line: the values and where they come from."""
        values = ", ".join(f"{v:.4f}" for v in self.values)
        reasons = sorted({s for s in self.sources if s != SOURCE_VALIDATION})
        if not reasons:
            return f"decision thresholds {values}: chosen on the validation set"
        kept = "; ".join(r.removeprefix("default: ") for r in reasons)
        where = "chosen on the validation set where it has both outcomes, " if self.tuned else ""
        return f"decision thresholds {values}: {where}kept at 0.5 ({kept})"

    @classmethod
    def default(cls, count: int, source: str = SOURCE_NO_VALIDATION) -> DecisionThresholds:
        """``count`` thresholds at 0.5, with the reason."""
        return cls([DEFAULT_THRESHOLD] * count, [source] * count)

    def to_record(self) -> dict[str, Any]:
        """The JSON stored in a checkpoint's ``config.json`` under :data:`THRESHOLDS_KEY`."""
        return {"values": list(self.values), "sources": list(self.sources), "criterion": self.criterion,
                "rule": self.rule}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> DecisionThresholds:
        """The inverse of :meth:`to_record` (a ``ValueError`` names what is wrong with a bad record)."""
        fix = "save the checkpoint again with medmoe (or without the key: thresholds 0.5)"
        if not isinstance(record, Mapping) or not isinstance(record.get("values"), list):
            raise ValueError(f"the checkpoint's {THRESHOLDS_KEY} must be a mapping with a 'values' list, got "
                             f"{record!r}; {fix}")
        values = record["values"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise ValueError(f"the checkpoint's {THRESHOLDS_KEY}.values must be finite numbers, got {values!r}; {fix}")
        sources = record.get("sources") or [SOURCE_VALIDATION] * len(values)
        return cls(list(values), list(sources), str(record.get("criterion", "balanced_accuracy")))


def _as_scores(scores: Tensor | Sequence[float], name: str) -> Tensor:
    s = torch.as_tensor(scores).detach().to("cpu", torch.float64)
    if not torch.isfinite(s).all():
        raise ValueError(f"{name} contain NaN or inf; check the model outputs (diverged training?)")
    return s


def choose_threshold(scores: Tensor | Sequence[float], positive: Tensor | Sequence[bool]) -> tuple[float, str]:
    """The cut-off ``t`` that maximises balanced accuracy of ``scores >= t`` (rules in the module docstring).

    Args:
        scores: ``(n,)`` validation scores (probabilities of the positive class / label).
        positive: ``(n,)`` whether each bag is positive.

    Returns:
        ``(t, source)``: :data:`SOURCE_VALIDATION`, or ``(0.5, reason)`` when the set is empty or has one class.
    """
    s = _as_scores(scores, "validation scores").reshape(-1)
    y = torch.as_tensor(positive).detach().to("cpu").reshape(-1).bool()
    if s.shape != y.shape:
        raise ValueError(f"scores {tuple(s.shape)} and positive {tuple(y.shape)} must have the same length")
    if s.numel() == 0:
        return DEFAULT_THRESHOLD, SOURCE_NO_VALIDATION
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return DEFAULT_THRESHOLD, SOURCE_ONE_CLASS
    u = torch.unique(s)  # sorted, distinct
    low = u[0] / 2 if u[0] > 0 else u[0]  # every bag positive
    high = torch.maximum((u[-1] + 1) / 2, torch.nextafter(u[-1], torch.tensor(math.inf, dtype=u.dtype)))
    candidates = torch.cat([torch.tensor([DEFAULT_THRESHOLD], dtype=u.dtype), low.view(1), (u[1:] + u[:-1]) / 2,
                            high.view(1)])
    pos_sorted, _ = torch.sort(s[y])
    neg_sorted, _ = torch.sort(s[~y])
    tp = n_pos - torch.searchsorted(pos_sorted, candidates, side="left")  # positives with s >= t
    tn = torch.searchsorted(neg_sorted, candidates, side="left")  # negatives with s < t
    score = tp * n_neg + tn * n_pos  # 2 * n_pos * n_neg * balanced accuracy: exact integers
    best = score == score.max()
    kept = candidates[best]
    distance = (kept - DEFAULT_THRESHOLD).abs()
    nearest = kept[distance == distance.min()]
    return float(nearest.min()), SOURCE_VALIDATION


def choose_thresholds(scores: Tensor, targets: Tensor) -> DecisionThresholds:
    """One :func:`choose_threshold` per column.

    Args:
        scores: ``(n, L)`` validation scores; ``targets``: ``(n, L)`` 0/1 (or bool) outcomes.
    """
    s = torch.as_tensor(scores)
    t = torch.as_tensor(targets)
    if s.ndim != 2 or s.shape != t.shape:
        raise ValueError(f"scores and targets must both be (n, L), got {tuple(s.shape)} and {tuple(t.shape)}")
    chosen = [choose_threshold(s[:, j], t[:, j].bool()) for j in range(s.shape[1])]
    return DecisionThresholds([c[0] for c in chosen], [c[1] for c in chosen])


def _values(thresholds: DecisionThresholds | Sequence[float] | float) -> list[float]:
    if isinstance(thresholds, DecisionThresholds):
        return list(thresholds.values)
    if isinstance(thresholds, (int, float)):
        return [float(thresholds)]
    return [float(v) for v in thresholds]


def apply_thresholds(scores: Tensor, thresholds: DecisionThresholds | Sequence[float] | float) -> Tensor:
    """``scores >= t`` (float64 comparison): ``(n,)`` with one threshold, ``(n, L)`` with one per column."""
    s = torch.as_tensor(scores).detach().to("cpu", torch.float64)
    values = _values(thresholds)
    if s.ndim == 1:
        if len(values) != 1:
            raise ValueError(f"(n,) scores take one threshold, got {len(values)}")
        return s >= values[0]
    if s.ndim != 2 or s.shape[1] != len(values):
        raise ValueError(f"scores {tuple(s.shape)} need one threshold per column, got {len(values)}")
    return s >= torch.tensor(values, dtype=torch.float64)


def decide_classes(probs: Tensor, thresholds: DecisionThresholds | Sequence[float] | None) -> Tensor:
    """Class decisions ``(n,)`` from class probabilities ``(n, C)``: for two classes with a threshold,
    class 1 when ``probs[:, 1] >= t``; otherwise the arg-max."""
    probs = torch.as_tensor(probs)
    if thresholds is None or probs.shape[-1] != 2:
        return probs.argmax(-1)
    return apply_thresholds(probs[:, 1], thresholds).long()


def ensemble_thresholds(members: Sequence[DecisionThresholds | Sequence[float]]) -> list[float]:
    """The thresholds of an ensemble that averages its members' probabilities: the mean per decision
    (why: module docstring)."""
    lists = [_values(m) for m in members]
    if not lists:
        raise ValueError("ensemble_thresholds needs at least one member")
    if len({len(v) for v in lists}) != 1:
        raise ValueError(f"ensemble members have different numbers of thresholds: {[len(v) for v in lists]}")
    return [sum(col) / len(col) for col in zip(*lists)]


def checkpoint_thresholds(info: Mapping[str, Any]) -> DecisionThresholds | None:
    """The thresholds of a checkpoint (its ``config.json`` dict), ``None`` for tasks without binary
    decisions (multi-class, survival). Binary and multi-label checkpoints saved before thresholds existed
    get 0.5 per decision (source :data:`SOURCE_DEFAULT`)."""
    from .tasks import get_task  # the tasks use this module: imported when needed

    task = info.get("task", "classification")
    num_outputs = info.get("num_outputs") or (info.get("model_config") or {}).get("num_classes")
    count = len(info.get("class_names") or []) or int(num_outputs or 0)
    expected = get_task(task).threshold_count(count)  # 0: no binary decision (multi-class, survival)
    if expected == 0:
        return None
    record = info.get(THRESHOLDS_KEY)
    if record is None:
        return DecisionThresholds.default(expected, SOURCE_DEFAULT)
    found = DecisionThresholds.from_record(record)
    if len(found.values) != expected:
        raise ValueError(
            f"the checkpoint holds {len(found.values)} decision thresholds but its {task} task has {expected} "
            f"binary decision{'s' if expected > 1 else ''}; save the checkpoint again with medmoe"
        )
    return found


def tuned_metrics(
    at_thresholds: Mapping[str, float], values: Sequence[float], label_names: Sequence[str] | None = None
) -> dict[str, float]:
    """The threshold-dependent entries of ``at_thresholds`` (metrics computed at the chosen thresholds)
    renamed with :data:`TUNED_SUFFIX`, plus ``threshold`` (binary) or ``threshold_<label>`` (multi-label)."""
    out = {f"{k}{TUNED_SUFFIX}": float(v) for k, v in at_thresholds.items() if k in THRESHOLD_DEPENDENT_METRICS}
    if label_names is None:
        out["threshold"] = float(values[0])
    else:
        out.update({f"threshold_{n}": float(v) for n, v in zip(label_names, values)})
    return out


def thresholds_note(records: Sequence[Mapping[str, Any] | None]) -> str:
    """A short paragraph for a run's ``summary.md``: how the runs' decision thresholds were set (records
    as in :meth:`DecisionThresholds.to_record`; ``None`` entries, e.g. multi-class runs, are skipped).
    ``''`` when no run has thresholds."""
    found = [DecisionThresholds.from_record(r) for r in records if r]
    if not found:
        return ""
    sources = [s for t in found for s in t.sources]
    per_run = all(len(t.values) == 1 for t in found)
    unit = "runs" if per_run else f"label thresholds ({len(found)} runs)"
    chosen = sources.count(SOURCE_VALIDATION)
    reasons = sorted({s for s in sources if s != SOURCE_VALIDATION})
    if len(reasons) == 1:
        kept = reasons[0].removeprefix("default: ")
    else:
        kept = "; ".join(f"{r.removeprefix('default: ')}: {sources.count(r)}" for r in reasons)
    if chosen == 0:
        return (f"Decision thresholds: kept at 0.5 in all {len(sources)} {unit} ({kept}), so the `*_tuned` "
                "metrics are those at 0.5.")
    text = (f"Decision thresholds: chosen on each run's validation set (maximal balanced accuracy, ties to the "
            f"value nearest 0.5) in {chosen} of {len(sources)} {unit}")
    if reasons:
        text += f", kept at 0.5 in the other {len(sources) - chosen} ({kept})"
    return text + (". Metrics named `*_tuned` use them (`threshold*`: their mean ± std); the other "
                   "threshold-dependent metrics use the fixed 0.5 (arg-max for two classes).")
