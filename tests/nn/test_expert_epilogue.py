"""medmoe.nn.expert_epilogue: Mammoth's fused bias + expert RMS norm + ReLU + dropout against the modules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medmoe.nn import native_kernels
from medmoe.nn.dropout import fast_dropout, use_fast_dropout
from medmoe.nn.expert_epilogue import expert_epilogue, native_expert_epilogue_available
from medmoe.nn.mammoth import MammothExperts

needs_kernel = pytest.mark.skipif(
    not native_expert_epilogue_available(), reason="no C++ compiler with OpenMP here: the kernel is not built"
)


def _experts(dtype: torch.dtype, dropout: float = 0.1) -> MammothExperts:
    torch.manual_seed(0)
    block = use_fast_dropout(MammothExperts(64, 128, 4, 6, 3, dropout, True)).to(dtype)
    with torch.no_grad():  # non-trivial gains and biases
        block.norm.gamma.uniform_(0.5, 1.5)
        block.lora_layers.bias.normal_()
    return block


def _unfused(block: MammothExperts, z: torch.Tensor) -> torch.Tensor:
    """The module path: FactorizedLinear (with bias) -> ExpertWiseRMSNorm -> ReLU -> FastDropout."""
    return block.dropout(F.relu(block.norm(block.lora_layers(z))))


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("lead", [(2, 5), (3,)])
def test_fused_matches_the_modules(dtype: torch.dtype, train: bool, lead: tuple[int, ...]) -> None:
    block = _experts(dtype).train(train)
    z = torch.randn(*lead, 6, 4, 16, dtype=dtype, requires_grad=True)
    g = torch.randn(*lead, 6, 4, 32, dtype=dtype)
    params = [z, *block.parameters()]
    torch.manual_seed(5)
    out = block(z)  # fused
    grads = torch.autograd.grad(out, params, g)
    torch.manual_seed(5)
    ref = _unfused(block, z)  # the same seed draws the same dropout mask
    ref_grads = torch.autograd.grad(ref, params, g)
    tol = {} if dtype == torch.float64 else {"atol": 2e-5, "rtol": 1e-4}
    torch.testing.assert_close(out, ref, **tol)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, **tol)
    if train:
        assert (out == 0).any() and (out != 0).any()


@needs_kernel
def test_rows_below_eps_and_gradcheck() -> None:
    dtype = torch.float64
    t = torch.randn(3, 6, 4, 8, dtype=dtype)
    bias = torch.randn(6, 4, 8, dtype=dtype)
    t[1, 2] = -bias[2]  # x = t + bias is exactly 0 there: the norm is clamped to eps
    gamma = torch.rand(6, 32, dtype=dtype) + 0.5
    for tensor in (t, bias, gamma):
        tensor.requires_grad_()
    out = expert_epilogue(t, bias, gamma, 32**0.5, 0.0)
    assert out is not None
    x = (t + bias).reshape(3, 6, 32)
    ref = F.relu(F.normalize(x, dim=-1, eps=1e-8) * 32**0.5 * gamma).reshape(out.shape)
    torch.testing.assert_close(out, ref)
    assert (out[1, 2] == 0).all()

    def f(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(1)  # one dropout mask for every evaluation
        result = expert_epilogue(a, b, c, 32**0.5, 0.3)
        assert result is not None
        return result

    smooth = torch.randn(2, 6, 4, 8, dtype=dtype, requires_grad=True)  # away from ReLU kinks and eps
    assert torch.autograd.gradcheck(f, (smooth, bias, gamma))


def test_returns_none_where_the_kernel_does_not_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    t, bias, gamma = torch.randn(2, 6, 4, 8), torch.randn(6, 4, 8), torch.rand(6, 32)
    assert expert_epilogue(t.bfloat16(), bias.bfloat16(), gamma.bfloat16(), 1.0, 0.1) is None
    assert expert_epilogue(t, bias, gamma, 1.0, 1.0) is None  # p = 1: torch's dropout zeroes everything
    assert expert_epilogue(t, bias[:5], gamma, 1.0, 0.1) is None  # shapes that do not line up
    monkeypatch.setenv("MEDMOE_NATIVE_KERNELS", "0")
    monkeypatch.setattr(native_kernels, "_loaded", {})
    assert expert_epilogue(t, bias, gamma, 1.0, 0.1) is None
    block = _experts(torch.float32).train()
    z = torch.randn(2, 6, 4, 16)
    torch.manual_seed(3)
    out = block(z)  # the module path
    torch.manual_seed(3)
    torch.testing.assert_close(out, _unfused(block, z), rtol=0, atol=0)
    monkeypatch.setattr(native_kernels, "_loaded", {})


@needs_kernel
def test_dropout_mask_is_fast_dropouts() -> None:
    t, bias = torch.rand(4, 6, 4, 8) + 1.0, torch.zeros(6, 4, 8)  # positive: ReLU keeps everything
    gamma = torch.ones(6, 32)
    torch.manual_seed(11)
    out = expert_epilogue(t, bias, gamma, 1.0, 0.4)
    torch.manual_seed(11)
    ref = fast_dropout(F.normalize((t + bias).reshape(4, 6, 32), dim=-1).reshape(t.shape), 0.4)
    assert out is not None
    assert torch.equal(out == 0, ref == 0)
