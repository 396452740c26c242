"""Validation / test metrics per patient: a patient's bags are averaged before the metrics."""

import pytest
import torch
from engine_synthetic import TINY_ABMIL, synthetic_bags

from medmoe.data import InMemoryBags
from medmoe.engine import TrainConfig, evaluate, train_one_fold
from medmoe.engine.mil.metrics import compute_metrics
from medmoe.engine.mil.survival import concordance_index, risk_scores
from medmoe.engine.mil.tasks import get_task

CFG = TrainConfig(epochs=2, lr=5e-3, min_epochs=1, patience=None, progress=False, accelerator="cpu")


def _two_slides_per_patient(n_patients: int, seed: int) -> InMemoryBags:
    """Patient p has slides 2p and 2p+1, both of class p % 2 (two independent synthetic bags of it)."""
    first, second = synthetic_bags(n_patients, seed=seed), synthetic_bags(n_patients, seed=seed + 100)
    feats = [bags[p].features for p in range(n_patients) for bags in (first, second)]
    labels = [p % 2 for p in range(n_patients) for _ in range(2)]
    groups = [f"p{seed}_{p}" for p in range(n_patients) for _ in range(2)]
    ids = [f"s{seed}_{i}" for i in range(2 * n_patients)]
    return InMemoryBags(feats, labels, bag_ids=ids, groups=groups, class_names=["neg", "pos"])


def test_group_metrics_average_the_probabilities_of_a_patient():
    data = _two_slides_per_patient(6, seed=0)
    logits = torch.randn(12, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor(data.labels)
    probs = torch.softmax(logits, -1)
    mean = probs.view(6, 2, 2).mean(1)  # slides 2i and 2i+1 belong to patient i
    expected = compute_metrics(mean, labels[::2])
    got = get_task("classification").metrics(logits, data, {}, level="group")
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, nan_ok=True)
    assert got["loss"] != pytest.approx(get_task("classification").metrics(logits, data, {}, level="bag")["loss"])


def test_group_survival_metrics_use_the_mean_hazard_logits():
    data = _two_slides_per_patient(6, seed=1)
    times = [float(1 + i // 2) for i in range(12)]
    events = [int((i // 2) % 3 != 0) for i in range(12)]
    surv = data.with_survival(times, events)
    logits = torch.randn(12, 4, generator=torch.Generator().manual_seed(1))
    got = get_task("survival").metrics(logits, surv, {"survival_bin_edges": [1.5, 3.0, 4.5]}, level="group")
    mean = logits.view(6, 2, 4).mean(1)
    assert got["c_index"] == pytest.approx(concordance_index(risk_scores(mean), times[::2], events[::2]))


def test_group_metrics_refuse_patients_with_different_labels():
    data = synthetic_bags(8, seed=0)  # labels alternate 0, 1
    mixed = InMemoryBags([data[i].features for i in range(8)], data.labels, groups=["a"] * 8)
    with pytest.raises(ValueError, match="the bags of 'a' have different labels"):
        get_task("classification").metrics(torch.zeros(8, 2), mixed, {}, level="group")


def test_training_and_evaluate_report_per_patient(tmp_path):
    train, val, test = (_two_slides_per_patient(n, seed=s) for n, s in ((16, 0), (8, 1), (8, 2)))
    res = train_one_fold(
        "abmil.base", train, val, test, CFG.replace(metrics_level="group"), tmp_path, TINY_ABMIL
    )
    from medmoe.engine import load_checkpoint

    model, _ = load_checkpoint(res.checkpoint_dir)
    ev = evaluate(model, test, metrics_level="group")
    assert 0 <= ev.metrics["auroc"] <= 1 and ev.metrics["auroc"] == pytest.approx(res.test_metrics["auroc"])
    assert ev.probs.shape == (16, 2)  # predictions stay per bag
    with pytest.raises(ValueError, match="metrics_level"):
        TrainConfig(metrics_level="patient")
