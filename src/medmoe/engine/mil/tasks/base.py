"""The :class:`Task` protocol: everything that differs between classification, survival and multi-label MIL.

A task answers, for the trainer, evaluation, cross-validation, prediction, heatmaps and the CLI:

* **outputs** — how many outputs the model needs (:meth:`Task.num_outputs`) and what they are called
  (:meth:`Task.output_names`, saved as the checkpoint's ``class_names``);
* **fitting** — what is learnt from the training fold besides the weights (:meth:`Task.fit`, e.g. the
  survival time bins; saved in the checkpoint's ``config.json``, read back as the task ``state``);
* **targets and loss** — :meth:`Task.objective` returns an :class:`Objective` that turns a batch into the
  label the model's auxiliary losses see plus the target, and computes the loss;
* **metrics** — at bag or patient level (:meth:`Task.metrics`), the early-stopping choices and their
  direction (:attr:`Task.monitor_metrics`, :meth:`Task.default_monitor`), the summary table's columns
  (:attr:`Task.summary_metrics`);
* **decision thresholds** — :meth:`Task.choose_thresholds`, :meth:`Task.threshold_count`;
* **predictions** — ``test_predictions.csv`` rows (:meth:`Task.test_prediction_table`), the pooled file of a
  cross-validation run (:attr:`Task.pooled_predictions_csv`, :meth:`Task.pool_extra_columns`), the rows of
  :func:`~medmoe.engine.mil.prediction.predict` and its ensemble, a heatmap's headline
  (:meth:`Task.slide_prediction`);
* **data and plots** — which bags it needs (:meth:`Task.check_dataset`, :meth:`Task.read_bags`), how folds
  are stratified (:meth:`Task.kfold`) and the plots ``medmoe mil train`` draws (:attr:`Task.plots`,
  :meth:`Task.plot_test_predictions`).

Tasks are stateless singletons looked up by name (:func:`medmoe.engine.mil.tasks.get_task`); the state of one
training fold lives in the ``state`` dict from :meth:`Task.fit` and in the :class:`Objective`.
Adding a task = one module with a :class:`Task` subclass + one :func:`~medmoe.engine.mil.tasks.register_task`
line (see ``docs/mil.md``, "Tasks").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from ....data.splits import Split
    from ..config import TrainConfig
    from ..thresholds import DecisionThresholds

__all__ = ["Objective", "Task"]

#: The pooled out-of-fold test predictions of a cross-validation run (and each fold's own file).
TEST_PREDICTIONS_CSV = "test_predictions.csv"


class Objective(ABC):
    """The training targets and loss of one fold (built by :meth:`Task.objective` from the training set).

    The trainer calls, per batch: ``label, target = objective.targets(batch)``, then
    ``out = model(x, mask, label=label)`` (no ``label`` when it is ``None``: auxiliary losses such as
    CLAM's instance loss then stay off) and ``loss = out.total_loss(objective.loss(out.logits, target))``.
    """

    @abstractmethod
    def targets(self, batch: Any) -> tuple[Tensor | None, Any]:
        """``(label for the model (b,) int64 or None, target)`` of a :class:`~medmoe.data.BagBatch` (on the
        training device)."""

    @abstractmethod
    def loss(self, logits: Tensor, target: Any) -> Tensor:
        """The scalar task loss of ``logits (b, outputs)`` against ``target``."""


class Task(ABC):
    """One kind of MIL target (see the module docstring). Subclasses set the class attributes and implement
    the abstract methods; the other methods have defaults that suit a task with one class label per bag."""

    #: The registry name (``TrainConfig.task``, ``--task``, the checkpoint's ``task``).
    name: ClassVar[str]
    #: The early-stopping metrics this task accepts and whether larger is better, in help order.
    monitor_metrics: ClassVar[Mapping[str, bool]]
    #: The test metrics a summary table shows by default, in table order.
    summary_metrics: ClassVar[tuple[str, ...]]
    #: The plots ``medmoe mil train`` draws from the pooled out-of-fold test predictions.
    plots: ClassVar[tuple[str, ...]] = ()
    #: The file of a cross-validation run pooling every fold's test predictions.
    pooled_predictions_csv: ClassVar[str] = TEST_PREDICTIONS_CSV
    #: Whether the target is the bag's one class label (the built-in benchmarks have only such labels).
    uses_class_labels: ClassVar[bool] = False
    #: Whether the targets come from several 0/1 label columns of the labels CSV (``--label-cols``).
    uses_label_columns: ClassVar[bool] = False
    #: Whether slide embeddings of a labelled cohort are coloured by the bags' labels.
    labels_colour_embeddings: ClassVar[bool] = True
    #: Whether heatmaps draw one per-class instance map (softmax of instance logits) per output.
    draws_instance_maps: ClassVar[bool] = False
    #: Whether validation and test sets must have the training set's number of classes.
    class_count_must_match: ClassVar[bool] = True

    # ------------------------------------------------------------------------------------------
    # settings and monitor

    def check_config(self, cfg: TrainConfig) -> None:
        """Raise ``ValueError`` for settings this task cannot use (called by ``TrainConfig``)."""

    @abstractmethod
    def default_monitor(self, num_classes: int) -> str:
        """The early-stopping metric of ``'auto'`` (``num_classes``: the training set's class count)."""

    def resolve_monitor(self, name: str, num_classes: int) -> tuple[str, bool]:
        """``(metric, larger is better)`` of an early-stopping setting (``'auto'`` or a metric name)."""
        if name == "auto":
            name = self.default_monitor(num_classes)
        if name not in self.monitor_metrics:
            raise ValueError(
                f"unknown early-stopping metric {name!r} for task={self.name!r}; choose from "
                f"{list(self.monitor_metrics)}"
            )
        return name, bool(self.monitor_metrics[name])

    # ------------------------------------------------------------------------------------------
    # data, outputs, fitting

    def check_dataset(self, name: str, dataset: Any, train_set: Any = None) -> None:
        """Raise a helpful ``ValueError`` unless ``dataset`` (``None``: nothing to check) carries this task's
        targets; ``train_set`` is given for the validation and test sets (their targets must match it)."""

    def check_training_set(self, train_set: Any) -> None:
        """Raise a helpful ``ValueError`` when this task cannot be trained on ``train_set``."""
        self.check_dataset("train_set", train_set)

    def check_evaluation_set(self, dataset: Any, num_outputs: int) -> None:
        """Raise a helpful ``ValueError`` when a model with ``num_outputs`` outputs cannot be scored on ``dataset``."""
        self.check_dataset("the dataset", dataset)

    @abstractmethod
    def num_outputs(self, dataset: Any, cfg: TrainConfig) -> int:
        """The model's number of outputs for training on ``dataset`` with ``cfg``."""

    def output_names(self, train_set: Any) -> list[str]:
        """What the outputs mean (the checkpoint's ``class_names``)."""
        return list(train_set.class_names)

    def check_model(self, model: Any, model_name: str) -> None:
        """Raise ``ValueError`` when a freshly built model cannot learn this task."""

    def fit(self, train_set: Any, cfg: TrainConfig) -> dict[str, Any]:
        """What this task learns from the training fold besides the weights, as JSON values saved in the
        checkpoint's ``config.json`` (the ``state`` the other methods get; ``{}`` by default)."""
        return {}

    @abstractmethod
    def objective(self, train_set: Any, cfg: TrainConfig, state: Mapping[str, Any], device: Any) -> Objective:
        """The training targets and loss of a fold (see :class:`Objective`)."""

    def kfold(self, dataset: Any, k: int, seed: int, *, val_folds: int = 1, indices: Sequence[int] | None = None,
              bag_ids: Sequence[str] | None = None, class_names: Sequence[str] | None = None) -> list[Split]:
        """Patient-level folds of ``dataset`` (of its bags ``indices`` when given: the split's indices then
        point into ``indices``), stratified by the bags' class labels."""
        from ....data.splits import stratified_group_kfold

        labels, groups = list(dataset.labels), list(dataset.groups)
        if indices is not None:
            labels, groups = [labels[i] for i in indices], [groups[i] for i in indices]
        extra: dict[str, Any] = {}
        if bag_ids is not None:
            extra["bag_ids"] = bag_ids
        if class_names is not None:
            extra["class_names"] = class_names
        return stratified_group_kfold(labels, groups, k, seed, val_folds=val_folds, **extra)

    # ------------------------------------------------------------------------------------------
    # evaluation

    @abstractmethod
    def metrics(self, logits: Tensor, dataset: Any, state: Mapping[str, Any], *, level: str = "bag",
                thresholds: Sequence[float] | None = None, cfg: TrainConfig | None = None) -> dict[str, float]:
        """Metrics of ``logits (n, outputs)`` (float32, dataset order) against ``dataset``'s targets.

        Args:
            state: the task state (:meth:`fit`, or a checkpoint's ``config.json`` dict).
            level: ``'bag'`` or ``'group'`` (one score per patient: a patient's bags averaged first).
            thresholds: decision thresholds (:meth:`threshold_count` of them): add the metrics at them.
            cfg: the training settings when called by the trainer (``None``: defaults).
        """

    def threshold_count(self, num_outputs: int) -> int:
        """Number of decision thresholds a model with ``num_outputs`` outputs has (0 = none)."""
        return 0

    def choose_thresholds(self, logits: Tensor | None, dataset: Any, level: str,
                          num_outputs: int) -> DecisionThresholds | None:
        """Decision thresholds chosen on the validation outputs (``logits`` ``None`` without a validation
        set: the defaults); ``None`` for a task or model without thresholds."""
        return None

    @abstractmethod
    def probabilities(self, logits: Tensor, state: Mapping[str, Any]) -> Tensor:
        """What :func:`~medmoe.engine.mil.trainer.evaluate` returns as ``probs`` for ``logits (n, outputs)``."""

    # ------------------------------------------------------------------------------------------
    # predictions

    @abstractmethod
    def test_prediction_table(self, dataset: Any, logits: Tensor) -> tuple[list[str], list[list[Any]]]:
        """``(header, rows)`` of a fold's ``test_predictions.csv``: one row per bag, starting with ``bag_id``."""

    def pool_extra_columns(self, rows: Sequence[Mapping[str, str]]) -> tuple[list[str], list[list[Any]]]:
        """Extra columns of one fold's rows in the pooled file (``(names, values per row)``; none by default)."""
        return [], [[] for _ in rows]

    @abstractmethod
    def outcome_rows(self, dataset: Any) -> list[dict[str, Any]]:
        """One dict per bag: ``bag_id`` and the known outcome (``None`` where unknown) for prediction CSVs."""

    @abstractmethod
    def add_predictions(self, rows: list[dict[str, Any]], logits: Tensor, info: Mapping[str, Any]) -> None:
        """Add one checkpoint's prediction (its ``info`` = ``config.json`` + ``num_outputs``) to ``rows``."""

    @abstractmethod
    def add_ensemble_predictions(self, rows: list[dict[str, Any]], outputs: Sequence[Tensor],
                                 infos: Sequence[Mapping[str, Any]]) -> None:
        """Add the mean prediction of several checkpoints (their logits ``(n, outputs)`` and infos)."""

    @abstractmethod
    def slide_prediction(self, logits: Tensor, probs: Any, class_names: Sequence[str] | None,
                         thresholds: Any) -> tuple[list[str], str, dict[str, Any]]:
        """A heatmap's headline for one slide: ``(output names, title tag, heatmaps.json prediction)`` from its
        logits ``(C,)`` and softmax ``probs (C,)``."""

    # ------------------------------------------------------------------------------------------
    # reading bags, plots

    def read_bags(self, features: str | Path, labels: str | Path, *, patient_mode: str = "separate",
                  time_col: str | None = None, event_col: str = "event", label_cols: Sequence[str] | None = None,
                  class_names: Sequence[str] | None = None) -> Any:
        """The bags of a feature folder with this task's targets read from the ``labels`` CSV."""
        from ....data import FeatureFolderBags

        extra: dict[str, Any] = {"class_names": list(class_names)} if class_names is not None else {}
        return FeatureFolderBags(features, labels, patient_mode=patient_mode, label_cols=label_cols, **extra)

    def checkpoint_columns(self, info: Mapping[str, Any]) -> dict[str, Any]:
        """The :meth:`read_bags` keywords that read a cohort the way a checkpoint (its ``info``) was trained."""
        return {}

    def plot_test_predictions(self, out_dir: Path, model_name: str, seed: int, dataset: Any) -> list[Path]:
        """Draw :attr:`plots` from one seed's pooled out-of-fold test predictions in ``out_dir``; the files."""
        return []


def checkpoint_output_names(info: Mapping[str, Any]) -> list[str]:
    """A checkpoint's output names: its ``class_names``, else ``'0'..`` up to ``info['num_outputs']``."""
    return list(info.get("class_names") or [str(c) for c in range(info["num_outputs"])])


def seed_rows(path: Path, seed: int) -> list[dict[str, str]]:
    """The rows of a pooled out-of-fold CSV (``test_predictions.csv``, ``test_risks.csv``) for one seed: every
    bag once (no rows without the file)."""
    import csv

    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return [r for r in csv.DictReader(fh) if int(r["seed"]) == seed]
