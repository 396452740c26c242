"""In-house ViT: timm parameter names, SDPA attention vs a manual computation, tokenizers, pos-embed resampling."""

import math

import pytest
import torch
import torch.nn.functional as F

from medmoe.models.vit import (
    PatchEmbed2d,
    PatchEmbed3d,
    VisionTransformer,
    VisionTransformerConfig,
    resample_pos_embed,
)

TINY = VisionTransformerConfig.tiny_test(img_size=32, patch_size=8, num_classes=5)


def test_timm_parameter_names_and_shapes():
    vit = VisionTransformer(TINY)
    shapes = {k: tuple(v.shape) for k, v in vit.state_dict().items()}
    expected = {
        "cls_token": (1, 1, 32), "pos_embed": (1, 17, 32),
        "patch_embed.proj.weight": (32, 3, 8, 8), "patch_embed.proj.bias": (32,),
        "norm.weight": (32,), "norm.bias": (32,), "head.weight": (5, 32), "head.bias": (5,),
    }
    for i in range(2):
        p = f"blocks.{i}."
        expected.update({
            p + "norm1.weight": (32,), p + "norm1.bias": (32,), p + "attn.qkv.weight": (96, 32),
            p + "attn.qkv.bias": (96,), p + "attn.proj.weight": (32, 32), p + "attn.proj.bias": (32,),
            p + "norm2.weight": (32,), p + "norm2.bias": (32,), p + "mlp.fc1.weight": (128, 32),
            p + "mlp.fc1.bias": (128,), p + "mlp.fc2.weight": (32, 128), p + "mlp.fc2.bias": (32,),
        })
    assert shapes == expected


def test_vit_b16_parameter_count():
    vit = VisionTransformer(VisionTransformerConfig.base_patch16(num_classes=1000), device="meta")
    assert sum(p.numel() for p in vit.parameters()) == 86_567_656  # timm vit_base_patch16_224


def _manual_forward(vit, x):
    """Plain-PyTorch ViT forward (explicit softmax attention) from the module's tensors."""
    sd = vit.state_dict()
    cfg = vit.config
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=cfg.patch_size)
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), t], 1) + sd["pos_embed"]
    h, dh = cfg.num_heads, cfg.embed_dim // cfg.num_heads
    for i in range(cfg.depth):
        p = f"blocks.{i}."
        y = F.layer_norm(t, (cfg.embed_dim,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-6)
        q, k, v = (y @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]).chunk(3, -1)
        q, k, v = (z.reshape(*z.shape[:2], h, dh).transpose(1, 2) for z in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), -1) @ v
        t = t + a.transpose(1, 2).reshape(t.shape) @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        y = F.layer_norm(t, (cfg.embed_dim,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-6)
        y = F.gelu(y @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        t = t + y @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    t = F.layer_norm(t, (cfg.embed_dim,), sd["norm.weight"], sd["norm.bias"], 1e-6)
    return t[:, 0] @ sd["head.weight"].T + sd["head.bias"]


def test_forward_matches_manual_attention():
    vit = VisionTransformer(TINY).eval()
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(vit(x), _manual_forward(vit, x), atol=1e-5, rtol=1e-5)


def test_zero_initialised_adapters_do_not_change_the_output():
    vit = VisionTransformer(TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    before = vit(x)
    vit.add_adapters("mosaic")
    assert "blocks.0.adapter.specialists.C.up.weight" in vit.state_dict()
    torch.testing.assert_close(vit(x, "A"), before)
    with torch.no_grad():
        vit.blocks[0].adapter.specialists["A"].up.weight.normal_()
    assert not torch.allclose(vit(x, "A"), before)
    torch.testing.assert_close(vit(x, "B"), before)  # other specialists unaffected


@pytest.mark.parametrize("size, tokens", [(32, 16), (64, 64), (28, 16), (8, 1)])
def test_other_input_sizes_use_a_resampled_grid(size, tokens):
    vit = VisionTransformer(TINY)
    assert vit.embed(torch.randn(1, 3, size, size)).shape == (1, 1 + tokens, 32)


def test_resample_pos_embed():
    pos = torch.randn(1, 1 + 16, 8)
    assert resample_pos_embed(pos, (4, 4)) is pos
    out = resample_pos_embed(pos, (2, 2))
    assert out.shape == (1, 5, 8) and torch.equal(out[:, 0], pos[:, 0])
    # a constant grid stays constant under resampling
    const = torch.cat([pos[:, :1], torch.ones(1, 16, 8)], 1)
    torch.testing.assert_close(resample_pos_embed(const, (7, 7))[:, 1:], torch.ones(1, 49, 8))
    cube = torch.randn(1, 1 + 8**3, 4)
    assert resample_pos_embed(cube, (4, 4, 4)).shape == (1, 65, 4)
    with pytest.raises(ValueError, match="cannot infer"):
        resample_pos_embed(torch.randn(1, 1 + 15, 8), (2, 2))


def test_tokenizers_shapes_and_errors():
    t2 = PatchEmbed2d(224, 16, 3, 12)
    tokens, grid = t2(torch.randn(1, 3, 224, 224))
    assert tokens.shape == (1, 196, 12) and grid == (14, 14)
    t3 = PatchEmbed3d(64, 8, 1, 12)
    tokens, grid = t3(torch.randn(1, 1, 64, 64, 64))
    assert tokens.shape == (1, 512, 12) and grid == (8, 8, 8)
    tokens, grid = t3(torch.randn(2, 1, 28, 28, 28))  # 28^3 -> resized to 32^3 -> 4^3 patches
    assert tokens.shape == (2, 64, 12) and grid == (4, 4, 4)
    with pytest.raises(ValueError, match="channels"):
        t2(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(b, c, z, h, w\)"):
        t3(torch.randn(1, 64, 64, 64))


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        VisionTransformerConfig(embed_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="depth"):
        VisionTransformerConfig(depth=0)
