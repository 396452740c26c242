"""Parity of medmoe's Lin-MIL with ``lin_mil`` 1.0.1 (``Lin_MIL``), weights copied reference -> medmoe.

* Linear (main path), softmax and Nyström (ablation path): logits, the input gradient and every
  parameter gradient agree within 1e-5 (fp32, eval mode), for batch 1 and 2, cls and mean pooling;
  the linear variant's attention map (the reference's mean of the numerator) agrees too. Linear
  attention's gradients are compared in fp32 with a smooth feature map (GeLU) and in fp64 with ReLU:
  ReLU's gradient jumps at 0, and fp32 rounding can put a value within ~1e-7 of 0 on either side. The latent
  width is 128 instead of 512 to keep the test fast (softmax and Nyström keep the reference's fixed
  head width 64).
* Dilated: the reference needs flash-attn (CUDA) and casts the block to fp16. Here its
  ``DilatedAttention`` runs with a pure-PyTorch stand-in for ``flash_attn_func`` (dense softmax attention
  returning the output and the log-sum-exp, the only thing the kernel provides) and its block is run in
  fp32; medmoe's dilated attention uses ``reference_padding=True`` (zero padding as keys, as the
  reference). ``tests/nn/test_dilated_attention.py`` also checks medmoe's version against naive
  explicit loops over segments, heads and branches.

``lin_mil`` imports ``timm`` only for ``DropPath`` (and timm does not import with this torch), so a
small stand-in ``timm.models.layers`` module is put into ``sys.modules`` while ``lin_mil`` is imported.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

from medmoe.bench.references import import_lin_mil
from medmoe.models.mil.linmil import LinMIL

pytestmark = pytest.mark.parity


try:
    lin_mil = import_lin_mil()
except ImportError:
    pytest.skip("lin_mil (pip install --no-deps lin-mil==1.0.1) is not installed", allow_module_level=True)

IN_DIM, NUM_CLASSES, N, LATENT = 96, 3, 150, 128
ATOL = RTOL = 1e-5


def _pair(attention: str, pooling: str, ablation: bool, act: str = "ReLU") -> tuple[nn.Module, LinMIL]:
    torch.manual_seed(0)
    cfg = lin_mil.Config(latent_dim=LATENT, attention=attention, pooling=pooling, ablation=ablation, act=act)
    ref = lin_mil.Lin_MIL(num_classes=NUM_CLASSES, input_dim=IN_DIM, config=cfg).eval()
    ours = LinMIL(LinMIL.config_from_reference(cfg, input_dim=IN_DIM, num_classes=NUM_CLASSES)).eval()
    ours.load_reference_state_dict(ref.state_dict())
    return ref, ours


def _compare(ref: nn.Module, ours: LinMIL, batch: int, compare_map: bool, dtype: torch.dtype = torch.float32) -> None:
    ref.to(dtype)
    ours.to(dtype)
    torch.manual_seed(1)
    x = torch.randn(batch, N, IN_DIM, dtype=dtype)
    x_ref, x_ours = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    logits_ref, map_ref = ref(x_ref)
    out = ours(x_ours, return_attention=True)
    torch.testing.assert_close(out.logits, logits_ref, atol=ATOL, rtol=RTOL)
    weights = torch.randn_like(logits_ref)
    (logits_ref * weights).sum().backward()
    (out.logits * weights).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, atol=ATOL, rtol=RTOL)
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        ref_name = name.replace("patch_embed.0.", "projection.")
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, ref_params[ref_name].grad, atol=ATOL, rtol=RTOL, msg=name)
    if compare_map:
        torch.testing.assert_close(out.attention[:, 0], map_ref, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("attention", ["linear", "softmax", "nystrom"])
def test_logits_and_gradients_match(attention: str, pooling: str, batch: int) -> None:
    # fp32. The linear variant uses a smooth feature map here (GeLU): with ReLU, a query/key value within
    # float rounding of 0 may land on either side of the kink in two correct implementations, and the
    # gradient jumps there (the logits do not); ReLU is checked in float64 below.
    act = "GeLU" if attention == "linear" else "ReLU"
    ref, ours = _pair(attention, pooling, ablation=attention != "linear", act=act)
    if attention == "nystrom":
        for block in ours.transformer:
            block.attn.pinv_scale = "batch"  # the reference scales pinv with batch-wide maxima
    # Nyström in float64: 150 tokens + cls pad to 192 with 64 landmarks, so medmoe computes on the real
    # landmarks only (same maths, other rounding), and in float32 the reference's residual-convolution
    # weight gradient is itself off by several % against float64 (see test_nystrom_parity)
    dtype = torch.float64 if attention == "nystrom" else torch.float32
    _compare(ref, ours, batch, compare_map=attention == "linear", dtype=dtype)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_linear_relu_float64(pooling: str, batch: int) -> None:
    ref, ours = _pair("linear", pooling, ablation=False)
    _compare(ref, ours, batch, compare_map=True, dtype=torch.float64)


def test_linear_relu_logits_float32() -> None:
    ref, ours = _pair("linear", "cls", ablation=False)
    x = torch.randn(2, N, IN_DIM)
    logits_ref, map_ref = ref(x)
    out = ours(x, return_attention=True)
    torch.testing.assert_close(out.logits, logits_ref, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(out.attention[:, 0], map_ref, atol=ATOL, rtol=RTOL)


def test_linear_attention_in_the_ablation_path() -> None:
    ref, ours = _pair("linear", "cls", ablation=True, act="GeLU")  # the ablation path fixes ReLU
    assert isinstance(ours.transformer[0].attn.act, nn.ReLU)
    _compare(ref, ours, 2, compare_map=True, dtype=torch.float64)


def test_reference_ignores_attention_without_ablation() -> None:
    cfg = lin_mil.Config(attention="softmax", ablation=False, act="GeLU")
    config = LinMIL.config_from_reference(cfg, input_dim=IN_DIM, num_classes=NUM_CLASSES)
    assert config.attention == "linear" and config.act == "GeLU"
    ref, ours = _pair("linear", "mean", ablation=False, act="GeLU")
    _compare(ref, ours, 1, compare_map=True)


def _dense_flash_stand_in(q, k, v, dropout=0.0, bias=None, softmax_scale=None, is_causal=False):
    """``flash_attn_func`` semantics on (b, l, h, d) tensors: returns (out (b, l, h, d), lse (b, h, l))."""
    scale = softmax_scale or q.shape[-1] ** -0.5
    logits = torch.einsum("blhd,bmhd->bhlm", q, k) * scale
    return torch.einsum("bhlm,bmhd->blhd", logits.softmax(-1), v), logits.logsumexp(-1)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_dilated_with_a_dense_kernel_stand_in(monkeypatch: pytest.MonkeyPatch, pooling: str, batch: int) -> None:
    dilated_module = importlib.import_module("lin_mil.attention.dilated_attention")
    monkeypatch.setattr(dilated_module, "flash_attn_func", _dense_flash_stand_in)
    ref, ours = _pair("dilated", pooling, ablation=True)
    for block in ref.transformer:
        block.attention_type = "dilated (fp32)"  # skip the block's fp16 cast; the attention is unchanged
    for block in ours.transformer:
        block.attn.reference_padding = True
    _compare(ref, ours, batch, compare_map=False)


@pytest.mark.parametrize("n", [1, 40, 128, 300])
def test_dilated_attention_module(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    dilated_module = importlib.import_module("lin_mil.attention.dilated_attention")
    monkeypatch.setattr(dilated_module, "flash_attn_func", _dense_flash_stand_in)
    from medmoe.nn.attention.dilated import DilatedAttention

    ref = dilated_module.DilatedAttention(embed_dim=64, num_heads=8, self_attention=True,
                                          args=dilated_module.Dilated_Args())
    ours = DilatedAttention(64, 8, reference_padding=True)
    x = torch.randn(2, n, 64)
    x_ref, x_ours = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_ref, _ = ref(x_ref)
    out, _ = ours(x_ours)
    torch.testing.assert_close(out, out_ref, atol=ATOL, rtol=RTOL)
    g = torch.randn_like(out)
    (out_ref * g).sum().backward()
    (out * g).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, atol=ATOL, rtol=RTOL)
