"""Training, evaluating, predicting and cross-validating MIL survival models (task='survival')."""

import json

import pytest
import torch
from engine_synthetic import train_killed_and_resumed

from medmoe.data import FeatureFolderBags, make_synthetic_survival_folder
from medmoe.engine import (
    TrainConfig,
    evaluate,
    load_checkpoint,
    predict,
    read_checkpoint_info,
    run_cross_validation,
    train_one_fold,
)
from medmoe.engine.mil import trainer as T
from medmoe.engine.mil.config import resolve_monitor
from medmoe.engine.mil.survival import concordance_index

TINY = {"embed_dim": 16, "attn_dim": 16, "dropout": 0.0}


def _cfg(**kw):
    base = {
        "task": "survival",
        "epochs": 10,
        "lr": 2e-3,
        "min_epochs": 1,
        "patience": None,
        "progress": False,
        "accelerator": "cpu",
        "standardize_features": True,
    }
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    f = make_synthetic_survival_folder(tmp_path_factory.mktemp("surv"), n_slides=96, dim=16, seed=0)
    return f, FeatureFolderBags(f.features_dir, f.labels_csv, time_col="time")


def test_survival_training_learns_to_rank_and_saves_its_bins(cohort, tmp_path):
    f, ds = cohort
    idx = list(range(len(ds)))
    train, val, test = ds.subset(idx[:56]), ds.subset(idx[56:76]), ds.subset(idx[76:])
    res = train_one_fold("abmil.base", train, val, test, _cfg(epochs=5), tmp_path, TINY)
    assert res.monitor == "c_index"
    assert set(res.test_metrics) == {"c_index", "loss"}
    # the hidden risk ranks these test patients at 0.77; a model that learnt nothing is at about 0.5
    # (seeds 0-2 with 4-10 epochs reached 0.70-0.79)
    oracle = concordance_index(f.risks[76:], test.survival_times, test.survival_events)
    assert res.test_metrics["c_index"] > 0.62, (res.test_metrics, oracle, res.history)
    info = read_checkpoint_info(res.checkpoint_dir)
    assert info["task"] == "survival" and len(info["survival_bin_edges"]) == 3
    edges = info["survival_bin_edges"]
    assert edges == sorted(edges)
    model, _ = load_checkpoint(res.checkpoint_dir)
    assert model.config.num_classes == 4  # one hazard per time bin

    ev = evaluate(model, test, feature_stats=info["feature_stats"], survival_bin_edges=edges)
    assert ev.metrics["c_index"] == pytest.approx(res.test_metrics["c_index"], abs=1e-9)
    assert ev.probs.shape == (len(test), 4) and torch.all(ev.probs[:, 1:] <= ev.probs[:, :-1] + 1e-7)

    rows = predict(res.checkpoint_dir, test)
    assert [r["bag_id"] for r in rows] == test.bag_ids
    assert rows[0]["time"] == test.survival_times[0] and rows[0]["event"] == test.survival_events[0]
    risk = [r["risk"] for r in rows]
    assert concordance_index(risk, test.survival_times, test.survival_events) == pytest.approx(
        res.test_metrics["c_index"], abs=1e-6
    )
    assert {f"survival_{k}" for k in range(4)} <= set(rows[0])


def test_predict_new_patients_without_outcomes(cohort, tmp_path):
    _, ds = cohort
    idx = list(range(len(ds)))
    res = train_one_fold(
        "meanmil.base", ds.subset(idx[:40]), None, None, _cfg(epochs=2), tmp_path, {"embed_dim": 8}
    )
    unlabeled = ds.subset(idx[40:44])
    unlabeled._survival = None  # what a cohort without follow-up looks like
    rows = predict(res.checkpoint_dir, unlabeled)
    assert rows[0]["time"] is None and rows[0]["event"] is None and isinstance(rows[0]["risk"], float)


def test_survival_run_killed_and_resumed_ends_identical(cohort, tmp_path, monkeypatch):
    _, ds = cohort
    idx = list(range(len(ds)))
    data = ds.subset(idx[:32]), ds.subset(idx[32:48]), ds.subset(idx[48:60])
    cfg = _cfg(epochs=4, batch_size=2, feature_dropout=0.1, balanced_sampling=True)
    straight, resumed = train_killed_and_resumed(
        monkeypatch, tmp_path, "abmil.base", data, cfg, {**TINY, "dropout": 0.25}
    )
    assert resumed.val_metrics == straight.val_metrics and resumed.test_metrics == straight.test_metrics
    assert resumed.best_epoch == straight.best_epoch


def test_survival_needs_targets_and_survival_metrics(tmp_path):
    from engine_synthetic import synthetic_bags

    bags = synthetic_bags(12)
    with pytest.raises(ValueError, match="task='survival' needs survival targets on train_set"):
        train_one_fold("abmil.base", bags, None, None, _cfg(epochs=1), tmp_path, TINY)
    with pytest.raises(ValueError, match="early_stopping must be 'auto' or one of \\['c_index', 'loss'\\]"):
        _cfg(early_stopping="auroc")
    with pytest.raises(ValueError, match="one of \\['auroc'"):
        TrainConfig(early_stopping="c_index")
    with pytest.raises(ValueError, match="survival has none"):
        _cfg(class_weights="balanced")
    with pytest.raises(ValueError, match="task must be one of"):
        TrainConfig(task="regression")
    assert resolve_monitor("auto", 2, "survival") == ("c_index", True)
    # every training patient censored: no time to cut the bins at
    censored = bags.with_survival([float(i + 1) for i in range(12)], [0] * 12)
    with pytest.raises(ValueError, match="every training patient is censored"):
        train_one_fold("abmil.base", censored, None, None, _cfg(epochs=1), tmp_path, TINY)


def test_survival_cross_validation_reports_c_index(cohort, tmp_path):
    _, ds = cohort
    small = ds.subset(list(range(48)))
    cv = run_cross_validation(
        "abmil.base", small, k=3, cfg=_cfg(epochs=3), out_dir=tmp_path, model_overrides=TINY
    )
    assert len(cv.runs) == 3 and "c_index" in cv.summary
    assert "| c_index |" in cv.to_markdown() and "auroc" not in cv.to_markdown()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["summary"]["c_index"][0] == pytest.approx(cv.summary["c_index"][0])


def test_runs_written_before_new_config_fields_still_resume():
    new = {"model_name": "m", "train_config": TrainConfig().to_dict()}
    old_config = {k: v for k, v in TrainConfig().to_dict().items() if not k.startswith(("task", "survival"))}
    old = {"model_name": "m", "train_config": old_config}
    assert T._resume_signature(old) == T._resume_signature(new)
