"""Transformer MIL: parity with nn.MultiheadAttention, key padding masks, cls attention, chunked dropout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medmoe.models.mil import transformer as transformer_module
from medmoe.models.mil.transformer import (
    TransformerConfig,
    TransformerMIL,
    _dropout_attention,
    chunked_attention,
)
from medmoe.nn.dropout import fast_dropout, native_dropout_available
from medmoe.registry import create_model

IN_DIM = 20


def _model(**kw) -> TransformerMIL:
    torch.manual_seed(0)
    kw.setdefault("encoder_mlp_dim", 24)
    cfg = TransformerConfig(in_dim=IN_DIM, num_classes=3, embed_dim=16, num_heads=4, **kw)
    return TransformerMIL(cfg).eval()


def test_base_config_is_mil_lab_transformer() -> None:
    model = create_model("transformer", num_classes=2)
    cfg = model.config
    assert (cfg.embed_dim, cfg.num_attention_layers, cfg.num_heads, cfg.encoder_mlp_dim, cfg.dropout) == (
        512,
        2,
        8,
        2048,
        0.25,
    )
    block = model.blocks[0]
    assert isinstance(block.mlp[4], torch.nn.ReLU)  # MIL-Lab's create_mlp ends with the activation
    assert {
        "blocks.0.attention.in_proj_weight",
        "blocks.0.attention.out_proj.weight",
        "blocks.0.mlp.0.weight",
        "blocks.0.mlp.3.weight",
        "blocks.0.norm2.weight",
        "cls_token",
    } <= set(model.state_dict())
    no_mlp = TransformerMIL(TransformerConfig(in_dim=8, embed_dim=16, num_heads=4))
    assert no_mlp.blocks[0].mlp is None  # the config-class default (-1) means no MLP


def test_block_matches_torch_multihead_attention_with_key_padding_mask() -> None:
    model = _model()
    block = model.blocks[0]
    x = torch.randn(2, 9, 16)
    key_mask = torch.ones(2, 9, dtype=torch.bool)
    key_mask[1, 6:] = False
    with torch.no_grad():
        ours, cls_w = block(x, key_mask, return_cls_weights=True)
        y = block.norm(x)
        ref_attn, ref_w = block.attention(
            y, y, y, key_padding_mask=~key_mask, need_weights=True, average_attn_weights=True
        )
        ref = x + ref_attn
        ref = ref + block.mlp(block.norm2(ref))
    torch.testing.assert_close(ours[key_mask], ref[key_mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cls_w, ref_w[:, 0], atol=1e-6, rtol=1e-5)


def test_attention_is_cls_row_of_first_block_over_patches() -> None:
    model = _model()
    x = torch.randn(2, 10, IN_DIM)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 7:] = False
    with torch.no_grad():
        out = model(x, mask, return_attention=True)
    assert out.attention.shape == (2, 1, 10)
    assert (out.attention[0, 0, 7:] == 0).all()
    total = out.attention.sum(-1)
    assert ((total > 0) & (total < 1)).all()  # the cls token's weight on itself is the rest
    assert TransformerMIL.attention_kind == "post-softmax"


def test_padding_with_non_finite_junk_does_not_change_outputs() -> None:
    model = _model()
    bags = [torch.randn(n, IN_DIM) for n in (4, 9)]
    x = torch.full((2, 9, IN_DIM), float("nan"))
    mask = torch.zeros(2, 9, dtype=torch.bool)
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


def test_chunked_dropout_attention_recomputes_the_same_masks(monkeypatch: pytest.MonkeyPatch) -> None:
    # the checkpointed chunks (GPU, or CPU without the dropout kernel)
    monkeypatch.setattr(transformer_module, "dropout_attention_applies", lambda q: False)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 30, 4, requires_grad=True) for _ in range(3))
    key_mask = torch.ones(2, 30, dtype=torch.bool)
    key_mask[1, 20:] = False
    g = torch.randn(2, 2, 30, 4)
    torch.manual_seed(7)
    out = chunked_attention(
        q, k, v, key_mask, dropout_p=0.5, chunk_elements=2 * 30 * 8
    )  # chunks of 8 queries, each recomputed in backward (activation checkpointing)
    out.backward(g)
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    torch.manual_seed(7)
    ref = torch.cat(
        [_dropout_attention(q[:, :, i : i + 8], k, v, key_mask[:, None, None], 0.5) for i in range(0, 30, 8)],
        dim=2,
    )
    ref.backward(g)
    torch.testing.assert_close(out, ref)
    for a, t in zip(grads, (q, k, v)):
        torch.testing.assert_close(a, t.grad)
    # without dropout the chunking is skipped and SDPA's fused kernels run
    plain = chunked_attention(q, k, v, key_mask, 0.0, chunk_elements=1)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None])
    torch.testing.assert_close(plain, ref)


@pytest.mark.skipif(not native_dropout_available(), reason="no C++ compiler: the dropout kernel is not built")
def test_dropout_attention_is_softmax_then_fast_dropout() -> None:
    """The explicit CPU path: softmax weights, the kernel's mask (same seed), then the values."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 1, 1, 17, dtype=torch.bool)
    mask[0, ..., 11:] = False
    torch.manual_seed(9)
    out = _dropout_attention(q, k, v, mask, 0.3)
    torch.manual_seed(9)
    keep = fast_dropout(torch.ones(2, 3, 17, 17, dtype=torch.float64), 0.3)  # the same draw: the same mask
    weights = (q @ k.transpose(-1, -2) / 8**0.5).masked_fill(~mask, float("-inf")).softmax(-1)
    ref = (weights * keep) @ v
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    for a, b in zip(grads, torch.autograd.grad(ref, (q, k, v), g)):
        torch.testing.assert_close(a, b)


def test_dropout_attention_without_kernel_is_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDMOE_BACKEND", "torch")  # no fast paths: PyTorch's fused attention
    q, k, v = (torch.randn(1, 2, 9, 4) for _ in range(3))
    torch.manual_seed(1)
    out = _dropout_attention(q, k, v, None, 0.5)
    torch.manual_seed(1)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, dropout_p=0.5), rtol=0, atol=0)


@pytest.mark.skipif(not native_dropout_available(), reason="no C++ compiler: the dropout kernel is not built")
def test_long_bags_with_dropout_run_in_blocks_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    blocked = transformer_module.dropout_attention
    monkeypatch.setattr(transformer_module, "dropout_attention", lambda *a, **kw: calls.append(1) or blocked(*a, **kw))
    q, k, v = (torch.randn(2, 2, 30, 4, requires_grad=True) for _ in range(3))
    key_mask = torch.ones(2, 30, dtype=torch.bool)
    key_mask[1, 20:] = False
    torch.manual_seed(5)
    out = chunked_attention(q, k, v, key_mask, dropout_p=0.5, chunk_elements=2 * 30 * 8)
    assert calls == [1]
    torch.manual_seed(5)
    torch.testing.assert_close(out, blocked(q, k, v, key_mask, 0.5))
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert chunked_attention(q, k, v, key_mask, dropout_p=0.5, chunk_elements=2 * 30 * 30).shape == out.shape
    assert calls == [1]  # small enough: the explicit path


def test_training_step_with_chunked_attention_dropout() -> None:
    model = _model(attn_chunk_elements=64).train()
    x = torch.randn(2, 12, IN_DIM)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 5:] = False
    out = model(x, mask)
    out.logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        TransformerConfig(embed_dim=30, num_heads=8)
    with pytest.raises(ValueError):
        TransformerConfig(num_attention_layers=0)
