"""Lin-MIL: configs, every attention variant (padding invariance, maps), cls truncation, ablation rules."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import medmoe
from medmoe.models.mil.linmil import DropPath, LinMIL, LinMILConfig, reference_key_map
from medmoe.registry import get_config

VARIANTS = ["linear", "softmax", "nystrom", "dilated"]
IN_DIM = 20


def tiny(attention: str = "linear", pooling: str = "cls", **kw) -> LinMIL:
    torch.manual_seed(0)
    cfg = LinMILConfig(in_dim=IN_DIM, num_classes=3, embed_dim=32, depth=2, num_heads=4, dim_head=8, attention=attention,
                       pooling=pooling, nystrom_landmarks=8, dilated_segment_lengths=[16, 8],
                       dilated_ratios=[2, 4], **kw)
    return LinMIL(cfg).eval()


def test_packaged_configs() -> None:
    names = medmoe.list_models("linmil*")
    assert set(names) == {f"linmil.{c}" for c in ("base", "base_softmax", "base_nystrom", "base_dilated",
                                                  "base_mammoth")}
    cfg = get_config("linmil.base")
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.attention, cfg.pooling, cfg.ablation) == (
        512, 4, 8, "linear", "cls", False)
    assert get_config("linmil.base_dilated").ablation is True
    assert get_config("linmil.base_mammoth").patch_embed_args["keep_slots"] is True
    model = medmoe.create_model("linmil.base", num_classes=2)
    assert sum(p.numel() for p in model.parameters()) == 13_137_954  # lin_mil: 13.14M for UNI, 2 classes
    assert isinstance(model.patch_embed[1], torch.nn.Identity)  # no activation after the projection


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("attention", VARIANTS)
def test_padding_invariance_and_attention(attention: str, pooling: str) -> None:
    model = tiny(attention, pooling)
    sizes = [9, 40, 3]
    bags = [torch.randn(n, IN_DIM) for n in sizes]
    x = 3 * torch.randn(3, 45, IN_DIM)
    mask = torch.zeros(3, 45, dtype=torch.bool)
    for i, bag in enumerate(bags):
        idx = torch.randperm(45)[: len(bag)].sort().values
        x[i, idx] = bag
        mask[i, idx] = True
    with torch.no_grad():
        out = model(x, mask, return_attention=True)
        assert out.logits.shape == (3, 3) and out.attention.shape == (3, 1, 45)
        assert (out.attention[:, 0][~mask] == 0).all()
        for i, bag in enumerate(bags):
            alone = model(bag, return_attention=True)
            torch.testing.assert_close(out.logits[i], alone.logits[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out.attention[i, 0, mask[i]], alone.attention[0, 0], atol=1e-5, rtol=1e-5)
            if attention in ("softmax", "dilated"):  # weights: non-negative, at most 1 in total
                assert alone.attention.min() >= 0 and alone.attention.sum() <= 1 + 1e-5
    assert out.extras["attention_kind"] == ("pre-softmax" if attention == "linear" else "post-softmax")


@pytest.mark.parametrize("attention", VARIANTS)
def test_cls_truncated_last_block_equals_full_block(attention: str) -> None:
    model = tiny(attention)
    x = torch.randn(2, 30, IN_DIM)
    with torch.no_grad():
        logits = model(x).logits
        h = torch.cat([model.cls_token.expand(2, -1, -1), model.patch_embed(x)], dim=1)
        for block in model.transformer:
            h, _ = block(h)  # every block on every token
        full = model.mlp_head(model.norm(h[:, 0]))
    torch.testing.assert_close(logits, full, atol=1e-5, rtol=1e-5)


def test_mean_pooling_softmax_map_is_mean_over_queries() -> None:
    model = tiny("softmax", "mean")
    x = torch.randn(1, 12, IN_DIM)
    out = model(x, return_attention=True)
    torch.testing.assert_close(out.attention.sum(), torch.tensor(1.0), atol=1e-5, rtol=0)


def test_every_parameter_gets_a_gradient_in_training() -> None:
    for attention in VARIANTS:
        model = tiny(attention, dropout=0.2).train()
        model(torch.randn(2, 25, IN_DIM)).logits.sum().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, (attention, missing)


def test_mammoth_embedding_attention_over_patches() -> None:
    cfg = LinMILConfig(in_dim=IN_DIM, num_classes=2, embed_dim=32, depth=1, num_heads=4, patch_embed="mammoth",
                       patch_embed_args={"num_experts": 4, "num_slots": 2, "num_heads": 4, "slot_dim": 16,
                                         "keep_slots": True})
    model = LinMIL(cfg).eval()
    out = model(torch.randn(2, 15, IN_DIM), return_attention=True, return_routing=True)
    assert out.attention.shape == (2, 1, 15) and out.routing is not None


def test_ablation_semantics() -> None:
    assert LinMILConfig(attention="softmax").ablation is True
    assert LinMILConfig().ablation is False
    with pytest.raises(ValueError, match="ablation"):
        LinMILConfig(attention="nystrom", ablation=False)
    gelu = LinMIL(LinMILConfig(in_dim=8, embed_dim=16, depth=1, num_heads=2, act="GeLU"))
    assert isinstance(gelu.transformer[0].attn.act, torch.nn.GELU)
    fixed = LinMIL(LinMILConfig(in_dim=8, embed_dim=16, depth=1, num_heads=2, act="GeLU", ablation=True))
    assert isinstance(fixed.transformer[0].attn.act, torch.nn.ReLU)  # the reference's ablation path


def test_reference_key_map_and_loading() -> None:
    model = tiny()
    reference_style = {("projection." + k[len("patch_embed.0."):] if k.startswith("patch_embed.0.") else k): v
                       for k, v in model.state_dict().items()}
    assert reference_key_map("projection.weight") == "patch_embed.0.weight"
    assert reference_key_map("transformer.0.attn.qkv.weight") == "transformer.0.attn.qkv.weight"
    other = tiny()
    torch.nn.init.zeros_(other.patch_embed[0].weight)
    other.load_reference_state_dict(reference_style)
    torch.testing.assert_close(other.patch_embed[0].weight, model.patch_embed[0].weight)


def test_pos_enc_receives_coords() -> None:
    seen = {}

    def pos_enc(tokens: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        seen["coords"] = coords
        return tokens + 0.0

    model = LinMIL(dataclasses.replace(tiny().config), pos_enc=pos_enc)
    coords = torch.randn(1, 6, 2)
    model(torch.randn(1, 6, IN_DIM), coords=coords)
    assert seen["coords"] is coords


def test_drop_path() -> None:
    dp = DropPath(0.5).train()
    y = dp(torch.ones(200, 3))
    assert set(y.unique().tolist()) <= {0.0, 2.0} and (y == 0).any()
    assert torch.equal(dp.eval()(torch.ones(4, 3)), torch.ones(4, 3))
    with pytest.raises(ValueError):
        DropPath(1.0)


def test_bad_input_raises_value_error() -> None:
    model = tiny()
    with pytest.raises(ValueError):
        model(torch.randn(1, 5, IN_DIM + 1))
    with pytest.raises(ValueError):
        model(torch.randn(1, 0, IN_DIM))
    with pytest.raises(ValueError):
        model(torch.randn(2, 5, IN_DIM), torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError):
        model(torch.randn(2, 5, IN_DIM), torch.ones(2, 4, dtype=torch.bool))
    for bad in ({"attention": "flash"}, {"pooling": "max"}, {"num_heads": 5}, {"act": "swish"},
                {"emb_dropout": 1.0}, {"denominator_floor": 0.0}, {"depth": 0}):
        with pytest.raises(ValueError):
            LinMILConfig(**bad)
    with pytest.raises(ValueError):
        medmoe.create_model("linmil.base", attention="dilated", ablation=False)
