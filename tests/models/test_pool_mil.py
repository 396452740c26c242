"""MeanMIL / MaxMIL: pooling maths and instance logits."""

from __future__ import annotations

import torch

import medmoe

IN_DIM = 9


def tiny(name: str):
    torch.manual_seed(0)
    return medmoe.create_model(name, num_classes=2, in_dim=IN_DIM, embed_dim=8).eval()


def test_meanmil_logits_are_mean_of_instance_logits() -> None:
    model = tiny("meanmil")
    x = torch.randn(2, 6, IN_DIM)
    mask = torch.tensor([[True] * 6, [True] * 2 + [False] * 4])
    with torch.no_grad():
        out = model(x, mask)
        h = model.patch_embed(x)
    torch.testing.assert_close(out.slide_features[1], h[1, :2].mean(0))
    torch.testing.assert_close(out.logits[1], out.instance_logits[1, :2].mean(0))
    torch.testing.assert_close(out.logits[0], out.instance_logits[0].mean(0))


def test_maxmil_pools_elementwise_max() -> None:
    model = tiny("maxmil")
    x = torch.randn(2, 6, IN_DIM)
    x[1, 3:] = 50.0
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    with torch.no_grad():
        out = model(x, mask)
        h = model.patch_embed(x)
    torch.testing.assert_close(out.slide_features[1], h[1, :3].amax(0))
    torch.testing.assert_close(out.logits, model.classifier(out.slide_features))
    assert out.instance_logits.shape == (2, 6, 2)


def test_mammoth_slot_tokens_have_no_instance_logits() -> None:
    torch.manual_seed(0)
    model = medmoe.create_model(
        "meanmil.base_mammoth", num_classes=2, in_dim=IN_DIM, embed_dim=32,
        patch_embed_args={"num_experts": 4, "num_slots": 2, "num_heads": 4, "slot_dim": 16},
    ).eval()
    out = model(torch.randn(1, 5, IN_DIM), return_attention=True)
    assert out.instance_logits is None and out.attention is None
    assert out.slide_features.shape == (1, 32)
