"""Tasks as objects: the protocol methods of the built-in tasks, the registry, and a new task (regression,
defined below) trained through the normal ``train_one_fold`` path with one module's worth of code + one
``register_task`` line."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from engine_synthetic import TINY_ABMIL, multilabel_bags, survival_bags, synthetic_bags
from torch import Tensor

from medmoe.data import BagBatch, collate_bags
from medmoe.engine import TrainConfig, evaluate, train_one_fold
from medmoe.engine.mil.config import resolve_monitor
from medmoe.engine.mil.metrics import compute_metrics
from medmoe.engine.mil.multilabel import multilabel_loss, multilabel_metrics, positive_weights
from medmoe.engine.mil.survival import (
    assign_time_bins,
    nll_survival_loss,
    survival_bin_edges,
    survival_curves,
    survival_metrics,
)
from medmoe.engine.mil.tasks import (
    ClassificationTask,
    MultilabelTask,
    Objective,
    SurvivalTask,
    Task,
    get_task,
    register_task,
    task_names,
    unregister_task,
)

CFG = TrainConfig(epochs=2, lr=5e-3, min_epochs=1, patience=None, progress=False, accelerator="cpu")


def _batch(dataset: Any, indices: Sequence[int]) -> BagBatch:
    return collate_bags([dataset[i] for i in indices])


# ---------------------------------------------------------------------------------------------------------
# a new task, defined here: regression of the bag size (instances / 10) with the mean squared error


def _sizes(dataset: Any) -> dict[str, float]:
    """The regression target of every bag: its number of instances / 10."""
    return {dataset[i].bag_id: dataset[i].features.shape[0] / 10.0 for i in range(len(dataset))}


class _MSE(Objective):
    def __init__(self, target_of: dict[str, float], device: Any) -> None:
        self.target_of, self.device = target_of, device

    def targets(self, batch: Any) -> tuple[Tensor | None, Any]:
        return None, torch.tensor([self.target_of[b] for b in batch.bag_ids], device=self.device)

    def loss(self, logits: Tensor, target: Any) -> Tensor:
        return F.mse_loss(logits.float()[:, 0], target.float())


class RegressionTask(Task):
    """One number per bag, one output, mean squared error (what a user's own task module would hold)."""

    name: ClassVar[str] = "regression_test"
    monitor_metrics: ClassVar[Mapping[str, bool]] = {"mse": False, "mae": False}
    summary_metrics: ClassVar[tuple[str, ...]] = ("mse", "mae")
    class_count_must_match: ClassVar[bool] = False

    def default_monitor(self, num_classes: int) -> str:
        return "mse"

    def num_outputs(self, dataset: Any, cfg: TrainConfig) -> int:
        return 1

    def output_names(self, train_set: Any) -> list[str]:
        return ["size"]

    def objective(self, train_set: Any, cfg: TrainConfig, state: Mapping[str, Any], device: Any) -> Objective:
        return _MSE(_sizes(train_set), device)

    def metrics(self, logits: Tensor, dataset: Any, state: Mapping[str, Any], *, level: str = "bag",
                thresholds: Sequence[float] | None = None, cfg: TrainConfig | None = None) -> dict[str, float]:
        sizes = _sizes(dataset)
        target = torch.tensor([sizes[b] for b in dataset.bag_ids], dtype=torch.float64)
        err = logits.double()[:, 0] - target
        return {"mse": float((err**2).mean()), "mae": float(err.abs().mean())}

    def probabilities(self, logits: Tensor, state: Mapping[str, Any]) -> Tensor:
        return logits

    def test_prediction_table(self, dataset: Any, logits: Tensor) -> tuple[list[str], list[list[Any]]]:
        sizes = _sizes(dataset)
        return ["bag_id", "target", "pred"], [[b, sizes[b], float(z[0])] for b, z in zip(dataset.bag_ids, logits)]

    def outcome_rows(self, dataset: Any) -> list[dict[str, Any]]:
        return [{"bag_id": b} for b in dataset.bag_ids]

    def add_predictions(self, rows: list[dict[str, Any]], logits: Tensor, info: Mapping[str, Any]) -> None:
        for row, z in zip(rows, logits):
            row["pred"] = float(z[0])

    def add_ensemble_predictions(self, rows: list[dict[str, Any]], outputs: Sequence[Tensor],
                                 infos: Sequence[Mapping[str, Any]]) -> None:
        self.add_predictions(rows, torch.stack(list(outputs)).mean(0), infos[0])

    def slide_prediction(self, logits: Tensor, probs: Any, class_names: Sequence[str] | None,
                         thresholds: Any) -> tuple[list[str], str, dict[str, Any]]:
        value = float(torch.as_tensor(logits).flatten()[0])
        return ["size"], f"size {value:.2f}", {"size": value}


@pytest.fixture
def regression():
    task = register_task(RegressionTask())  # the one registry line a new task needs
    yield task
    unregister_task(RegressionTask.name)


def test_a_new_task_trains_one_fold_through_train_one_fold(regression, tmp_path):
    train, val, test = synthetic_bags(16, seed=0), synthetic_bags(8, seed=1), synthetic_bags(8, seed=2)
    cfg = CFG.replace(task="regression_test", epochs=3)
    result = train_one_fold("abmil.base", train, val, test, cfg, tmp_path, TINY_ABMIL)

    assert result.monitor == "mse" and result.thresholds is None
    assert set(result.val_metrics) == {"mse", "mae"} and set(result.test_metrics) == {"mse", "mae"}
    assert all(torch.isfinite(torch.tensor(v)) for v in result.test_metrics.values())
    info = json.loads((tmp_path / "checkpoint" / "config.json").read_text())
    assert info["task"] == "regression_test" and info["class_names"] == ["size"]
    assert info["model_config"]["num_classes"] == 1  # the task's number of outputs
    with (tmp_path / "test_predictions.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["bag_id"] for r in rows] == list(test.bag_ids) and set(rows[0]) == {"bag_id", "target", "pred"}
    # the epochs' validation metric is the task's, and lower is better
    history = [row["val_mse"] for row in result.history]
    assert result.best_epoch == min(range(len(history)), key=history.__getitem__)

    # evaluation of the saved model goes through the same task
    from medmoe.engine import load_checkpoint

    model, saved = load_checkpoint(tmp_path / "checkpoint")
    again = evaluate(model, test, feature_stats=saved["feature_stats"], task="regression_test", task_state=saved)
    assert again.metrics == pytest.approx(result.test_metrics)


def test_a_new_task_is_known_to_config_and_monitor(regression):
    assert "regression_test" in task_names()
    assert resolve_monitor("auto", 2, "regression_test") == ("mse", False)
    with pytest.raises(ValueError, match="early_stopping must be 'auto' or one of"):
        TrainConfig(task="regression_test", early_stopping="auroc")


# ---------------------------------------------------------------------------------------------------------
# the registry


def test_registry_names_and_lookups():
    assert {"classification", "survival", "multilabel"} <= set(task_names())
    assert isinstance(get_task("classification"), ClassificationTask)
    assert isinstance(get_task("survival"), SurvivalTask)
    assert isinstance(get_task("multilabel"), MultilabelTask)
    task = get_task("survival")
    assert get_task(task) is task
    with pytest.raises(ValueError, match="unknown task 'regression'; choose from"):
        get_task("regression")
    with pytest.raises(ValueError, match="already registered"):
        register_task(ClassificationTask())
    with pytest.raises(ValueError, match="needs a medmoe.engine.mil.tasks.Task"):
        register_task(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="TrainConfig.task must be one of"):
        TrainConfig(task="regression")


def test_register_replace_keeps_one_task_per_name():
    original = get_task("classification")
    try:
        replacement = register_task(ClassificationTask, replace=True)
        assert get_task("classification") is replacement is not original
    finally:
        register_task(original, replace=True)
    assert get_task("classification") is original


# ---------------------------------------------------------------------------------------------------------
# classification


def test_classification_protocol():
    task = get_task("classification")
    data = synthetic_bags(12, seed=0, num_classes=3)
    assert task.num_outputs(data, CFG) == 3 and task.output_names(data) == ["c0", "c1", "c2"]
    assert task.default_monitor(2) == "auroc" and task.default_monitor(3) == "kappa"
    assert task.resolve_monitor("loss", 3) == ("loss", False)
    with pytest.raises(ValueError, match="unknown early-stopping metric 'c_index'"):
        task.resolve_monitor("c_index", 2)
    assert task.threshold_count(2) == 1 and task.threshold_count(3) == 0
    with pytest.raises(ValueError, match="at least 2 classes"):
        task.check_training_set(synthetic_bags(4, num_classes=1))

    batch = _batch(data, [0, 1, 2, 4])
    objective = task.objective(data, CFG.replace(class_weights="balanced"), {}, "cpu")
    label, target = objective.targets(batch)
    assert torch.equal(label, batch.label) and torch.equal(target, batch.label)
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    weight = torch.ones(3)  # 12 bags, 4 per class: balanced weights are 1
    torch.testing.assert_close(objective.loss(logits, target), F.cross_entropy(logits, batch.label, weight=weight))

    all_logits = torch.randn(12, 3, generator=torch.Generator().manual_seed(1))
    got = task.metrics(all_logits, data, {})
    expected = compute_metrics(torch.softmax(all_logits, -1), torch.tensor(data.labels))
    assert {k: got[k] for k in expected} == pytest.approx(expected, nan_ok=True) and "loss" in got
    assert task.choose_thresholds(all_logits, data, "bag", 3) is None
    torch.testing.assert_close(task.probabilities(all_logits, {}), torch.softmax(all_logits, -1))

    header, rows = task.test_prediction_table(data, all_logits)
    assert header == ["bag_id", "label", "prob_c0", "prob_c1", "prob_c2"] and len(rows) == 12
    assert task.outcome_rows(data)[1] == {"bag_id": data.bag_ids[1], "label": 1, "label_name": "c1"}
    names, tag, prediction = task.slide_prediction(all_logits[0], torch.softmax(all_logits[0], -1).numpy(),
                                                   None, None)
    assert names == ["0", "1", "2"] and tag.startswith("pred ") and prediction["prediction"] in names
    assert task.checkpoint_columns({"class_names": ["a", "b"]}) == {"class_names": ["a", "b"]}


def test_classification_binary_thresholds():
    task = get_task("classification")
    data = synthetic_bags(12, seed=3)
    logits = torch.randn(12, 2, generator=torch.Generator().manual_seed(2))
    chosen = task.choose_thresholds(logits, data, "bag", 2)
    assert chosen is not None and len(chosen.values) == 1
    assert task.choose_thresholds(None, data, "bag", 2).values == [0.5]  # no validation set
    got = task.metrics(logits, data, {}, thresholds=chosen.values)
    assert got["threshold"] == chosen.values[0] and "balanced_accuracy_tuned" in got


# ---------------------------------------------------------------------------------------------------------
# survival


def test_survival_protocol():
    task = get_task("survival")
    data = survival_bags(16, seed=0)
    cfg = CFG.replace(task="survival", survival_bins=3, survival_alpha=0.2)
    assert task.num_outputs(data, cfg) == 3 and task.default_monitor(2) == "c_index"
    assert task.threshold_count(3) == 0 and task.choose_thresholds(None, data, "bag", 3) is None
    with pytest.raises(ValueError, match="survival has none"):
        CFG.replace(task="survival", class_weights="balanced")
    with pytest.raises(ValueError, match="task='survival' needs survival targets on val_set"):
        task.check_dataset("val_set", synthetic_bags(4), data)

    state = task.fit(data, cfg)
    edges = survival_bin_edges(data.survival_times, data.survival_events, 3)
    assert state == {"survival_bin_edges": edges}
    batch = _batch(data, [0, 3, 5])
    objective = task.objective(data, cfg, state, "cpu")
    label, (bins, events) = objective.targets(batch)
    expected_bins = assign_time_bins([data.survival_times[i] for i in (0, 3, 5)], edges)
    assert torch.equal(label, expected_bins) and torch.equal(bins, expected_bins)
    assert events.tolist() == [data.survival_events[i] for i in (0, 3, 5)]
    logits = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(objective.loss(logits, (bins, events)),
                               nll_survival_loss(logits, expected_bins, events, alpha=0.2))

    all_logits = torch.randn(16, 3, generator=torch.Generator().manual_seed(1))
    assert task.metrics(all_logits, data, state, cfg=cfg) == survival_metrics(
        all_logits, data.survival_times, data.survival_events, edges, 0.2)
    assert task.metrics(all_logits, data, state)["loss"] == survival_metrics(
        all_logits, data.survival_times, data.survival_events, edges, 0.0)["loss"]  # evaluate: alpha 0
    with pytest.raises(ValueError, match="survival_bin_edges"):
        task.metrics(all_logits, data, {})
    torch.testing.assert_close(task.probabilities(all_logits, state), survival_curves(all_logits))

    header, rows = task.test_prediction_table(data, all_logits)
    assert header == ["bag_id", "time", "event", "risk"] and len(rows) == 16
    pooled = [{"risk": str(r)} for r in (0.1, 0.5, 0.9, 0.3)]
    assert task.pool_extra_columns(pooled) == (["high_risk"], [[0], [1], [1], [0]])
    assert task.pooled_predictions_csv == "test_risks.csv" and not task.labels_colour_embeddings
    names, tag, prediction = task.slide_prediction(all_logits[0], all_logits[0].numpy(), None, None)
    assert names == ["bin_0", "bin_1", "bin_2"] and tag.startswith("risk ") and set(prediction) == {"risk", "survival"}


# ---------------------------------------------------------------------------------------------------------
# multi-label


def test_multilabel_protocol():
    task = get_task("multilabel")
    data = multilabel_bags(16, seed=0)
    cfg = CFG.replace(task="multilabel", class_weights="balanced")
    labels = list(data.label_names)
    assert task.num_outputs(data, cfg) == len(labels) and task.output_names(data) == labels
    assert task.default_monitor(5) == "auroc" and task.threshold_count(len(labels)) == len(labels)
    assert not task.class_count_must_match and task.uses_label_columns
    with pytest.raises(ValueError, match="needs multi-label targets on test_set"):
        task.check_dataset("test_set", synthetic_bags(4), data)

    class NeedsLabel:
        requires_label_for_aux = True

    with pytest.raises(ValueError, match="auxiliary loss needs one class per bag"):
        task.check_model(NeedsLabel(), "clam_sb.base")

    batch = _batch(data, [0, 1, 2])
    objective = task.objective(data, cfg, {}, "cpu")
    label, target = objective.targets(batch)
    targets = data.multilabel_targets
    assert label is None and torch.equal(target, targets[:3])
    logits = torch.randn(3, len(labels), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(objective.loss(logits, target),
                               multilabel_loss(logits, targets[:3], positive_weights(targets)))

    all_logits = torch.randn(16, len(labels), generator=torch.Generator().manual_seed(1))
    assert task.metrics(all_logits, data, {}) == pytest.approx(
        multilabel_metrics(all_logits, targets, labels), nan_ok=True)
    chosen = task.choose_thresholds(all_logits, data, "bag", len(labels))
    assert len(chosen.values) == len(labels)
    assert task.choose_thresholds(None, data, "bag", len(labels)).values == [0.5] * len(labels)
    torch.testing.assert_close(task.probabilities(all_logits, {}), torch.sigmoid(all_logits))

    header, _ = task.test_prediction_table(data, all_logits)
    assert header == ["bag_id", *(f"target_{n}" for n in labels), *(f"prob_{n}" for n in labels)]
    folds = task.kfold(data, 4, 0, val_folds=1, bag_ids=list(data.bag_ids))
    assert len(folds) == 4 and sorted(i for f in folds for i in f.test) == list(range(16))
    names, tag, prediction = task.slide_prediction(all_logits[0].numpy(), None, labels, None)
    assert names == labels and tag.startswith("labels ") and set(prediction["probs"]) == set(labels)
    assert task.checkpoint_columns({"class_names": labels}) == {"label_cols": labels}


def test_the_task_modules_hold_every_task_branch():
    """Outside engine/mil/tasks/, the MIL engine and cli/mil.py name no task in a comparison."""
    root = Path(__file__).resolve().parents[2] / "src" / "medmoe"
    files = [*sorted((root / "engine" / "mil").glob("*.py")), root / "cli" / "mil.py"]
    for path in files:
        text = path.read_text()
        for needle in ('== "survival"', '== "multilabel"', '!= "survival"', '!= "multilabel"',
                       "task == 'survival'", "task == 'multilabel'"):
            assert needle not in text, f"{path.name} still branches on a task: {needle}"
