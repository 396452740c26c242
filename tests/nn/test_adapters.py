"""Adapter (AdaptFormer) and MixtureOfSpecialists: init, maths, routing tables, parameter counts."""

import pytest
import torch
import torch.nn.functional as F

from medmoe.nn import (
    ROUTING_TABLES,
    Adapter,
    MixtureOfSpecialists,
    RoutingTable,
    Specialist,
    get_routing_table,
)


def _randomize(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)


def test_adapter_starts_at_zero_and_matches_formula():
    a = Adapter(16, 4, scale=0.1)
    x = torch.randn(2, 5, 16)
    assert torch.equal(a(x), torch.zeros_like(x))  # zero-initialised up-projection
    assert torch.count_nonzero(a.down.weight) > 0 and torch.count_nonzero(a.down.bias) == 0
    _randomize(a)
    h = F.layer_norm(x, (16,), a.norm.weight, a.norm.bias, 1e-5)
    expected = 0.1 * (torch.relu(h @ a.down.weight.T + a.down.bias) @ a.up.weight.T + a.up.bias)
    torch.testing.assert_close(a(x), expected)


@pytest.mark.parametrize("r, count", [(64, 100_672), (96, 149_856), (192, 297_408)])
def test_adapter_parameter_counts_match_the_reference(r, count):
    a = Adapter(768, r, device="meta")
    assert sum(p.numel() for p in a.parameters()) == count


def test_adapter_rejects_bad_arguments():
    with pytest.raises(ValueError, match="bottleneck"):
        Adapter(16, 0)
    with pytest.raises(ValueError, match="dropout"):
        Adapter(16, 4, dropout=1.0)


def test_mosaic_table_is_the_papers():
    t = ROUTING_TABLES["mosaic"]
    assert {k: v.bottleneck for k, v in t.specialists.items()} == {"A": 64, "B": 96, "C": 192}
    assert [d for d, s in t.routes.items() if s == "A"] == [
        "pathmnist", "bloodmnist", "tissuemnist", "dermamnist", "retinamnist"]
    assert sum(s == "B" for s in t.routes.values()) == 7 and sum(s == "C" for s in t.routes.values()) == 6
    assert t.route("tissuemnist") == "A"  # grayscale but routed to A, as in the paper
    # fallbacks for datasets outside MedMNIST
    assert t.route("mydata", spatial_dims=3) == "C"
    assert t.route("mydata", spatial_dims=2, channels=3) == "A"
    assert t.route("mydata", spatial_dims=2, channels=1) == "B"
    with pytest.raises(ValueError, match="no route"):
        t.route("mydata")
    assert ROUTING_TABLES["v1"].route("organmnist3d") == "3d" and ROUTING_TABLES["v1"].route("chestmnist") == "2d"
    assert ROUTING_TABLES["shared"].route("anything") == "shared"


def test_routing_table_round_trip_and_validation():
    t = ROUTING_TABLES["mosaic"]
    assert get_routing_table(t.to_dict()) == t
    with pytest.raises(ValueError, match="unknown specialist"):
        RoutingTable("bad", {"A": Specialist(8)}, routes={"x": "Z"})
    with pytest.raises(ValueError, match="unknown routing table"):
        get_routing_table("nope")


def test_mixture_routes_hard_and_per_sample():
    m = MixtureOfSpecialists(16, "mosaic")
    _randomize(m)
    x = torch.randn(4, 3, 16)
    out_a, out_c = m(x, "A"), m(x, "C")
    torch.testing.assert_close(out_a, m.specialists["A"](x))
    assert not torch.allclose(out_a, out_c)
    mixed = m(x, ["A", "C", "C", "B"])
    torch.testing.assert_close(mixed[0], out_a[0])
    torch.testing.assert_close(mixed[1:3], out_c[1:3])
    torch.testing.assert_close(mixed[3], m(x, "B")[3])
    with pytest.raises(ValueError, match="unknown specialist"):
        m(x, "Z")
    with pytest.raises(ValueError, match="specialist names"):
        m(x, ["A"])


def test_only_the_active_specialist_gets_gradients():
    m = MixtureOfSpecialists(8, "mosaic")
    _randomize(m)
    m(torch.randn(2, 3, 8), "B").sum().backward()
    for name, p in m.named_parameters():
        assert (p.grad is not None) == name.startswith("specialists.B."), name
