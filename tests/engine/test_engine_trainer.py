import csv
import json
import math

import pytest
import torch
from engine_synthetic import TINY_ABMIL, synthetic_bags

from medmoe.engine import (
    TrainConfig,
    evaluate,
    load_checkpoint,
    predict,
    read_checkpoint_info,
    train_one_fold,
)
from medmoe.engine.mil import trainer as T
from medmoe.engine.mil.config import resolve_monitor
from medmoe.engine.mil.inference import shard_indices
from medmoe.engine.mil.tasks import classification


def _cfg(**kw):
    base = {
        "epochs": 6,
        "lr": 5e-3,
        "min_epochs": 1,
        "patience": None,
        "progress": False,
        "accelerator": "cpu",
    }
    base.update(kw)
    return TrainConfig(**base)


def test_train_eval_predict_end_to_end(tmp_path):
    train, val, test = synthetic_bags(48, seed=0), synthetic_bags(24, seed=1), synthetic_bags(24, seed=2)
    cfg = _cfg(warmup_epochs=1, standardize_features=True, feature_dropout=0.05)
    res = train_one_fold("abmil.base", train, val, test, cfg, tmp_path, TINY_ABMIL, split_hash="h123")
    assert res.monitor == "auroc"
    assert res.val_metrics["auroc"] > 0.8, res.history
    assert res.test_metrics["auroc"] > 0.8
    assert res.epochs_run == 6 and 0 <= res.best_epoch < 6
    # files
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(6))
    assert {"lr", "train_loss", "val_auroc", "val_loss", "best"} <= set(rows[0])
    for r in rows:  # the data-wait share is part of the training pass, which is part of the epoch
        assert 0.0 <= float(r["data_wait_seconds"]) <= float(r["train_seconds"]) <= float(r["seconds"])
    saved = json.loads((tmp_path / "fold_result.json").read_text())
    assert saved["test_metrics"]["auroc"] == pytest.approx(res.test_metrics["auroc"])
    info = read_checkpoint_info(res.checkpoint_dir)
    assert info["split_hash"] == "h123" and info["seed"] == 0 and info["class_names"] == ["neg", "pos"]
    assert info["epoch"] == res.best_epoch and len(info["feature_stats"]["mean"]) == 8
    assert info["metrics"]["test"]["auroc"] == pytest.approx(res.test_metrics["auroc"])
    assert info["train_config"]["standardize_features"] is True
    # evaluate / predict reproduce the final test metrics from the checkpoint alone
    model, info = load_checkpoint(res.checkpoint_dir)
    metrics, probs, labels, ids = evaluate(model, test, feature_stats=info["feature_stats"])
    assert metrics["auroc"] == pytest.approx(res.test_metrics["auroc"], abs=1e-6)
    assert ids == test.bag_ids and probs.shape == (24, 2) and labels.tolist() == test.labels
    pred = predict(res.checkpoint_dir, test)
    assert [r["bag_id"] for r in pred] == test.bag_ids
    # label_name: the label through the checkpoint's classes; threshold: the validation-chosen cut-off
    assert pred[0].keys() == {"bag_id", "label", "label_name", "pred", "pred_name", "prob_neg", "prob_pos",
                              "threshold"}
    torch.testing.assert_close(torch.tensor([r["prob_pos"] for r in pred]), probs[:, 1])


def test_lr_schedule_warmup_then_cosine():
    s = T.WarmupCosine(total=10, warmup=2, lr=1e-3, min_lr=1e-5)
    assert [s(0), s(1)] == [0.5, 1.0]
    assert s(2) == pytest.approx(1.0) and s(10) == pytest.approx(0.01) and s(50) == pytest.approx(0.01)
    assert s(2) > s(5) > s(9)
    e = T.WarmupCosine(total=4, warmup=0, lr=1.0, min_lr=0.0)  # = CosineAnnealingLR(T_max=4)
    assert [round(e(t), 6) for t in range(5)] == [
        1.0,
        round((1 + math.cos(math.pi / 4)) / 2, 6),
        0.5,
        round((1 + math.cos(3 * math.pi / 4)) / 2, 6),
        0.0,
    ]


def test_early_stopping_and_min_epochs(tmp_path, monkeypatch):
    flat = {"auroc": 0.7, "balanced_accuracy": 0.5, "accuracy": 0.5, "f1": 0.5, "kappa": 0.0, "loss": 0.6}
    monkeypatch.setattr(classification, "metrics_with_loss", lambda probs, labels: dict(flat))
    train, val = synthetic_bags(8, seed=0), synthetic_bags(4, seed=1)
    res = train_one_fold(
        "abmil.base", train, val, None, _cfg(epochs=10, patience=2, min_epochs=4), tmp_path, TINY_ABMIL
    )
    # best at epoch 0; 2 bad epochs reached at epoch 2 but min_epochs keeps going to 4
    assert res.stopped_early and res.epochs_run == 4 and res.best_epoch == 0
    assert res.test_metrics is None and res.val_metrics["auroc"] == 0.7


def test_no_validation_keeps_last_epoch(tmp_path):
    res = train_one_fold(
        "abmil.base", synthetic_bags(8), None, synthetic_bags(6, seed=3), _cfg(epochs=2), tmp_path, TINY_ABMIL
    )
    assert res.monitor == "none" and res.best_epoch == 1 and res.val_metrics == {}
    assert set(res.test_metrics) >= {"auroc", "loss"}


def test_class_weights_and_balanced_sampler():
    labels = [0] * 9 + [1] * 3
    w = classification.class_weights(labels, 3)
    torch.testing.assert_close(w, torch.tensor([12 / 27, 12 / 9, 0.0]))
    order = T._epoch_order(labels, 2, balanced=True, seed=0, epoch=0)
    assert len(order) == 12
    many = [i for e in range(200) for i in T._epoch_order(labels, 2, True, 0, e)]
    frac_pos = sum(labels[i] for i in many) / len(many)
    assert abs(frac_pos - 0.5) < 0.03
    assert T._epoch_order(labels, 2, False, 0, 1) == T._epoch_order(labels, 2, False, 0, 1)
    assert sorted(T._epoch_order(labels, 2, False, 0, 1)) == list(range(12))
    assert shard_indices(list(range(5)), 1, 2, pad=True) == [1, 3, 0]
    assert shard_indices(list(range(5)), 0, 2, pad=True) == [0, 2, 4]


def test_imbalanced_options_and_aux_loss_model(tmp_path):
    feats = synthetic_bags(12, seed=0)
    imbalanced = feats.subset([i for i in range(12) if i % 2 == 0 or i < 4])  # 6 negatives, 2 positives
    cfg = _cfg(epochs=1, class_weights="balanced", balanced_sampling=True, batch_size=2)
    res = train_one_fold(
        "clam.base",
        imbalanced,
        synthetic_bags(4, seed=1),
        None,
        cfg,
        tmp_path,
        {"embed_dim": 16, "attention_dim": 8, "k_sample": 2},
    )
    assert math.isfinite(res.history[0]["train_loss"])


def test_multiclass_monitor_is_kappa(tmp_path):
    train, val = synthetic_bags(12, num_classes=3), synthetic_bags(6, seed=1, num_classes=3)
    res = train_one_fold("meanmil.base", train, val, None, _cfg(epochs=1), tmp_path, {"embed_dim": 8})
    assert res.monitor == "kappa" and resolve_monitor("auto", 2) == ("auroc", True)
    assert resolve_monitor("loss", 3) == ("loss", False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epochs": 0}, "epochs"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"min_lr": 1.0}, "must not exceed"),
        ({"warmup_epochs": 30}, "warmup_epochs"),
        ({"early_stopping": "auc"}, "early_stopping"),
        ({"class_weights": "inverse"}, "class_weights"),
        ({"precision": "fp16"}, "precision"),
        ({"loggers": ["wandb"]}, "loggers"),
        ({"feature_dropout": 1.0}, "feature_dropout"),
        ({"scheduler_interval": "batch"}, "scheduler_interval"),
    ],
)
def test_train_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_train_config_round_trip_and_bad_inputs(tmp_path):
    cfg = TrainConfig(epochs=3, loggers=["tensorboard"])
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        TrainConfig.from_dict({"epoch": 3})
    train = synthetic_bags(6)
    with pytest.raises(ValueError, match="classes"):
        train_one_fold(
            "abmil.base", train, synthetic_bags(4, num_classes=3), None, _cfg(), tmp_path, TINY_ABMIL
        )
    with pytest.raises(ValueError, match="in_dim"):
        train_one_fold("abmil.base", train, None, None, _cfg(), tmp_path, {"in_dim": 8})
    with pytest.raises(ValueError, match="d features"):
        train_one_fold("abmil.base", train, synthetic_bags(4, d=6), None, _cfg(), tmp_path, TINY_ABMIL)


def test_missing_logger_packages_only_warn(tmp_path, caplog):
    import importlib.util
    import logging

    missing = [
        n
        for n, mod in (("tensorboard", "tensorboard"), ("mlflow", "mlflow"))
        if importlib.util.find_spec(mod) is None
    ]
    if not missing:
        pytest.skip("tensorboard and mlflow are both installed")
    with caplog.at_level(logging.WARNING, logger="medmoe.engine.mil.trainer"):
        res = train_one_fold(
            "abmil.base", synthetic_bags(6), None, None, _cfg(epochs=1, loggers=missing), tmp_path, TINY_ABMIL
        )
    assert res.epochs_run == 1
    for name in missing:
        assert "is not installed" in caplog.text and name.lower() in caplog.text.lower()


def test_bf16_mixed_precision_on_cpu(tmp_path):
    res = train_one_fold(
        "abmil.base",
        synthetic_bags(8),
        synthetic_bags(4, seed=1),
        None,
        _cfg(epochs=1, precision="bf16-mixed"),
        tmp_path,
        TINY_ABMIL,
    )
    assert math.isfinite(res.history[0]["train_loss"]) and 0.0 <= res.val_metrics["auroc"] <= 1.0
