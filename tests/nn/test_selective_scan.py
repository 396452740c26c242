"""medmoe.nn.selective_scan: the chunked custom-autograd scan against the sequential reference loop."""

import pytest
import torch
import torch.nn.functional as F

from medmoe.nn.selective_scan import selective_scan, selective_scan_sequential


def make_inputs(b, L, d, n, dtype=torch.float64, dt_scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, L, d, generator=g, dtype=dtype)
    dt = F.softplus(torch.randn(b, L, d, generator=g, dtype=dtype) - 1) * dt_scale
    A = -torch.exp(torch.randn(d, n, generator=g, dtype=dtype))
    B = torch.randn(b, L, n, generator=g, dtype=dtype)
    C = torch.randn(b, L, n, generator=g, dtype=dtype)
    D = torch.randn(d, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (u, dt, A, B, C, D)]


def outputs_and_grads(fn, inputs, grad_out=None):
    y = fn(*inputs)
    if grad_out is None:
        grad_out = torch.randn_like(y)
    grads = torch.autograd.grad((y * grad_out).sum(), inputs)
    return y, grads, grad_out


@pytest.mark.parametrize(
    "b, L, d, n, chunk, block",
    [
        (2, 37, 5, 3, 8, 1 << 22),  # L not a multiple of the chunk, one block
        (1, 64, 4, 2, 16, 100),  # one chunk per block, 4 blocks
        (3, 10, 3, 4, 64, 1 << 22),  # L shorter than the chunk
        (2, 50, 6, 4, 7, 700),  # b > 1, several blocks of several chunks, ragged last block
        (1, 9, 2, 2, 1, 1 << 22),  # chunk of one step
    ],
)
def test_chunked_matches_sequential_float64(b, L, d, n, chunk, block):
    assert_chunked_matches_sequential(b, L, d, n, chunk, block)


def assert_chunked_matches_sequential(b: int, L: int, d: int, n: int, chunk: int, block: int) -> None:
    """Chunked and sequential scans agree in float64: outputs to 1e-10, every input's gradient to 1e-9."""
    inputs = make_inputs(b, L, d, n)
    y_ref, g_ref, grad_out = outputs_and_grads(lambda *a: selective_scan(*a, method="sequential"), inputs)
    y, g, _ = outputs_and_grads(
        lambda *a: selective_scan(*a, chunk_size=chunk, block_elements=block), inputs, grad_out
    )
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-10)
    for name, a, r in zip(("u", "delta", "A", "B", "C", "D"), g, g_ref):
        torch.testing.assert_close(a, r, atol=1e-11, rtol=1e-9, msg=name)


def test_chunked_matches_sequential_float32():
    inputs = make_inputs(2, 150, 8, 16, dtype=torch.float32)
    y_ref, g_ref, grad_out = outputs_and_grads(selective_scan_sequential, inputs)
    y, g, _ = outputs_and_grads(lambda *a: selective_scan(*a, chunk_size=32), inputs, grad_out)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    for a, r in zip(g, g_ref):
        torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-4)


def test_strong_decay_is_stable():
    """Large steps (decay exp(-dt |A|) underflows to 0 inside a chunk) must not produce inf or NaN."""
    inputs = make_inputs(1, 200, 4, 8, dt_scale=40.0)
    y_ref, g_ref, grad_out = outputs_and_grads(selective_scan_sequential, inputs)
    y, g, _ = outputs_and_grads(lambda *a: selective_scan(*a, chunk_size=64), inputs, grad_out)
    assert torch.isfinite(y).all() and all(torch.isfinite(t).all() for t in g)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-8)
    for a, r in zip(g, g_ref):
        torch.testing.assert_close(a, r, atol=1e-9, rtol=1e-7)


def test_recurrence_by_hand():
    """One channel, one state: h_t = a_t h_{t-1} + dt_t u_t B_t, y_t = C_t h_t + D u_t."""
    u = torch.tensor([[[1.0], [2.0], [-1.0]]], dtype=torch.float64)
    dt = torch.tensor([[[0.5], [1.0], [0.25]]], dtype=torch.float64)
    A = torch.tensor([[-2.0]], dtype=torch.float64)
    B = torch.tensor([[[1.0], [0.5], [2.0]]], dtype=torch.float64)
    C = torch.tensor([[[3.0], [1.0], [-1.0]]], dtype=torch.float64)
    D = torch.tensor([0.5], dtype=torch.float64)
    h, expected = 0.0, []
    for t in range(3):
        h = torch.exp(dt[0, t, 0] * A[0, 0]) * h + dt[0, t, 0] * u[0, t, 0] * B[0, t, 0]
        expected.append(C[0, t, 0] * h + D[0] * u[0, t, 0])
    for method in ("chunked", "sequential"):
        y = selective_scan(u, dt, A, B, C, D, method=method, chunk_size=2)
        torch.testing.assert_close(y.flatten(), torch.stack(expected))


def test_without_D_and_low_precision():
    u, dt, A, B, C, _ = (t.detach() for t in make_inputs(2, 40, 4, 3, dtype=torch.float32))
    y = selective_scan(u, dt, A, B, C)
    torch.testing.assert_close(y, selective_scan_sequential(u, dt, A, B, C), atol=1e-5, rtol=1e-5)
    y16 = selective_scan(*(t.bfloat16() for t in (u, dt, A, B, C)), chunk_size=8)
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y, atol=0.1, rtol=0.05)


def test_causal():
    u, dt, A, B, C, D = (t.detach() for t in make_inputs(1, 30, 3, 2))
    y = selective_scan(u, dt, A, B, C, D, chunk_size=8)
    u2 = u.clone()
    u2[:, 20:] += 5.0
    y2 = selective_scan(u2, dt, A, B, C, D, chunk_size=8)
    torch.testing.assert_close(y2[:, :20], y[:, :20], atol=0, rtol=0)
    assert (y2[:, 20:] - y[:, 20:]).abs().max() > 1e-3


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: {**a, "u": a["u"][0]}, "u must be"),
        (lambda a: {**a, "delta": a["delta"][:, :-1]}, "delta must"),
        (lambda a: {**a, "A": a["A"][:-1]}, "A must be"),
        (lambda a: {**a, "B": a["B"][..., :-1]}, "B must be"),
        (lambda a: {**a, "C": a["C"][:, :-1]}, "C must be"),
        (lambda a: {**a, "D": a["D"][:-1]}, "D must be"),
        (lambda a: {**a, "method": "parallel"}, "method"),
        (lambda a: {**a, "chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_inputs(change, match):
    u, dt, A, B, C, D = (t.detach() for t in make_inputs(1, 6, 3, 2))
    args = {"u": u, "delta": dt, "A": A, "B": B, "C": C, "D": D}
    with pytest.raises(ValueError, match=match):
        selective_scan(**change(args))


def test_intra_op_thread_count_is_restored():
    torch.set_num_threads(2)
    inputs = make_inputs(1, 40, 3, 2, dtype=torch.float32)
    selective_scan(*inputs, chunk_size=8).sum().backward()
    assert torch.get_num_threads() == 2


def test_bad_block_elements():
    u, dt, A, B, C, D = (t.detach() for t in make_inputs(1, 6, 3, 2))
    with pytest.raises(ValueError, match="block_elements"):
        selective_scan(u, dt, A, B, C, D, block_elements=0)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compiled_scan_is_one_graph_node_with_the_same_values_and_gradients():
    """Under torch.compile the chunked scan is the custom op ``medmoe::chunked_selective_scan`` (no graph break)."""
    from medmoe.nn.selective_scan import _chunked_scan_op

    padded = make_inputs(2, 40, 6, 4, dtype=torch.float32)[:5]  # the op takes whole chunks of 8 steps
    torch.library.opcheck(_chunked_scan_op, (*padded, 8, 1 << 10))  # fake shapes, autograd, schema
    u, dt, A, B, C, D = make_inputs(2, 37, 6, 4, dtype=torch.float32)

    def scan(*args):
        return selective_scan(*args, chunk_size=8, block_elements=1 << 10)

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(scan)(u, dt, A, B, C, D)
    assert explanation.graph_break_count == 0
    compiled = torch.compile(scan, backend="aot_eager", fullgraph=True)
    g = torch.randn(2, 37, 6)
    results = []
    for fn in (compiled, scan):
        y = fn(u, dt, A, B, C, D)
        results.append((y.detach(), torch.autograd.grad(y, (u, dt, A, B, C, D), g)))
    torch._dynamo.reset()
    (y, grads), (ref_y, ref_grads) = results
    torch.testing.assert_close(y, ref_y, rtol=0, atol=0)  # the same kernels, run as one operator
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("b, L, d, n, chunk, block", [(2, 200, 5, 3, 8, 1 << 22), (2, 50, 6, 4, 7, 700)])
def test_parallel_chunk_carry_matches_sequential(monkeypatch, b, L, d, n, chunk, block):
    """The log-depth chunk carry used on CUDA (forced here on the CPU) gives the loop's result."""
    import importlib

    scan_module = importlib.import_module("medmoe.nn.selective_scan")  # the module, not the function
    monkeypatch.setattr(scan_module, "_FORCE_PARALLEL_CARRY", True)
    assert_chunked_matches_sequential(b, L, d, n, chunk, block)
