"""Multi-label slides: metrics equal scikit-learn's, the loss, training end to end, predictions, bad input."""

import csv
import math

import numpy as np
import pytest
import torch
from engine_synthetic import TINY_ABMIL, multilabel_bags, train_killed_and_resumed

from medmoe.data import InMemoryBags
from medmoe.engine import TrainConfig, evaluate, load_checkpoint, predict, predict_ensemble, train_one_fold
from medmoe.engine.mil.multilabel import multilabel_loss, multilabel_metrics, positive_weights

sk_metrics = pytest.importorskip("sklearn.metrics")

CFG = TrainConfig(task="multilabel", epochs=12, lr=5e-3, min_epochs=1, patience=None, progress=False,
                  accelerator="cpu", standardize_features=True)
NAMES = ["tumor", "necrosis", "inflammation"]


@pytest.mark.parametrize("case", range(30))
def test_metrics_equal_scikit_learn(case):
    rng = np.random.default_rng(case)
    n, L = int(rng.integers(6, 40)), int(rng.integers(1, 5))
    y = (rng.random((n, L)) < rng.uniform(0.1, 0.9)).astype(int)
    if case % 5 == 0:
        y[:, 0] = 1  # a label with one outcome: no AUROC, left out of the macro mean
    z = np.round(rng.normal(size=(n, L)), 1)  # rounding makes tied scores
    got = multilabel_metrics(torch.tensor(z), torch.tensor(y), [f"l{j}" for j in range(L)])
    scorable = [j for j in range(L) if 0 < y[:, j].sum() < n]
    aucs = {j: sk_metrics.roc_auc_score(y[:, j], z[:, j]) for j in scorable}
    assert got["auroc"] == pytest.approx(np.mean(list(aucs.values())) if aucs else math.nan, nan_ok=True, abs=1e-12)
    for j in range(L):
        assert got[f"auroc_l{j}"] == pytest.approx(aucs.get(j, math.nan), nan_ok=True, abs=1e-12)
    pred = (z >= 0).astype(int)
    f1 = [sk_metrics.f1_score(y[:, j], pred[:, j], zero_division=1) for j in range(L)]  # (n, 1) reads as binary
    assert got["f1"] == pytest.approx(np.mean(f1), abs=1e-12)
    if L > 1:
        assert got["f1"] == pytest.approx(sk_metrics.f1_score(y, pred, average="macro", zero_division=1), abs=1e-12)
    assert got["accuracy"] == pytest.approx(1 - sk_metrics.hamming_loss(y, pred), abs=1e-12)
    assert got["subset_accuracy"] == pytest.approx(sk_metrics.accuracy_score(y, pred), abs=1e-12)
    balanced = []
    for j in range(L):
        if 0 < y[:, j].sum() < n:
            balanced.append(sk_metrics.balanced_accuracy_score(y[:, j], pred[:, j]))
        else:  # one outcome: the recall of that outcome
            present = y[0, j] == 1
            balanced.append(np.mean(pred[:, j] == present))
    assert got["balanced_accuracy"] == pytest.approx(np.mean(balanced), abs=1e-12)
    p = 1 / (1 + np.exp(-z))
    assert got["loss"] == pytest.approx(sk_metrics.log_loss(y.ravel(), p.ravel(), labels=[0, 1]), abs=1e-9)


def test_loss_and_positive_weights():
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    w = positive_weights(y)
    assert w.tolist() == [3.0, 3.0, 1.0]  # the always-present label is not reweighted
    z = torch.randn(4, 3, requires_grad=True)
    loss = multilabel_loss(z, y, w)
    p = torch.sigmoid(z)
    by_hand = -(w * y * p.log() + (1 - y) * (1 - p).log()).mean()
    torch.testing.assert_close(loss, by_hand)
    with pytest.raises(ValueError, match="differ"):
        multilabel_loss(z, y[:, :2])
    with pytest.raises(ValueError, match=r"\(n, L\)"):
        multilabel_metrics(z.detach()[:, 0], y[:, 0])


@pytest.fixture(scope="module")
def fold(tmp_path_factory):
    out = tmp_path_factory.mktemp("multilabel")
    train, val, test = multilabel_bags(48, seed=0), multilabel_bags(16, seed=1), multilabel_bags(24, seed=2)
    return train_one_fold("abmil.base", train, val, test, CFG, out, TINY_ABMIL), test


def test_training_learns_every_label(fold):
    result, test = fold
    assert result.monitor == "auroc"
    assert result.test_metrics["auroc"] > 0.9, result.test_metrics
    assert all(result.test_metrics[f"auroc_{n}"] > 0.8 for n in NAMES)
    model, info = load_checkpoint(result.checkpoint_dir)
    assert info["task"] == "multilabel" and info["class_names"] == NAMES and model.config.num_classes == 3
    rows = list(csv.DictReader((result.out_dir / "test_predictions.csv").open()))
    assert list(rows[0]) == ["bag_id", *(f"target_{n}" for n in NAMES), *(f"prob_{n}" for n in NAMES)]
    assert [[int(r[f"target_{n}"]) for n in NAMES] for r in rows] == test.multilabel_targets.long().tolist()

    # evaluate() and predict() give the same probabilities and metrics
    ev = evaluate(model, test, feature_stats=info["feature_stats"], multilabel=True)
    assert ev.metrics["auroc"] == pytest.approx(result.test_metrics["auroc"])
    got = predict(result.checkpoint_dir, test)
    assert [r["prob_tumor"] for r in got] == pytest.approx(ev.probs[:, 0].tolist(), abs=1e-6)
    assert got[0]["pred_labels"] == ";".join(n for j, n in enumerate(NAMES) if ev.probs[0, j] >= 0.5)
    assert got[0]["target_necrosis"] == int(test.multilabel_targets[0, 1])
    ens = predict_ensemble([result.checkpoint_dir, result.checkpoint_dir], test)
    assert [r["prob_necrosis"] for r in ens] == pytest.approx([r["prob_necrosis"] for r in got], abs=1e-6)
    assert ens[0]["n_models"] == 2


def test_metrics_per_patient_average_label_probabilities(fold):
    result, _ = fold
    model, info = load_checkpoint(result.checkpoint_dir)
    bags = multilabel_bags(12, seed=5, groups=True)  # p0 = bags 0 and 1, ...; targets differ within a patient
    with pytest.raises(ValueError, match="different multi-label targets"):
        evaluate(model, bags, feature_stats=info["feature_stats"], multilabel=True, metrics_level="group")
    same = bags.with_multilabel(bags.multilabel_targets[[i - i % 2 for i in range(12)]], NAMES)
    per_bag = evaluate(model, same, feature_stats=info["feature_stats"], multilabel=True)
    per_patient = evaluate(model, same, feature_stats=info["feature_stats"], multilabel=True, metrics_level="group")
    mean = per_bag.probs.double().view(6, 2, 3).mean(1)
    expected = multilabel_metrics(torch.logit(mean), same.multilabel_targets[::2], NAMES)
    assert per_patient.metrics == pytest.approx(expected)


def test_bad_input(tmp_path):
    plain = InMemoryBags([torch.randn(5, 8) for _ in range(6)], [0, 1] * 3)
    with pytest.raises(ValueError, match="needs multi-label targets on train_set"):
        train_one_fold("abmil.base", plain, None, None, CFG, tmp_path / "a", TINY_ABMIL)
    other = multilabel_bags(8, seed=1).with_multilabel(torch.zeros(8, 2, dtype=torch.long), ["x", "y"])
    with pytest.raises(ValueError, match="val_set has labels"):
        train_one_fold("abmil.base", multilabel_bags(8), other, None, CFG, tmp_path / "b", TINY_ABMIL)
    with pytest.raises(ValueError, match="auxiliary loss needs one class per bag"):
        train_one_fold("clam.base", multilabel_bags(8), None, None, CFG, tmp_path / "c", {"embed_dim": 16})
    with pytest.raises(ValueError, match="expected 3 values of 0 or 1"):
        plain.with_multilabel([[0, 1, 2]] * 6, NAMES)
    with pytest.raises(ValueError, match="unique label name"):
        plain.with_multilabel([[0, 1]] * 6, ["a", "a"])
    with pytest.raises(ValueError, match="has no multi-label targets"):
        _ = plain.multilabel_targets
    with pytest.raises(ValueError, match="early_stopping must be"):
        TrainConfig(task="multilabel", early_stopping="kappa")


def test_killed_and_resumed_ends_identical(tmp_path, monkeypatch):
    data = multilabel_bags(24, seed=0), multilabel_bags(12, seed=1), multilabel_bags(12, seed=2)
    cfg = CFG.replace(epochs=4, batch_size=2, feature_dropout=0.1, class_weights="balanced")
    model = {**TINY_ABMIL, "dropout": 0.25}
    straight, resumed = train_killed_and_resumed(monkeypatch, tmp_path, "abmil.base", data, cfg, model)
    assert resumed.val_metrics == straight.val_metrics and resumed.test_metrics == straight.test_metrics
    assert resumed.best_epoch == straight.best_epoch
