"""The AdamW every medmoe training loop uses: PyTorch's fused implementation where it exists.

``torch.optim.AdamW(fused=True)`` updates each parameter in one pass (one kernel per tensor on CPU and
CUDA) instead of the default loop's five to six elementwise passes. Same update rule; results differ only
by float rounding; on small bags, where the optimiser step is a large share of a training step, it is
noticeably faster (docs/performance-notes.md). Falls back to the default implementation where fused is not
available (other devices, non-float parameters, older PyTorch).

:func:`make_optimizer` picks between it and ``torch.optim.Adam`` with coupled L2 weight decay
(``TrainConfig.optimizer='adam'``: the gradient gets ``weight_decay * p`` before Adam's moments) and
``torch.optim.SGD`` with momentum 0.9 and the same L2 decay (``'sgd'``: the MI-Net benchmark setting of Wang
et al. 2018, which a secondary source gives for Ilse et al. 2018's MIL-benchmark runs; see
docs/reproducing-ilse2018.md), fused the same way where PyTorch allows it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["OPTIMIZERS", "SGD_MOMENTUM", "make_adamw", "make_optimizer"]

_FUSED_DEVICES = ("cpu", "cuda")

#: Optimisers ``TrainConfig.optimizer`` accepts.
OPTIMIZERS = ("adamw", "adam", "sgd")

#: The momentum of ``optimizer='sgd'``.
SGD_MOMENTUM = 0.9


def _fused_if_possible(
    cls: type[torch.optim.Optimizer], params: Iterable[torch.nn.Parameter], **kwargs: float
) -> torch.optim.Optimizer:
    """``cls(params, **kwargs)``, with ``fused=True`` when every parameter's device and dtype allow it."""
    params = list(params)
    fusable = bool(params) and all(
        p.device.type in _FUSED_DEVICES and p.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
        for p in params
    )
    if fusable:
        try:
            return cls(params, **kwargs, fused=True)
        except (RuntimeError, TypeError, ValueError):  # pragma: no cover - depends on the torch build
            pass
    return cls(params, **kwargs)


def make_adamw(
    params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, eps: float = 1e-8
) -> torch.optim.AdamW:
    """``torch.optim.AdamW(params, lr, weight_decay=..., eps=...)``, fused when every parameter allows it."""
    return _fused_if_possible(torch.optim.AdamW, params, lr=lr, weight_decay=weight_decay, eps=eps)


def make_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, eps: float = 1e-8
) -> torch.optim.Optimizer:
    """``'adamw'`` (decoupled weight decay, :func:`make_adamw`), ``'adam'`` (``torch.optim.Adam``: L2
    weight decay added to the gradient, betas (0.9, 0.999)) or ``'sgd'`` (``torch.optim.SGD``, momentum
    :data:`SGD_MOMENTUM`, L2 weight decay; ``eps`` unused), fused when every parameter allows it."""
    if name == "adamw":
        return make_adamw(params, lr, weight_decay, eps)
    if name == "adam":
        return _fused_if_possible(torch.optim.Adam, params, lr=lr, weight_decay=weight_decay, eps=eps)
    if name == "sgd":
        return _fused_if_possible(torch.optim.SGD, params, lr=lr, weight_decay=weight_decay, momentum=SGD_MOMENTUM)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {list(OPTIMIZERS)}")
