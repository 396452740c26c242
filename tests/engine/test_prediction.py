"""Predictions of one checkpoint and of the ensemble of a cross-validation run."""

import pytest
import torch
from engine_synthetic import TINY_ABMIL, synthetic_bags

from medmoe.data import InMemoryBags
from medmoe.engine import (
    TrainConfig,
    predict,
    predict_ensemble,
    run_checkpoints,
    run_cross_validation,
    train_one_fold,
)

CFG = TrainConfig(epochs=2, lr=5e-3, min_epochs=1, patience=None, progress=False, accelerator="cpu")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cv")
    run_cross_validation("abmil.base", synthetic_bags(24, seed=0), k=3, seeds=[0, 1], cfg=CFG, out_dir=out,
                         model_overrides=TINY_ABMIL)
    return out


def test_run_checkpoints_lists_every_fold_in_order(run, tmp_path):
    ckpts = run_checkpoints(run)
    assert [f"{p.parent.parent.name}/{p.parent.name}" for p in ckpts] == [
        f"seed{s}/fold{f}" for s in (0, 1) for f in range(3)
    ]
    assert run_checkpoints(ckpts[0]) == [ckpts[0]]
    with pytest.raises(ValueError, match="neither a checkpoint"):
        run_checkpoints(tmp_path)


def test_ensemble_averages_the_models(run):
    data = synthetic_bags(10, seed=5)
    ckpts = run_checkpoints(run)
    singles = [predict(c, data) for c in ckpts]
    rows = predict_ensemble(ckpts, data)
    for i, row in enumerate(rows):
        for name in ("neg", "pos"):
            mean = sum(s[i][f"prob_{name}"] for s in singles) / len(ckpts)
            assert row[f"prob_{name}"] == pytest.approx(mean, abs=1e-6)
        votes = [s[i]["pred"] for s in singles]
        assert row["agreement"] == pytest.approx(votes.count(row["pred"]) / len(votes))
        assert row["n_models"] == 6 and row["label"] == data.labels[i]
    frame = predict_ensemble(ckpts[:1], data, as_frame=True)
    assert list(frame["prob_pos"]) == pytest.approx([r["prob_pos"] for r in singles[0]])


def test_ensemble_refuses_mixed_tasks_and_sizes(run, tmp_path):
    bags = synthetic_bags(12, seed=0)
    surv = bags.with_survival([float(i + 1) for i in range(12)], [i % 2 for i in range(12)])
    other = train_one_fold("abmil.base", surv, None, None, CFG.replace(task="survival"), tmp_path, TINY_ABMIL)
    with pytest.raises(ValueError, match="ensemble checkpoints of one task"):
        predict_ensemble([run_checkpoints(run)[0], other.checkpoint_dir], bags)
    with pytest.raises(ValueError, match="at least one"):
        predict_ensemble([], bags)
    wrong = InMemoryBags([torch.ones(3, 5)], [0])
    with pytest.raises(ValueError, match="expects 8-d features"):
        predict_ensemble(run_checkpoints(run)[:1], wrong)


def test_survival_ensemble_averages_risks(tmp_path):
    bags = synthetic_bags(16, seed=0)
    surv = bags.with_survival([float(i % 7 + 1) for i in range(16)], [i % 2 for i in range(16)])
    cfg = CFG.replace(task="survival")
    ckpts = [train_one_fold("abmil.base", surv, None, None, cfg.replace(seed=s), tmp_path / str(s), TINY_ABMIL)
             .checkpoint_dir for s in (0, 1)]
    singles = [predict(c, surv) for c in ckpts]
    rows = predict_ensemble(ckpts, surv)
    for i, row in enumerate(rows):
        risks = [s[i]["risk"] for s in singles]
        assert row["risk"] == pytest.approx(sum(risks) / 2, abs=1e-6)
        assert row["risk_std"] == pytest.approx(abs(risks[0] - risks[1]) / 2**0.5, abs=1e-6)
        assert row["time"] == surv.survival_times[i] and "survival_0" not in row
