import logging
import math

import pytest
import torch

from medmoe.engine.mil.metrics import (
    ALL_METRIC_NAMES,
    METRIC_NAMES,
    compute_metrics,
    format_mean_std,
    format_summary,
    summarize,
)
from medmoe.engine.mil.multilabel import MULTILABEL_METRIC_NAMES
from medmoe.engine.mil.survival import SURVIVAL_METRIC_NAMES


def test_binary_hand_values():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    m = compute_metrics(probs, torch.tensor([0, 1, 1, 0]))
    assert set(m) == set(METRIC_NAMES)
    assert m["auroc"] == pytest.approx(0.75)  # 3 of 4 positive/negative pairs ranked right
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.5)
    assert m["kappa"] == pytest.approx(0.0)


def test_imbalanced_binary_hand_values():
    # labels 0,0,0,1; predictions 0,1,0,1
    p1 = torch.tensor([0.1, 0.6, 0.2, 0.7])
    m = compute_metrics(torch.stack([1 - p1, p1], 1), torch.tensor([0, 0, 0, 1]))
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["f1"] == pytest.approx((0.8 + 2 / 3) / 2)  # class 0: 2tp 0fp 1fn; class 1: 1tp 1fp 0fn
    assert m["kappa"] == pytest.approx(0.5)  # po 0.75, pe 0.5
    assert m["auroc"] == pytest.approx(1.0)


def test_perfect_multiclass():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    probs = torch.nn.functional.one_hot(labels, 3).float() * 0.8 + 0.2 / 3
    m = compute_metrics(probs, labels)
    for name in METRIC_NAMES:
        assert m[name] == pytest.approx(1.0), name


def test_quadratic_kappa_hand_value():
    # true 0,1,2,2 / pred 0,2,2,1: 1 - sum(w O) / sum(w E) = 1 - 0.5 / 1.375 with w = (i - j)^2 / 4
    preds = torch.tensor([0, 2, 2, 1])
    probs = torch.nn.functional.one_hot(preds, 3).float()
    m = compute_metrics(probs, torch.tensor([0, 1, 2, 2]))
    assert m["kappa"] == pytest.approx(1 - 0.5 / 1.375, abs=1e-6)


def test_multiclass_auroc_skips_absent_class(caplog):
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.2, 0.3, 0.5], [0.1, 0.2, 0.7]])
    with caplog.at_level(logging.WARNING, logger="medmoe.engine.mil.metrics"):
        m = compute_metrics(probs, torch.tensor([0, 0, 1, 1]))
    assert "skips classes [2]" in caplog.text
    assert m["auroc"] == pytest.approx((1.0 + 0.875) / 2)  # class 1: 3.5 of 4 pairs (one tie)
    assert m["balanced_accuracy"] == pytest.approx(0.5)  # recall 1 and 0 over the present classes
    assert m["f1"] == pytest.approx(1 / 3)  # classes 0 (1.0), 1 (0.0) and predicted-only 2 (0.0)


def test_single_class_binary_auroc_is_nan(caplog):
    with caplog.at_level(logging.WARNING):
        m = compute_metrics(torch.tensor([[0.3, 0.7], [0.6, 0.4]]), torch.tensor([1, 1]))
    assert math.isnan(m["auroc"])
    assert "only one class" in caplog.text


@pytest.mark.parametrize(
    "probs, labels, match",
    [
        (torch.rand(4), torch.zeros(4, dtype=torch.long), "shape"),
        (torch.rand(4, 2), torch.zeros(3, dtype=torch.long), "labels must have shape"),
        (torch.rand(4, 2), torch.zeros(4), "integer"),
        (torch.rand(4, 2), torch.tensor([0, 1, 2, 0]), r"\[0, 1\]"),
        (torch.full((2, 2), float("nan")), torch.tensor([0, 1]), "NaN"),
    ],
)
def test_bad_inputs(probs, labels, match):
    with pytest.raises(ValueError, match=match):
        compute_metrics(probs, labels)


def test_summarize_and_format():
    s = summarize([{"auroc": 1.0, "kappa": float("nan")}, {"auroc": 3.0, "kappa": 2.0}, {"auroc": 2.0}])
    assert s["auroc"] == pytest.approx((2.0, 1.0))  # sample std
    assert s["kappa"] == (2.0, 0.0)  # nan skipped, single value
    assert list(s) == ["auroc", "kappa"]
    assert format_mean_std(*s["auroc"]) == "2.000 ± 1.000"
    table = format_summary(s, ["auroc"], digits=2)
    assert table.splitlines() == ["| metric | value |", "|---|---|", "| auroc | 2.00 ± 1.00 |"]
    assert math.isnan(summarize([{"x": float("nan")}])["x"][0])
    with pytest.raises(ValueError, match="not in the summary"):
        format_summary(s, ["f1"])


def test_all_metric_names_cover_every_task_once_in_table_order():
    assert len(set(ALL_METRIC_NAMES)) == len(ALL_METRIC_NAMES)
    from medmoe.engine.mil.thresholds import THRESHOLD_METRIC_NAMES

    assert set(ALL_METRIC_NAMES) == {
        *METRIC_NAMES, *SURVIVAL_METRIC_NAMES, *MULTILABEL_METRIC_NAMES, *THRESHOLD_METRIC_NAMES
    }
    assert ALL_METRIC_NAMES[: len(METRIC_NAMES)] == METRIC_NAMES  # classification columns first
    # then the multi-label-only name, then the metrics at the validation-chosen decision thresholds
    assert ALL_METRIC_NAMES[-len(THRESHOLD_METRIC_NAMES) - 1 :] == ("subset_accuracy", *THRESHOLD_METRIC_NAMES)
