"""``resolve_precision``: 'auto' is mixed precision on CUDA only; explicit choices pass through."""

from __future__ import annotations

import pytest
import torch

from medmoe.engine.precision import resolve_precision


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed", "64-true"])
def test_an_explicit_precision_is_kept(precision: str) -> None:
    assert resolve_precision(precision, "cpu") == precision
    assert resolve_precision(precision, "cuda") == precision


@pytest.mark.parametrize("accelerator", ["auto", "cpu", "cuda", "gpu"])
def test_auto_is_full_precision_without_cuda(monkeypatch, accelerator: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto", accelerator) == "32-true"


@pytest.mark.parametrize("bf16", [True, False])
def test_auto_is_mixed_precision_on_cuda_unless_the_cpu_is_asked_for(monkeypatch, bf16: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    expected = "bf16-mixed" if bf16 else "16-mixed"
    assert resolve_precision("auto", "auto") == expected
    assert resolve_precision("auto", "cuda") == expected
    assert resolve_precision("auto", "gpu") == expected
    assert resolve_precision("auto", "cpu") == "32-true"
