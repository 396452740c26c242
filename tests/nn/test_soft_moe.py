"""medmoe.nn.soft_moe: shapes, masking, autocast, gradients, argument checks, the patch embedding."""

import pytest
import torch

from medmoe.nn.embed import create_patch_embed
from medmoe.nn.experts import BatchedFeedForward
from medmoe.nn.routing import Routing
from medmoe.nn.soft_moe import SoftMoE, SoftMoEEmbed

# "dense": 3 x 2 slots < dim 16 / 2, the folded path (soft_dispatch); "fused": the dense backend with 3 x 7 = 21
# slots >= dim / 2, the fused route (soft_route)
BACKENDS = ["sdpa", "dense", "fused"]
backends = pytest.mark.parametrize("backend", BACKENDS)


def small(dim=16, **kw):
    cfg = {"num_experts": 3, "num_slots": 4, "expert_mult": 2}
    if kw.get("backend") in ("dense", "fused"):
        cfg.update(num_slots=7 if kw["backend"] == "fused" else 2, backend="dense")
        kw.pop("backend")
    cfg.update(kw)
    return SoftMoE(dim, **cfg)


def dense_reference(layer: SoftMoE, x: torch.Tensor, mask=None) -> torch.Tensor:
    """The Soft MoE maths written densely (materialised logits), for checking the SDPA path."""
    xn = layer.norm(x)
    phi = layer.slot_norm(layer.slot_embeds).flatten(0, 1)
    logits = xn @ phi.t()  # (b, n, t)
    if mask is not None:
        logits = logits.masked_fill(~mask[..., None], float("-inf"))
    slots = logits.softmax(dim=1).transpose(1, 2) @ xn
    b, t, d = slots.shape
    y = layer.experts(slots.view(b, layer.num_experts, layer.num_slots, d)).reshape(b, t, d)
    out = logits.softmax(dim=-1).nan_to_num(0.0) @ y
    return out if mask is None else out * mask[..., None]


@pytest.mark.parametrize(
    "shape",
    [(2, 7, 16), (2, 16, 5, 3), (2, 16, 2, 3, 4)],
    ids=["tokens", "image", "volume"],
)
@backends
def test_shapes_all_ranks(shape, backend):
    layer = small(backend=backend)
    x = torch.randn(*shape)
    out = layer(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    out, routing = layer(x, return_routing=True)
    n = x.shape[1] if x.ndim == 3 else int(torch.tensor(x.shape[2:]).prod())
    assert isinstance(routing, Routing)
    assert routing.expert_assignment.shape == (2, n, 3)
    torch.testing.assert_close(routing.expert_assignment.sum(-1), torch.ones(2, n))


@backends
def test_image_equals_flattened_tokens(backend):
    layer = small(backend=backend)
    x = torch.randn(2, 16, 5, 3)
    tokens = x.flatten(2).transpose(1, 2)
    expected = layer(tokens).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(layer(x), expected)
    mask = torch.rand(2, 5, 3) > 0.3
    expected = layer(tokens, mask=mask.flatten(1)).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(layer(x, mask=mask), expected)


@pytest.mark.parametrize("geglu", [False, True])
@pytest.mark.parametrize("use_layernorm", [False, True])
@backends
def test_matches_dense_maths(geglu, use_layernorm, backend):
    layer = small(geglu=geglu, use_layernorm=use_layernorm, backend=backend)
    x = torch.randn(2, 9, 16)
    mask = torch.tensor([[True] * 9, [True] * 5 + [False] * 4])
    torch.testing.assert_close(layer(x), dense_reference(layer, x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer(x, mask), dense_reference(layer, x, mask), atol=1e-5, rtol=1e-5)


@backends
def test_padding_does_not_change_real_tokens(backend):
    layer = small(backend=backend)
    short, long = torch.randn(1, 5, 16), torch.randn(1, 11, 16)
    x = torch.zeros(2, 11, 16)
    x[0, :5], x[1] = short[0], long[0]
    x[0, 5:] = 100.0 * torch.randn(6, 16)  # garbage in the padding must not matter
    mask = torch.zeros(2, 11, dtype=torch.bool)
    mask[0, :5], mask[1] = True, True
    out, routing = layer(x, mask=mask, return_routing=True)
    torch.testing.assert_close(out[0, :5], layer(short)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], layer(long)[0], atol=1e-5, rtol=1e-5)
    assert torch.all(out[0, 5:] == 0)
    assert torch.all(routing.expert_assignment[0, 5:] == 0)
    torch.testing.assert_close(routing.expert_assignment[mask].sum(-1), torch.ones(16))


@backends
def test_padded_tokens_get_no_gradient(backend):
    layer = small(backend=backend)
    x = torch.randn(1, 8, 16, requires_grad=True)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    layer(x, mask=mask).square().sum().backward()
    assert torch.all(x.grad[0, 5:] == 0)
    assert torch.any(x.grad[0, :5] != 0)


def test_routing_chunks_match_one_chunk_and_dense():
    x = torch.randn(2, 37, 16)
    mask = torch.rand(2, 37) > 0.2
    layer = small(routing_chunk=8, backend="sdpa")
    out_chunked, r_chunked = layer(x, mask, return_routing=True)
    layer.routing_chunk = 4096
    _, r_whole = layer(x, mask, return_routing=True)
    torch.testing.assert_close(r_chunked.expert_assignment, r_whole.expert_assignment)
    assert not r_chunked.expert_assignment.requires_grad
    layer.backend = "dense"
    out_dense, r_dense = layer(x, mask, return_routing=True)
    torch.testing.assert_close(out_dense, out_chunked, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r_dense.expert_assignment, r_whole.expert_assignment, atol=1e-6, rtol=1e-5)
    assert not r_dense.expert_assignment.requires_grad


def test_auto_backend_rule():
    from medmoe.nn.soft_moe import _DENSE_MAX_LOGITS

    tokens = torch.empty(2, 100, 16)
    long = torch.empty(1, _DENSE_MAX_LOGITS // 20 + 1, 16, device="meta")  # 20 slots: just over the cap
    assert small(dim=16, num_experts=4, num_slots=4)._dense(long)  # 16 slots <= dim 16: always dense
    assert small(dim=16, num_experts=4, num_slots=5)._dense(tokens)  # 20 slots, small logits: dense GEMMs
    assert not small(dim=16, num_experts=4, num_slots=5)._dense(long)  # 20 slots, logits over the cap: SDPA
    assert not small(backend="sdpa")._dense(tokens) and small(dim=4, backend="dense")._dense(long)


def test_seq_len_derives_slots():
    assert SoftMoE(8, seq_len=32, num_experts=4).num_slots == 8
    assert SoftMoE(8, num_slots=5, num_experts=4).slot_embeds.shape == (4, 5, 8)


@backends
def test_autocast_bf16_cpu_runs_and_is_finite(backend):
    layer = small(geglu=True, backend=backend)
    x = torch.randn(2, 33, 16, requires_grad=True)
    mask = torch.ones(2, 33, dtype=torch.bool)
    mask[1, 20:] = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, routing = layer(x, mask=mask, return_routing=True)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out, layer(x, mask=mask), atol=5e-2, rtol=5e-2)
    assert torch.isfinite(routing.expert_assignment).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    # half-precision module and input (no autocast): softmaxes still run in float32
    out16 = small(backend=backend).to(torch.bfloat16)(x.detach().to(torch.bfloat16))
    assert out16.dtype == torch.bfloat16 and torch.isfinite(out16).all()


@pytest.mark.parametrize(
    "use_layernorm, backend",
    [(False, "sdpa"), (True, "sdpa"), (False, "dense"), (True, "dense"), (False, "fused"), (True, "fused")],
)
def test_gradcheck_float64(use_layernorm, backend):
    # dense: 2 x 1 slots < 6 / 2 features (the folded path); fused: the dense backend with 2 x 4 slots
    slots, backend = {"sdpa": (2, "sdpa"), "dense": (1, "dense"), "fused": (4, "dense")}[backend]
    cfg = {"num_experts": 2, "num_slots": slots, "expert_mult": 1, "geglu": True, "backend": backend}
    layer = SoftMoE(6, use_layernorm=use_layernorm, **cfg)
    layer = layer.double()
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    params = [layer.slot_embeds, layer.norm.gamma, layer.experts.w1]

    def fn(inp, *_):
        return layer(inp, mask=mask)

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5)


@backends
def test_every_parameter_gets_a_gradient(backend):
    layer = small(geglu=True, backend=backend)
    layer(torch.randn(2, 6, 16)).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_batched_experts_match_per_expert_loop():
    ff = BatchedFeedForward(3, 8, mult=2, geglu=True)
    x = torch.randn(2, 3, 4, 8)
    out = ff(x)
    for i in range(3):
        h = x[:, i] @ ff.w1[i] + ff.b1[i]
        value, gate = h.chunk(2, dim=-1)
        expected = (value * torch.nn.functional.gelu(gate)) @ ff.w2[i] + ff.b2[i]
        torch.testing.assert_close(out[:, i], expected)
    assert ff.hidden == int(8 * 2 * 2 / 3)
    assert BatchedFeedForward(3, 8, mult=2).hidden == 16


def test_state_dict_round_trip():
    a, b = small(use_layernorm=True), small(use_layernorm=True)
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(2, 6, 16)
    torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dim": 0, "num_slots": 2}, "dim"),
        ({"dim": 8, "num_experts": 0, "num_slots": 2}, "num_experts"),
        ({"dim": 8, "num_slots": 0}, "num_slots"),
        ({"dim": 8}, "exactly one of num_slots"),
        ({"dim": 8, "num_slots": 2, "seq_len": 8}, "exactly one of num_slots"),
        ({"dim": 8, "seq_len": 2, "num_experts": 4}, "0 slots per expert"),
        ({"dim": 8, "num_slots": 2, "expert_mult": 0}, "expert_mult"),
        ({"dim": 8, "num_slots": 2, "dropout": 1.0}, "dropout"),
        ({"dim": 8, "num_slots": 2, "backend": "flash"}, "backend"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    dim = kwargs.pop("dim")
    with pytest.raises(ValueError, match=match):
        SoftMoE(dim, **kwargs)


def test_bad_forward_arguments():
    layer = small()
    with pytest.raises(ValueError, match="got a 2-D tensor"):
        layer(torch.randn(2, 16))
    with pytest.raises(ValueError, match=r"\(b, n, 16\)"):
        layer(torch.randn(2, 5, 15))
    with pytest.raises(ValueError, match="c = 16"):
        layer(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="mask must have shape"):
        layer(torch.randn(2, 5, 16), mask=torch.ones(2, 4, dtype=torch.bool))
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1] = False
    with pytest.raises(ValueError, match="fully masked"):
        layer(torch.randn(2, 5, 16), mask=mask)


def test_soft_moe_embed_via_factory():
    embed = create_patch_embed("soft_moe", 20, 16, num_experts=3, num_slots=2, expert_mult=2, geglu=True)
    assert isinstance(embed, SoftMoEEmbed)
    assert embed.preserves_tokens and embed.is_moe and (embed.in_dim, embed.out_dim) == (20, 16)
    x = torch.randn(2, 9, 20)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 6:] = False
    res = embed.embed(x, mask=mask, return_routing=True)
    assert res.tokens.shape == (2, 9, 16)
    assert torch.equal(res.mask, mask)
    a = res.routing.expert_assignment
    assert a.shape == (2, 9, 3)
    torch.testing.assert_close(a[mask].sum(-1), torch.ones(int(mask.sum())))
    assert torch.all(a[~mask] == 0)
    # residual: tokens = Linear(x) + SoftMoE(Linear(x))
    h = embed.proj(x)
    torch.testing.assert_close(res.tokens, h + embed.moe(h, mask))
    torch.testing.assert_close(embed(x, mask), res.tokens)
    assert embed.embed(x).routing is None
    # padding does not change the real tokens of the first bag
    torch.testing.assert_close(embed.embed(x[:1, :6]).tokens[0], res.tokens[0, :6], atol=1e-5, rtol=1e-5)


def test_soft_moe_embed_bad_arguments():
    with pytest.raises(ValueError, match="in_dim"):
        SoftMoEEmbed(0, 8)
    with pytest.raises(ValueError, match="num_slots"):
        SoftMoEEmbed(4, 8, num_slots=0)
    with pytest.raises(ValueError, match=r"\(b, n, 4\)"):
        SoftMoEEmbed(4, 8).embed(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="accepted arguments"):
        create_patch_embed("soft_moe", 4, 8, num_heads=2)


def test_many_slots_take_the_fused_route():
    """More slots than features: the dense path computes both softmaxes with the fused kernel (soft_route)."""
    layer = small(backend="fused")
    assert layer._many_slots() and not small(backend="dense")._many_slots()
    x = torch.randn(2, 40, 16, requires_grad=True)
    out = layer(x)
    names, frontier = set(), [out.grad_fn]
    while frontier:
        node = frontier.pop()
        if node is not None and type(node).__name__ not in names:
            names.add(type(node).__name__)
            frontier += [f for f, _ in node.next_functions]
    assert {"SoftRouteBackward", "_CombineProductBackward"} <= names


def test_fused_route_same_with_the_torch_backend(monkeypatch):
    """The kernel (native backend) and its PyTorch form (torch backend) give the same outputs and gradients."""
    from medmoe.nn import backend as backend_module

    layer = small(backend="fused", geglu=True)
    x = torch.randn(2, 50, 16, requires_grad=True)
    mask = torch.rand(2, 50) > 0.3
    grads = []
    for name in ("native", "torch"):
        monkeypatch.setattr(backend_module, "_chosen", name)
        layer.zero_grad(set_to_none=True)
        x.grad = None
        out, routing = layer(x, mask, return_routing=True)
        (out * torch.linspace(-1, 1, 16)).sum().backward()
        grads.append([out, routing.expert_assignment, x.grad] + [p.grad for p in layer.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
