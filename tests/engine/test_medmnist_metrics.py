"""medmoe's MedMNIST ACC/AUC equal medmnist.evaluator's on the same scores, for every task type."""

import math

import numpy as np
import pytest

from medmoe.data import medmnist_info, write_fake_medmnist
from medmoe.engine.mosaic.metrics import evaluate_scores, medmnist_acc, medmnist_auc, retina_tolerant_acc

evaluator = pytest.importorskip("medmnist.evaluator")


def _random_case(task, n, classes, rng):
    if task == "multi-label, binary-class":
        return rng.integers(0, 2, (n, classes)), rng.random((n, classes))
    logits = rng.standard_normal((n, classes))
    scores = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return rng.integers(0, classes, (n, 1)), scores


@pytest.mark.parametrize("flag", ["pathmnist", "chestmnist", "breastmnist", "retinamnist", "organmnist3d", "nodulemnist3d"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_identical_to_medmnist_evaluator(flag, seed):
    info = medmnist_info(flag)
    y, s = _random_case(info.task, 97, info.num_classes, np.random.default_rng(seed))
    assert medmnist_acc(y, s, info.task) == pytest.approx(evaluator.getACC(y, s, info.task), abs=1e-12)
    assert medmnist_auc(y, s, info.task) == pytest.approx(evaluator.getAUC(y, s, info.task), abs=1e-12)


def test_binary_with_one_score_column_and_threshold_edge():
    y = np.array([[0], [1], [1], [0]])
    s = np.array([0.5, 0.51, 0.2, 0.9])  # 0.5 is not > 0.5
    assert medmnist_acc(y, s, "binary-class") == evaluator.getACC(y, s, "binary-class") == 0.5


def test_evaluator_on_a_fixture_file(tmp_path):
    write_fake_medmnist(tmp_path, ["dermamnist", "chestmnist"], 64, {"train": 4, "val": 4, "test": 60})
    rng = np.random.default_rng(0)
    for flag in ("dermamnist", "chestmnist"):
        ref = evaluator.Evaluator(flag, "test", size=64, root=str(tmp_path))
        info = medmnist_info(flag)
        scores = rng.random((60, info.num_classes))
        ours = evaluate_scores(ref.labels, scores, info.task)
        auc, acc = ref.evaluate(scores)
        assert ours.acc == pytest.approx(acc, abs=1e-12) and ours.auc == pytest.approx(auc, abs=1e-12)
        assert ours.acc_pm1 is None and ours.n == 60


def test_retina_plus_minus_one_is_separate():
    y = np.array([[0], [2], [4], [1]])
    s = np.eye(5)[[1, 2, 2, 3]]  # predictions 1, 2, 2, 3
    assert retina_tolerant_acc(y, s) == 0.5  # |1-0|<=1, exact, |2-4|>1, |3-1|>1
    m = evaluate_scores(y, s, "ordinal-regression")
    assert m.acc == 0.25 and m.acc_pm1 == 0.5


def test_undefined_auc_is_nan_and_shapes_are_checked():
    assert math.isnan(medmnist_auc(np.zeros((4, 1)), np.random.rand(4, 2), "binary-class"))
    with pytest.raises(ValueError, match="score rows"):
        medmnist_acc(np.zeros((3, 1)), np.zeros((4, 2)), "multi-class")
    with pytest.raises(ValueError, match="unknown MedMNIST task"):
        medmnist_acc(np.zeros((3, 1)), np.zeros((3, 2)), "regression")
