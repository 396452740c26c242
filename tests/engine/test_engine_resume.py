"""Killing a run and resuming it must give exactly the result of an uninterrupted run (CPU)."""

import pytest
import torch
from engine_synthetic import Killed, die_after_saving, synthetic_bags

from medmoe.engine import TrainConfig, load_checkpoint, train_one_fold
from medmoe.engine.checkpoint import load_trainer_state
from medmoe.engine.mil import trainer as T

# dropout, feature dropout, balanced sampling and batches of 2 all draw random numbers
OVERRIDES = {"embed_dim": 16, "attn_dim": 16, "dropout": 0.25}
CFG = TrainConfig(
    epochs=5,
    lr=3e-3,
    warmup_epochs=1,
    min_epochs=1,
    patience=None,
    feature_dropout=0.1,
    balanced_sampling=True,
    batch_size=2,
    progress=False,
    accelerator="cpu",
    standardize_features=True,
    keep_last_state=True,  # so the last epoch's weights can be compared too
)


def _data():
    return synthetic_bags(20, seed=0), synthetic_bags(10, seed=1), synthetic_bags(10, seed=2)


TIMINGS = {"seconds", "train_seconds", "data_wait_seconds"}


def _strip(history):
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in history]


def _assert_same(a, b):
    assert _strip(a.history) == _strip(b.history)
    assert a.val_metrics == b.val_metrics and a.test_metrics == b.test_metrics
    assert a.best_epoch == b.best_epoch
    ma, _ = load_checkpoint(a.checkpoint_dir)
    mb, _ = load_checkpoint(b.checkpoint_dir)
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(va, vb), k
    last_a = load_trainer_state(a.out_dir / "trainer_state.pt")["model"]
    last_b = load_trainer_state(b.out_dir / "trainer_state.pt")["model"]
    for k in last_a:
        assert torch.equal(last_a[k], last_b[k]), k


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    return train_one_fold("abmil.base", *_data(), CFG, tmp_path_factory.mktemp("straight"), OVERRIDES)


def test_resume_after_kill_between_epochs(tmp_path, monkeypatch, straight):
    die_after_saving(monkeypatch, 2)
    with pytest.raises(Killed):
        train_one_fold("abmil.base", *_data(), CFG, tmp_path, OVERRIDES)
    monkeypatch.undo()
    assert load_trainer_state(tmp_path / "trainer_state.pt")["epoch"] == 1
    resumed = train_one_fold("abmil.base", *_data(), CFG, tmp_path, OVERRIDES, resume=True)
    _assert_same(straight, resumed)


def test_resume_after_kill_mid_epoch(tmp_path, monkeypatch, straight):
    real_create = T.create_model
    steps = {"n": 0}

    def create_dying_model(*args, **kwargs):
        model = real_create(*args, **kwargs)
        forward = model.forward

        def dying_forward(*a, **k):
            if model.training:
                steps["n"] += 1
                if steps["n"] == 10 * 2 + 4:  # 10 steps per epoch: dies during the 3rd epoch
                    raise Killed
            return forward(*a, **k)

        model.forward = dying_forward
        return model

    monkeypatch.setattr(T, "create_model", create_dying_model)
    with pytest.raises(Killed):
        train_one_fold("abmil.base", *_data(), CFG, tmp_path, OVERRIDES)
    monkeypatch.undo()
    assert load_trainer_state(tmp_path / "trainer_state.pt")["epoch"] == 1
    resumed = train_one_fold("abmil.base", *_data(), CFG, tmp_path, OVERRIDES, resume=True)
    _assert_same(straight, resumed)
    # resuming a finished run only re-evaluates it
    again = train_one_fold("abmil.base", *_data(), CFG, tmp_path, OVERRIDES, resume=True)
    _assert_same(straight, again)


def test_resume_with_other_settings_is_refused(tmp_path):
    cfg = CFG.replace(epochs=1, warmup_epochs=0)
    train_one_fold("abmil.base", *_data(), cfg, tmp_path, OVERRIDES)
    with pytest.raises(ValueError, match="different settings"):
        train_one_fold("abmil.base", *_data(), cfg.replace(lr=1e-3), tmp_path, OVERRIDES, resume=True)
    with pytest.raises(ValueError, match="different settings"):
        train_one_fold("abmil.base", *_data(), cfg, tmp_path, {**OVERRIDES, "embed_dim": 8}, resume=True)


def _no_training(*args, **kwargs):
    raise AssertionError("a finished run must not train again")


def test_finished_run_keeps_only_a_slim_state(tmp_path, monkeypatch, straight):
    cfg = CFG.replace(keep_last_state=False)
    first = train_one_fold("abmil.base", *_data(), cfg, tmp_path, OVERRIDES)
    state = load_trainer_state(tmp_path / "trainer_state.pt")
    assert state["complete"] is True
    assert not {"model", "optimizer", "scheduler", "rng"} & set(state)
    assert _strip(state["history"]) == _strip(straight.history)
    assert (tmp_path / "trainer_state.pt").stat().st_size < 20_000
    # resuming only re-evaluates the best checkpoint; settings that cannot change the result may differ
    monkeypatch.setattr(T, "_epoch_order", _no_training)
    again = train_one_fold(
        "abmil.base", *_data(), cfg.replace(progress=True, num_workers=1), tmp_path, OVERRIDES, resume=True
    )
    assert _strip(again.history) == _strip(first.history)
    assert again.val_metrics == first.val_metrics and again.test_metrics == first.test_metrics
    assert again.best_epoch == first.best_epoch == straight.best_epoch


def test_resume_slims_a_finished_full_state(tmp_path, monkeypatch):
    cfg = CFG.replace(epochs=2, warmup_epochs=0)
    first = train_one_fold("abmil.base", *_data(), cfg, tmp_path, OVERRIDES)
    assert "model" in load_trainer_state(tmp_path / "trainer_state.pt")
    monkeypatch.setattr(T, "_epoch_order", _no_training)
    again = train_one_fold("abmil.base", *_data(), cfg.replace(keep_last_state=False), tmp_path, OVERRIDES, resume=True)
    assert again.test_metrics == first.test_metrics
    assert load_trainer_state(tmp_path / "trainer_state.pt")["complete"] is True
