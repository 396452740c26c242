"""medmoe.nn.dropout: the counter-based CPU dropout kernel, its autograd, seeding and fallbacks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medmoe import create_model
from medmoe.nn.dropout import FastDropout, fast_dropout, native_dropout_available, use_fast_dropout

needs_kernel = pytest.mark.skipif(
    not native_dropout_available(), reason="no C++ compiler with OpenMP here: the kernel is not built"
)


@needs_kernel
@pytest.mark.parametrize("p", [0.1, 0.25, 0.5, 0.9])
def test_keep_rate_and_scale(p: float) -> None:
    torch.manual_seed(0)
    x = torch.rand(1_000_000) + 0.5  # no zeros: a zero output means dropped
    out = fast_dropout(x, p)
    kept = out != 0
    rate = kept.double().mean().item()
    sigma = ((1 - p) * p / x.numel()) ** 0.5
    assert abs(rate - (1 - p)) < 5 * sigma
    torch.testing.assert_close(out[kept], x[kept] / (1 - p))


@needs_kernel
def test_masks_have_no_structure() -> None:
    """Neighbouring elements, rows and blocks of one call are independent draws."""
    torch.manual_seed(1)
    n = 1 << 20
    keep = (fast_dropout(torch.ones(n), 0.5) != 0).double()
    for lag in (1, 2, 16, 1024):
        corr = torch.corrcoef(torch.stack([keep[:-lag], keep[lag:]]))[0, 1].item()
        assert abs(corr) < 5 / n**0.5, (lag, corr)
    blocks = keep.view(64, -1).mean(1)  # 64 blocks of 16k elements (the kernel's OpenMP work items)
    assert (blocks - 0.5).abs().max().item() < 5 * (0.25 / (n // 64)) ** 0.5


@needs_kernel
def test_seeded_repeatable_and_thread_independent() -> None:
    x = torch.randn(3, 257, 129)
    torch.manual_seed(5)
    a = fast_dropout(x, 0.3)
    b = fast_dropout(x, 0.3)  # next draw of the generator: another mask
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        torch.manual_seed(5)
        a1 = fast_dropout(x, 0.3)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(a, a1, rtol=0, atol=0)
    assert not torch.equal(a != 0, b != 0)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_applies_the_same_mask(dtype: torch.dtype) -> None:
    x = (torch.rand(40, 33, dtype=dtype) + 0.5).requires_grad_()
    g = torch.randn(40, 33, dtype=dtype)
    out = fast_dropout(x, 0.4)
    out.backward(g)
    keep = (out != 0).to(dtype)
    torch.testing.assert_close(x.grad, g * keep / 0.6)


@needs_kernel
def test_gradcheck_and_double_backward() -> None:
    x = torch.randn(6, 7, dtype=torch.float64, requires_grad=True)

    def f(t: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(3)  # the same mask at every evaluation
        return fast_dropout(t, 0.5) * t

    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


@needs_kernel
def test_non_contiguous_input_and_nan() -> None:
    x = torch.randn(64, 32).t()
    torch.manual_seed(2)
    out = fast_dropout(x, 0.5)
    torch.manual_seed(2)
    ref = fast_dropout(x.contiguous(), 0.5)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    nan = torch.full((1000,), float("nan"))
    assert torch.isnan(fast_dropout(nan, 0.5)).all()  # x * mask, as torch: a dropped NaN stays NaN


def test_identity_zero_and_bad_probability() -> None:
    x = torch.randn(10, 10)
    assert fast_dropout(x, 0.5, training=False) is x
    assert fast_dropout(x, 0.0) is x
    assert torch.equal(fast_dropout(x, 1.0), torch.zeros_like(x))
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"in \[0, 1\]"):
            fast_dropout(x, p)


def test_other_dtypes_draw_the_same_counter_masks_and_torch_backend_is_f_dropout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x = torch.randn(50, 50)
    torch.manual_seed(4)
    out16 = fast_dropout(x.to(torch.bfloat16), 0.5)  # not a kernel dtype: PyTorch ops, the same words
    torch.manual_seed(4)
    out32 = fast_dropout(x, 0.5)
    assert torch.equal(out16 != 0, out32 != 0)
    monkeypatch.setenv("MEDMOE_BACKEND", "torch")
    y = torch.randn(50, 50)
    torch.manual_seed(4)
    out = fast_dropout(y, 0.5)
    torch.manual_seed(4)
    torch.testing.assert_close(out, F.dropout(y, 0.5), rtol=0, atol=0)


def test_use_fast_dropout_swaps_plain_dropout_only() -> None:
    class MyDropout(nn.Dropout):
        pass

    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.2), MyDropout(0.3))
    assert use_fast_dropout(model) is model
    assert type(model[1]) is FastDropout and model[1].p == 0.2
    assert type(model[2]) is MyDropout
    assert "Dropout(p=0.2" in repr(model[1])
    model.eval()
    x = torch.randn(4, 3)
    torch.testing.assert_close(model(x), model[0](x))


@pytest.mark.parametrize("name", ["transformer.base_mammoth.uni", "dtfd.base.uni", "abmil.base.uni"])
def test_zoo_models_use_fast_dropout(name: str) -> None:
    model = create_model(name, in_dim=32, num_classes=2)
    kinds = {type(m) for m in model.modules() if isinstance(m, nn.Dropout)}
    assert kinds <= {FastDropout}, kinds
    assert FastDropout in kinds
