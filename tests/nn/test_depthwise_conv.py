"""medmoe.nn.depthwise_conv: the channels-last depthwise kernel against F.conv2d, and the folded PPEG kernel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medmoe.nn import depthwise_conv, native_kernels
from medmoe.nn.depthwise_conv import (
    depthwise_conv2d_nhwc,
    folded_depthwise_kernel,
    head_sequence_conv,
    native_depthwise_conv_available,
)

needs_kernel = pytest.mark.skipif(
    not native_depthwise_conv_available(), reason="no C++ compiler with OpenMP here: the kernel is not built"
)


def _reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    k = weight.shape[-1]
    y = F.conv2d(x.permute(0, 3, 1, 2), weight.unsqueeze(1), bias, padding=k // 2, groups=x.shape[-1])
    return y.permute(0, 2, 3, 1)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "shape,k",
    [
        ((1, 18, 18, 512), 7),  # TransMIL / RRT PPEG on Mammoth's 324-token grid
        ((2, 5, 11, 70), 3),  # channel tail (70 = 4 x 16 + 6), a row longer than one register block
        ((3, 9, 4, 20), 5),
        ((1, 1, 1, 8), 5),  # one pixel: every tap but the centre falls in the padding
        ((2, 3, 17, 33), 1),
    ],
)
def test_kernel_matches_conv2d_values_and_gradients(
    shape: tuple[int, ...], k: int, dtype: torch.dtype
) -> None:
    torch.manual_seed(0)
    c = shape[-1]
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    weight = torch.randn(c, k, k, dtype=dtype, requires_grad=True)
    bias = torch.randn(c, dtype=dtype, requires_grad=True)
    out = depthwise_conv2d_nhwc(x, weight, bias)
    ref = _reference(x, weight, bias)
    tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 1e-12, "rtol": 1e-12}
    torch.testing.assert_close(out, ref, **tol)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, weight, bias), g)
    for a, b in zip(grads, torch.autograd.grad(ref, (x, weight, bias), g)):
        torch.testing.assert_close(a, b, **tol)


@needs_kernel
def test_gradcheck_without_bias_and_from_conv2d_weight_layout() -> None:
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 1, 3, 3, dtype=torch.float64, requires_grad=True)  # nn.Conv2d's (c, 1, k, k)
    assert torch.autograd.gradcheck(lambda a, b: depthwise_conv2d_nhwc(a, b), (x, w))
    torch.testing.assert_close(depthwise_conv2d_nhwc(x, w), _reference(x, w.squeeze(1), None))


def test_fallback_without_kernel_is_conv2d(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDMOE_NATIVE_KERNELS", "0")
    monkeypatch.setattr(native_kernels, "_loaded", {})
    assert not native_depthwise_conv_available()
    x, w, b = torch.randn(1, 6, 7, 9), torch.randn(9, 5, 5), torch.randn(9)
    torch.testing.assert_close(depthwise_conv2d_nhwc(x, w, b), _reference(x, w, b), rtol=0, atol=0)
    monkeypatch.setattr(native_kernels, "_loaded", {})


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="odd kh, kw"):
        depthwise_conv2d_nhwc(torch.randn(1, 4, 4, 3), torch.randn(3, 4, 4))
    with pytest.raises(ValueError, match="odd kh, kw"):
        depthwise_conv2d_nhwc(torch.randn(1, 4, 4, 3), torch.randn(2, 3, 3))
    with pytest.raises(ValueError, match=r"\(b, h, w, c\)"):
        depthwise_conv2d_nhwc(torch.randn(4, 4, 3), torch.randn(3, 3, 3))


@pytest.mark.parametrize("sizes", [(7, 5, 3), (7,), (3, 5)])
def test_folded_kernel_is_the_sum_of_the_convolutions_plus_identity(sizes: tuple[int, ...]) -> None:
    torch.manual_seed(1)
    c = 12
    convs = [nn.Conv2d(c, c, k, 1, k // 2, groups=c).double() for k in sizes]
    grid = torch.randn(2, c, 6, 5, dtype=torch.float64)
    ref = grid + sum(conv(grid) for conv in convs)
    weight, bias = folded_depthwise_kernel(convs, identity=True)
    out = depthwise_conv2d_nhwc(grid.permute(0, 2, 3, 1), weight, bias).permute(0, 3, 1, 2)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    params = [p for conv in convs for p in conv.parameters()]
    for a, b in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(a, b)


def test_folded_kernel_refuses_other_convolutions() -> None:
    for conv in (
        nn.Conv2d(4, 4, 3, 2, 1, groups=4),  # stride 2
        nn.Conv2d(4, 4, 3, 1, 1),  # dense
        nn.Conv2d(4, 4, 3, 1, 0, groups=4),  # "valid" padding
        nn.Conv2d(4, 4, 4, 1, 2, groups=4),  # even kernel
    ):
        with pytest.raises(ValueError, match="depthwise"):
            folded_depthwise_kernel([conv])
    with pytest.raises(ValueError, match="at least one"):
        folded_depthwise_kernel([])


@needs_kernel
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape,k", [((1, 4, 325, 128), 33), ((2, 3, 9, 9), 5), ((1, 2, 1, 20), 3)])
def test_head_sequence_conv_matches_the_conv_layer(shape: tuple[int, ...], k: int, bias: bool) -> None:
    torch.manual_seed(2)
    h = shape[1]
    conv = nn.Conv2d(h, h, (k, 1), padding=(k // 2, 0), groups=h, bias=bias).double()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    out, ref = head_sequence_conv(x, conv), conv(x)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    params = (x, *conv.parameters())
    for a, b in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("identity,use_bias", [(True, False), (True, True), (False, False)])
def test_head_sequence_conv_identity_and_bias_options(native: bool, identity: bool, use_bias: bool, monkeypatch) -> None:
    if native and not native_depthwise_conv_available():
        pytest.skip("no C++ compiler with OpenMP here: the kernel is not built")
    if not native:
        monkeypatch.setattr(depthwise_conv, "native_depthwise_conv_available", lambda: False)
    torch.manual_seed(3)
    conv = nn.Conv2d(4, 4, (15, 1), padding=(7, 0), groups=4).double()  # RRT's EPEG
    x = torch.randn(3, 4, 9, 16, dtype=torch.float64, requires_grad=True)
    out = head_sequence_conv(x, conv, identity=identity, use_bias=use_bias)
    ref = F.conv2d(x, conv.weight, conv.bias if use_bias else None, padding=(7, 0), groups=4)
    ref = ref + x if identity else ref
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    params = (x, conv.weight)
    for a, b in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g), strict=True):
        torch.testing.assert_close(a, b)


def test_head_sequence_conv_refuses_other_layers() -> None:
    x = torch.randn(1, 4, 10, 8)
    for conv in (
        nn.Conv2d(4, 4, (3, 3), padding=(1, 1), groups=4),
        nn.Conv2d(4, 4, (3, 1), padding=(1, 0)),
        nn.Conv2d(2, 2, (3, 1), padding=(1, 0), groups=2),
    ):
        with pytest.raises(ValueError, match="per-head"):
            head_sequence_conv(x, conv)
