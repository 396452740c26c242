"""The shared training loop (medmoe.engine.loop) on a toy regression: resume, the settings check, early
stopping rules, seeding and the files it writes."""

import csv
import math

import pytest
import torch
from torch import nn

from medmoe.engine import loop as L
from medmoe.engine.checkpoint import load_trainer_state, save_checkpoint
from medmoe.engine.divergence import TrainingDivergedError
from medmoe.errors import InputError


class _Killed(BaseException):
    pass


class _Toy(nn.Module):
    """A medmoe-like model (a dataclass config and a name) so save_checkpoint accepts it."""

    def __init__(self):
        super().__init__()
        from dataclasses import make_dataclass

        self.config = make_dataclass("ToyConfig", [])()
        self.model_name = "toy"
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 1))

    def forward(self, x):
        return self.net(x)


class ToyHooks(L.LoopHooks):
    """y = x . w + noise, batches drawn from the global torch RNG (so seeding and RNG restore matter)."""

    def __init__(self, scores=None):
        self.scores = (
            scores  # a fixed validation score per epoch (early-stopping tests), else minus the val loss
        )
        self.saved = []
        g = torch.Generator().manual_seed(0)
        self.x, self.xv = torch.randn(64, 4, generator=g), torch.randn(16, 4, generator=g)
        w = torch.tensor([1.0, -2.0, 0.5, 3.0])
        self.y, self.yv = self.x @ w, self.xv @ w

    def setup(self, loop):
        model = _Toy()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 2, 0.5)
        model, optimizer = loop.fabric.setup(model, optimizer)
        return L.LoopParts(model, optimizer, scheduler)

    def batches(self, loop, epoch):
        return [torch.randint(0, 64, (8,)) for _ in range(4)]

    def training_step(self, loop, batch, epoch):
        pred = loop.model(self.x[batch]).squeeze(-1)
        return L.StepOutput(((pred - self.y[batch]) ** 2).mean())

    def validation(self, loop, epoch, is_last):
        if self.scores is not None:
            return L.Validation(self.scores[epoch], {"val_score": self.scores[epoch]})
        loop.model.eval()
        with torch.no_grad():
            loss = float(((loop.model(self.xv).squeeze(-1) - self.yv) ** 2).mean())
        loop.model.train()
        return L.Validation(-loss, {"val_loss": loss})

    def save_best(self, loop, epoch, row):
        self.saved.append(epoch)
        save_checkpoint(loop.config.out_dir / L.CHECKPOINT_DIR, loop.model, {"epoch": epoch})


def _run(out, hooks=None, **kw):
    settings = {
        "out_dir": out,
        "epochs": 5,
        "seed": 3,
        "signature": {"lr": 0.05, "model": "toy"},
        "progress": False,
        "scheduler_interval": "epoch",
        "grad_clip": 1.0,
    }
    settings.update(kw)
    hooks = hooks or ToyHooks()
    fabric = L.launch_fabric("cpu", 1, "32-true")
    return L.TrainingLoop(hooks, L.LoopConfig(**settings), fabric).run(), hooks


def _strip(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_killed_and_resumed_equals_uninterrupted(tmp_path, monkeypatch):
    straight, _ = _run(tmp_path / "a")
    real, calls = L.save_trainer_state, []

    def save_then_die(path, state):
        real(path, state)
        calls.append(state["epoch"])
        if len(calls) == 2:
            raise _Killed

    monkeypatch.setattr(L, "save_trainer_state", save_then_die)
    with pytest.raises(_Killed):
        _run(tmp_path / "b")
    monkeypatch.undo()
    resumed, _ = _run(tmp_path / "b", resume=True)
    assert resumed.resumed_from == 2 and resumed.steps == straight.steps == 20
    assert _strip(resumed.history) == _strip(straight.history)
    assert resumed.best_epoch == straight.best_epoch and resumed.best == straight.best
    a = load_trainer_state(tmp_path / "a" / "trainer_state.pt")["model"]
    b = load_trainer_state(tmp_path / "b" / "trainer_state.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = list(csv.DictReader((tmp_path / "b" / L.METRICS_CSV).read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3, 4] and {"train_loss", "val_loss", "best"} <= set(
        rows[0]
    )
    # a finished run trains no more
    again, _ = _run(tmp_path / "b", resume=True)
    assert again.resumed_from == 5 and _strip(again.history) == _strip(straight.history)


def test_resume_with_other_settings_is_refused_naming_the_difference(tmp_path):
    _run(tmp_path, epochs=1)
    with pytest.raises(InputError, match=r"different settings \(lr: 0.05 in the folder, 0.1 now\)") as info:
        _run(tmp_path, epochs=1, resume=True, signature={"lr": 0.1, "model": "toy"})
    assert "--lr" in info.value.render(lambda k, v: f"--{k}") and "--overwrite" in info.value.render(
        lambda k, v: f"--{k}"
    )
    # a normalisation may drop settings that cannot change the result
    drop = lambda s: {k: v for k, v in s.items() if k != "progress_bar"}
    _run(
        tmp_path,
        epochs=1,
        resume=True,
        signature={"lr": 0.05, "model": "toy", "progress_bar": 1},
        normalize_signature=drop,
    )


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path):
    a, _ = _run(tmp_path / "a", epochs=2)
    b, _ = _run(tmp_path / "b", epochs=2)
    c, _ = _run(tmp_path / "c", epochs=2, seed=4)
    assert _strip(a.history) == _strip(b.history) != _strip(c.history)
    # per-epoch seeding: epoch 2's draws do not depend on epoch 1's
    seeding = L.Seeding(
        epoch_seed=lambda seed, epoch, rank: L.derive_seed(seed, epoch, rank), epoch_python=True
    )
    d, _ = _run(tmp_path / "d", epochs=2, seeding=seeding)
    assert _strip(d.history) != _strip(a.history)


def test_early_stopping_patience_and_min_epochs(tmp_path):
    scores = [0.5, 0.6, 0.6, 0.55, 0.58, 0.7]
    stop = L.EarlyStopping(L.Improvement(), patience=2)
    result, hooks = _run(tmp_path / "a", ToyHooks(scores), epochs=6, early_stopping=stop)
    assert (
        result.stopped_early and result.epochs_run == 4 and result.best_epoch == 1 and hooks.saved == [0, 1]
    )
    assert [r["best"] for r in result.history] == [True, True, False, False]
    late = L.EarlyStopping(L.Improvement(), patience=2, min_epochs=6)
    result, _ = _run(tmp_path / "b", ToyHooks(scores), epochs=6, early_stopping=late)
    assert not result.stopped_early and result.epochs_run == 6 and result.best_epoch == 5
    # a minimising monitor; a stop reached at the last epoch counts only with stop_at_last
    low = L.EarlyStopping(L.Improvement(maximize=False), patience=1, stop_at_last=False)
    result, _ = _run(tmp_path / "c", ToyHooks([0.5, 0.4, 0.45]), epochs=3, early_stopping=low)
    assert result.best_epoch == 1 and not result.stopped_early and result.epochs_run == 3


def test_rules():
    better = L.Improvement()
    assert better(float("nan"), None, 0) == (True, 0) and better(float("nan"), 0.5, 1) == (False, 2)
    assert better(0.1, float("nan"), 3) == (True, 0) and better(0.5, 0.5, 0) == (False, 1)
    strict = L.MinDeltaImprovement(0.01)
    lenient = L.MinDeltaImprovement(0.01, lenient=True)
    assert strict(0.505, 0.5, 2) == (False, 3) and lenient(0.505, 0.5, 2) == (True, 0)
    assert lenient(0.495, 0.5, 2) == (False, 0) and lenient(0.48, 0.5, 2) == (False, 3)
    assert strict(math.nan, 0.5, 0) == (False, 1) and strict(0.1, None, 4) == (True, 0)
    with pytest.raises(ValueError, match="scheduler_interval"):
        L.LoopConfig(out_dir=".", epochs=1, seed=0, signature=None, scheduler_interval="batch")


def test_divergence_names_the_unit_and_step(tmp_path):
    class Diverging(ToyHooks):
        def training_step(self, loop, batch, epoch):
            out = super().training_step(loop, batch, epoch)
            return L.StepOutput(out.loss * float("nan"), where=" (batch 7)")

    with pytest.raises(TrainingDivergedError, match=r"round 1, step 1 \(batch 7\); lower it"):
        _run(tmp_path, Diverging(), unit="round", divergence_hint="lower it")
    assert not (tmp_path / L.CHECKPOINT_DIR).exists()


def test_max_seconds_ends_the_run_after_a_step_and_validates_that_epoch(tmp_path):
    result, hooks = _run(tmp_path, max_seconds=0.0)
    assert result.out_of_time and result.steps == 1 and result.epochs_run == 1
    assert "val_loss" in result.history[0] and hooks.saved == [0]
    assert load_trainer_state(tmp_path / "trainer_state.pt")["epoch"] == 0
