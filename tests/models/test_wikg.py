"""WiKG: shapes, padding invariance, determinism and the chunked top-k against a dense computation."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from medmoe.models.mil.wikg import WiKG, WiKGConfig, topk_neighbours
from medmoe.registry import create_model

HAS_MAMMOTH = importlib.util.find_spec("medmoe.nn.mammoth") is not None
IN_DIM = 32

EMBEDS = [
    pytest.param("linear", {}, id="linear"),
    pytest.param(
        "mammoth",
        {"num_experts": 4, "num_slots": 3, "num_heads": 4, "slot_dim": 16, "dropout": 0.0},
        id="mammoth",
        marks=pytest.mark.skipif(not HAS_MAMMOTH, reason="medmoe.nn.mammoth not importable"),
    ),
]


def _model(kind: str = "linear", args: dict | None = None, **kw) -> WiKG:
    torch.manual_seed(0)
    cfg = WiKGConfig(in_dim=IN_DIM, num_classes=3, embed_dim=32, patch_embed=kind, patch_embed_args=args or {}, **kw)
    return WiKG(cfg).eval()


@pytest.mark.parametrize("kind,args", EMBEDS)
def test_shapes_and_attention(kind: str, args: dict) -> None:
    model = _model(kind, args)
    x = torch.randn(2, 40, IN_DIM)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 25:] = False
    out = model(x, mask, return_attention=True, return_routing=True)
    assert out.logits.shape == (2, 3)
    assert out.slide_features.shape == (2, 32)
    assert out.attention.shape == (2, 1, 40)
    assert out.aux_loss is None
    assert torch.allclose(out.attention.sum(-1), torch.ones(2, 1), atol=1e-5)
    assert torch.all(out.attention[1, 0, 25:] == 0)
    t = out.extras["neighbour_index"].shape[1]
    assert out.extras["neighbour_index"].shape == (2, t, 4)
    assert out.extras["neighbour_weights"].shape == (2, t, 4)
    if kind == "mammoth":
        assert out.routing is not None and out.routing.expert_assignment.shape[:2] == (2, 40)
    else:
        assert out.routing is None
        # padded tokens have no neighbours, real tokens only real neighbours
        assert torch.all(out.extras["neighbour_index"][1, 25:] == -1)
        assert int(out.extras["neighbour_index"][1, :25].max()) < 25


@pytest.mark.parametrize("kind,args", EMBEDS)
def test_padding_invariance_and_eval_determinism(kind: str, args: dict) -> None:
    model = _model(kind, args)
    a, b = torch.randn(30, IN_DIM), torch.randn(50, IN_DIM)
    x = torch.zeros(2, 50, IN_DIM)
    x[0, :30], x[1] = a, b
    x[0, 30:] = 1e3  # junk padding must not leak
    mask = torch.zeros(2, 50, dtype=torch.bool)
    mask[0, :30], mask[1] = True, True
    batched = model(x, mask, return_attention=True)
    alone = model(a.unsqueeze(0), return_attention=True)
    assert torch.allclose(batched.logits[0], alone.logits[0], atol=1e-5)
    assert torch.allclose(batched.attention[0, :, :30], alone.attention[0], atol=1e-5)
    again = model(x, mask, return_attention=True)
    assert torch.equal(batched.logits, again.logits)


def test_topk_neighbours_matches_dense_outputs_and_gradients() -> None:
    torch.manual_seed(1)
    e_h = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    e_t = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    scale = 16**-0.5
    idx, logits = topk_neighbours(e_h, e_t, 5, scale, chunk_size=6)
    dense = (e_h @ e_t.T) * scale
    ref_logits, ref_idx = torch.topk(dense, 5, dim=-1)
    assert torch.equal(idx, ref_idx)
    assert torch.allclose(logits, ref_logits)
    w = torch.randn(37, 5, dtype=torch.float64)
    g1 = torch.autograd.grad((logits * w).sum(), (e_h, e_t))
    g2 = torch.autograd.grad((ref_logits * w).sum(), (e_h, e_t))
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b)


def test_topk_neighbours_never_selects_masked_keys() -> None:
    torch.manual_seed(2)
    e_h, e_t = torch.randn(20, 8), torch.randn(20, 8)
    e_t[:5] *= 100  # the masked keys would win otherwise
    key_mask = torch.ones(20, dtype=torch.bool)
    key_mask[:5] = False
    idx, _ = topk_neighbours(e_h, e_t, 4, 1.0, chunk_size=3, key_mask=key_mask)
    assert bool((idx >= 5).all())
    with pytest.raises(ValueError):
        topk_neighbours(e_h, e_t, 16, 1.0, key_mask=key_mask)


def _dense_forward(model: WiKG, x: torch.Tensor) -> torch.Tensor:
    """MIL-Lab's WiKG forward (dense N x N logits, torch.topk), written independently, one bag."""
    h = model.patch_embed(x)  # (1, n, D)
    h = (h + h.mean(dim=1, keepdim=True)) * 0.5
    e_h, e_t = model.W_head(h), model.W_tail(h)
    attn = (e_h @ e_t.transpose(-2, -1)) * model.scale
    w, idx = torch.topk(attn, k=model.config.topk, dim=-1)
    nb = e_t[torch.zeros_like(idx), idx]  # (1, n, k, D)
    p = F.softmax(w, dim=-1)
    gate = torch.tanh(e_h.unsqueeze(2) + p.unsqueeze(-1) * nb)
    ka = F.softmax(torch.einsum("bnkd,bnkd->bnk", gate, nb), dim=-1).unsqueeze(-1)
    e_n = (ka * nb).sum(2)
    emb = model.activation(model.linear1(e_h + e_n)) + model.activation(model.linear2(e_h * e_n))
    emb = model.message_dropout(emb)[0]
    gate_w = F.softmax(model.readout.gate_nn(emb), dim=0)
    pooled = (gate_w * emb).sum(0, keepdim=True)
    return model.classifier(model.norm(pooled))


def test_model_matches_dense_reference_outputs_and_gradients() -> None:
    model = _model(chunk_size=7).double()
    x = torch.randn(1, 45, IN_DIM, dtype=torch.float64)
    out = model(x).logits
    ref = _dense_forward(model, x)
    assert torch.allclose(out, ref, atol=1e-10)
    params = [p for p in model.parameters() if p.requires_grad]
    g1 = torch.autograd.grad(out.sum(), params, allow_unused=True)
    g2 = torch.autograd.grad(ref.sum(), params, allow_unused=True)
    for a, b in zip(g1, g2):
        assert a is not None and b is not None
        assert torch.allclose(a, b, atol=1e-10)


def test_every_parameter_gets_a_gradient_in_training() -> None:
    model = _model().train()
    out = model(torch.randn(2, 20, IN_DIM))
    out.logits.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_bag_smaller_than_topk_and_single_instance() -> None:
    model = _model()
    for n in (1, 2, 3):
        out = model(torch.randn(1, n, IN_DIM), return_attention=True)
        assert out.logits.shape == (1, 3) and torch.isfinite(out.logits).all()
        assert out.extras["neighbour_index"].shape == (1, n, 4)
        assert bool((out.extras["neighbour_index"][0, :, n:] == -1).all())


@pytest.mark.parametrize("agg,pool", [("gcn", "mean"), ("sage", "max")])
def test_other_aggregators_and_pools(agg: str, pool: str) -> None:
    model = _model(agg_type=agg, pool=pool)
    out = model(torch.randn(1, 12, IN_DIM), return_attention=True)
    assert out.logits.shape == (1, 3)
    assert out.attention is None


def test_bad_config_raises_value_error() -> None:
    for bad in ({"topk": 0}, {"agg_type": "gat"}, {"pool": "sum"}, {"act": "swishy"}, {"chunk_size": 0}):
        with pytest.raises(ValueError):
            WiKGConfig(in_dim=IN_DIM, **bad)


def test_registry_configs() -> None:
    model = create_model("wikg.base.conch_v1", num_classes=4)
    assert isinstance(model, WiKG)
    assert model.config.topk == 4 and model.config.act == "leaky_relu" and model.config.embed_dim == 512
    out = model.eval()(torch.randn(1, 10, 512))
    assert out.logits.shape == (1, 4)
    if HAS_MAMMOTH:
        mm = create_model("wikg.base_mammoth.conch_v1")
        assert mm.config.patch_embed == "mammoth" and mm.config.patch_embed_args["num_experts"] == 30
