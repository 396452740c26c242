"""ABMIL maths, MIL-Lab compatibility, and the reusable AttentionPool / initialisation."""

from __future__ import annotations

import math

import pytest
import torch

import medmoe
from medmoe.models.mil._init import initialize_weights
from medmoe.models.mil.abmil import ABMIL, ABMILConfig
from medmoe.nn.pooling import AttentionPool, masked_max, masked_mean, masked_softmax

IN_DIM = 19


def tiny(**over):
    torch.manual_seed(0)
    kw = {"in_dim": IN_DIM, "embed_dim": 12, "attn_dim": 8, **over}
    return medmoe.create_model("abmil", num_classes=3, **kw).eval()


def test_milab_parameter_count_uni() -> None:
    """MIL-Lab / FEATHER: 524,800 (embedding) + 394,369 (gated attention) = 919,169 with in_dim 1024."""
    model = medmoe.create_model("abmil.base.uni", num_classes=2)

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    assert count(model.patch_embed) == 524_800
    assert count(model.global_attn) == 394_369
    assert count(model.patch_embed) + count(model.global_attn) == 919_169
    assert count(model.classifier) == 512 * 2 + 2


def test_milab_state_dict_keys() -> None:
    model = medmoe.create_model("abmil", num_classes=2)
    assert set(model.state_dict()) == {
        "patch_embed.0.weight", "patch_embed.0.bias",
        "global_attn.attention_a.0.weight", "global_attn.attention_a.0.bias",
        "global_attn.attention_b.0.weight", "global_attn.attention_b.0.bias",
        "global_attn.attention_c.weight", "global_attn.attention_c.bias",
        "classifier.weight", "classifier.bias",
    }


def test_gated_slide_feature_by_hand() -> None:
    model = tiny()
    x = torch.randn(2, 9, IN_DIM)
    with torch.no_grad():
        out = model(x, return_attention=True)
        h = torch.relu(x @ model.patch_embed[0].weight.T + model.patch_embed[0].bias)
        att = model.global_attn
        a = torch.tanh(h @ att.attention_a[0].weight.T + att.attention_a[0].bias)
        g = torch.sigmoid(h @ att.attention_b[0].weight.T + att.attention_b[0].bias)
        scores = ((a * g) @ att.attention_c.weight.T + att.attention_c.bias).transpose(1, 2)  # (b, 1, n)
        slide = torch.einsum("bkn,bnd->bkd", scores.softmax(-1), h).flatten(1)
    torch.testing.assert_close(out.attention, scores)
    torch.testing.assert_close(out.slide_features, slide)
    torch.testing.assert_close(out.logits, slide @ model.classifier.weight.T + model.classifier.bias)
    assert out.extras["attention_kind"] == "pre-softmax" == ABMIL.attention_kind


def test_plain_attention_by_hand() -> None:
    model = tiny(gate=False)
    assert model.global_attn.attention_b is None
    x = torch.randn(1, 6, IN_DIM)
    with torch.no_grad():
        out = model(x, return_attention=True)
        h = model.patch_embed(x)
        att = model.global_attn
        a = torch.tanh(att.attention_a[0](h))
        scores = (a @ att.attention_c.weight.T + att.attention_c.bias).transpose(1, 2)
    torch.testing.assert_close(out.attention, scores)
    torch.testing.assert_close(out.slide_features, (scores.softmax(-1) @ h).flatten(1))


def test_multi_head_concatenates_heads() -> None:
    model = tiny(num_heads=2)
    out = model(torch.randn(2, 5, IN_DIM), return_attention=True)
    assert out.attention.shape == (2, 2, 5)
    assert out.slide_features.shape == (2, 24)
    assert model.classifier.in_features == 24


def test_padded_attention_is_minus_inf() -> None:
    model = tiny()
    x = torch.randn(2, 6, IN_DIM)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    out = model(x, mask, return_attention=True)
    assert torch.isinf(out.attention[1, :, 3:]).all() and (out.attention[1, :, 3:] < 0).all()
    assert torch.isfinite(out.attention[0]).all() and torch.isfinite(out.attention[1, :, :3]).all()


def test_mammoth_keep_slots_attention_is_patch_distribution() -> None:
    torch.manual_seed(0)
    model = medmoe.create_model(
        "abmil.base_mammoth", num_classes=2, in_dim=IN_DIM, embed_dim=32, attn_dim=8,
        patch_embed_args={"num_experts": 4, "num_slots": 2, "num_heads": 4, "slot_dim": 16},
    ).eval()
    x = torch.randn(2, 7, IN_DIM)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    with torch.no_grad():
        out = model(x, mask, return_attention=True)
    assert out.extras["attention_kind"] == "post-softmax"
    assert out.attention.shape == (2, 1, 7)
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(2, 1))
    assert torch.all(out.attention[1, :, 4:] == 0)


def test_initialisation_matches_milab() -> None:
    model = tiny()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            assert torch.all(module.bias == 0)
            bound = math.sqrt(2.0) * math.sqrt(3.0 / module.in_features)  # kaiming-uniform, relu gain
            assert module.weight.abs().max() <= bound
    layer = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    torch.nn.init.constant_(layer[1].weight, 3.0)
    initialize_weights(layer, skip=(layer[0],))
    assert torch.all(layer[1].weight == 1) and not torch.all(layer[0].bias == 0)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        ABMILConfig(attn_dim=0)
    with pytest.raises(ValueError):
        ABMILConfig(num_heads=-1)
    with pytest.raises(ValueError):
        medmoe.create_model("abmil", no_such_field=1)


# ---------------------------------------------------------------------- AttentionPool & helpers
def test_attention_pool_loads_milab_plain_attention_keys() -> None:
    pool = AttentionPool(6, 4, gated=False)
    milab = {
        "module.0.weight": torch.randn(4, 6), "module.0.bias": torch.randn(4),
        "module.3.weight": torch.randn(1, 4), "module.3.bias": torch.randn(1),
    }
    pool.load_state_dict(dict(milab))
    torch.testing.assert_close(pool.attention_a[0].weight, milab["module.0.weight"])
    torch.testing.assert_close(pool.attention_c.bias, milab["module.3.bias"])


def test_attention_pool_masking_and_shapes() -> None:
    torch.manual_seed(0)
    pool = AttentionPool(5, 3, num_branches=2).eval()
    h = torch.randn(2, 4, 5)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    out = pool(h, mask)
    assert out.pooled.shape == (2, 2, 5) and out.scores.shape == (2, 2, 4) and out.weights.shape == (2, 2, 4)
    assert torch.all(out.weights[1, :, 2:] == 0)
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(2, 2))
    alone = pool(h[1:, :2])
    torch.testing.assert_close(out.pooled[1], alone.pooled[0])
    with pytest.raises(ValueError):
        pool(torch.randn(2, 4, 6))
    with pytest.raises(ValueError):
        AttentionPool(0, 3)


def test_masked_helpers() -> None:
    x = torch.tensor([[[1.0], [3.0], [100.0]]])
    mask = torch.tensor([[True, True, False]])
    assert masked_mean(x, mask).item() == 2.0
    assert masked_max(x, mask).item() == 3.0
    w = masked_softmax(torch.tensor([[0.0, 0.0, 50.0]]), mask)
    torch.testing.assert_close(w, torch.tensor([[0.5, 0.5, 0.0]]))
