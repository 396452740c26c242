"""Strict ViT weight loading: original JAX .npz layout (checked against a NumPy forward written from the
JAX arrays), timm .safetensors / .pth, position-embedding resampling and clear errors."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from scipy.special import erf

from medmoe.models.vit import VisionTransformer, VisionTransformerConfig, ViTWeightsError, load_vit_weights

D, HEADS, DEPTH, P, MLP = 32, 2, 2, 8, 128


def _jax_arrays(seed=0, grid=4, head=21843 % 50, pre_logits=True):
    rng = np.random.default_rng(seed)
    n = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)
    a = {
        "embedding/kernel": n(P, P, 3, D), "embedding/bias": n(D), "cls": n(1, 1, D),
        "Transformer/posembed_input/pos_embedding": n(1, 1 + grid * grid, D),
        "Transformer/encoder_norm/scale": 1 + n(D), "Transformer/encoder_norm/bias": n(D),
    }
    for i in range(DEPTH):
        b = f"Transformer/encoderblock_{i}/"
        m = b + "MultiHeadDotProductAttention_1/"
        a.update({b + "LayerNorm_0/scale": 1 + n(D), b + "LayerNorm_0/bias": n(D),
                  b + "LayerNorm_2/scale": 1 + n(D), b + "LayerNorm_2/bias": n(D),
                  m + "out/kernel": n(HEADS, D // HEADS, D), m + "out/bias": n(D),
                  b + "MlpBlock_3/Dense_0/kernel": n(D, MLP), b + "MlpBlock_3/Dense_0/bias": n(MLP),
                  b + "MlpBlock_3/Dense_1/kernel": n(MLP, D), b + "MlpBlock_3/Dense_1/bias": n(D)})
        for q in ("query", "key", "value"):
            a[m + q + "/kernel"] = n(D, HEADS, D // HEADS)
            a[m + q + "/bias"] = n(HEADS, D // HEADS)
    if pre_logits:
        a["pre_logits/kernel"], a["pre_logits/bias"] = n(D, D), n(D)
    a["head/kernel"], a["head/bias"] = n(D, head), n(head)
    return a


def _ln(x, s, b):
    mu = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * s + b


def _jax_style_forward(a, x_nhwc):
    """The ViT forward written directly on the JAX arrays (NHWC, HWIO, (d, h, k) kernels), float64."""
    a = {k: v.astype(np.float64) for k, v in a.items()}
    b, hh, _, c = x_nhwc.shape
    g = hh // P
    patches = x_nhwc.reshape(b, g, P, g, P, c)
    t = np.einsum("bhpwqc,pqcd->bhwd", patches, a["embedding/kernel"]).reshape(b, g * g, D) + a["embedding/bias"]
    t = np.concatenate([np.broadcast_to(a["cls"], (b, 1, D)), t], 1) + a["Transformer/posembed_input/pos_embedding"]
    for i in range(DEPTH):
        p = f"Transformer/encoderblock_{i}/"
        m = p + "MultiHeadDotProductAttention_1/"
        y = _ln(t, a[p + "LayerNorm_0/scale"], a[p + "LayerNorm_0/bias"])
        q, k, v = (np.einsum("btd,dhk->bthk", y, a[m + n + "/kernel"]) + a[m + n + "/bias"] for n in ("query", "key", "value"))
        logits = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(D // HEADS)
        w = np.exp(logits - logits.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        o = np.einsum("bhts,bshk->bthk", w, v)
        t = t + np.einsum("bthk,hkd->btd", o, a[m + "out/kernel"]) + a[m + "out/bias"]
        y = _ln(t, a[p + "LayerNorm_2/scale"], a[p + "LayerNorm_2/bias"])
        y = y @ a[p + "MlpBlock_3/Dense_0/kernel"] + a[p + "MlpBlock_3/Dense_0/bias"]
        y = 0.5 * y * (1 + erf(y / np.sqrt(2)))
        t = t + y @ a[p + "MlpBlock_3/Dense_1/kernel"] + a[p + "MlpBlock_3/Dense_1/bias"]
    return _ln(t, a["Transformer/encoder_norm/scale"], a["Transformer/encoder_norm/bias"])[:, 0]


def _tiny(img=32):
    return VisionTransformer(VisionTransformerConfig.tiny_test(img_size=img, patch_size=P)).eval()


def test_jax_npz_matches_a_forward_written_on_the_jax_arrays(tmp_path):
    arrays = _jax_arrays()
    np.savez(tmp_path / "ViT-B_16.npz", **arrays)
    vit = _tiny()
    report = load_vit_weights(vit, tmp_path / "ViT-B_16.npz")
    assert report.format == "jax-npz" and len(report.loaded) == len(vit.state_dict())
    assert set(report.ignored) == {"head.weight", "head.bias", "pre_logits.fc.weight", "pre_logits.fc.bias"}
    x = np.random.default_rng(1).random((2, 32, 32, 3)).astype(np.float32)
    ours = vit.forward_features(torch.from_numpy(x).permute(0, 3, 1, 2))[:, 0]
    np.testing.assert_allclose(ours.detach().numpy(), _jax_style_forward(arrays, x), atol=2e-5, rtol=1e-4)


def test_timm_safetensors_and_pth_round_trip(tmp_path):
    src = _tiny()
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    state = {**src.state_dict(), "head.weight": torch.randn(7, D), "head.bias": torch.randn(7)}
    save_file(state, str(tmp_path / "model.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "model.pth")
    x = torch.randn(2, 3, 32, 32)
    for name in ("model.safetensors", "model.pth"):
        dst = _tiny()
        dst.add_adapters("mosaic")  # adapters are not part of the file and stay untouched
        report = load_vit_weights(dst, tmp_path / name)
        assert report.ignored == ["head.bias", "head.weight"]
        torch.testing.assert_close(dst.forward_features(x), src.forward_features(x))


def test_pos_embed_is_resampled_for_another_grid(tmp_path):
    np.savez(tmp_path / "w.npz", **_jax_arrays(grid=4))
    vit = _tiny(img=64)  # 8x8 grid
    report = load_vit_weights(vit, tmp_path / "w.npz")
    assert report.resampled["pos_embed"] == ((1, 17, D), (1, 65, D))
    assert vit.pos_embed.shape == (1, 65, D)


def test_strict_errors(tmp_path):
    state = _tiny().state_dict()
    broken = {k: v for k, v in state.items() if k != "blocks.1.mlp.fc2.bias"}
    broken["blocks.0.attn.q_norm.weight"] = torch.ones(D)
    save_file(broken, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ViTWeightsError, match=r"missing \['blocks.1.mlp.fc2.bias'\].*unexpected \['blocks.0.attn.q_norm.weight'\]"):
        load_vit_weights(_tiny(), tmp_path / "bad.safetensors")
    wide = {k: v for k, v in state.items()}
    wide["norm.weight"] = torch.ones(D + 1)
    save_file(wide, str(tmp_path / "wide.safetensors"))
    with pytest.raises(ViTWeightsError, match="incompatible shapes: norm.weight"):
        load_vit_weights(_tiny(), tmp_path / "wide.safetensors")
    arrays = _jax_arrays()
    arrays["Transformer/encoderblock_0/MlpBlock_3/Dense_2/kernel"] = np.zeros(3, np.float32)
    np.savez(tmp_path / "odd.npz", **arrays)
    with pytest.raises(ViTWeightsError, match="does not know how to map.*Dense_2"):
        load_vit_weights(_tiny(), tmp_path / "odd.npz")
    with pytest.raises(ViTWeightsError, match="does not exist.*ViT-B_16.npz"):
        load_vit_weights(_tiny(), tmp_path / "nowhere.npz")


def test_npz_loads_into_a_vit_with_a_patch_layernorm_kept_at_init(tmp_path):
    """MOSAIC's 2-D tokenizer LayerNorm is not in an ImageNet file: it keeps weight 1, bias 0 (as the reference)."""
    np.savez(tmp_path / "ViT-B_16.npz", **_jax_arrays())
    vit = VisionTransformer(VisionTransformerConfig.tiny_test(img_size=32, patch_size=P, patch_norm=True)).eval()
    report = load_vit_weights(vit, tmp_path / "ViT-B_16.npz")
    assert "patch_embed.norm.weight" not in report.loaded
    torch.testing.assert_close(vit.patch_embed.norm.weight, torch.ones_like(vit.patch_embed.norm.weight))
