"""Non-finite training: one error for every training loop (MIL, segmentation, MOSAIC).

A NaN or infinite loss, or a model whose weights became NaN/inf, stops the run with
:class:`TrainingDivergedError`: a ``FloatingPointError`` (what the loops raised before) that is also a
``RuntimeError`` and a :class:`~medmoe.errors.MedmoeError`, so the command line prints it as one ``error:``
line. The message names the step and the
likely causes; a non-finite model is never saved as the best checkpoint (:func:`check_finite_model`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import MedmoeError

__all__ = ["TrainingDivergedError", "check_finite_loss", "check_finite_model", "non_finite_parameters"]


class TrainingDivergedError(MedmoeError, FloatingPointError, RuntimeError):
    """Training produced a non-finite loss or non-finite weights; the run was stopped."""


def check_finite_loss(loss: float | torch.Tensor, where: str, hint: str) -> float:
    """``loss`` as a float; raise :class:`TrainingDivergedError` naming ``where`` (``"epoch 2, step 5"``)
    and ``hint`` (what to change) when it is NaN or infinite."""
    value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
    if not math.isfinite(value):
        raise TrainingDivergedError(f"training diverged: the loss is {value} at {where}; {hint}")
    return value


def non_finite_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters and buffers of ``model`` holding a NaN or infinite value."""
    bad = [name for name, p in model.named_parameters() if p.is_floating_point() and not torch.isfinite(p).all()]
    bad += [name for name, b in model.named_buffers() if b.is_floating_point() and not torch.isfinite(b).all()]
    return bad


def check_finite_model(model: nn.Module, where: str, hint: str) -> None:
    """Raise :class:`TrainingDivergedError` when ``model`` has non-finite weights (it is then not saved)."""
    bad = non_finite_parameters(model)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise TrainingDivergedError(
            f"training diverged: the weights are NaN/inf at {where} ({', '.join(bad[:3])}{more}); this model is "
            f"not saved (the last good checkpoint is kept); {hint}"
        )
