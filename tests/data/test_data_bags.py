import pytest
import torch
from torch.utils.data import DataLoader

from medmoe.data import Bag, InMemoryBags, Standardize, collate_bags, feature_mean_std


def _ds(sizes=(3, 5, 1, 4), d=6, labels=(0, 1, 1, 0), **kw):
    feats = [torch.randn(n, d) for n in sizes]
    return InMemoryBags(feats, list(labels), **kw)


def test_collate_pads_and_masks():
    bags = [
        Bag(torch.ones(2, 3), 1, "a", coords=torch.tensor([[0, 0], [256, 0]])),
        Bag(torch.full((4, 3), 2.0), 0, "b", coords=torch.tensor([[0, 0], [1, 1], [2, 2], [3, 3]])),
    ]
    batch = collate_bags(bags)
    assert batch.x.shape == (2, 4, 3) and batch.x.dtype == torch.float32
    assert batch.mask.dtype == torch.bool
    assert batch.mask.tolist() == [[True, True, False, False], [True, True, True, True]]
    assert torch.all(batch.x[0, 2:] == 0) and torch.all(batch.x[0, :2] == 1)
    assert batch.label.dtype == torch.long and batch.label.tolist() == [1, 0]
    assert batch.bag_ids == ["a", "b"]
    assert batch.coords is not None and batch.coords.shape == (2, 4, 2) and batch.coords.dtype == torch.int64
    assert batch.lengths.tolist() == [2, 4]
    assert len(batch) == 2
    moved = batch.to("cpu")
    assert torch.equal(moved.x, batch.x) and moved.bag_ids == batch.bag_ids


def test_collate_coords_none_when_any_missing():
    bags = [Bag(torch.ones(2, 3), 1, "a", coords=torch.zeros(2, 2)), Bag(torch.ones(1, 3), 0, "b")]
    assert collate_bags(bags).coords is None


def test_collate_errors():
    with pytest.raises(ValueError, match="empty list"):
        collate_bags([])
    with pytest.raises(ValueError, match="0 instances"):
        collate_bags([Bag(torch.zeros(0, 3), 0, "e")])
    with pytest.raises(ValueError, match="different feature dims"):
        collate_bags([Bag(torch.zeros(2, 3), 0, "a"), Bag(torch.zeros(2, 4), 0, "b")])


def test_bag_group_defaults_to_id():
    assert Bag(torch.zeros(1, 2), 0, "x").group == "x"
    assert Bag(torch.zeros(1, 2), 0, "x", group="p1").group == "p1"


def test_in_memory_dataset_contract_and_subset():
    ds = _ds(
        bag_ids=["a", "b", "c", "d"], groups=["p1", "p1", "p2", "p3"], class_names=["neg", "pos", "other"]
    )
    assert len(ds) == 4 and ds.feature_dim == 6 and ds.num_classes == 3
    assert (
        ds.labels == [0, 1, 1, 0]
        and ds.bag_ids == ["a", "b", "c", "d"]
        and ds.groups == ["p1", "p1", "p2", "p3"]
    )
    bag = ds[2]
    assert isinstance(bag, Bag) and bag.bag_id == "c" and bag.group == "p2" and bag.features.shape == (1, 6)
    sub = ds.subset([3, 0])
    assert isinstance(sub, InMemoryBags)
    assert sub.bag_ids == ["d", "a"] and sub.labels == [0, 0] and sub.groups == ["p3", "p1"]
    assert sub.num_classes == 3 and sub.class_names == ["neg", "pos", "other"] and sub.feature_dim == 6
    assert len(ds) == 4  # original untouched
    with pytest.raises(IndexError):
        ds[4]
    with pytest.raises(ValueError, match="out of range"):
        ds.subset([7])


def test_in_memory_validation():
    with pytest.raises(ValueError, match="one label per bag"):
        InMemoryBags([torch.zeros(2, 3)], [0, 1])
    with pytest.raises(ValueError, match="unique"):
        InMemoryBags([torch.zeros(2, 3)] * 2, [0, 1], bag_ids=["a", "a"])
    with pytest.raises(ValueError, match="different feature dims"):
        InMemoryBags([torch.zeros(2, 3), torch.zeros(2, 4)], [0, 1])
    with pytest.raises(ValueError, match="0 instances"):
        InMemoryBags([torch.zeros(0, 3), torch.zeros(2, 3)], [0, 1])
    with pytest.raises(ValueError, match="outside"):
        InMemoryBags([torch.zeros(2, 3)], [2], class_names=["a", "b"])
    # (1, n, d) is squeezed
    assert InMemoryBags([torch.zeros(1, 5, 3)], [0])[0].features.shape == (5, 3)


def test_dataloader_and_standardize():
    ds = _ds()
    loader = DataLoader(ds, batch_size=3, collate_fn=collate_bags, shuffle=False)
    batches = list(loader)
    assert [b.x.shape[0] for b in batches] == [3, 1]
    assert batches[0].x.shape == (3, 5, 6)
    mean, std = feature_mean_std(ds)
    allx = torch.cat([ds[i].features for i in range(len(ds))])
    assert torch.allclose(mean, allx.mean(0), atol=1e-5)
    assert torch.allclose(std, allx.std(0, unbiased=False), atol=1e-5)
    st = ds.with_transform(Standardize(mean, std))
    z = torch.cat([st[i].features for i in range(len(st))])
    assert torch.allclose(z.mean(0), torch.zeros(6), atol=1e-5)
    assert ds.transform is None  # copy, original untouched
    assert st.subset([0]).transform is not None
