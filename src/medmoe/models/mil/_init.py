"""MIL-Lab's weight initialisation, as a reusable function.

MIL-Lab calls ``initialize_weights()`` at the end of every model's constructor:

* every ``nn.Linear``: Kaiming-uniform weights (gain for ReLU), zero bias;
* ``nn.Conv2d``: Xavier-uniform weights, zero bias;
* ``nn.LayerNorm``, ``nn.BatchNorm1d``, ``nn.BatchNorm2d``: weight 1, bias 0.

It walks *all* submodules, so when Mammoth is the patch embedding its ``wq`` query projection (an
``nn.Linear``) is re-initialised with Kaiming too, replacing Mammoth's own Xavier init — exactly what
happens in the MIL-Lab fork the MAMMOTH paper trained with. Pass ``skip=(model.patch_embed,)`` to keep a
submodule's own initialisation. Other layers (``nn.Conv1d``, medmoe's custom norms, raw parameters)
keep their PyTorch / layer-specific defaults, as in MIL-Lab.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

__all__ = ["init_classifier", "initialize_weights"]


def initialize_weights(module: nn.Module, skip: Iterable[nn.Module] = ()) -> nn.Module:
    """Apply MIL-Lab's initialisation to every submodule of ``module`` (in place).

    Args:
        module: the model (or any module) to initialise.
        skip: submodules whose whole subtree is left untouched.

    Returns:
        ``module`` (for chaining).
    """
    skipped = {id(m) for s in skip for m in s.modules()}
    for layer in module.modules():
        if id(layer) in skipped:
            continue
        if isinstance(layer, nn.Linear):
            init_classifier(layer)
        elif isinstance(layer, nn.Conv2d):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d)):
            if layer.weight is not None:
                nn.init.ones_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


def init_classifier(layer: nn.Linear) -> nn.Linear:
    """Kaiming-uniform (ReLU gain) weights and zero bias, MIL-Lab's ``initialize_classifier``."""
    nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer
