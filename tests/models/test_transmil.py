"""TransMIL: square padding, cls-token attention, PPEG, per-bag processing and the MIL-Lab configs."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from medmoe.models.mil.transmil import PPEG, TransMIL, TransMILConfig
from medmoe.registry import create_model

HAS_MAMMOTH = importlib.util.find_spec("medmoe.nn.mammoth") is not None
IN_DIM = 20


def _model(**kw) -> TransMIL:
    torch.manual_seed(0)
    cfg = TransMILConfig(in_dim=IN_DIM, num_classes=3, embed_dim=16, num_heads=2, **kw)
    return TransMIL(cfg).eval()


def test_base_config_is_mil_lab_transmil() -> None:
    model = create_model("transmil", num_classes=2)
    cfg = model.config
    assert (cfg.embed_dim, cfg.num_attention_layers, cfg.num_heads, cfg.in_dim) == (512, 2, 4, 1024)
    att = model.blocks[0].attention
    assert (att.heads, att.dim_head, att.num_landmarks, att.pinv_iterations) == (4, 128, 256, 6)
    assert model.blocks[0].attention.to_out[1].p == pytest.approx(0.1)
    keys = set(model.state_dict())
    for key in (
        "cls_token",
        "pos_layer.proj.weight",
        "pos_layer.proj1.weight",
        "pos_layer.proj2.weight",
        "blocks.1.attention.res_conv.weight",
        "blocks.0.norm.weight",
        "norm.weight",
        "classifier.weight",
        "patch_embed.0.weight",
    ):
        assert key in keys


@pytest.mark.skipif(not HAS_MAMMOTH, reason="medmoe.nn.mammoth not importable")
def test_base_mammoth_config() -> None:
    model = create_model("transmil.base_mammoth", num_classes=2).eval()
    assert model.patch_embed.lora_rank == 17 and model.patch_embed.num_tokens == 300
    with torch.no_grad():
        out = model(torch.randn(1, 40, 1024), return_attention=True)
    assert out.attention.shape == (1, 1, 40)
    assert out.extras["attention_kind"] == "post-softmax"
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(1, 1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("n", [1, 2, 9, 10, 17])
def test_square_padding_repeats_the_first_tokens(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    seen = {}
    original = PPEG.forward

    def spy(self, x, height, width):  # type: ignore[no-untyped-def]
        seen["shape"] = (x.shape[1], height, width)
        return original(self, x, height, width)

    monkeypatch.setattr(PPEG, "forward", spy)
    side = 1
    while side * side < n:
        side += 1
    with torch.no_grad():
        out = model(torch.randn(1, n, IN_DIM), return_attention=True)
    assert seen["shape"] == (1 + side * side, side, side)
    assert out.attention.shape == (1, 1, n)


def test_attention_is_cls_dot_product_after_the_first_layer() -> None:
    model = _model()
    x = torch.randn(1, 7, IN_DIM)
    with torch.no_grad():
        out = model(x, return_attention=True)
        h = model.patch_embed(x)
        h = torch.cat([h, h[:, :2]], dim=1)  # 7 -> 9 = 3 x 3
        h = torch.cat([model.cls_token, h], dim=1)
        h = model.blocks[0](h)
        expected = (h[:, 1:8] @ h[:, 0].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(out.attention[:, 0], expected)
    assert TransMIL.attention_kind == "pre-softmax"


def test_padded_batch_equals_bags_alone_and_marks_padding() -> None:
    model = _model()
    bags = [torch.randn(n, IN_DIM) for n in (5, 11, 16)]
    x = torch.full((3, 16, IN_DIM), 1e4)
    mask = torch.zeros(3, 16, dtype=torch.bool)
    for i, bag in enumerate(bags):
        x[i, : len(bag)], mask[i, : len(bag)] = bag, True
    with torch.no_grad():
        out = model(x, mask, return_attention=True)
        for i, bag in enumerate(bags):
            alone = model(bag.unsqueeze(0), return_attention=True)
            torch.testing.assert_close(out.logits[i], alone.logits[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(
                out.attention[i, :, : len(bag)], alone.attention[0], atol=1e-5, rtol=1e-5
            )
    assert torch.isinf(out.attention[0, 0, 5:]).all() and (out.attention[0, 0, 5:] < 0).all()


def test_unpadded_batch_runs_at_once_and_matches_bags_alone() -> None:
    model = _model()
    x = torch.randn(3, 12, IN_DIM)
    x[2] *= 5
    with torch.no_grad():
        batched = model(x).logits
        alone = torch.cat([model(x[i : i + 1]).logits for i in range(3)])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_ppeg_is_applied() -> None:
    model = _model()
    x = torch.randn(1, 9, IN_DIM)
    with torch.no_grad():
        before = model(x).logits
        model.pos_layer.proj.weight.mul_(3.0)
        after = model(x).logits
    assert not torch.allclose(before, after)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        TransMILConfig(embed_dim=30, num_heads=4)
    with pytest.raises(ValueError):
        TransMILConfig(num_attention_layers=0)
    with pytest.raises(ValueError):
        TransMILConfig(attn_dropout=1.5)
