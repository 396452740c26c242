"""Resolve ``precision='auto'`` to a Lightning Fabric precision string for the MIL and MOSAIC trainers."""

from __future__ import annotations

import torch


def resolve_precision(precision: str, accelerator: str) -> str:
    """The Fabric precision to use: ``precision`` itself unless it is ``'auto'``.

    ``'auto'`` means mixed precision where a CUDA device will be used (``bf16-mixed`` where the GPU supports
    bfloat16, else ``16-mixed``) and full ``32-true`` on the CPU, including when ``accelerator`` asks for
    CUDA on a machine without it (Fabric then reports the missing device itself).
    """
    if precision != "auto":
        return precision
    wants_cuda = accelerator in ("cuda", "gpu", "auto")
    if wants_cuda and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"
