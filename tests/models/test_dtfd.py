"""DTFD-MIL: shapes, padding invariance, eval determinism, tier-1 loss, small bags, loop reference."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medmoe.models.mil.dtfd import DTFD, DTFDConfig
from medmoe.registry import create_model, get_entry, list_models

HAS_MAMMOTH = importlib.util.find_spec("medmoe.nn.mammoth") is not None
IN_DIM = 24
MAMMOTH_ARGS = {"num_experts": 4, "num_slots": 3, "num_heads": 4, "slot_dim": 16, "dropout": 0.0}

EMBEDS = [
    pytest.param("linear", {}, id="linear"),
    pytest.param(
        "mammoth", MAMMOTH_ARGS, id="mammoth",
        marks=pytest.mark.skipif(not HAS_MAMMOTH, reason="medmoe.nn.mammoth not importable"),
    ),
]


def _model(kind: str = "linear", args: dict | None = None, **kw) -> DTFD:
    torch.manual_seed(0)
    kw.setdefault("num_residuals", 2)
    cfg = DTFDConfig(
        in_dim=IN_DIM, num_classes=3, embed_dim=32, attention_dim=16, patch_embed=kind,
        patch_embed_args=args or {}, **kw,
    )
    return DTFD(cfg).eval()


def _padded_pair() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    a, b = torch.randn(21, IN_DIM), torch.randn(40, IN_DIM)
    x = torch.full((2, 40, IN_DIM), 1e3)  # junk padding must not leak
    x[0, :21], x[1] = a, b
    mask = torch.zeros(2, 40, dtype=torch.bool)
    mask[0, :21], mask[1] = True, True
    return x, mask, a, b


@pytest.mark.parametrize("distill", ["MaxMinS", "MaxS", "AFS"])
@pytest.mark.parametrize("kind,args", EMBEDS)
def test_shapes(kind: str, args: dict, distill: str) -> None:
    model = _model(kind, args, distill=distill)
    x, mask, _, _ = _padded_pair()
    out = model(x, mask, label=torch.tensor([0, 2]), return_attention=True, return_routing=True)
    assert out.logits.shape == (2, 3)
    assert out.slide_features.shape == (2, 32)
    assert out.attention.shape == (2, 1, 40)
    assert torch.all(out.attention[0, :, 21:] == 0)
    assert out.extras["pseudo_bag_logits"].shape == (2, 8, 3)
    assert bool(out.extras["pseudo_bag_mask"].all())
    assert out.bag_loss_weight == pytest.approx(0.7)
    assert out.aux_loss is not None and out.aux_loss.ndim == 0
    if kind == "linear":
        assert out.instance_logits.shape == (2, 40, 3)
        assert out.routing is None
    else:
        assert out.instance_logits is None
        assert out.routing.expert_assignment.shape == (2, 40, 4)
        assert torch.allclose(out.routing.expert_assignment[0, :21].sum(-1), torch.ones(21), atol=1e-5)
        assert torch.all(out.routing.expert_assignment[0, 21:] == 0)


@pytest.mark.parametrize("split", ["seeded", "ordered"])
@pytest.mark.parametrize("kind,args", EMBEDS)
def test_padding_invariance_and_eval_determinism(kind: str, args: dict, split: str) -> None:
    model = _model(kind, args, eval_split=split)
    x, mask, a, b = _padded_pair()
    batched = model(x, mask, return_attention=True)
    again = model(x, mask, return_attention=True)
    assert torch.equal(batched.logits, again.logits)
    alone_a = model(a.unsqueeze(0), return_attention=True)
    alone_b = model(b.unsqueeze(0), return_attention=True)
    assert torch.allclose(batched.logits[0], alone_a.logits[0], atol=1e-4)
    assert torch.allclose(batched.logits[1], alone_b.logits[0], atol=1e-4)
    assert torch.allclose(batched.attention[0, :, :21], alone_a.attention[0], atol=1e-4)


def test_training_reshuffles_and_random_eval_split() -> None:
    model = _model(dropout=0.0, attention_drop=0.0).train()
    x = torch.randn(1, 64, IN_DIM)
    torch.manual_seed(1)
    first = model(x).logits
    torch.manual_seed(2)
    second = model(x).logits
    assert not torch.allclose(first, second)
    seeded = _model()
    assert torch.equal(seeded(x).logits, seeded(x).logits)


def test_tier1_loss_only_with_label() -> None:
    model = _model()
    x = torch.randn(2, 30, IN_DIM)
    assert model(x).aux_loss is None
    label = torch.tensor([1, 2])
    out = model(x, label=label)
    pb = out.extras["pseudo_bag_logits"]  # (2, 8, 3), all pseudo-bags non-empty here
    ce = F.cross_entropy(pb.reshape(-1, 3), label.repeat_interleave(8))
    assert torch.allclose(out.aux_loss, 0.3 * ce, atol=1e-6)
    task = F.cross_entropy(out.logits, label)
    assert torch.allclose(out.total_loss(task), 0.7 * task + out.aux_loss)
    with pytest.raises(ValueError):
        model(x, label=torch.tensor([1, 2, 0]))


@pytest.mark.parametrize("kind,args", EMBEDS)
@pytest.mark.parametrize("n", [1, 3, 7])
def test_bag_smaller_than_num_group(kind: str, args: dict, n: int) -> None:
    model = _model(kind, args).train()
    out = model(torch.randn(1, n, IN_DIM), label=torch.tensor([1]), return_attention=True)
    assert out.logits.shape == (1, 3) and torch.isfinite(out.logits).all()
    assert int(out.extras["pseudo_bag_mask"].sum()) == n
    assert torch.isfinite(out.aux_loss)
    out.total_loss(F.cross_entropy(out.logits, torch.tensor([1]))).backward()
    # mixed batch: one tiny bag padded next to a large one
    x = torch.randn(2, 20, IN_DIM)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[0, n:] = False
    out = model.eval()(x, mask, label=torch.tensor([0, 1]))
    alone = model(x[:1, :n])
    assert torch.allclose(out.logits[0], alone.logits[0], atol=1e-4)


def _loop_reference(model: DTFD, bag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MIL-Lab's per-pseudo-bag loop (written independently) with the 'ordered' split, one bag (n, d)."""
    cfg = model.config
    ipg = max(1, cfg.total_instance // cfg.num_group)
    feats, preds = [], []
    weight = model.classifier.fc.weight
    for chunk in np.array_split(np.arange(bag.shape[0]), cfg.num_group):
        if len(chunk) == 0:
            continue
        h = model.residuals(model.patch_embed(bag[torch.as_tensor(chunk)]))
        a = model.attention.scores(h.unsqueeze(0))[0, 0]  # raw scores, no softmax
        weighted = h * a.unsqueeze(-1)
        pooled = weighted.sum(0, keepdim=True)
        preds.append(model.classifier(pooled))
        prob = torch.softmax(weighted @ weight.T, dim=1)[:, -1]
        order = torch.sort(prob, descending=True).indices
        if cfg.distill == "AFS":
            feats.append(pooled)
        elif cfg.distill == "MaxS":
            feats.append(h[order[:ipg]])
        else:
            feats.append(h[torch.cat([order[:ipg], order[-ipg:]])])
    pseudo = torch.cat(feats)
    aa = model.tier2_attention.scores(pseudo.unsqueeze(0))[0, 0]
    logits = model.tier2_classifier((aa.unsqueeze(-1) * pseudo).sum(0, keepdim=True))
    return logits, torch.cat(preds)


@pytest.mark.parametrize("distill,total", [("MaxMinS", 4), ("MaxMinS", 24), ("MaxS", 16), ("AFS", 4)])
def test_matches_loop_reference(distill: str, total: int) -> None:
    model = _model(distill=distill, total_instance=total, eval_split="ordered").double()
    bag = torch.randn(45, IN_DIM, dtype=torch.float64)
    out = model(bag.unsqueeze(0))
    ref_logits, ref_sub = _loop_reference(model, bag)
    assert torch.allclose(out.logits, ref_logits, atol=1e-9)
    assert torch.allclose(out.extras["pseudo_bag_logits"][0], ref_sub, atol=1e-9)
    params = list(model.parameters())
    g1 = torch.autograd.grad(out.logits.sum() + out.extras["pseudo_bag_logits"].sum(), params, allow_unused=True)
    g2 = torch.autograd.grad(ref_logits.sum() + ref_sub.sum(), params, allow_unused=True)
    for p1, p2 in zip(g1, g2):
        assert (p1 is None) == (p2 is None)
        if p1 is not None:
            assert torch.allclose(p1, p2, atol=1e-9)


def test_instance_per_group_fix_and_every_parameter_gets_a_gradient() -> None:
    assert DTFDConfig(total_instance=4, num_group=8).instance_per_group == 1
    assert DTFDConfig(total_instance=32, num_group=8).instance_per_group == 4
    model = _model().train()
    label = torch.tensor([0, 1])
    out = model(torch.randn(2, 50, IN_DIM), label=label)
    out.total_loss(F.cross_entropy(out.logits, label)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_bad_config_raises_value_error() -> None:
    for bad in ({"distill": "Max"}, {"num_group": 0}, {"eval_split": "fixed"}, {"bag_weight": 1.5},
                {"attention_drop": 1.0}, {"num_residuals": -1}):
        with pytest.raises(ValueError):
            DTFDConfig(in_dim=IN_DIM, **bad)


def test_registry_configs_and_dftd_alias() -> None:
    assert get_entry("dftd").model_cls is DTFD
    names = set(list_models("dtfd.*"))
    assert {"dtfd.base", "dtfd.base_afs", "dtfd.base_mammoth"} <= names
    assert list_models("dftd.*") == []  # the alias is accepted but not listed twice
    base = create_model("dtfd.base")
    assert (base.config.num_group, base.config.total_instance, base.config.bag_weight) == (8, 4, 0.7)
    assert len(base.residuals) == 4
    afs = create_model("dftd.base_afs.conch_v1")
    assert afs.config.distill == "AFS" and afs.config.bag_weight == 0.5 and afs.config.in_dim == 512
    if HAS_MAMMOTH:
        mm = create_model("dtfd.base_mammoth")
        assert mm.config.patch_embed == "mammoth" and len(mm.residuals) == 0
        out = mm.eval()(torch.randn(1, 50, 1024), return_attention=True)
        assert out.attention.shape == (1, 1, 50)
