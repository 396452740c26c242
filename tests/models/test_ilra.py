"""ILRA: no patch embedding by default, the fixed base_mammoth (rank 17), ln/gated switches, masks."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from medmoe.models.mil.ilra import ILRA, GatedMultiheadAttention, ILRAConfig
from medmoe.registry import create_model, get_config

HAS_MAMMOTH = importlib.util.find_spec("medmoe.nn.mammoth") is not None
IN_DIM = 20


def _model(**kw) -> ILRA:
    torch.manual_seed(0)
    cfg = ILRAConfig(in_dim=IN_DIM, num_classes=3, embed_dim=16, num_heads=4, topk=6, **kw)
    return ILRA(cfg).eval()


def test_base_has_no_patch_embedding() -> None:
    model = create_model("ilra", num_classes=2)
    cfg = model.config
    assert (cfg.embed_dim, cfg.num_attention_layers, cfg.num_heads, cfg.topk, cfg.ln) == (256, 2, 8, 64, True)
    assert isinstance(model.patch_embed, nn.Identity)
    assert model.gab_blocks[0].project_forward.fc_k.in_features == 1024
    assert model.gab_blocks[1].project_forward.fc_k.in_features == 256
    assert model.gab_blocks[0].latent.shape == (1, 64, 256)
    assert model.gab_blocks[0].project_forward.gate is not None and model.pooling.mha.gate is None


@pytest.mark.skipif(not HAS_MAMMOTH, reason="medmoe.nn.mammoth not importable")
def test_base_mammoth_works_with_rank_17() -> None:
    from medmoe.nn.mammoth import mammoth_auto_rank

    # The MAMMOTH fork's ilra/base_mammoth uses slot_dim 256 == embed_dim 256: auto rank 0 (the crash).
    assert mammoth_auto_rank(1024, 256, 256, 30) == 0
    cfg = get_config("ilra.base_mammoth.uni")
    assert cfg.patch_embed_args["slot_dim"] == 128
    model = create_model("ilra.base_mammoth.uni", num_classes=2).eval()
    assert model.patch_embed.lora_rank == 17
    assert model.gab_blocks[0].project_forward.fc_k.in_features == 256
    with torch.no_grad():
        out = model(torch.randn(2, 30, 1024), return_attention=True, return_routing=True)
    assert out.logits.shape == (2, 2) and torch.isfinite(out.logits).all()
    assert out.attention.shape == (2, 1, 30) and out.routing is not None


def test_ln_and_gate_switches_are_honoured() -> None:
    plain = _model(ln=False, gated=False)
    blk = plain.gab_blocks[0].project_forward
    assert blk.ln0 is None and blk.ln1 is None and blk.gate is None
    assert not any(isinstance(m, nn.LayerNorm) for m in plain.modules())
    with torch.no_grad():
        assert torch.isfinite(plain(torch.randn(1, 8, IN_DIM)).logits).all()


def test_gated_attention_block_maths() -> None:
    torch.manual_seed(0)
    blk = GatedMultiheadAttention(6, 10, 8, num_heads=2, ln=True, gated=True).eval()
    q, k = torch.randn(2, 3, 6), torch.randn(2, 5, 10)
    with torch.no_grad():
        out, _ = blk(q, k)
        qq = blk.fc_q(q)
        mha = blk.multihead_attention  # batch_first; MIL-Lab calls the same module sequence-first
        a, _ = mha(qq, blk.fc_k(k), blk.fc_v(k))
        o = blk.ln0(qq + a)
        o = blk.ln1(o + torch.relu(blk.fc_o(o)))
        expected = o * torch.nn.functional.silu(blk.gate[0](q))
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)


def test_attention_and_padding_with_non_finite_junk() -> None:
    model = _model()
    bags = [torch.randn(n, IN_DIM) for n in (3, 10)]
    x = torch.full((2, 10, IN_DIM), float("inf"))
    mask = torch.zeros(2, 10, dtype=torch.bool)
    for i, bag in enumerate(bags):
        x[i, : len(bag)], mask[i, : len(bag)] = bag, True
    with torch.no_grad():
        out = model(x, mask, return_attention=True)
        for i, bag in enumerate(bags):
            alone = model(bag.unsqueeze(0), return_attention=True)
            torch.testing.assert_close(out.logits[i], alone.logits[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(
                out.attention[i, :, : len(bag)], alone.attention[0], atol=1e-6, rtol=1e-5
            )
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(2, 1))
    assert (out.attention[0, 0, 3:] == 0).all()


def test_optional_linear_embedding() -> None:
    model = _model(patch_embed="linear")
    assert model.gab_blocks[0].project_forward.fc_k.in_features == 16
    with torch.no_grad():
        assert model(torch.randn(2, 7, IN_DIM)).logits.shape == (2, 3)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        ILRAConfig(mode="survival")
    with pytest.raises(ValueError):
        ILRAConfig(embed_dim=30, num_heads=8)
    with pytest.raises(ValueError):
        ILRAConfig(topk=0)


def test_fast_attention_path_matches_multihead_attention() -> None:
    """Without return_attention the block runs its own projections (oneDNN) + SDPA: same values and gradients
    as nn.MultiheadAttention, with a key padding mask, at a width where oneDNN is used (512)."""
    torch.manual_seed(0)
    blk = GatedMultiheadAttention(512, 512, 512, num_heads=8, ln=True, gated=True).train()
    q, k = torch.randn(2, 16, 512), torch.randn(2, 40, 512)
    key_mask = torch.ones(2, 40, dtype=torch.bool)
    key_mask[1, 25:] = False
    fast, none = blk(q, k, key_mask)
    slow, weights = blk(q, k, key_mask, return_attention=True)
    assert none is None and weights.shape == (2, 16, 40)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-4)
    g = torch.randn_like(fast)
    params = [p for p in blk.parameters() if p.requires_grad]
    for a, b in zip(torch.autograd.grad(fast, params, g), torch.autograd.grad(slow, params, g)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_padding_with_non_finite_junk_without_attention() -> None:
    model = _model()
    x = torch.full((2, 10, IN_DIM), float("inf"))
    mask = torch.zeros(2, 10, dtype=torch.bool)
    bags = [torch.randn(n, IN_DIM) for n in (3, 10)]
    for i, bag in enumerate(bags):
        x[i, : len(bag)], mask[i, : len(bag)] = bag, True
    with torch.no_grad():
        out = model(x, mask)
        for i, bag in enumerate(bags):
            torch.testing.assert_close(out.logits[i], model(bag.unsqueeze(0)).logits[0], atol=1e-5, rtol=1e-5)
