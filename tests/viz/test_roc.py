"""ROC curves (AUROC equal to scikit-learn's) and confusion matrices."""

import math

import numpy as np
import pytest

from medmoe.viz.roc import plot_confusion, plot_label_rocs, plot_roc, roc_curve


def test_roc_hand_example_with_ties():
    # scores 0.9 (pos), 0.5 (pos), 0.5 (neg), 0.1 (neg): the tie is one diagonal step
    fpr, tpr, auc = roc_curve([0.9, 0.5, 0.5, 0.1], [True, True, False, False])
    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0] and tpr.tolist() == [0.0, 0.5, 1.0, 1.0]
    assert auc == pytest.approx(0.875)  # 3 of 4 pairs ordered, 1 tied (counts one half)
    assert math.isnan(roc_curve([0.1, 0.2], [True, True])[2])


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_scikit_learn(seed):
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    y = rng.uniform(size=60) < 0.4
    s = np.round(rng.normal(size=60) + y, 1)  # rounded: many ties
    assert roc_curve(s, y)[2] == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)


def test_plots_write_pngs_and_check_shapes(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 50)
    probs = rng.dirichlet(np.ones(3), 50)
    assert plot_roc(labels, probs, ["a", "b", "c"], tmp_path / "roc.png", title="t").stat().st_size > 10_000
    assert plot_roc(labels % 2, probs[:, :2], ["n", "p"], tmp_path / "roc2.png").stat().st_size > 10_000
    path = plot_confusion(labels, probs.argmax(1), ["a", "b", "c"], tmp_path / "cm.png")
    assert path.stat().st_size > 5_000
    with pytest.raises(ValueError, match="probs must be"):
        plot_roc(labels, probs[:, :2], ["a", "b", "c"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="must lie in"):
        plot_confusion([0, 3], [0, 1], ["a", "b"], tmp_path / "x.png")


def test_label_rocs(tmp_path):
    rng = np.random.default_rng(1)
    targets = (rng.uniform(size=(40, 3)) < 0.4).astype(int)
    probs = np.clip(targets * 0.4 + rng.uniform(size=(40, 3)) * 0.6, 0, 1)
    targets[:, 2] = 1  # one outcome only: no curve, left out of the macro AUROC
    assert plot_label_rocs(targets, probs, ["a", "b", "c"], tmp_path / "r.png", title="t").stat().st_size > 10_000
    with pytest.raises(ValueError, match="must both be"):
        plot_label_rocs(targets[:, :2], probs, ["a", "b", "c"], tmp_path / "x.png")
