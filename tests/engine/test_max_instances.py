"""Random patch subsets of large training bags (TrainConfig.max_instances)."""

import pytest
import torch
from engine_synthetic import TINY_ABMIL, synthetic_bags, train_killed_and_resumed

from medmoe.data import Bag, SubsampledCollate
from medmoe.engine import TrainConfig, train_one_fold
from medmoe.engine.mil import trainer as T


def _bag(n: int, bag_id: str) -> Bag:
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1).repeat(1, 3)
    coords = torch.stack([torch.arange(n), -torch.arange(n)], 1)
    return Bag(features=x, label=1, bag_id=bag_id, coords=coords)


def test_subsets_keep_order_and_coordinates_and_depend_on_seed_and_bag_only():
    collate = SubsampledCollate(5, seed=7)
    small, big = _bag(4, "small"), _bag(20, "big")
    batch = collate([small, big])
    assert batch.mask.sum(1).tolist() == [4, 5]
    kept = batch.x[1, :, 0]
    assert torch.all(kept[1:] > kept[:-1])  # order kept
    assert torch.equal(batch.coords[1, :, 0].float(), kept) and torch.equal(
        batch.coords[1, :, 1].float(), -kept
    )
    alone = collate([big])  # the same subset whatever the batch around it
    assert torch.equal(alone.x[0, :, 0], kept)
    assert not torch.equal(
        SubsampledCollate(5, seed=8)([big]).x[0, :, 0], kept
    )  # another epoch, another subset
    with pytest.raises(ValueError, match="max_instances"):
        SubsampledCollate(0, seed=0)


def test_training_sees_at_most_max_instances_and_evaluation_sees_all(tmp_path, monkeypatch):
    seen = {"train": [], "eval": []}
    real_create = T.create_model

    def recording(*args, **kwargs):
        model = real_create(*args, **kwargs)
        forward = model.forward

        def record(x, mask=None, **kw):
            seen["train" if model.training else "eval"].append(int(x.shape[1]))
            return forward(x, mask, **kw)

        model.forward = record
        return model

    monkeypatch.setattr(T, "create_model", recording)
    cfg = TrainConfig(
        epochs=2, lr=5e-3, min_epochs=1, patience=None, progress=False, accelerator="cpu", max_instances=6
    )
    train, val = synthetic_bags(12, seed=0), synthetic_bags(6, seed=1)  # bags of 4..15 instances
    train_one_fold("abmil.base", train, val, None, cfg, tmp_path, TINY_ABMIL)
    assert max(seen["train"]) == 6 and max(seen["eval"]) > 6


def test_subsampled_runs_resume_to_the_same_result(tmp_path, monkeypatch):
    cfg = TrainConfig(
        epochs=4, lr=5e-3, min_epochs=1, patience=None, progress=False, accelerator="cpu", max_instances=5
    )
    data = synthetic_bags(12, seed=0), synthetic_bags(6, seed=1), synthetic_bags(6, seed=2)
    straight, resumed = train_killed_and_resumed(monkeypatch, tmp_path, "abmil.base", data, cfg, TINY_ABMIL)
    assert resumed.test_metrics == straight.test_metrics and resumed.val_metrics == straight.val_metrics
    with pytest.raises(ValueError, match="max_instances"):
        TrainConfig(max_instances=0)
