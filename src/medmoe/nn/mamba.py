"""Mamba block (Gu & Dao 2023) in pure PyTorch, with an optional ``mamba_ssm`` CUDA backend.

Notation: ``b`` batch, ``L`` tokens, ``d_model`` features, ``d_inner = expand * d_model``,
``n = d_state``, ``r = dt_rank``.

    x, z   = in_proj(u).chunk(2)                       # (b, L, d_inner) each
    x      = silu(causal depthwise conv1d(x))          # kernel d_conv, left padding d_conv - 1
    dt, B, C = x_proj(x).split([r, n, n])
    dt     = softplus(dt_proj(dt))                     # (b, L, d_inner)
    y      = selective_scan(x, dt, A = -exp(A_log), B, C, D)
    out    = out_proj(y * silu(z))

**Parameters and state dicts.** Names and shapes are those of ``mamba_ssm.Mamba`` and of ``mambapy``'s
``MambaBlock`` (they agree): ``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``;
a state dict of either loads with ``load_state_dict(..., strict=True)``. :meth:`Mamba.from_reference` builds
a block from a reference instance, and :func:`mamba_state_dict_from_reference` strips a reference prefix
(``mixer.`` in ``mambapy``'s ``ResidualBlock``, ``layers.{i}.mixer.``, ...). Initialisation follows
``mamba_ssm``: ``dt_rank = ceil(d_model / 16)``; ``dt_proj.weight ~ U(-r^-0.5, r^-0.5)`` (``dt_scale`` 1);
``dt_proj.bias = softplus^-1(dt)`` with ``dt`` log-uniform in ``[dt_min, dt_max]`` (floor 1e-4); S4D-real
``A_log = log(1..n)`` for every channel; ``D = 1``.

**Backends.** ``"torch"``: the chunked pure-PyTorch scan (:func:`~medmoe.nn.selective_scan.selective_scan`,
fast and memory-lean, custom autograd). ``"sequential"``: the plain loop (reference, tests). ``"mamba_ssm"``:
``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` (CUDA only; imported lazily, not a dependency).
``"auto"`` (default) picks ``"mamba_ssm"`` when it imports and the input is on CUDA, else ``"torch"``.

**Memory.** ``checkpointing=True`` recomputes the block in backward (``torch.utils.checkpoint``) so only its
input is kept between forward and backward.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .backend import make_linear
from .checks import check_positive_ints
from .selective_scan import DEFAULT_CHUNK_SIZE, selective_scan

__all__ = ["MAMBA_BACKENDS", "Mamba", "mamba_state_dict_from_reference", "resolve_mamba_backend"]

MAMBA_BACKENDS = ("auto", "torch", "sequential", "mamba_ssm")
_PARAM_NAMES = ("in_proj.", "conv1d.", "x_proj.", "dt_proj.", "A_log", "D", "out_proj.")


@functools.lru_cache(maxsize=1)
def _load_mamba_ssm_scan() -> Callable[..., Tensor] | None:
    """``mamba_ssm``'s CUDA ``selective_scan_fn``, or None when ``mamba_ssm`` does not import (cached: a
    failed import is not cached by Python and would be retried at every forward)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - ImportError, or a broken CUDA extension (a common install failure)
        return None
    return selective_scan_fn


def resolve_mamba_backend(backend: str, device: torch.device | str) -> str:
    """The backend that runs for ``backend`` on ``device``: ``"auto"`` becomes ``"mamba_ssm"`` (importable
    and CUDA) or ``"torch"``. An explicit ``"mamba_ssm"`` that cannot run raises a clear error."""
    if backend not in MAMBA_BACKENDS:
        raise ValueError(f"Mamba: backend must be one of {MAMBA_BACKENDS}, got {backend!r}")
    device = torch.device(device)
    if backend == "auto":
        return "mamba_ssm" if device.type == "cuda" and _load_mamba_ssm_scan() is not None else "torch"
    if backend == "mamba_ssm":
        if _load_mamba_ssm_scan() is None:
            raise ImportError(
                "Mamba: backend='mamba_ssm' needs the mamba-ssm package (CUDA build); it did not import. "
                "Use backend='auto' or 'torch' for the pure-PyTorch scan."
            )
        if device.type != "cuda":
            raise ValueError(
                f"Mamba: backend='mamba_ssm' runs on CUDA tensors only, got a {device.type} input"
            )
    return backend


def mamba_state_dict_from_reference(state_dict: dict[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """The entries of a reference state dict below ``prefix``, with the prefix removed.

    ``mamba_ssm.Mamba`` and ``mambapy.mamba.MambaBlock`` use medmoe's names, so this only selects and strips,
    e.g. ``prefix="layers.0.mixer."`` for a ``mambapy.mamba.Mamba`` model or ``"mixer."`` for a residual block.
    """
    out = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    out = {k: v for k, v in out.items() if k.startswith(_PARAM_NAMES)}
    if not out:
        raise ValueError(f"no Mamba parameters found below prefix {prefix!r}")
    return out


class Mamba(nn.Module):
    """Mamba (S6) block, ``mamba_ssm.Mamba``-compatible parameters; see the module docstring.

    Args:
        d_model: input and output features.
        d_state: SSM state size ``n``.
        d_conv: causal depthwise convolution width.
        expand: ``d_inner = expand * d_model``.
        dt_rank: rank of the ``dt`` projection, or ``"auto"`` for ``ceil(d_model / 16)``.
        dt_min, dt_max: range of the initial step sizes.
        bias: biases in ``in_proj`` and ``out_proj``.
        conv_bias: bias in ``conv1d``.
        backend: ``"auto"``, ``"torch"``, ``"sequential"`` or ``"mamba_ssm"``.
        chunk_size: chunk length of the ``"torch"`` scan.
        checkpointing: recompute the block in backward instead of storing its activations.
        dt_init: ``"random"`` (uniform ``dt_proj.weight``) or ``"constant"``.
        dt_scale: scale of the ``dt_proj.weight`` initialisation.
        dt_init_floor: lower clamp of the initial step sizes.

    Shapes: ``(b, L, d_model) -> (b, L, d_model)``. The scan is causal, so no padding mask is needed:
    right-padding never changes the outputs of the real tokens.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        bias: bool = False,
        conv_bias: bool = True,
        backend: str = "auto",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        checkpointing: bool = False,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
    ) -> None:
        super().__init__()
        check_positive_ints(
            "Mamba", d_model=d_model, d_state=d_state, d_conv=d_conv, expand=expand, chunk_size=chunk_size
        )
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        if not isinstance(dt_rank, int) or isinstance(dt_rank, bool) or dt_rank < 1:
            raise ValueError(f"Mamba: dt_rank must be a positive integer or 'auto', got {dt_rank!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"Mamba: need 0 < dt_min <= dt_max, got dt_min={dt_min!r}, dt_max={dt_max!r}")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"Mamba: dt_init must be 'random' or 'constant', got {dt_init!r}")
        if backend not in MAMBA_BACKENDS:
            raise ValueError(f"Mamba: backend must be one of {MAMBA_BACKENDS}, got {backend!r}")
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank
        self.backend = backend
        self.chunk_size = chunk_size
        self.checkpointing = bool(checkpointing)

        self.in_proj = make_linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(
            self.d_inner,
            self.d_inner,
            kernel_size=d_conv,
            groups=self.d_inner,
            padding=d_conv - 1,
            bias=conv_bias,
        )
        self.x_proj = make_linear(self.d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = make_linear(dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        self.out_proj = make_linear(self.d_inner, d_model, bias=bias)
        self.A_log._no_weight_decay = True  # type: ignore[attr-defined]
        self.D._no_weight_decay = True  # type: ignore[attr-defined]
        self._init_ssm(dt_min, dt_max, dt_init, dt_scale, dt_init_floor)

    @torch.no_grad()
    def _init_ssm(
        self, dt_min: float, dt_max: float, dt_init: str, dt_scale: float, dt_init_floor: float
    ) -> None:
        """``mamba_ssm``'s initialisation of ``dt_proj``, ``A_log`` and ``D`` (see the module docstring)."""
        std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.dt_proj.bias._no_reinit = True  # type: ignore[attr-defined]
        a = torch.arange(1, self.d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log.copy_(torch.log(a))
        self.D.fill_(1.0)

    @classmethod
    def from_reference(cls, reference: nn.Module, **kwargs: Any) -> Mamba:
        """A block with the configuration and weights of a ``mambapy.mamba.MambaBlock`` or ``mamba_ssm.Mamba``.

        ``kwargs`` (``backend``, ``chunk_size``, ``checkpointing``) are passed to the constructor.
        """
        cfg = getattr(reference, "config", None)
        if cfg is not None and hasattr(cfg, "expand_factor"):  # mambapy
            d_model, d_state, d_conv = cfg.d_model, cfg.d_state, cfg.d_conv
            expand, dt_rank = cfg.expand_factor, cfg.dt_rank
            if getattr(cfg, "inner_layernorms", False):
                raise ValueError(
                    "Mamba.from_reference: mambapy blocks with inner_layernorms=True are not supported"
                )
        elif hasattr(reference, "d_model") and hasattr(reference, "d_state"):  # mamba_ssm
            d_model, d_state, d_conv = reference.d_model, reference.d_state, reference.d_conv
            expand, dt_rank = reference.expand, reference.dt_rank
        else:
            raise ValueError(
                f"Mamba.from_reference: expected a mambapy MambaBlock or mamba_ssm Mamba, got "
                f"{type(reference).__name__}"
            )
        sd = reference.state_dict()
        module = cls(
            d_model,
            d_state=d_state,
            d_conv=d_conv,
            expand=expand,
            dt_rank=dt_rank,
            bias=reference.in_proj.bias is not None,
            conv_bias=reference.conv1d.bias is not None,
            **kwargs,
        )
        module.load_state_dict(mamba_state_dict_from_reference(sd), strict=True)
        return module.to(next(reference.parameters()).device)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"Mamba expects (b, L, {self.d_model}), got {tuple(x.shape)}")
        if x.shape[1] == 0:
            raise ValueError("Mamba: the sequence is empty (L = 0)")
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        L = x.shape[1]
        backend = resolve_mamba_backend(self.backend, x.device)
        xz = self.in_proj(x)
        u, z = xz.chunk(2, dim=-1)  # (b, L, d_inner) each
        u = F.silu(self.conv1d(u.transpose(1, 2))[..., :L].transpose(1, 2))
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # bias added inside softplus (fused by the CUDA kernel)
        A = -torch.exp(self.A_log.float())
        if backend == "mamba_ssm":
            scan = _load_mamba_ssm_scan()
            if scan is None:  # resolve_mamba_backend checked it; guards against a racing uninstall
                raise ImportError("Mamba: mamba_ssm is no longer importable")
            y = scan(
                u.transpose(1, 2).contiguous(),
                dt.transpose(1, 2).contiguous(),
                A,
                B.transpose(1, 2).contiguous(),
                C.transpose(1, 2).contiguous(),
                self.D.float(),
                z=z.transpose(1, 2).contiguous(),
                delta_bias=self.dt_proj.bias.float(),
                delta_softplus=True,
            ).transpose(1, 2)
        else:
            delta = F.softplus(dt + self.dt_proj.bias)
            method = "sequential" if backend == "sequential" else "chunked"
            y = selective_scan(u, delta, A, B, C, self.D.float(), method=method, chunk_size=self.chunk_size)
            y = y * F.silu(z)
        return self.out_proj(y)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_state={self.d_state}, d_conv={self.d_conv}, expand={self.expand}, "
            f"dt_rank={self.dt_rank}, backend={self.backend!r}, chunk_size={self.chunk_size}, "
            f"checkpointing={self.checkpointing}"
        )
