"""medmoe.nn.backend: the one switch between PyTorch and the fast paths, read when a model is built.

Covers: the switch (set_backend / MEDMOE_BACKEND / the older MEDMOE_NATIVE_KERNELS=0) fixing layer classes at
construction; same outputs and gradients under both backends; the same seeded training numbers with and
without a C++ compiler; each kernel custom operator under torch.library.opcheck (schema, fake tensors,
autograd registration, AOT dispatch); one warning for a failed build; no ``__class__`` assignment and no
private torch API outside the backend module.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from medmoe import create_model
from medmoe.nn import backend, native_kernels
from medmoe.nn.backend import apply_backend, get_backend, make_dropout, make_linear, set_backend
from medmoe.nn.depthwise_conv import _conv_backward_op, _conv_op
from medmoe.nn.dropout import FastDropout, counter_dropout, dropout_words, fast_dropout
from medmoe.nn.expert_epilogue import _epilogue_backward_op, _epilogue_op
from medmoe.nn.onednn_linear import FastLinear
from medmoe.nn.slot_dispatch import _dispatch_backward_op, _dispatch_op
from medmoe.nn.soft_route import _grad_op as _route_grad_op
from medmoe.nn.soft_route import _softmax_op as _route_softmax_op

SRC = Path(__file__).resolve().parents[2] / "src" / "medmoe"


@pytest.fixture(autouse=True)
def _reset_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("MEDMOE_BACKEND", raising=False)
    monkeypatch.delenv("MEDMOE_NATIVE_KERNELS", raising=False)
    set_backend(None)
    yield
    set_backend(None)


@pytest.fixture
def no_compiler(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A machine without a C++ compiler: every kernel build fails (fresh caches, fresh warning state)."""
    monkeypatch.setenv("CXX", "/nonexistent/medmoe-test-g++")
    monkeypatch.setattr(native_kernels, "_loaded", {})
    monkeypatch.setattr(native_kernels, "_warned_any", [])
    monkeypatch.setattr(backend, "_warned", set())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
    monkeypatch.setattr(native_kernels, "_loaded", {})  # later tests load the real kernels again


def _layer_types(model: nn.Module) -> set[type]:
    return {type(m) for m in model.modules() if isinstance(m, (nn.Linear, nn.Dropout))}


def test_switch_is_read_when_the_model_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    assert get_backend() == "native"
    native = create_model("abmil.base.uni", in_dim=32, num_classes=2)
    assert _layer_types(native) <= {FastLinear, FastDropout} and FastLinear in _layer_types(native)
    set_backend("torch")
    plain = create_model("abmil.base.uni", in_dim=32, num_classes=2)
    assert _layer_types(plain) <= {nn.Linear, nn.Dropout} and nn.Linear in _layer_types(plain)
    assert type(make_linear(3, 4)) is nn.Linear and type(make_dropout(0.1)) is nn.Dropout
    # switching later leaves built models as they are
    assert FastLinear in _layer_types(native)
    set_backend(None)
    monkeypatch.setenv("MEDMOE_BACKEND", "torch")
    assert get_backend() == "torch" and type(make_linear(3, 4)) is nn.Linear
    monkeypatch.setenv("MEDMOE_BACKEND", "native")
    assert type(make_linear(3, 4)) is FastLinear and type(make_dropout(0.1)) is FastDropout
    monkeypatch.delenv("MEDMOE_BACKEND")
    monkeypatch.setenv("MEDMOE_NATIVE_KERNELS", "0")  # the older switch now turns the oneDNN path off too
    assert get_backend() == "torch"


def test_bad_backend_names_are_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unknown backend 'cuda': choose one of torch, native"):
        set_backend("cuda")
    monkeypatch.setenv("MEDMOE_BACKEND", "fast")
    with pytest.raises(ValueError, match="MEDMOE_BACKEND='fast' names no backend"):
        get_backend()


def test_apply_backend_replaces_modules_sharing_parameters() -> None:
    shared = nn.Linear(4, 4)
    net = nn.Sequential(shared, nn.Dropout(0.2), nn.Sequential(shared))
    weight = shared.weight
    assert apply_backend(net) is net
    assert type(net[0]) is FastLinear and net[0] is net[2][0] and net[0].weight is weight
    assert type(net[1]) is FastDropout and net[1].p == 0.2
    assert list(net.state_dict()) == ["0.weight", "0.bias", "2.0.weight", "2.0.bias"]
    root = nn.Linear(2, 3)
    assert type(apply_backend(root)) is FastLinear and apply_backend(root).weight is root.weight
    assert apply_backend(nn.Linear(2, 3), "torch").__class__ is nn.Linear


@pytest.mark.parametrize("name", ["abmil.base.uni", "transformer.base_mammoth.uni", "transmil.base.uni"])
def test_both_backends_give_the_same_outputs_and_gradients(name: str) -> None:
    """Eval mode (no dropout): the fast paths are the same maths; float rounding apart, identical."""
    results = []
    for chosen in ("native", "torch"):
        set_backend(chosen)
        torch.manual_seed(0)
        model = create_model(name, in_dim=64, num_classes=3).eval()
        x = torch.randn(1, 600, 64, generator=torch.Generator().manual_seed(1))
        out = model(x)
        logits = out.logits if hasattr(out, "logits") else out
        logits.square().sum().backward()
        results.append((logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (out_a, grads_a), (out_b, grads_b) = results
    torch.testing.assert_close(out_a, out_b, rtol=1e-4, atol=1e-5)
    assert len(grads_a) == len(grads_b) > 0
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(ga, gb, rtol=1e-3, atol=1e-5)


def _train_losses(name: str, steps: int = 4) -> list[float]:
    torch.manual_seed(0)
    model = create_model(name, in_dim=32, num_classes=2, dropout=0.3).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    data = torch.Generator().manual_seed(2)
    losses = []
    for _ in range(steps):
        x = torch.randn(1, 200, 32, generator=data)
        y = torch.randint(0, 2, (1,), generator=data)
        out = model(x)
        logits = out.logits if hasattr(out, "logits") else out
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", ["abmil.base_mammoth.uni", "transformer.base_mammoth.uni"])
def test_seeded_training_is_the_same_without_a_compiler(name: str, request: pytest.FixtureRequest) -> None:
    """Dropout masks (standalone and fused into Mammoth's expert epilogue) come from one counter stream."""
    from medmoe.nn.dropout import native_dropout_available

    if not native_dropout_available():
        pytest.skip("no C++ compiler here: nothing to compare against")
    with_kernels = _train_losses(name)
    request.getfixturevalue("no_compiler")
    assert not native_dropout_available()
    without = _train_losses(name)
    assert len(set(with_kernels)) > 1  # it trains
    torch.testing.assert_close(torch.tensor(without), torch.tensor(with_kernels), rtol=1e-4, atol=1e-5)


def test_counter_dropout_torch_ops_match_the_kernel_bit_for_bit(no_compiler: None) -> None:
    x = torch.randn(3, 1000, dtype=torch.float64)
    without = counter_dropout(x, 0.3, 2**61 + 17)
    native_kernels._loaded.clear()
    import os

    os.environ.pop("CXX")  # the real compiler again (monkeypatch restores nothing it did not set)
    from medmoe.nn.dropout import native_dropout_available

    if not native_dropout_available():
        pytest.skip("no C++ compiler here")
    assert torch.equal(counter_dropout(x, 0.3, 2**61 + 17), without)
    # the words themselves: SplitMix64 reference values computed with Python integers
    seed, mask = 12345, (1 << 64) - 1

    def word(i: int) -> int:
        z = (seed + (i + 1) * 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return (z ^ (z >> 31)) >> 32

    assert dropout_words(seed, 50).tolist() == [word(i) for i in range(50)]


def test_build_failure_warns_once(no_compiler: None) -> None:
    from medmoe.nn.depthwise_conv import native_depthwise_conv_available
    from medmoe.nn.dropout import native_dropout_available

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not native_dropout_available()
        assert not native_dropout_available()
        assert not native_depthwise_conv_available()
        fast_dropout(torch.randn(100), 0.5)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert "native kernel dropout unavailable" in messages[0] and "no C++ compiler" in messages[0]


def test_slot_dispatch_fallback_matches_the_kernel(no_compiler: None) -> None:
    """The operator's PyTorch forward and hand-written backward (no compiler) give the kernel's results."""
    keys = torch.randn(2, 3, 16)
    feats = torch.randn(2, 7, 2, 16).transpose(1, 2)
    mask = torch.tensor([[True] * 7, [True, False, True, True, False, True, True]])
    z, lse = _dispatch_op(keys, feats, mask)
    dz = torch.randn_like(z)
    grads = _dispatch_backward_op(dz, keys, feats, z, lse, mask)
    import os

    os.environ.pop("CXX")
    native_kernels._loaded.clear()
    from medmoe.nn.slot_dispatch import native_slot_dispatch_available

    if not native_slot_dispatch_available():
        pytest.skip("no C++ compiler here")
    z2, lse2 = _dispatch_op(keys, feats, mask)
    torch.testing.assert_close(z2, z)
    torch.testing.assert_close(lse2, lse)
    for a, b in zip(_dispatch_backward_op(dz, keys, feats, z2, lse2, mask), grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_depthwise_conv_fallback_gradients_match_the_kernel(no_compiler: None) -> None:
    """The operator's PyTorch backward (no compiler) gives the kernel's gradients."""
    grid = torch.randn(2, 5, 6, 3, dtype=torch.float64)
    taps = torch.randn(3, 3, 3, dtype=torch.float64)
    dy = torch.randn_like(grid)
    without = _conv_backward_op(dy, grid, taps)
    y_without = _conv_op(grid, taps, None)
    import os

    os.environ.pop("CXX")
    native_kernels._loaded.clear()
    from medmoe.nn.depthwise_conv import native_depthwise_conv_available

    if not native_depthwise_conv_available():
        pytest.skip("no C++ compiler here")
    torch.testing.assert_close(_conv_op(grid, taps, None), y_without)
    for a, b in zip(_conv_backward_op(dy, grid, taps), without):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kernel", ["native", "no compiler"])
def test_custom_ops_pass_opcheck(kernel: str, request: pytest.FixtureRequest) -> None:
    if kernel == "no compiler":
        request.getfixturevalue("no_compiler")
    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(counter_dropout, (x, 0.25, 99))
    t = torch.randn(2, 3, 2, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    gamma = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(_epilogue_op, (t, bias, gamma, 8**0.5, 1e-8, 0.2, 5))
    norms = (t + bias).reshape(-1, 8).norm(dim=-1).detach()
    dout = torch.randn_like(t)
    torch.library.opcheck(
        _epilogue_backward_op, (dout, t.detach(), bias.detach(), gamma.detach(), norms, 8**0.5, 1e-8, 0.2, 5)
    )
    grid = torch.randn(2, 5, 6, 3, dtype=torch.float64, requires_grad=True)
    taps = torch.randn(3, 3, 3, dtype=torch.float64, requires_grad=True)
    conv_bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(_conv_op, (grid, taps, conv_bias))
    torch.library.opcheck(_conv_op, (grid, taps, None))
    torch.library.opcheck(_conv_backward_op, (torch.randn_like(grid), grid.detach(), taps.detach()))
    keys = torch.randn(2, 3, 16, requires_grad=True)
    feats = torch.randn(2, 5, 2, 16).transpose(1, 2).requires_grad_()  # (b, h, n, 16) view of (b, n, h, 16)
    mask = torch.tensor([[True] * 5, [True, True, False, True, False]])
    for m in (None, mask):
        torch.library.opcheck(_dispatch_op, (keys, feats, m))
        z, lse = _dispatch_op(keys, feats, m)
        torch.library.opcheck(
            _dispatch_backward_op,
            (torch.randn_like(z), keys.detach(), feats.detach(), z.detach(), lse.detach(), m),
        )


def test_custom_ops_compile_in_one_graph() -> None:
    def f(x: torch.Tensor) -> torch.Tensor:
        return counter_dropout(x.sin(), 0.5, 7).cos()

    x = torch.randn(64)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), f(x))


def test_no_class_assignment_and_no_private_torch_api_outside_the_backend() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        if re.search(r"\.__class__\s*=(?!=)", text):
            offenders.append(f"{path.relative_to(SRC)}: __class__ assignment")
        if path.name != "backend.py" and re.search(r"torch\.ops\.mkldnn|torch\._C\b", text):
            offenders.append(f"{path.relative_to(SRC)}: private torch API")
    assert offenders == []


@pytest.mark.parametrize("kernel", ["native", "no compiler"])
def test_soft_route_ops_pass_opcheck(kernel: str, request: pytest.FixtureRequest) -> None:
    """The Soft MoE many-slot operators (in place: they declare the tensors they write), kernel and fallback."""
    if kernel == "no compiler":
        request.getfixturevalue("no_compiler")
    mask = torch.tensor([[True] * 6, [True, False, True, True, False, True]])
    for dtype in (torch.float32, torch.float64):  # float64 always takes the PyTorch form
        logits = torch.randn(2, 6, 21, dtype=dtype)
        for m in (None, mask):
            torch.library.opcheck(_route_softmax_op, (logits.clone(), torch.empty_like(logits), m))
        dispatch, combine = logits.softmax(1), logits.softmax(-1)
        for d_combine in (None, torch.randn_like(logits)):
            args = (torch.randn_like(logits), dispatch, combine, d_combine, torch.randn(2, 21, dtype=dtype))
            torch.library.opcheck(_route_grad_op, args)
