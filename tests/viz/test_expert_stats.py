"""Expert statistics: load, routing entropy, usage per class, 2-D maps of slot outputs, plots; on real Mammoth."""

import math

import numpy as np
import pytest
import torch

from medmoe.nn.mammoth import Mammoth
from medmoe.viz import expert_stats as es


def test_load_entropy_usage():
    a = np.array([[1.0, 0, 0, 0], [0.25, 0.25, 0.25, 0.25], [0, 0.5, 0.5, 0]])
    np.testing.assert_allclose(es.expert_load(a), [1.25 / 3, 0.75 / 3, 0.75 / 3, 0.25 / 3])
    np.testing.assert_allclose(es.routing_entropy(a), [0.0, 1.0, 0.5], atol=1e-9)
    np.testing.assert_allclose(es.routing_entropy(a, normalized=False)[1], math.log(4))
    bags = [a[:1], a[1:], a[2:]]
    np.testing.assert_allclose(es.expert_load(bags, per_bag=True), (a[0] + a[1:].mean(0) + a[2]) / 3)
    usage = es.usage_per_class(bags, [0, 1, 1], num_classes=3)
    np.testing.assert_allclose(usage[0], a[0])
    np.testing.assert_allclose(usage[1], (a[1:].mean(0) + a[2]) / 2)
    assert np.isnan(usage[2]).all()
    with pytest.raises(ValueError, match="labels"):
        es.usage_per_class(bags, [0, 1])
    with pytest.raises(ValueError, match="same number of experts"):
        es.expert_load([a, a[:, :3]])


def test_compute_expert_stats_and_balance():
    a = np.eye(3)[[0, 0, 1, 2]]
    st = es.compute_expert_stats([a[:2], a[2:]], labels=[0, 1], class_names=["neg", "pos"])
    d = st.to_dict()
    assert d["num_bags"] == 2 and d["num_patches"] == 4 and d["dominant_counts"] == [2, 1, 1]
    assert d["entropy_mean"] == pytest.approx(0.0, abs=1e-9) and d["active_experts"] == 3
    assert d["load_balance"] == pytest.approx(1 - 0.5 * (0.5 - 1 / 3 + 2 * (1 / 3 - 0.25)))
    assert d["usage_per_class"][0] == [1.0, 0.0, 0.0]


def test_embed_2d_separates_clusters():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (20, 16)), rng.normal(3, 0.1, (20, 16))])
    xy = es.embed_2d(x, "pca")
    assert xy.shape == (40, 2)
    assert np.sign(xy[:20, 0]).std() == 0 and np.sign(xy[:20, 0])[0] != np.sign(xy[20:, 0])[0]
    with pytest.raises(ValueError, match="unknown projection"):
        es.embed_2d(x, "umap")


@pytest.mark.slow
def test_tsne_separates_clusters():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (20, 16)), rng.normal(3, 0.1, (20, 16))])
    ts = es.embed_2d(x, "tsne")
    assert ts.shape == (40, 2)
    gap = np.linalg.norm(ts[:20].mean(0) - ts[20:].mean(0))
    assert gap > 3 * ts[:20].std(0).max()


def test_stats_and_plots_from_a_real_mammoth(tmp_path):
    torch.manual_seed(0)
    m = Mammoth(24, 32, num_experts=6, num_slots=3, num_heads=4, slot_dim=16).eval()
    x = torch.randn(1, 50, 24)
    emb = m.embed(x, return_routing=True)
    a = emb.routing.expert_assignment[0]
    torch.testing.assert_close(a.sum(-1), torch.ones(50))
    st = es.compute_expert_stats(a)
    assert len(st.load) == 6 and 0 < st.entropy_mean <= 1
    np.testing.assert_allclose(st.load, a.mean(0).numpy(), atol=1e-6)
    ids = es.slot_expert_ids(6, 3)
    assert ids.tolist()[:4] == [0, 0, 0, 1] and emb.tokens.shape[1] == len(ids)
    paths = [
        es.plot_expert_load(st.load, tmp_path / "load.png"),
        es.plot_entropy_histogram(st.entropy, tmp_path / "ent.png"),
        es.plot_usage_per_class(np.random.default_rng(0).dirichlet(np.ones(6), 2), tmp_path / "usage.png",
                                ["a", "b"]),
        es.plot_slot_embedding(emb.tokens[0], ids, tmp_path / "slots.png"),
    ]
    assert all(p.is_file() and p.stat().st_size > 1000 for p in paths)
    with pytest.raises(ValueError, match="expert ids"):
        es.plot_slot_embedding(emb.tokens[0], ids[:-1], tmp_path / "x.png")
