"""Shared synthetic data for the engine tests (imported by them; not a test module): tiny bags with a
learnable signal."""

from __future__ import annotations

import torch

from medmoe.data import InMemoryBags

#: Tiny ABMIL used by most engine tests (fast on 2 CPU cores).
TINY_ABMIL = {"embed_dim": 16, "attn_dim": 16, "dropout": 0.0}

#: Training settings of the data-parallel tests (several processes vs one with their summed batch size).
DISTRIBUTED_CFG = {
    "epochs": 4,
    "lr": 5e-3,
    "warmup_epochs": 1,
    "min_epochs": 1,
    "patience": None,
    "progress": False,
    "accelerator": "cpu",
    "keep_last_state": True,  # the last weights are compared by assert_same_as_one_process
}


def assert_same_as_one_process(result: dict, single, run_dir, single_dir) -> None:  # type: ignore[no-untyped-def]
    """A data-parallel run (``result``: its val/test metrics and best epoch, last weights in ``run_dir``) equals
    the one-process run ``single`` (written to ``single_dir``): metrics within 1e-3, same best epoch, weights
    within 1e-4."""
    from medmoe.engine.checkpoint import load_trainer_state

    for part, ref in (("val", single.val_metrics), ("test", single.test_metrics)):
        for name, value in ref.items():
            assert abs(result[part][name] - value) < 1e-3, (part, name, result[part][name], value)
    assert result["best_epoch"] == single.best_epoch
    weights = load_trainer_state(run_dir / "trainer_state.pt")["model"]
    reference = load_trainer_state(single_dir / "trainer_state.pt")["model"]
    for k, v in reference.items():
        if k == "global_attn.attention_c.bias":
            # the attention softmax is shift invariant: this bias has a zero gradient up to rounding, and
            # Adam's normalisation turns that rounding noise into lr-sized steps in either run
            continue
        torch.testing.assert_close(weights[k], v, atol=1e-4, rtol=1e-4)


def synthetic_bags(
    n_bags: int, *, d: int = 8, seed: int = 0, num_classes: int = 2, shift: float = 2.0, groups: bool = False
) -> InMemoryBags:
    """Bags of 4..15 instances of N(0, 1) features; a bag of class c > 0 has a quarter of its instances
    shifted by ``shift`` on the feature block of class c (block 0 for the binary problem)."""
    g = torch.Generator().manual_seed(seed)
    feats, labels = [], []
    for i in range(n_bags):
        y = i % num_classes
        n = int(torch.randint(4, 16, (1,), generator=g))
        x = torch.randn(n, d, generator=g)
        if y > 0:
            block = slice(0, 4) if num_classes == 2 else slice(2 * (y - 1), 2 * y)
            x[: max(1, n // 4), block] += shift
        feats.append(x)
        labels.append(y)
    ids = [f"s{seed}_b{i}" for i in range(n_bags)]
    grp = [f"s{seed}_p{i // 2}" for i in range(n_bags)] if groups else None
    names = ["neg", "pos"] if num_classes == 2 else [f"c{c}" for c in range(num_classes)]
    return InMemoryBags(feats, labels, bag_ids=ids, groups=grp, class_names=names)


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not an Exception, so no handler catches it)."""


def die_after_saving(monkeypatch, saves: int) -> None:
    """Make the trainer raise :class:`Killed` right after writing its ``saves``-th trainer state
    (a kill between epochs); ``monkeypatch.undo()`` restores it."""
    from medmoe.engine import loop as trainer  # the training loop writes the trainer state

    real = trainer.save_trainer_state
    calls = []

    def save_then_die(path, state):
        real(path, state)
        calls.append(state["epoch"])
        if len(calls) == saves:
            raise Killed

    monkeypatch.setattr(trainer, "save_trainer_state", save_then_die)


def train_killed_and_resumed(monkeypatch, tmp_path, model_name, data, cfg, overrides):
    """Train ``model_name`` on ``data = (train, val, test)`` once straight and once killed after its second
    epoch then resumed; returns ``(straight, resumed)`` fold results for the caller to compare."""
    import pytest

    from medmoe.engine import train_one_fold

    straight = train_one_fold(model_name, *data, cfg, tmp_path / "straight", overrides)
    die_after_saving(monkeypatch, 2)
    with pytest.raises(Killed):
        train_one_fold(model_name, *data, cfg, tmp_path / "killed", overrides)
    monkeypatch.undo()
    resumed = train_one_fold(model_name, *data, cfg, tmp_path / "killed", overrides, resume=True)
    return straight, resumed


def multilabel_bags(n_bags: int, *, seed: int = 0, groups: bool = False) -> InMemoryBags:
    """Bags of 6..15 N(0, 1) 8-d instances with labels ``tumor``, ``necrosis``, ``inflammation``: label j
    present (p = 0.5) shifts a third of the instances by 3 on dims [2j, 2j + 2). The class label is the
    label combination (as a number); ``groups`` puts bags 2i and 2i + 1 in patient ``p<i>``."""
    g = torch.Generator().manual_seed(seed)
    targets = (torch.rand(n_bags, 3, generator=g) < 0.5).long()
    feats = []
    for i in range(n_bags):
        m = int(torch.randint(6, 16, (1,), generator=g))
        x = torch.randn(m, 8, generator=g)
        for j in torch.nonzero(targets[i]).flatten().tolist():
            x[: m // 3, 2 * j : 2 * j + 2] += 3.0
        feats.append(x)
    combo = [int("".join(map(str, t.tolist())), 2) for t in targets]
    ids = [f"s{seed}_b{i}" for i in range(n_bags)]
    grp = [f"p{i // 2}" for i in range(n_bags)] if groups else None
    bags = InMemoryBags(feats, combo, bag_ids=ids, groups=grp, class_names=[str(c) for c in range(8)])
    return bags.with_multilabel(targets, ["tumor", "necrosis", "inflammation"])


def survival_bags(n_bags: int, *, seed: int = 0) -> InMemoryBags:
    """:func:`synthetic_bags` with survival targets: class-1 bags (the shifted ones) die early, every third
    bag is censored; the labels stay the classes."""
    bags = synthetic_bags(n_bags, seed=seed)
    times = [(2.0 if y else 8.0) + (i % 5) for i, y in enumerate(bags.labels)]
    events = [0 if i % 3 == 2 else 1 for i in range(n_bags)]
    return bags.with_survival(times, events)
