"""Expert layers evaluated for all experts at once (one einsum, no Python loop over experts).

* :class:`FactorizedLinear` — Mammoth's low-rank expert linear: a (shared or per-expert) projection to
  rank ``r`` followed by a per-expert projection, per head. State-dict compatible with
  ``mammoth.mammoth.FactorizedLinear`` (``shared_weight``, ``shared_bias``, ``expert_weights``, ``bias``).
* :class:`BatchedFeedForward` — Soft MoE's GELU / GEGLU feed-forward experts with stacked weights; loads
  the per-expert ``ModuleList`` state dict of ``soft_moe_pytorch``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .backend import make_dropout, native_enabled, onednn_available, onednn_linear
from .checks import check_positive_ints
from .higher_order import higher_order_requested, reference_gradients

__all__ = ["BatchedFeedForward", "FactorizedLinear"]


class FactorizedLinear(nn.Module):
    """Per-expert, per-head low-rank linear map ``y = (x A + a) B + c``.

    Args:
        in_dim: input features per head ``d_in``.
        out_dim: output features per head ``d_out``.
        rank: inner rank ``r`` (>= 1).
        num_experts: experts ``e``.
        num_heads: heads ``h``.
        share_weights: share ``A`` and ``a`` across experts (``A: (h, d_in, r)``) instead of one per
            expert (``A: (e, h, d_in, r)``).

    Shapes: ``(..., e, h, d_in) -> (..., e, h, d_out)``.

    Parameter count: ``h*d_in*r + h*r`` (shared) + ``e*h*r*d_out + e*h*d_out``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        rank: int,
        num_experts: int,
        num_heads: int,
        share_weights: bool = True,
    ) -> None:
        super().__init__()
        check_positive_ints(
            "FactorizedLinear", in_dim=in_dim, out_dim=out_dim, rank=rank, num_experts=num_experts,
            num_heads=num_heads,
        )
        self.in_dim, self.out_dim, self.rank = in_dim, out_dim, rank
        self.num_experts, self.num_heads = num_experts, num_heads
        self.share_weight = share_weights
        lead = (num_heads,) if share_weights else (num_experts, num_heads)
        self.shared_weight = nn.Parameter(torch.empty(*lead, in_dim, rank))
        # The reference leaves this bias at randn (no init override); we keep that distribution.
        self.shared_bias = nn.Parameter(torch.randn(*lead, rank))
        self.expert_weights = nn.Parameter(torch.empty(num_experts, num_heads, rank, out_dim))
        self.bias = nn.Parameter(torch.empty(num_experts, num_heads, out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform weights and a fan-in uniform bias, as ``mammoth-moe`` initialises them."""
        nn.init.kaiming_uniform_(self.shared_weight, a=math.sqrt(5), nonlinearity="relu")
        nn.init.kaiming_uniform_(self.expert_weights, a=math.sqrt(5), nonlinearity="relu")
        fan_in, _ = nn.init._calculate_fan_in_and_fan_out(self.expert_weights)
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(x) + self.bias

    def project(self, x: Tensor) -> Tensor:
        """``(x A + a) B`` without the output bias ``c`` (for callers that fuse the bias into what follows)."""
        if x.shape[-3:] != (self.num_experts, self.num_heads, self.in_dim):
            raise ValueError(
                f"FactorizedLinear expects (..., {self.num_experts}, {self.num_heads}, {self.in_dim}), "
                f"got {tuple(x.shape)}"
            )
        if self.share_weight:
            u = torch.einsum("...ehi,hir->...ehr", x, self.shared_weight)
        else:
            u = torch.einsum("...ehi,ehir->...ehr", x, self.shared_weight)
        u = u + self.shared_bias
        return torch.einsum("...ehr,ehro->...eho", u, self.expert_weights)

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.in_dim}, out_dim={self.out_dim}, rank={self.rank}, "
            f"num_experts={self.num_experts}, num_heads={self.num_heads}, share_weights={self.share_weight}"
        )


class BatchedFeedForward(nn.Module):
    """Feed-forward experts (Soft MoE's ``FeedForward`` / ``GLUFeedForward``) evaluated all at once.

    Every expert is ``Linear(dim, h_in) -> act -> Dropout -> Linear(hidden, dim)``; the weights of all
    experts are stacked so one batched matmul (``torch.baddbmm``) per layer evaluates every expert.

    * ``geglu=False``: ``hidden = int(dim * mult)``, ``h_in = hidden``, ``act = GELU`` (exact, erf form).
    * ``geglu=True``: ``hidden = int(dim * mult * 2 / 3)``, ``h_in = 2 * hidden``, and the activation is
      GEGLU: the first half of the ``h_in`` features times ``GELU`` of the second half (the gate).

    These are the hidden sizes ``soft_moe_pytorch`` 0.1.9 uses.

    Args:
        num_experts: experts ``e``.
        dim: input and output features ``d``.
        mult: hidden-size multiplier (> 0).
        geglu: GEGLU experts instead of plain GELU MLP experts.
        dropout: dropout probability after the activation, in ``[0, 1)``.
        hidden: explicit hidden size, overriding the one derived from ``mult``.

    Parameters (stacked; expert ``i`` is index ``i`` of the leading dimension):
        ``w1: (e, d, h_in)``, ``b1: (e, h_in)``, ``w2: (e, hidden, d)``, ``b2: (e, d)``.
        ``w1[i]`` is the transpose of the reference's ``make_linear(d, h_in).weight``.

    State dicts of a ``ModuleList`` of reference experts (keys ``experts.{i}.0.weight``,
    ``experts.{i}.0.bias``, ``experts.{i}.3.weight``, ``experts.{i}.3.bias`` below this module's prefix,
    as in ``soft_moe_pytorch.soft_moe.Experts``) are accepted by ``load_state_dict``: they are stacked and
    transposed into ``w1, b1, w2, b2`` on load (see :meth:`stack_reference_state_dict`).

    Shapes: ``(b, e, s, d) -> (b, e, s, d)``.
    """

    def __init__(
        self,
        num_experts: int,
        dim: int,
        mult: float = 4,
        geglu: bool = False,
        dropout: float = 0.0,
        hidden: int | None = None,
    ) -> None:
        super().__init__()
        check_positive_ints("BatchedFeedForward", num_experts=num_experts, dim=dim)
        if not isinstance(mult, (int, float)) or isinstance(mult, bool) or mult <= 0:
            raise ValueError(f"BatchedFeedForward: mult must be a positive number, got {mult!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"BatchedFeedForward: dropout must be in [0, 1), got {dropout!r}")
        if hidden is None:
            hidden = int(dim * mult * 2 / 3) if geglu else int(dim * mult)
        elif not isinstance(hidden, int) or isinstance(hidden, bool):
            raise ValueError(f"BatchedFeedForward: hidden must be a positive integer, got {hidden!r}")
        if hidden < 1:
            raise ValueError(
                f"BatchedFeedForward: hidden size int(dim * mult{' * 2 / 3' if geglu else ''}) = {hidden} "
                f"is < 1 for dim={dim}, mult={mult}; increase mult"
            )
        self.num_experts, self.dim, self.mult = num_experts, dim, mult
        self.geglu, self.hidden = bool(geglu), hidden
        h_in = 2 * hidden if geglu else hidden
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, h_in))
        self.b1 = nn.Parameter(torch.empty(num_experts, h_in))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, dim))
        self.b2 = nn.Parameter(torch.empty(num_experts, dim))
        self.dropout = make_dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Linear``'s default initialisation, expert by expert (uniform in ``+-1/sqrt(fan_in)``)."""
        for w, b, fan_in in ((self.w1, self.b1, self.dim), (self.w2, self.b2, self.hidden)):
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def _check(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.num_experts or x.shape[-1] != self.dim:
            raise ValueError(
                f"BatchedFeedForward expects (b, {self.num_experts}, s, {self.dim}), got {tuple(x.shape)}"
            )

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        b, e, s, d = x.shape
        h = x.transpose(0, 1).reshape(e, b * s, d)  # (e, b*s, d)
        h = torch.baddbmm(self.b1.unsqueeze(1).to(h.dtype), h, self.w1.to(h.dtype))
        if self.geglu:
            value, gate = h.chunk(2, dim=-1)
            h = value * torch.nn.functional.gelu(gate)
        else:
            h = torch.nn.functional.gelu(h)
        h = self.dropout(h)
        out = torch.baddbmm(self.b2.unsqueeze(1).to(h.dtype), h, self.w2.to(h.dtype))  # (e, b*s, d)
        return out.reshape(e, b, s, d).transpose(0, 1)

    def forward_per_expert(self, x: Tensor) -> Tensor:
        """:meth:`forward` with one oneDNN product per expert and layer instead of a batched matmul.

        Same maths (equal to float32 rounding). On AMD CPUs oneDNN's products are faster than PyTorch's batched
        GEMM for tall per-expert inputs (Soft MoE with hundreds of slots per expert; measured in
        docs/performance-notes.md). Applies on CPU in float32 under the native backend without autocast,
        and when dropout is inactive (so the dropout masks stay those of :meth:`forward`); otherwise this is
        :meth:`forward`. Shapes: ``(b, e, s, d) -> (b, e, s, d)``.
        """
        self._check(x)
        tensors = (x, self.w1, self.w2)
        if not (
            all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
            and not torch.is_autocast_enabled("cpu")
            and native_enabled()
            and onednn_available()
            and (not self.training or self.dropout.p == 0)
        ):
            return self.forward(x)
        b, e, s, d = x.shape
        inputs = x.transpose(0, 1).reshape(e, b * s, d).unbind(0)
        outs = []
        weights = (self.w1.unbind(0), self.b1.unbind(0), self.w2.unbind(0), self.b2.unbind(0))
        for h, w1, b1, w2, b2 in zip(inputs, *weights):
            h = _ExpertLinear.apply(h, w1, b1)  # (b*s, h_in)
            if self.geglu:
                value, gate = h.chunk(2, dim=-1)
                h = value * torch.nn.functional.gelu(gate)
            else:
                h = torch.nn.functional.gelu(h)
            outs.append(_ExpertLinear.apply(h, w2, b2))  # (b*s, d)
        return torch.stack(outs).reshape(e, b, s, d).transpose(0, 1)

    @staticmethod
    def stack_reference_state_dict(state_dict: dict[str, Tensor], prefix: str = "") -> bool:
        """Rewrite, in place, reference per-expert keys below ``prefix`` into the stacked layout.

        ``{prefix}experts.{i}.0.weight (h_in, d)`` -> ``{prefix}w1 (e, d, h_in)``; ``...0.bias`` -> ``b1``;
        ``...3.weight (d, hidden)`` -> ``w2 (e, hidden, d)``; ``...3.bias`` -> ``b2``.
        Returns True when reference keys were found and converted.
        """
        head = f"{prefix}experts."
        ref_keys = [k for k in state_dict if k.startswith(head)]
        if not ref_keys:
            return False
        indices = sorted({int(k[len(head) :].split(".", 1)[0]) for k in ref_keys})
        if indices != list(range(len(indices))):
            raise ValueError(f"reference expert indices below {head!r} are not 0..e-1: {indices}")
        stacks: dict[str, list[Tensor]] = {"w1": [], "b1": [], "w2": [], "b2": []}
        for i in indices:
            stacks["w1"].append(state_dict.pop(f"{head}{i}.0.weight").transpose(0, 1))
            stacks["b1"].append(state_dict.pop(f"{head}{i}.0.bias"))
            stacks["w2"].append(state_dict.pop(f"{head}{i}.3.weight").transpose(0, 1))
            stacks["b2"].append(state_dict.pop(f"{head}{i}.3.bias"))
        leftover = [k for k in state_dict if k.startswith(head)]
        if leftover:
            raise ValueError(f"unexpected reference expert keys: {leftover}")
        for name, tensors in stacks.items():
            state_dict[f"{prefix}{name}"] = torch.stack(tensors)
        return True

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):  # type: ignore[override]
        if f"{prefix}w1" not in state_dict:
            try:
                self.stack_reference_state_dict(state_dict, prefix)
            except (KeyError, ValueError) as err:
                error_msgs.append(f"could not convert reference expert weights below {prefix!r}: {err}")
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, dim={self.dim}, mult={self.mult}, hidden={self.hidden}, "
            f"geglu={self.geglu}"
        )


def _affine(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``x @ weight + bias`` (the reference maths of :class:`_ExpertLinear`)."""
    return torch.addmm(bias, x, weight)


class _ExpertLinear(torch.autograd.Function):
    """``x (m, k) @ weight (k, p) + bias (p,)`` with the product and both gradients' products on oneDNN."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight, bias)
        return onednn_linear(x.contiguous(), weight.t(), bias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight, bias = ctx.saved_tensors
        if higher_order_requested():  # create_graph=True: the composite's gradients, differentiable again
            return reference_gradients(_affine, (x, weight, bias), ctx.needs_input_grad, grad)
        grad = grad.contiguous()
        dx = onednn_linear(grad, weight) if ctx.needs_input_grad[0] else None  # grad @ weight^T
        dw = onednn_linear(x.t(), grad.t()) if ctx.needs_input_grad[1] else None  # x^T @ grad
        db = grad.sum(0) if ctx.needs_input_grad[2] else None
        return dx, dw, db
