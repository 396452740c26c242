"""MeanMIL / MaxMIL: pooling maths and instance logits."""

from __future__ import annotations

import pytest
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


def test_base_is_the_mammoth_readmes_plain_linear() -> None:
    """``meanmil.base``/``maxmil.base`` = the MAMMOTH README's MeanMIL: ``nn.Linear`` then pooling, no ReLU."""
    for name, pool in (("meanmil", lambda h: h.mean(1)), ("maxmil", lambda h: h.amax(1))):
        model = tiny(name)
        assert model.config.act == "none"
        linear = model.patch_embed[0]
        x = torch.randn(2, 7, IN_DIM)
        with torch.no_grad():
            out = model(x)
            h = x @ linear.weight.T + linear.bias  # no activation
            assert (h < 0).any()  # so a ReLU would have changed the result
            torch.testing.assert_close(out.slide_features, pool(h))
            torch.testing.assert_close(out.logits, model.classifier(pool(h)))


def test_base_relu_keeps_the_relu() -> None:
    for name, pool in (("meanmil", lambda h: h.mean(1)), ("maxmil", lambda h: h.amax(1))):
        model = tiny(f"{name}.base_relu")
        relu_free = tiny(name)
        assert model.config.act == "relu"
        assert set(model.state_dict()) == set(relu_free.state_dict())  # same keys: patch_embed.0.*
        linear = model.patch_embed[0]
        x = torch.randn(2, 7, IN_DIM)
        with torch.no_grad():
            torch.testing.assert_close(model(x).slide_features, pool(torch.relu(linear(x))))


def test_mammoth_counterpart_of_base_relu_is_base_mammoth() -> None:
    """``mil compare -m meanmil.base_relu`` pairs it with the same Mammoth model as ``meanmil.base_mammoth``."""
    from medmoe.engine.mil.cross_validation import resolve_variant

    for name in ("meanmil", "maxmil"):
        variant, overrides = resolve_variant(f"{name}.base_relu", "mammoth")
        torch.manual_seed(0)
        a = medmoe.create_model(variant, **overrides)
        torch.manual_seed(0)
        b = medmoe.create_model(f"{name}.base_mammoth")
        assert a.config.patch_embed_args == {} and b.config.patch_embed == "mammoth"
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_config_without_act_rebuilds_the_relu_model() -> None:
    """Checkpoints written before ``act`` existed store every other field and had the ReLU."""
    from medmoe.models.mil.meanmil import PoolMILConfig

    assert PoolMILConfig().act == "relu"
    with pytest.raises(ValueError, match="act"):
        PoolMILConfig(act="swish_of_doom")
