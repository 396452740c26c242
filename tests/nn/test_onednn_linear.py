"""FastLinear (oneDNN matmuls on CPU fp32) agrees with nn.Linear in outputs and gradients."""

import pytest
import torch
import torch.nn.functional as F

from medmoe.nn import FastLinear
from medmoe.nn.onednn_linear import fast_linear, onednn_linear_available


@pytest.mark.parametrize("rows", [7, 4096])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_f_linear(rows, bias):
    torch.manual_seed(0)
    x = torch.randn(1, rows, 48, requires_grad=True)
    w = torch.randn(24, 48, requires_grad=True)
    b = torch.randn(24, requires_grad=True) if bias else None
    out = fast_linear(x, w, b)
    ref = F.linear(x, w, b)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    g = torch.randn_like(ref)
    inputs = (x, w) + ((b,) if bias else ())
    got = torch.autograd.grad(out, inputs, g)
    want = torch.autograd.grad(ref, inputs, g)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-3)


@pytest.mark.skipif(not onednn_linear_available(), reason="PyTorch built without oneDNN")
def test_large_cpu_input_uses_onednn(monkeypatch):
    import medmoe.nn.onednn_linear as fl

    calls = []
    real = fl._onednn_linear
    monkeypatch.setattr(fl, "_onednn_linear", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(4096, 64, requires_grad=True)
    layer = FastLinear(64, 128)
    layer(x).sum().backward()
    assert len(calls) == 3  # forward, grad input, grad weight
    calls.clear()
    with torch.no_grad():
        layer(torch.randn(10, 64))  # few rows: default kernel
        FastLinear(16, 8)(torch.randn(4096, 16))  # little work (4096 x 16 x 8): default kernel
    assert calls == []


@pytest.mark.skipif(not onednn_linear_available(), reason="PyTorch built without oneDNN")
def test_short_input_with_a_wide_weight_uses_onednn(monkeypatch):
    """A small bag through a 512 x 512 (or larger) layer: oneDNN from 4 rows, one row stays on PyTorch."""
    import medmoe.nn.onednn_linear as fl

    calls = []
    real = fl._onednn_linear
    monkeypatch.setattr(fl, "_onednn_linear", lambda *a: calls.append(1) or real(*a))
    layer = FastLinear(512, 512)
    x = torch.randn(1, 7, 512, requires_grad=True)
    out = layer(x)
    ref = F.linear(x, layer.weight, layer.bias)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, layer.weight, layer.bias), g)
    want = torch.autograd.grad(ref, (x, layer.weight, layer.bias), g)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-3)
    assert len(calls) == 3
    calls.clear()
    with torch.no_grad():
        layer(torch.randn(1, 512))  # one row: matrix-vector, default kernel
        layer(torch.randn(3, 512))
        FastLinear(166, 512)(torch.randn(7, 166))  # 85k weights: default kernel for short inputs
    assert calls == []


def test_no_grad_for_frozen_input_and_state_dict_compatible():
    layer = FastLinear(64, 128)
    ref = torch.nn.Linear(64, 128)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(3000, 64)  # features from a frozen encoder: no input gradient
    layer(x).square().sum().backward()
    ref(x).square().sum().backward()
    torch.testing.assert_close(layer.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-2)
    torch.testing.assert_close(layer.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-2)


def test_autocast_falls_back():
    layer = FastLinear(16, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(torch.randn(4096, 16))
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize("shape", [(2, 4, 96, 80, 64), (3, 64, 70, 100)])
def test_fast_matmul_matches_matmul_values_and_gradients(shape):
    from medmoe.nn.onednn_linear import fast_matmul

    *lead, m, k, n = shape
    g = torch.Generator().manual_seed(0)
    a = torch.randn(*lead, m, k, generator=g).requires_grad_()
    b = torch.randn(*lead, k, n, generator=g).requires_grad_()
    w = torch.randn(*lead, m, n, generator=g)
    out, ref = fast_matmul(a, b), a @ b
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    ours = torch.autograd.grad((out * w).sum(), (a, b))
    theirs = torch.autograd.grad((ref * w).sum(), (a, b))
    for x, y in zip(ours, theirs):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-4)


def test_fast_matmul_falls_back_for_small_broadcast_or_double():
    from medmoe.nn.onednn_linear import fast_matmul

    a, b = torch.randn(2, 3, 4), torch.randn(2, 4, 5)
    torch.testing.assert_close(fast_matmul(a, b), a @ b)
    a64, b64 = torch.randn(2, 80, 80, dtype=torch.float64), torch.randn(80, 80, dtype=torch.float64)
    torch.testing.assert_close(fast_matmul(a64, b64), a64 @ b64)


def test_use_fast_linear_swaps_class_only_and_keeps_outputs():
    from medmoe.nn.onednn_linear import use_fast_linear

    class Sub(torch.nn.Linear):
        pass

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.ReLU(), Sub(512, 4))
    keys = list(net.state_dict())
    x = torch.randn(300, 512)
    before = net(x)
    weight = net[0].weight
    assert use_fast_linear(net) is net
    assert type(net[0]) is FastLinear and type(net[2]) is Sub and net[0].weight is weight
    assert list(net.state_dict()) == keys
    torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-5)


def test_registry_models_use_fast_linear():
    import medmoe

    model = medmoe.create_model("transformer.base", num_classes=2, in_dim=64)
    kinds = {type(m) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    assert FastLinear in kinds and torch.nn.Linear not in kinds


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_every_zoo_model_builds_its_backend_layers_at_construction(backend, monkeypatch):
    """medmoe's models construct the layer classes of the backend in force (make_linear / make_dropout): no
    module is replaced after construction (apply_backend is never called), under either backend."""
    import medmoe
    from medmoe.nn import backend as backend_module
    from medmoe.nn.dropout import FastDropout

    def no_replacement(*args, **kwargs):
        raise AssertionError("a model's layers were replaced after construction")

    monkeypatch.setattr(backend_module, "apply_backend", no_replacement)
    monkeypatch.setattr(backend_module, "_chosen", backend)  # set_backend(backend), undone after the test
    for name in medmoe.list_models():
        model = medmoe.create_model(name, num_classes=2, in_dim=32)
        linear = {type(m) for m in model.modules() if isinstance(m, torch.nn.Linear)}
        dropout = {type(m) for m in model.modules() if isinstance(m, torch.nn.Dropout)}
        fast = backend == "native"
        assert (torch.nn.Linear in linear) is not fast and (FastLinear in linear) is fast, name
        assert torch.nn.Dropout not in dropout if fast else FastDropout not in dropout, name
