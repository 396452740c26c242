"""medmoe.nn.slot_dispatch (native CPU kernel) against scaled_dot_product_attention; native_kernels plumbing."""

import ctypes
import shutil

import pytest
import torch
import torch.nn.functional as F

from medmoe.nn import native_kernels
from medmoe.nn.slot_dispatch import native_slot_dispatch_available, slot_dispatch

needs_kernel = pytest.mark.skipif(
    not native_slot_dispatch_available(), reason="no C++ compiler with OpenMP here: the kernel is not built"
)


def sdpa(keys, x, mask=None):
    am = None if mask is None else mask[:, None, None, :]
    return F.scaled_dot_product_attention(keys.unsqueeze(0).expand(x.shape[0], -1, -1, -1), x, x, attn_mask=am,
                                          scale=1.0)


def case(b, h, s, n, layout="bnhd", seed=0):
    g = torch.Generator().manual_seed(seed)
    keys = (torch.randn(h, s, 16, generator=g) * 0.7).requires_grad_()
    if layout == "bnhd":  # Mammoth's layout: (b, n, h, d) features viewed as (b, h, n, d)
        x = torch.randn(b, n, h, 16, generator=g).requires_grad_()
        return keys, x, x.transpose(1, 2)
    x = torch.randn(b, h, n, 16, generator=g).requires_grad_()
    return keys, x, x


def assert_matches_sdpa(keys, leaf, x, mask):
    """Native kernel vs SDPA: outputs, and the gradients of keys and of the leaf behind x. Returns ours."""
    out = slot_dispatch(keys, x, mask)
    assert "medmoe_slot_dispatch" in out.grad_fn.name()  # the kernel's operator ran
    ref = sdpa(keys, x, mask)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    w = torch.randn_like(ref)
    ours = torch.autograd.grad((out * w).sum(), (keys, leaf))
    theirs = torch.autograd.grad((ref * w).sum(), (keys, leaf))
    for a, r in zip(ours, theirs):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=2e-5)
    return ours


@needs_kernel
@pytest.mark.parametrize(
    "b,h,s,n,layout",
    [(1, 16, 300, 1, "bnhd"), (2, 3, 37, 15, "bnhd"), (2, 3, 16, 17, "bhnd"), (1, 2, 300, 1000, "bnhd"),
     (3, 1, 5, 130, "bhnd")],
)
def test_native_matches_sdpa_values_and_gradients(b, h, s, n, layout):
    keys, leaf, x = case(b, h, s, n, layout)
    assert_matches_sdpa(keys, leaf, x, None)


@needs_kernel
def test_native_with_padding_mask():
    keys, leaf, x = case(3, 4, 40, 90)
    mask = torch.ones(3, 90, dtype=torch.bool)
    mask[1, 50:] = False
    mask[2, ::3] = False  # holes, not only right padding
    ours = assert_matches_sdpa(keys, leaf, x, mask)
    assert ours[1][1, 50:].abs().max() == 0 and ours[1][2, ::3].abs().max() == 0  # padded patches: no gradient


def test_falls_back_to_sdpa_outside_the_kernel(monkeypatch):
    """float64, head size 8 and a disabled kernel all take the SDPA path (same maths)."""
    keys, _, x = case(2, 3, 10, 20)
    k64, x64 = keys.detach().double(), x.detach().double()
    torch.testing.assert_close(slot_dispatch(k64, x64), sdpa(k64, x64))
    k8, x8 = torch.randn(2, 5, 8), torch.randn(1, 2, 9, 8)
    torch.testing.assert_close(slot_dispatch(k8, x8), sdpa(k8, x8))
    monkeypatch.setenv("MEDMOE_NATIVE_KERNELS", "0")
    assert native_kernels.load_kernel("slot_dispatch") is None
    torch.testing.assert_close(slot_dispatch(keys, x), sdpa(keys, x))


def test_build_failure_is_reported_not_raised(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MEDMOE_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(native_kernels, "_loaded", {})
    with caplog.at_level("INFO", logger="medmoe.nn.native_kernels"):
        assert native_kernels.load_kernel("slot_dispatch") is None
    assert "no C++ compiler" in caplog.text
    monkeypatch.setattr(native_kernels, "_loaded", {})


def test_compiler_errors_are_raised_by_build_with_their_message(tmp_path, monkeypatch):
    if shutil.which("g++") is None:
        pytest.skip("no g++ here")
    monkeypatch.setenv("MEDMOE_KERNEL_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.cpp"
    bad.write_text("this is not C++")
    with pytest.raises(RuntimeError, match="g\\+\\+ failed on broken.cpp"):
        native_kernels._build("broken", bad, shutil.which("g++"))
    assert not list((tmp_path / "cache").glob("*.so"))  # no half-written library left behind


@needs_kernel
def test_a_signature_for_a_missing_function_is_reported_not_raised(monkeypatch, caplog):
    monkeypatch.setattr(native_kernels, "_loaded", {})
    with caplog.at_level("INFO", logger="medmoe.nn.native_kernels"):
        assert native_kernels.load_kernel("dropout", {"no_such_function": ([], None)}) is None
    assert "no_such_function" in caplog.text
    monkeypatch.setattr(native_kernels, "_loaded", {})


@needs_kernel
def test_headers_beside_a_kernel_are_part_of_its_cache_key(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDMOE_KERNEL_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "k.cpp"
    src.write_text('#include "k.h"\nextern "C" int value() { return VALUE; }\n')
    (tmp_path / "k.h").write_text("#define VALUE 1\n")
    first = native_kernels._build("k", src, shutil.which("g++"))
    (tmp_path / "k.h").write_text("#define VALUE 2\n")
    second = native_kernels._build("k", src, shutil.which("g++"))
    assert first != second  # an edited header rebuilds, it does not reuse the stale library
    assert ctypes.CDLL(str(second)).value() == 2
