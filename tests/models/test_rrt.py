"""RRT-MIL: region grid, locality of R-MSA, EPEG/PPEG actually applied, CR-MSA, MIL-Lab compatibility mode."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from medmoe.models.mil.rrt import (
    RRTMIL,
    CrossRegionAttention,
    RegionAttention,
    RegionInnerAttention,
    RRTConfig,
    _from_regions,
    _to_regions,
    region_grid,
)
from medmoe.nn.attention import NystromAttention
from medmoe.registry import create_model

IN_DIM = 20
SMALL = {
    "in_dim": IN_DIM,
    "num_classes": 3,
    "embed_dim": 16,
    "n_heads": 4,
    "crmsa_heads": 4,
    "trans_dim": 4,
    "num_landmarks": 8,
    "trans_dropout": 0.0,
    "dropout": 0.0,
}


def _model(**kw) -> RRTMIL:
    torch.manual_seed(0)
    return RRTMIL(RRTConfig(**{**SMALL, **kw})).eval()


@pytest.mark.parametrize(
    "t,expected", [(1, (8, 1)), (20, (8, 1)), (64, (8, 1)), (65, (16, 2)), (300, (24, 3)), (5000, (72, 9))]
)
def test_region_grid(t: int, expected: tuple[int, int]) -> None:
    assert region_grid(t, 8) == expected


def test_region_grid_falls_back_to_one_region() -> None:
    assert region_grid(300, 8, min_region_num=500) == (18, 18)


def test_regions_round_trip_and_layout() -> None:
    x = torch.arange(2 * 50, dtype=torch.float32).view(2, 50, 1)
    side, region = 8, 2  # 4 x 4 regions of 2 x 2 tokens on an 8 x 8 grid
    regions = _to_regions(x, side, region)
    assert regions.shape == (2, 16, 4, 1)
    # region 0 holds grid cells (0,0), (0,1), (1,0), (1,1) = tokens 0, 1, 8, 9
    assert regions[0, 0, :, 0].tolist() == [0.0, 1.0, 8.0, 9.0]
    assert regions[0, 15, :, 0].tolist() == [0.0] * 4  # zero-filled tail of the grid
    torch.testing.assert_close(_from_regions(regions, side, region, 50), x)


@pytest.mark.parametrize("epeg", [False, True])
def test_region_attention_is_local(epeg: bool) -> None:
    torch.manual_seed(0)
    layer = RegionAttention(8, num_heads=2, region_num=4, epeg=epeg, epeg_k=3).eval()
    x = torch.randn(1, 64, 8)  # 8 x 8 grid, 4 x 4 regions of 2 x 2
    y = x.clone()
    y[0, 0] += 1.0  # token 0 lives in region 0 with tokens 1, 8, 9
    with torch.no_grad():
        changed = (layer(x) - layer(y)).abs().amax(-1)[0] > 1e-7
    assert sorted(changed.nonzero().flatten().tolist()) == [0, 1, 8, 9]


def _epeg_on_logits(layer: RegionInnerAttention, x: torch.Tensor) -> torch.Tensor:
    """RRT's R-MSA as written in the paper and the reference code: EPEG convolves the attention logits."""
    g, p, c = x.shape
    h = layer.num_heads
    q, k, v = layer.qkv(x).view(g, p, 3, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
    logits = (q * layer.scale) @ k.transpose(-1, -2)
    logits = logits + layer.pe(logits)
    return layer.proj((logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(g, p, c))


@pytest.mark.parametrize("p", [9, 40])
def test_epeg_on_the_queries_equals_epeg_on_the_logits(p: int) -> None:
    torch.manual_seed(4)
    layer = RegionInnerAttention(32, num_heads=4, epeg=True, epeg_k=15).double()
    with torch.no_grad():
        layer.pe.weight.normal_(0, 0.3)
        layer.pe.bias.normal_(0, 3.0)  # a large bias: the softmax ignores it all the same
    x = torch.randn(5, p, 32, dtype=torch.float64, requires_grad=True)
    out, ref = layer(x), _epeg_on_logits(layer, x)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    params = (x, layer.qkv.weight, layer.qkv.bias, layer.pe.weight, layer.proj.weight)
    ref_grads = torch.autograd.grad(ref, (*params, layer.pe.bias), g)
    for a, b in zip(torch.autograd.grad(out, params, g), ref_grads[:-1], strict=True):
        torch.testing.assert_close(a, b)
    # the bias's exact gradient is 0 (softmax is shift invariant): ours is that 0, the reference's rounding noise
    assert ref_grads[-1].abs().max() < 1e-10
    (bias_grad,) = torch.autograd.grad(layer(x), layer.pe.bias, g)
    assert torch.equal(bias_grad, torch.zeros_like(bias_grad))


def test_epeg_and_ppeg_are_applied_in_the_paper_model() -> None:
    model = _model()
    assert model.layers[0].attn.attn.pe is not None
    assert isinstance(model.layers[1].attn, CrossRegionAttention)
    assert model.pos_embedding is not None and model.pos_after == 0
    x = torch.randn(1, 150, IN_DIM)
    with torch.no_grad():
        base = model(x).logits
        model.layers[0].attn.attn.pe.weight.mul_(5.0)
        after_epeg = model(x).logits
        model.pos_embedding.proj.weight.mul_(5.0)
        after_ppeg = model(x).logits
    assert not torch.allclose(base, after_epeg)
    assert not torch.allclose(after_epeg, after_ppeg)


def test_cross_region_attention_shapes_and_bag_independence() -> None:
    torch.manual_seed(0)
    layer = CrossRegionAttention(8, num_heads=2, region_num=4, k=3).eval()
    x = torch.randn(2, 40, 8)
    with torch.no_grad():
        both = layer(x)
        assert both.shape == (2, 40, 8)
        torch.testing.assert_close(both[1], layer(x[1:])[0], atol=1e-6, rtol=1e-5)


def test_mil_lab_compat_mode_differs_from_the_paper_model() -> None:
    paper, compat = _model(), _model(mil_lab_compat=True)
    assert compat.pos_embedding is None
    assert all(isinstance(layer.attn, NystromAttention) for layer in compat.layers)
    assert not any(isinstance(m, (RegionInnerAttention, CrossRegionAttention)) for m in compat.modules())
    assert set(paper.state_dict()) != set(compat.state_dict())
    x = torch.randn(1, 90, IN_DIM)
    with torch.no_grad():
        assert not torch.allclose(paper(x).logits, compat(x).logits)


def test_rrt_base_is_mil_labs_model() -> None:
    """``rrt.base`` means what it means in MIL-Lab: 2 Nyström layers + attention pooling, no R-MSA/PPEG."""
    model = create_model("rrt.base", num_classes=2)
    assert model.config.mil_lab_compat is True
    assert len(model.layers) == 2 and model.pos_embedding is None
    assert not any(isinstance(m, (RegionInnerAttention, CrossRegionAttention)) for m in model.modules())
    att = model.layers[0].attn
    assert isinstance(att, NystromAttention)
    assert (att.heads, att.dim_head, att.num_landmarks, att.to_out[1].p) == (8, 64, 256, 0.0)
    assert model.embed_dropout.p == pytest.approx(0.25)
    assert isinstance(model.patch_embed[1], torch.nn.ReLU)  # Linear + ReLU, as MIL-Lab's patch_to_emb
    assert model.pool_fn.attention_a[0].bias is None  # DAttention: no biases, ReLU, no gate


def test_rrt_base_mammoth_is_mil_labs_model_with_mammoth() -> None:
    """The MAMMOTH fork's ``rrt/base_mammoth``: MIL-Lab's RRT with Mammoth replacing Linear + ReLU."""
    model = create_model("rrt.base_mammoth", num_classes=2)
    assert model.config.mil_lab_compat is True and model.pos_embedding is None
    assert all(isinstance(layer.attn, NystromAttention) for layer in model.layers)
    assert type(model.patch_embed).__name__ == "Mammoth"
    assert model.config.patch_embed_args["num_experts"] == 30 and model.config.patch_embed_args["keep_slots"]
    assert model.embed_dropout.p == pytest.approx(0.25)


def test_the_papers_rrt_has_its_own_names() -> None:
    paper = create_model("rrt.base_paper", num_classes=2)
    assert paper.config.mil_lab_compat is False and paper.config.epeg and paper.config.cr_msa
    assert paper.pos_embedding is not None
    assert any(isinstance(m, RegionInnerAttention) for m in paper.modules())
    assert any(isinstance(m, CrossRegionAttention) for m in paper.modules())
    mammoth = create_model("rrt.base_paper_mammoth", num_classes=2)
    assert mammoth.config.mil_lab_compat is False and type(mammoth.patch_embed).__name__ == "Mammoth"
    paper_fields = {k: v for k, v in paper.config.to_dict().items() if not k.startswith("patch_embed")}
    assert paper_fields == {k: v for k, v in mammoth.config.to_dict().items() if not k.startswith("patch_embed")}


def test_padded_batch_equals_bags_alone() -> None:
    for kw in ({}, {"mil_lab_compat": True}):
        model = _model(**kw)
        bags = [torch.randn(n, IN_DIM) for n in (70, 12, 33)]
        x = torch.full((3, 70, IN_DIM), 1e3)
        mask = torch.zeros(3, 70, dtype=torch.bool)
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
        torch.testing.assert_close(out.attention.sum(-1), torch.ones(3, 1))


def _count_attend_calls(layer: RegionInnerAttention) -> list[int]:
    calls = [0]
    attend = layer._attend

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return attend(x)

    layer._attend = counted  # type: ignore[method-assign]
    return calls


def test_chunked_region_attention_matches_unchunked() -> None:
    """Where SDPA falls back to the math backend (logits stored), regions run in checkpointed chunks."""
    torch.manual_seed(0)
    full = RegionInnerAttention(8, num_heads=2, epeg=True, epeg_k=3, chunk_elements=0).train()
    chunked = RegionInnerAttention(8, num_heads=2, epeg=True, epeg_k=3, chunk_elements=2 * 9 * 9 * 3).train()
    chunked.load_state_dict(full.state_dict())
    calls = _count_attend_calls(chunked)
    x = torch.randn(10, 9, 8, requires_grad=True)
    g = torch.randn(10, 9, 8)
    outs, grads = [], []
    with sdpa_kernel(SDPBackend.MATH):
        for layer in (full, chunked):
            xi = x.detach().clone().requires_grad_(True)
            out = layer(xi)
            out.backward(g)
            outs.append(out)
            grads.append([xi.grad] + [p.grad for p in layer.parameters()])
        assert calls[0] == 4 + 4  # 4 chunks of 3, 3, 3 and 1 regions, each recomputed in backward
        torch.testing.assert_close(outs[0], outs[1])
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b)
        with torch.no_grad():  # inference: plain chunks, no recomputation
            torch.testing.assert_close(full.eval()(x), chunked.eval()(x))


def test_fused_region_attention_is_not_chunked() -> None:
    """PyTorch's fused CPU kernel keeps no logits, so chunking (and its recomputation) is skipped."""
    torch.manual_seed(0)
    layer = RegionInnerAttention(8, num_heads=2, epeg=True, epeg_k=3, chunk_elements=2 * 9 * 9 * 3).train()
    calls = _count_attend_calls(layer)
    layer(torch.randn(10, 9, 8, requires_grad=True)).sum().backward()
    assert calls[0] == 1
    with sdpa_kernel(SDPBackend.MATH):
        layer(torch.randn(10, 9, 8, requires_grad=True)).sum().backward()
    assert calls[0] == 1 + 8


def test_mean_pooling_and_config_validation() -> None:
    model = _model(pool="mean")
    with torch.no_grad():
        out = model(torch.randn(2, 30, IN_DIM), return_attention=True)
    assert out.attention is None and out.logits.shape == (2, 3)
    for bad in (
        {"attn": "swin"},
        {"pos": "sincos"},
        {"pos_pos": 5},
        {"epeg_k": 4},
        {"region_num": 0},
        {"embed_dim": 18},
    ):
        with pytest.raises(ValueError):
            RRTConfig(**{**SMALL, **bad})
