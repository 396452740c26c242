"""Higher-order gradients (``create_graph=True``) through medmoe's custom autograd Functions.

For every Function a second-order gradient through the fast path (oneDNN, native kernel, hand-written
backward) must equal the same computation through the pure-PyTorch reference, and the fast path must really
have been taken (its backward node is in the graph). The first-order ``backward()`` must never use the
reference (:mod:`medmoe.nn.higher_order`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medmoe.nn import depthwise_conv, expert_epilogue, onednn_linear, slot_dispatch, soft_dispatch, soft_route
from medmoe.nn import experts as experts_module
from medmoe.nn import soft_moe as soft_moe_module
from medmoe.nn.depthwise_conv import depthwise_conv2d_nhwc, native_depthwise_conv_available
from medmoe.nn.dropout import fast_dropout, native_dropout_available
from medmoe.nn.expert_epilogue import native_expert_epilogue_available
from medmoe.nn.experts import BatchedFeedForward
from medmoe.nn.higher_order import reference_gradients
from medmoe.nn.norms import RMSNorm, l2norm
from medmoe.nn.onednn_linear import fast_linear, fast_matmul, onednn_linear_available, use_fast_linear
from medmoe.nn.selective_scan import selective_scan_sequential
from medmoe.nn.slot_dispatch import native_slot_dispatch_available
from medmoe.nn.soft_dispatch import normalized_dispatch, soft_combine
from medmoe.nn.soft_moe import SoftMoE

selective_scan = importlib.import_module("medmoe.nn.selective_scan")  # medmoe.nn exports a function so named
needs_onednn = pytest.mark.skipif(not onednn_linear_available(), reason="PyTorch built without oneDNN")


def _needs(available: Callable[[], bool]) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not available(), reason="no C++ compiler with OpenMP here: the kernel is not built"
    )


def _weights(tensors: Sequence[Tensor], seed: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in tensors]


def second_order(fn: Callable[..., Tensor | tuple[Tensor, ...]], inputs: Sequence[Tensor]):
    """``(out, first, second)``: ``first = d<fn(inputs), w>/d inputs`` (with a graph), ``second`` = the
    gradients of ``<first, v>`` for the inputs, for fixed random ``w`` and ``v``."""
    out = fn(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum((o * w).sum() for o, w in zip(outs, _weights(outs, 1)))
    first = torch.autograd.grad(loss, inputs, create_graph=True)
    loss2 = sum((f * v).sum() for f, v in zip(first, _weights(first, 2)))
    second = torch.autograd.grad(loss2, inputs, allow_unused=True)
    return outs, first, second


def assert_second_order_matches(fast, reference, inputs: Sequence[Tensor], node: str, rtol=1e-4) -> None:
    """Second-order gradients through ``fast`` equal those through ``reference``; ``node`` (the Function's
    backward node) is in ``fast``'s graph; none of the second-order gradients is missing or zero."""
    outs, first, second = second_order(fast, inputs)
    assert any(_in_graph(o, node) for o in outs), f"{node} is not in the graph: the fast path did not run"
    _, ref_first, ref_second = second_order(reference, inputs)
    for a, b in zip(first, ref_first):
        _assert_close(a, b, rtol)
    for i, (a, b) in enumerate(zip(second, ref_second)):
        assert a is not None and b is not None, f"input {i}: second-order gradient missing"
        assert b.abs().max() > 0, f"input {i}: the reference's second-order gradient is zero (a vacuous test)"
        _assert_close(a, b, rtol)


def _assert_close(a: Tensor, b: Tensor, rtol: float = 1e-4) -> None:
    """float32 agreement, the absolute tolerance relative to the largest entry."""
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.detach().abs().max()))


def _in_graph(t: Tensor, name: str, depth: int = 8) -> bool:
    frontier, seen = [t.grad_fn], set()
    for _ in range(depth):
        nxt = []
        for fn in frontier:
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            if type(fn).__name__ == name:
                return True
            nxt.extend(f for f, _ in fn.next_functions)
        frontier = nxt
    return False


def _leaves(*tensors: Tensor) -> list[Tensor]:
    return [t.detach().requires_grad_() for t in tensors]


# ----------------------------------------------------------------------------------------------------- oneDNN


@needs_onednn
def test_the_reported_reproduction_is_fixed() -> None:
    w = torch.randn(512, 512)
    x = torch.randn(300, 512, requires_grad=True)
    (g,) = torch.autograd.grad(torch.tanh(fast_linear(x, w)).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.pow(2).sum(), x)
    (g_ref,) = torch.autograd.grad(torch.tanh(F.linear(x, w)).sum(), x, create_graph=True)
    (gg_ref,) = torch.autograd.grad(g_ref.pow(2).sum(), x)
    assert gg_ref.abs().max() > 0
    _assert_close(gg, gg_ref)


@needs_onednn
@pytest.mark.parametrize(
    "rows, cols, out",
    [
        (300, 512, 512),
        (4096, 64, 128),
    ],  # the wide-weight guard (4+ rows, 2**18 weights); the tall one (2**25 work)
    ids=["wide", "tall"],
)
def test_fast_linear(rows: int, cols: int, out: int) -> None:
    x, w, b = _leaves(torch.randn(rows, cols), torch.randn(out, cols) / cols**0.5, torch.randn(out))
    assert_second_order_matches(
        lambda x, w, b: torch.tanh(fast_linear(x, w, b)),
        lambda x, w, b: torch.tanh(F.linear(x, w, b)),
        [x, w, b],
        "_OneDNNLinearBackward",
    )


@needs_onednn
def test_fast_linear_gradient_penalty_through_use_fast_linear() -> None:
    """A WGAN-GP style penalty on a model converted by use_fast_linear: the parameters' gradients match."""
    torch.manual_seed(3)
    plain = nn.Sequential(nn.Linear(512, 512), nn.Tanh(), nn.Linear(512, 1))
    fast = use_fast_linear(nn.Sequential(nn.Linear(512, 512), nn.Tanh(), nn.Linear(512, 1)))
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(1, 7, 512)

    def penalty(model: nn.Module) -> tuple[Tensor, ...]:
        xi = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(model(xi).sum(), xi, create_graph=True)
        # the last bias does not change the input gradient: no gradient for it
        return torch.autograd.grad((g.norm(dim=-1) - 1).pow(2).mean(), list(model.parameters())[:3])

    assert _in_graph(fast(x.requires_grad_()), "_OneDNNLinearBackward")
    for a, b in zip(penalty(fast), penalty(plain)):
        assert b.abs().max() > 0
        _assert_close(a, b)


@needs_onednn
def test_fast_linear_hessian_vector_product_through_the_incoming_gradient() -> None:
    """torch.autograd.functional.jvp differentiates the backward with respect to its incoming gradient."""
    x, w = torch.randn(64, 512), torch.randn(512, 512) / 512**0.5
    v = torch.randn_like(x)
    _, got = torch.autograd.functional.jvp(lambda x: torch.tanh(fast_linear(x, w)), x, v)
    _, want = torch.autograd.functional.jvp(lambda x: torch.tanh(F.linear(x, w)), x, v)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@needs_onednn
def test_fast_matmul() -> None:
    a, b = _leaves(torch.randn(2, 64, 80) / 8, torch.randn(2, 80, 72) / 8)
    assert_second_order_matches(
        lambda a, b: torch.tanh(fast_matmul(a, b)),
        lambda a, b: torch.tanh(torch.matmul(a, b)),
        [a, b],
        "_OneDNNMatmulBackward",
    )


@needs_onednn
def test_related_operands_get_their_partial_derivatives() -> None:
    """The rows are a function of the weight itself: each operand's gradient must be its own partial
    derivative (the reference must not follow ``x`` back into ``weight``, which is also an operand)."""
    (w,) = _leaves(torch.randn(512, 512) / 512**0.5)
    assert_second_order_matches(
        lambda w: torch.tanh(fast_linear(w[:300] * 2, w)),
        lambda w: torch.tanh(F.linear(w[:300] * 2, w)),
        [w],
        "_OneDNNLinearBackward",
    )


# --------------------------------------------------------------------------------------------- native kernels


@_needs(native_depthwise_conv_available)
@pytest.mark.parametrize("channels_first_view", [False, True])
def test_depthwise_conv(channels_first_view: bool) -> None:
    """Also with a non-contiguous ``x`` (a channels-first map viewed channels-last): the kernel copies it."""
    x, w, b = _leaves(torch.randn(2, 16, 9, 9), torch.randn(16, 5, 5) / 5, torch.randn(16))
    if channels_first_view:
        view = lambda x: x.permute(0, 2, 3, 1)
    else:
        x = x.detach().permute(0, 2, 3, 1).contiguous().requires_grad_()
        view = lambda x: x
    assert_second_order_matches(
        lambda x, w, b: torch.tanh(depthwise_conv2d_nhwc(view(x), w, b)),
        lambda x, w, b: torch.tanh(depthwise_conv._conv2d_nhwc(view(x), w, b)),
        [x, w, b],
        "GeneratedBackwardFor_medmoe_depthwise_conv_nhwc_defaultBackward",
    )


@_needs(native_expert_epilogue_available)
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_expert_epilogue(p: float) -> None:
    t, bias, gamma = _leaves(torch.randn(3, 6, 4, 8), torch.randn(6, 4, 8), torch.rand(6, 32) + 0.5)
    scale = 32**0.5

    def fused(t: Tensor, bias: Tensor, gamma: Tensor) -> Tensor:
        torch.manual_seed(7)  # the same dropout seed for both paths
        out = expert_epilogue.expert_epilogue(t, bias, gamma, scale, p)
        assert out is not None
        return out

    def modules(t: Tensor, bias: Tensor, gamma: Tensor) -> Tensor:
        torch.manual_seed(7)
        out = F.relu(l2norm((t + bias).reshape(3, 6, 32)) * scale * gamma).reshape(t.shape)
        return fast_dropout(out, p)

    assert_second_order_matches(fused, modules, [t, bias, gamma], "GeneratedBackwardFor_medmoe_expert_epilogue_defaultBackward")


@_needs(native_slot_dispatch_available)
@pytest.mark.parametrize("masked", [False, True])
def test_slot_dispatch(masked: bool) -> None:
    """Mammoth's layout: ``x (b, h, n, 16)`` as the transposed view of ``(b, n, h, 16)`` features."""
    keys, feats = _leaves(torch.randn(2, 5, 16) * 0.5, torch.randn(2, 7, 2, 16) * 0.5)
    mask = None
    if masked:
        mask = torch.ones(2, 7, dtype=torch.bool)
        mask[0, 2] = mask[1, 4:] = False

    def reference(keys: Tensor, feats: Tensor) -> Tensor:
        x = feats.transpose(1, 2)
        logits = keys.unsqueeze(0) @ x.transpose(-1, -2)  # (b, h, s, n)
        if mask is not None:
            logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
        return logits.softmax(-1) @ x

    assert_second_order_matches(
        lambda keys, feats: slot_dispatch.slot_dispatch(keys, feats.transpose(1, 2), mask),
        reference,
        [keys, feats],
        "GeneratedBackwardFor_medmoe_slot_dispatch_defaultBackward",
    )


@_needs(native_dropout_available)
def test_seeded_dropout_differentiates_its_own_backward() -> None:
    (x,) = _leaves(torch.randn(40, 30))

    def dropped(x: Tensor) -> Tensor:
        torch.manual_seed(5)
        return fast_dropout(torch.tanh(x), 0.3)

    torch.manual_seed(5)
    keep = fast_dropout(torch.ones(40, 30), 0.3)  # the same mask, scaled by 1 / (1 - p)
    assert (keep == 0).any() and (keep != 0).any()
    assert_second_order_matches(
        lambda x: dropped(x).pow(2), lambda x: (torch.tanh(x) * keep).pow(2), [x], "GeneratedBackwardFor_medmoe_counter_dropout_defaultBackward"
    )


# ----------------------------------------------------------------------------------------------- hand-written


def test_rms_norm_function() -> None:
    norm = RMSNorm(24)
    with torch.no_grad():
        norm.gamma.uniform_(0.5, 1.5)
    x, gamma = _leaves(torch.randn(3, 10, 24), norm.gamma)
    assert_second_order_matches(
        lambda x, gamma: soft_moe_module._RMSNormFunction.apply(x, gamma, norm.scale, 1e-8),
        lambda x, gamma: l2norm(x) * norm.scale * gamma,  # RMSNorm.forward's maths
        [x, gamma],
        "_RMSNormFunctionBackward",
    )


@pytest.mark.parametrize("masked", [False, True])
def test_normalized_dispatch(masked: bool) -> None:
    x, gamma, phi = _leaves(torch.randn(2, 9, 12), torch.rand(12) + 0.5, torch.randn(4, 12) / 3)
    mask = None
    if masked:
        mask = torch.ones(2, 9, dtype=torch.bool)
        mask[1, -3:] = False
    scale = 12**0.5

    def composite(x: Tensor, gamma: Tensor, phi: Tensor) -> tuple[Tensor, Tensor]:
        xn = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-8) * scale * gamma
        logits = xn @ phi.t()
        masked_logits = logits if mask is None else logits.masked_fill(~mask[..., None], float("-inf"))
        return masked_logits.softmax(dim=1).transpose(1, 2) @ xn, logits.softmax(-1)

    def fused(x: Tensor, gamma: Tensor, phi: Tensor) -> tuple[Tensor, Tensor]:
        slots, logits = normalized_dispatch(x, gamma, phi, mask, scale)
        return slots, logits.softmax(-1)  # a gradient into both outputs

    assert_second_order_matches(fused, composite, [x, gamma, phi], "NormalizedDispatchBackward")


def test_soft_combine() -> None:
    logits, values = _leaves(torch.randn(2, 9, 4), torch.randn(2, 4, 12))
    assert_second_order_matches(
        soft_combine, lambda lg, v: lg.softmax(-1) @ v, [logits, values], "SoftCombineBackward"
    )


def test_soft_moe_dense_folded_path_against_the_composite_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole chain NormalizedDispatch -> experts -> SoftCombine, against the dense composite route."""
    moe = SoftMoE(16, num_experts=2, num_slots=3, expert_mult=1)
    (x,) = _leaves(torch.randn(2, 10, 16))
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, -2:] = False
    params = list(moe.parameters())

    def run() -> tuple[Tensor, list[Tensor]]:
        out = moe(x, mask)
        (g,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
        return out, torch.autograd.grad(g.pow(2).sum(), [x, *params], allow_unused=True)

    out, got = run()
    assert _in_graph(out, "SoftCombineBackward")
    monkeypatch.setattr(SoftMoE, "_can_fold_norm", lambda self, tokens: False)
    monkeypatch.setattr(soft_moe_module, "_apply_norm", lambda norm, x: norm(x))
    ref_out, want = run()
    assert not _in_graph(ref_out, "SoftCombineBackward")
    for a, b in zip(got, want):
        assert b is not None and b.abs().max() > 0
        _assert_close(a, b)


@pytest.mark.parametrize("L", [12, 10])  # a multiple of the chunk, and one that the scan pads
def test_chunked_selective_scan(L: int) -> None:
    g = torch.Generator().manual_seed(0)
    u, B, C = (torch.randn(2, L, k, generator=g) for k in (4, 3, 3))
    dt = F.softplus(torch.randn(2, L, 4, generator=g) - 1)
    A = -torch.exp(torch.randn(4, 3, generator=g))
    inputs = _leaves(u, dt, A, B, C)
    assert_second_order_matches(
        lambda *a: selective_scan.selective_scan(*a, chunk_size=4),
        selective_scan_sequential,
        inputs,
        "_ChunkedSelectiveScanBackward",
    )


def _gradgradcheck_cases() -> list:
    """Float64 cases whose fast path runs in float64 (oneDNN and the slot dispatch are float32-only)."""
    g = torch.Generator().manual_seed(0)

    def r(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    scan = [r(1, 5, 2), F.softplus(r(1, 5, 2)), -torch.exp(r(2, 2)), r(1, 5, 2), r(1, 5, 2)]
    cases = [
        (
            "rms_norm",
            lambda x, gm: soft_moe_module._RMSNormFunction.apply(x, gm, 2.0, 1e-8),
            [r(2, 3, 4), r(4)],
        ),
        (
            "dispatch",
            lambda x, gm, phi: normalized_dispatch(x, gm, phi, None, 2.0),
            [r(1, 4, 3), r(3), r(2, 3)],
        ),
        ("combine", soft_combine, [r(1, 4, 3), r(1, 3, 2)]),
        ("route", lambda x, phi: soft_route.soft_route(x, phi), [r(1, 4, 3), r(5, 3)]),
        ("combine_weights", soft_route.soft_combine_weights, [r(1, 4, 3), r(1, 3, 2)]),
        ("scan", lambda *a: selective_scan.selective_scan(*a, chunk_size=2), scan),
    ]
    if native_depthwise_conv_available():
        cases.append(("depthwise_conv", depthwise_conv2d_nhwc, [r(1, 3, 3, 2), r(2, 3, 3), r(2)]))
    if native_expert_epilogue_available():
        epilogue = lambda t, b, gm: expert_epilogue.expert_epilogue(t, b, gm, 2.0, 0.0)
        cases.append(("expert_epilogue", epilogue, [r(2, 2, 2, 2), r(2, 2, 2), r(2, 4) + 2]))
    return cases


@pytest.mark.parametrize("case", _gradgradcheck_cases(), ids=lambda case: case[0])
def test_gradgradcheck_float64(case) -> None:
    """Second derivatives against finite differences, also those with respect to the incoming gradient."""
    _, fn, inputs = case
    inputs = [t.requires_grad_() for t in inputs]
    assert torch.autograd.gradgradcheck(fn, inputs)


# ------------------------------------------------------------------------------------------------ first order


def test_first_order_backward_never_uses_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without create_graph every Function runs its own fast backward, never the reference."""

    def refuse(*args, **kwargs):
        raise AssertionError("reference_gradients called by a first-order backward")

    for module in (
        onednn_linear,
        depthwise_conv,
        expert_epilogue,
        slot_dispatch,
        soft_dispatch,
        selective_scan,
        soft_moe_module,
    ):
        monkeypatch.setattr(module, "reference_gradients", refuse)
    calls: list[Tensor] = []
    if onednn_linear_available():
        calls += [
            fast_linear(torch.randn(300, 512, requires_grad=True), torch.randn(512, 512, requires_grad=True))
        ]
        calls += [
            fast_matmul(
                torch.randn(2, 64, 64, requires_grad=True), torch.randn(2, 64, 64, requires_grad=True)
            )
        ]
    if native_depthwise_conv_available():
        calls += [depthwise_conv2d_nhwc(torch.randn(1, 5, 5, 8, requires_grad=True), torch.randn(8, 3, 3))]
    if native_expert_epilogue_available():
        t = torch.randn(2, 6, 4, 8, requires_grad=True)
        calls += [expert_epilogue.expert_epilogue(t, torch.randn(6, 4, 8), torch.ones(6, 32), 1.0, 0.0)]
    if native_slot_dispatch_available():
        calls += [
            slot_dispatch.slot_dispatch(torch.randn(2, 3, 16), torch.randn(1, 2, 5, 16, requires_grad=True))
        ]
    x = torch.randn(2, 5, 8, requires_grad=True)
    calls += [soft_moe_module._RMSNormFunction.apply(x, torch.ones(8), 8**0.5, 1e-8)]
    slots, logits = normalized_dispatch(x, torch.ones(8), torch.randn(3, 8), None, 8**0.5)
    calls += [slots, soft_combine(logits, torch.randn(2, 3, 8, requires_grad=True))]
    calls += [
        selective_scan.selective_scan(x, x.abs(), -torch.ones(8, 2), x[..., :2], x[..., 2:4], chunk_size=2)
    ]
    sum(out.sum() for out in calls).backward()


def test_reference_gradients_only_differentiates_what_is_wanted() -> None:
    x, w = _leaves(torch.randn(3, 4), torch.randn(2, 4))
    with torch.enable_grad():
        gx, gw = reference_gradients(F.linear, (x, w), (True, False), torch.ones(3, 2))
    assert gw is None
    assert gx is not None and gx.requires_grad
    torch.testing.assert_close(gx, torch.ones(3, 2) @ w)
    with pytest.raises(ValueError, match="needs_input_grad"):
        reference_gradients(F.linear, (x, w), (True,), torch.ones(3, 2))


# ------------------------------------------------------------------------------ Soft MoE with many slots


def _route_composite(mask: Tensor | None):
    def composite(x: Tensor, phi: Tensor) -> tuple[Tensor, Tensor]:
        logits = x @ phi.t()
        masked = logits if mask is None else logits.masked_fill(~mask[..., None], float("-inf"))
        return masked.softmax(dim=1).transpose(1, 2) @ x, logits.softmax(-1)

    return composite


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_soft_route(masked: bool) -> None:
    x, phi = _leaves(torch.randn(2, 9, 6), torch.randn(20, 6))  # 20 slots: not a multiple of the kernel's 16
    mask = None
    if masked:
        mask = torch.ones(2, 9, dtype=torch.bool)
        mask[1, -3:] = False
    fused = lambda x, phi: soft_route.soft_route(x, phi, mask)
    assert_second_order_matches(fused, _route_composite(mask), [x, phi], "SoftRouteBackward")


def test_soft_combine_weights() -> None:
    combine, values = _leaves(torch.randn(2, 9, 4).softmax(-1), torch.randn(2, 4, 12))
    assert_second_order_matches(
        soft_route.soft_combine_weights, torch.matmul, [combine, values], "_CombineProductBackward"
    )


@needs_onednn
def test_experts_per_expert_products() -> None:
    ff = BatchedFeedForward(2, 8, mult=2, geglu=True)
    (x,) = _leaves(torch.randn(1, 2, 5, 8))
    params = [ff.w1, ff.b1, ff.w2]  # (the output is linear in b2: no second-order gradient)
    assert_second_order_matches(
        lambda x, *p: ff.forward_per_expert(x), lambda x, *p: ff(x), [x, *params], "_ExpertLinearBackward"
    )


def test_soft_route_first_order_never_uses_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("reference_gradients called by a first-order backward")

    monkeypatch.setattr(soft_route, "reference_gradients", refuse)
    monkeypatch.setattr(experts_module, "reference_gradients", refuse)
    x = torch.randn(2, 5, 8, requires_grad=True)
    slots, combine = soft_route.soft_route(x, torch.randn(20, 8, requires_grad=True))
    out = soft_route.soft_combine_weights(combine, slots * 2)
    ff = BatchedFeedForward(2, 8, mult=2)
    (out.sum() + ff.forward_per_expert(x.view(1, 2, 5, 8)).sum()).backward()
