"""Importing reference packages that cannot be imported as they are (benchmarks and parity tests only).

``lin_mil`` 1.0.1 imports ``timm`` only for ``DropPath``, and timm does not import with the CPU torch
used here. :func:`import_lin_mil` puts a small stand-in ``timm.models.layers`` into ``sys.modules`` for
the import and restores the previous entries afterwards.
"""

from __future__ import annotations

import importlib
import sys
import types

import torch
from torch import nn

__all__ = ["import_lin_mil"]


class _StandInDropPath(nn.Module):
    """timm's DropPath semantics: per-sample residual drop in training, identity in eval."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        return x * x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep) / keep


def import_lin_mil() -> types.ModuleType:
    """Import ``lin_mil`` with a stand-in ``timm.models.layers.DropPath``.

    Raises:
        ImportError: ``lin_mil`` is not installed (``pip install --no-deps lin-mil==1.0.1``).
    """
    names = ("timm", "timm.models", "timm.models.layers")
    saved = {name: sys.modules.get(name) for name in names}
    for name in names:
        sys.modules[name] = types.ModuleType(name)
    sys.modules["timm.models.layers"].DropPath = _StandInDropPath  # type: ignore[attr-defined]
    try:
        return importlib.import_module("lin_mil")
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
