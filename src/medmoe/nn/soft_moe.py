"""Soft mixture of experts (Puigcerver et al., "From Sparse to Soft Mixtures of Experts", ICLR 2024).

Notation: ``b`` batch, ``n`` tokens, ``d`` features, ``e`` experts, ``s`` slots per expert, ``t = e * s``.

With normalised tokens ``X = norm(x): (b, n, d)`` and normalised slot embeddings
``Phi = slot_norm(slot_embeds): (e, s, d)`` the layer computes the logits ``L = X Phi^T: (b, n, t)`` and

* dispatch weights ``D = softmax_n(L)`` (every slot is a convex combination of the tokens),
  slot inputs ``S = D^T X: (b, t, d)``;
* expert outputs ``Y = expert_i(S)`` for the ``s`` slots of expert ``i``, all experts in one batched matmul;
* combine weights ``C = softmax_t(L)`` (every token is a convex combination of the slots), output ``C Y``.

**Speed.** Both softmaxes are attention with scale 1: dispatch is "slots (queries) attend to tokens
(keys = values = ``X``)", combine is "tokens (queries) attend to slots (keys = ``Phi``, values = ``Y``)".
With ``backend="sdpa"`` both run through :func:`torch.nn.functional.scaled_dot_product_attention`, so the
``(b, n, e, s)`` logits tensor is never materialised and memory is ``O(n * d)`` for any slot count (the
reference's is ``O(n * e * s)``, quadratic when the slots grow with ``n``). The attention kernels recompute
the logits (forward and backward) instead of storing them, which costs about 1.5x the reference's
matrix-multiply FLOPs (14 instead of 9 ``n * e * s * d`` products for forward + backward). The ``"dense"``
path materialises the logits once and has two forms, chosen by shape:

* few slots (``2 * e * s < d``: the logits are smaller than the input): with an RMSNorm token norm in
  float32/float64 the norm is folded into the routing's matrix products (:mod:`medmoe.nn.soft_dispatch`:
  the normalised ``(b, n, d)`` tokens are never written, five instead of eight large products in the
  backward, oneDNN products on CPU);
* many slots (``2 * e * s >= d``, e.g. soft-moe-pytorch's default of one slot per token): the
  ``(b, n, e * s)`` tensors are as large as the input or larger, so both softmaxes and their gradients run fused
  (:mod:`medmoe.nn.soft_route`: two reads of the logits forward, one pass backward, the combine weights
  written over the logits) and the experts run one oneDNN product per expert
  (:meth:`~medmoe.nn.experts.BatchedFeedForward.forward_per_expert`).

``backend="auto"`` (default) picks ``"dense"`` while the logits stay small and ``"sdpa"`` otherwise (see
``backend`` below). Measured timings against the reference: docs/performance.md.

The two softmaxes always run in float32 (autocast is switched off around them and half / bfloat16
operands are upcast), the result is cast back.

**Masking.** ``mask: (b, n)`` bool, True = real token. Padded tokens get exactly zero dispatch weight (they
never reach a slot) and their outputs are zero, so padding never changes the outputs of real tokens.

**Reference compatibility.** ``soft_moe_pytorch.SoftMoE`` 0.1.9 (lucidrains) is the reference: same
norms (:class:`~medmoe.nn.norms.RMSNorm` ``l2norm(x) * sqrt(d) * gamma`` or :class:`~medmoe.nn.norms.LayerNorm`
with a fixed zero bias), same slot embeddings, same experts (GELU MLP or GEGLU), same outputs for real
tokens (the reference gives padded tokens a uniform mix of slots; medmoe gives them zeros). The experts
are stored stacked (:class:`~medmoe.nn.experts.BatchedFeedForward`: ``experts.w1/b1/w2/b2``) instead of
the reference's ``experts.experts.{i}.{0,3}.{weight,bias}``; a ``_load_from_state_dict`` hook converts
the reference keys on load, so ``SoftMoE.load_state_dict(reference.state_dict(), strict=True)`` works
directly. :meth:`SoftMoE.from_reference` builds a module from a reference instance.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backend import make_linear
from .checks import check_positive_ints, positive_int
from .experts import BatchedFeedForward
from .higher_order import higher_order_requested, reference_gradients
from .norms import LayerNorm, RMSNorm, l2norm
from .patch_embedding import EmbeddedPatches, PatchEmbedding
from .routing import Routing, check_mask
from .soft_dispatch import normalized_dispatch, soft_combine
from .soft_route import soft_combine_weights, soft_route

__all__ = ["SoftMoE", "SoftMoEEmbed", "soft_attend"]

_HALF = (torch.float16, torch.bfloat16)
_BACKENDS = ("auto", "sdpa", "dense")
# "auto": the largest (b, n, e * s) logits tensor for which the dense path is taken with more slots than
# dimensions; beyond it the dense path's 3-4 such tensors cost more memory than the recomputing attention kernels
_DENSE_MAX_LOGITS = 2**24


def soft_attend(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> Tensor:
    """``softmax(q k^T) v`` over the key axis, in float32 and with scale 1.

    Args:
        q: ``(b, m, d)`` queries.
        k: ``(b, j, d)`` keys.
        v: ``(b, j, d_v)`` values.
        key_mask: optional bool ``(b, j)``, True = key may be attended to. Every row needs one True.

    Returns:
        ``(b, m, d_v)`` in float32 (or float64 when any operand is float64). Autocast is disabled inside;
        half / bfloat16 operands are upcast, so the softmax never runs in low precision.
    """
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    if dtype in _HALF:
        dtype = torch.float32
    attn_mask = None if key_mask is None else key_mask[:, None, None, :]
    with torch.autocast(device_type=q.device.type, enabled=False):
        out = F.scaled_dot_product_attention(
            q.to(dtype).unsqueeze(1),
            k.to(dtype).unsqueeze(1),
            v.to(dtype).unsqueeze(1),
            attn_mask=attn_mask,
            scale=1.0,
        )
    return out.squeeze(1)


class _RMSNormFunction(torch.autograd.Function):
    """``x / max(||x||, eps) * scale * gamma`` with a hand-written backward.

    Same maths as :class:`~medmoe.nn.norms.RMSNorm` (``l2norm(x) * sqrt(d) * gamma``), but about 9 passes
    over ``x`` for forward + backward instead of ~15 for the autograd graph of the composite, which matters
    because the token norm touches the full ``(b, n, d)`` input. Saves ``x`` and one scalar per token.
    Under ``create_graph=True`` the gradients are those of :func:`_rms_norm` (:mod:`medmoe.nn.higher_order`).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, gamma: Tensor, scale: float, eps: float) -> Tensor:  # type: ignore[override]
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        inv = scale / norm.clamp_min(eps)  # (..., 1)
        ctx.save_for_backward(x, gamma, inv, norm > eps)
        ctx.scale, ctx.eps = scale, eps
        return torch.mul(x, inv).mul_(gamma)

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, gamma, inv, unclamped = ctx.saved_tensors
        if higher_order_requested():  # create_graph=True: the composite's gradients, differentiable again
            return reference_gradients(_rms_norm, (x, gamma, ctx.scale, ctx.eps), ctx.needs_input_grad, dy)
        d = x.shape[-1]
        dx = dgamma = None
        with torch.autocast(device_type=x.device.type, enabled=False):
            prod = torch.mul(dy, x).reshape(-1, d)  # (N, d): feeds both reductions below as mat-vecs
            if ctx.needs_input_grad[1]:
                dgamma = torch.mv(prod.t(), inv.reshape(-1))
            if ctx.needs_input_grad[0]:
                # y = x * inv * gamma, inv = scale / |x|:  dx = inv * (g - x <x, g> inv^2 / scale^2), g = dy * gamma
                dot = torch.mv(prod, gamma).reshape(inv.shape)  # <x, dy * gamma> per token
                coef = (dot * inv.pow(3) / (ctx.scale**2)).masked_fill_(~unclamped, 0.0)
                dx = torch.mul(dy, gamma).mul_(inv).addcmul_(x, coef, value=-1.0)
        return dx, dgamma, None, None


def _rms_norm(x: Tensor, gamma: Tensor, scale: float, eps: float) -> Tensor:
    """The composite :class:`~medmoe.nn.norms.RMSNorm` maths (the reference of :class:`_RMSNormFunction`)."""
    return l2norm(x, eps=eps) * scale * gamma


def _apply_norm(norm: nn.Module, x: Tensor) -> Tensor:
    """Apply ``norm``; an :class:`RMSNorm` whose gain has ``x``'s dtype goes through the fused function."""
    if type(norm) is RMSNorm and x.dtype == norm.gamma.dtype:
        return _RMSNormFunction.apply(x, norm.gamma, norm.scale, 1e-8)
    return norm(x)


class SoftMoE(nn.Module):
    """Soft mixture-of-experts layer for token sequences, images and volumes.

    Args:
        dim: token features ``d`` (channels ``c`` for image / volume inputs).
        seq_len: derive the slots per expert as ``seq_len // num_experts`` (as the reference does).
            Give exactly one of ``seq_len`` and ``num_slots``.
        num_experts: experts ``e``.
        num_slots: slots per expert ``s``.
        expert_mult: expert hidden-size multiplier (``int(d * mult)``; GEGLU: ``int(d * mult * 2 / 3)``).
        dropout: dropout inside the experts, in ``[0, 1)``.
        geglu: GEGLU experts instead of GELU MLP experts.
        use_layernorm: LayerNorm (learnable gain, zero bias) instead of RMSNorm for tokens and slots.
        routing_chunk: tokens per chunk when ``return_routing=True`` builds ``expert_assignment``.
        backend: how dispatch and combine are computed (same maths, same results to float rounding):

            * ``"sdpa"`` — both as :func:`~torch.nn.functional.scaled_dot_product_attention` calls; the
              ``(b, n, e * s)`` logits are never materialised, memory is ``O(n * d)`` whatever the slot count.
            * ``"dense"`` — the logits are computed once and both softmaxes read them (the reference's
              algorithm, ``O(n * e * s)`` memory); with many slots (``2 * e * s >= dim``) both softmaxes
              run fused (:mod:`medmoe.nn.soft_route`).
            * ``"auto"`` (default) — ``"dense"`` when ``e * s <= dim`` (the logits are then no larger than the
              input itself, and computing them once beats the attention kernels' recomputation) or when the
              ``(b, n, e * s)`` logits have at most ``2**24`` entries (64 MiB in float32: at many slots the
              routing products are large dense GEMMs that beat the attention kernels, with the reference's
              memory), ``"sdpa"`` otherwise (long sequences with many slots, where only it bounds memory).
              Measurements in docs/performance.md and docs/performance-notes.md.

    Parameters / state dict: ``norm.gamma`` (+ ``norm.beta`` buffer for LayerNorm), ``slot_norm.gamma``
    (+ ``slot_norm.beta``), ``slot_embeds (e, s, d)``, ``experts.w1 (e, d, h_in)``, ``experts.b1 (e, h_in)``,
    ``experts.w2 (e, hidden, d)``, ``experts.b2 (e, d)``. ``soft_moe_pytorch`` 0.1.9 state dicts load
    with ``strict=True`` (their per-expert keys are stacked by a load hook).

    Shapes (``forward``):
        * ``x: (b, n, d)`` -> ``(b, n, d)``, ``mask: (b, n)``;
        * ``x: (b, c, h, w)`` -> ``(b, c, h, w)`` (``n = h * w`` tokens, row-major), ``mask: (b, h, w)``
          or ``(b, h * w)``;
        * ``x: (b, c, z, h, w)`` -> ``(b, c, z, h, w)`` (``n = z * h * w``), ``mask: (b, z, h, w)`` or
          ``(b, n)``.
    """

    def __init__(
        self,
        dim: int,
        *,
        seq_len: int | None = None,
        num_experts: int = 4,
        num_slots: int | None = None,
        expert_mult: float = 4,
        dropout: float = 0.0,
        geglu: bool = False,
        use_layernorm: bool = False,
        routing_chunk: int = 4096,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        owner = "SoftMoE"
        check_positive_ints(owner, dim=dim, num_experts=num_experts, routing_chunk=routing_chunk)
        if (seq_len is None) == (num_slots is None):
            raise ValueError(
                f"{owner}: pass exactly one of num_slots (slots per expert) or seq_len (slots = seq_len // "
                f"num_experts); got num_slots={num_slots!r}, seq_len={seq_len!r}"
            )
        if num_slots is None:
            positive_int(owner, "seq_len", seq_len)
            num_slots = seq_len // num_experts  # type: ignore[operator]
            if num_slots < 1:
                raise ValueError(
                    f"{owner}: seq_len={seq_len} // num_experts={num_experts} gives 0 slots per expert; "
                    f"use seq_len >= num_experts or pass num_slots"
                )
        positive_int(owner, "num_slots", num_slots)
        if not isinstance(expert_mult, (int, float)) or isinstance(expert_mult, bool) or expert_mult <= 0:
            raise ValueError(f"{owner}: expert_mult must be a positive number, got {expert_mult!r}")
        if not isinstance(dropout, (int, float)) or not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"{owner}: dropout must be in [0, 1), got {dropout!r}")
        if backend not in _BACKENDS:
            raise ValueError(f"{owner}: backend must be one of {_BACKENDS}, got {backend!r}")
        self.backend = backend

        self.dim, self.num_experts, self.num_slots = dim, num_experts, num_slots
        self.use_layernorm, self.routing_chunk = bool(use_layernorm), routing_chunk
        norm_cls = LayerNorm if use_layernorm else RMSNorm
        self.norm = norm_cls(dim)
        self.slot_norm = norm_cls(dim)
        self.slot_embeds = nn.Parameter(torch.randn(num_experts, num_slots, dim))
        self.experts = BatchedFeedForward(num_experts, dim, mult=expert_mult, geglu=geglu, dropout=dropout)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_reference(cls, reference: nn.Module, backend: str = "auto") -> SoftMoE:
        """Build a :class:`SoftMoE` with the configuration and weights of a ``soft_moe_pytorch.SoftMoE``.

        Reads the sizes from the reference's parameters (``slot_embeds (e, s, d)``, the first expert's
        linear layers) and loads its state dict with ``strict=True``. Dropout is read from the expert's
        ``nn.Dropout``.
        """
        slot_embeds = reference.slot_embeds
        e, s, d = slot_embeds.shape
        first = reference.experts.experts[0]
        geglu = type(first[1]).__name__ == "GEGLU"
        h_in = first[0].out_features
        hidden = h_in // 2 if geglu else h_in
        dropout = float(first[2].p)
        module = cls(
            d,
            num_experts=e,
            num_slots=s,
            expert_mult=1,
            dropout=dropout,
            geglu=geglu,
            use_layernorm=hasattr(reference.norm, "beta"),
            backend=backend,
        )
        # the hidden size is taken as is (expert_mult cannot always be recovered exactly from it)
        module.experts = BatchedFeedForward(e, d, geglu=geglu, dropout=dropout, hidden=hidden)
        module = module.to(device=slot_embeds.device, dtype=slot_embeds.dtype)
        module.load_state_dict(reference.state_dict(), strict=True)
        return module

    # ------------------------------------------------------------------ shape handling
    def _to_tokens(self, x: Tensor) -> tuple[Tensor, tuple[int, ...] | None]:
        """Return ``(b, n, d)`` tokens and the spatial shape to restore (``None`` for token input)."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise ValueError("SoftMoE expects a floating-point tensor input")
        if x.ndim == 3:
            if x.shape[-1] != self.dim:
                raise ValueError(
                    f"SoftMoE(dim={self.dim}) expects tokens (b, n, {self.dim}), got {tuple(x.shape)}"
                )
            if x.shape[1] < 1:
                raise ValueError("SoftMoE needs at least one token per sequence (n >= 1)")
            return x, None
        if x.ndim in (4, 5):
            if x.shape[1] != self.dim:
                kind = "images (b, c, h, w)" if x.ndim == 4 else "volumes (b, c, z, h, w)"
                raise ValueError(
                    f"SoftMoE(dim={self.dim}) expects channels-first {kind} with c = {self.dim}, "
                    f"got {tuple(x.shape)}"
                )
            spatial = tuple(x.shape[2:])
            return x.flatten(2).transpose(1, 2), spatial
        raise ValueError(
            f"SoftMoE expects (b, n, d) tokens, (b, c, h, w) images or (b, c, z, h, w) volumes; got a "
            f"{x.ndim}-D tensor of shape {tuple(x.shape)}"
        )

    @staticmethod
    def _flat_mask(tokens: Tensor, mask: Tensor | None) -> Tensor | None:
        if mask is None:
            return None
        if not isinstance(mask, Tensor):
            raise ValueError(f"mask must be a bool tensor of shape (b, n), got {type(mask).__name__}")
        if mask.ndim > 2 and mask.shape[0] == tokens.shape[0]:
            mask = mask.flatten(1)
        return check_mask(tokens, mask)

    # ------------------------------------------------------------------ core
    def normalized_slots(self) -> Tensor:
        """``slot_norm(slot_embeds)`` flattened to ``(e * s, d)``."""
        return self.slot_norm(self.slot_embeds).reshape(self.num_experts * self.num_slots, self.dim)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, return_routing: bool = False
    ) -> Tensor | tuple[Tensor, Routing]:
        """Apply the layer.

        Args:
            x: ``(b, n, d)``, ``(b, d, h, w)`` or ``(b, d, z, h, w)``.
            mask: optional bool padding mask over the tokens (True = real), ``(b, n)`` or spatial
                ``(b, h, w)`` / ``(b, z, h, w)``. Every sample needs at least one real token.
            return_routing: also return a :class:`~medmoe.nn.routing.Routing` whose
                ``expert_assignment (b, n, e)`` holds each token's combine weights summed over every
                expert's slots (rows sum to 1; zero rows at padded tokens), without gradient. The
                ``"sdpa"`` path recomputes it in chunks of ``routing_chunk`` tokens; the ``"dense"`` path
                sums the combine weights it already has.

        Returns:
            Output with the shape of ``x`` (padded tokens are zero), plus the routing when asked.
            The dtype is ``x``'s dtype.
        """
        tokens, spatial = self._to_tokens(x)
        mask = self._flat_mask(tokens, mask)
        b, _, d = tokens.shape
        e, s = self.num_experts, self.num_slots

        phi = self.normalized_slots()  # (t, d)
        combine = None
        dense = self._dense(tokens)
        if dense and not self._many_slots() and self._can_fold_norm(tokens):
            out, logits = self._route_folded(tokens, phi, mask)
            if return_routing:
                combine = logits.detach().softmax(dim=-1)
        else:
            xn = _apply_norm(self.norm, tokens)  # (b, n, d)
            if dense and self._many_slots():
                out, combine = self._route_fused(xn, phi, mask)
            elif dense:
                out, combine = self._route_dense(xn, phi, mask)
            else:
                phi_b = phi.unsqueeze(0).expand(b, e * s, d)
                # dispatch: slots attend to tokens (softmax over n); padded tokens are masked keys
                slots = soft_attend(phi_b, xn, xn, mask).to(xn.dtype)  # (b, t, d)
                expert_out = self.experts(slots.view(b, e, s, d)).reshape(b, e * s, d)
                # combine: tokens attend to slots (softmax over the t = e * s slots)
                out = soft_attend(xn, phi_b, expert_out)  # (b, n, d)
        out = out.to(x.dtype)
        if mask is not None:
            out = out * mask.unsqueeze(-1).to(out.dtype)

        if spatial is not None:
            out = out.transpose(1, 2).reshape(b, d, *spatial)
        if not return_routing:
            return out
        if combine is not None:
            assignment = combine.detach().view(b, -1, e, s).sum(-1)
            if mask is not None:
                assignment = assignment * mask.unsqueeze(-1).to(assignment.dtype)
        else:
            assignment = self._expert_assignment(xn, phi, mask)
        return out, Routing(expert_assignment=assignment)

    def _can_fold_norm(self, tokens: Tensor) -> bool:
        """Whether the dense path can use :func:`~medmoe.nn.soft_dispatch.normalized_dispatch`: an RMSNorm
        token norm, float32/float64 tokens of the gain's dtype and no autocast."""
        return (
            type(self.norm) is RMSNorm
            and tokens.dtype in (torch.float32, torch.float64)
            and tokens.dtype == self.norm.gamma.dtype == self.slot_embeds.dtype
            and not torch.is_autocast_enabled(tokens.device.type)
        )

    def _dense(self, tokens: Tensor) -> bool:
        """Whether forward materialises the logits for ``tokens (b, n, d)`` (the ``"dense"`` path; see ``backend``)."""
        if self.backend == "auto":
            slots = self.num_experts * self.num_slots
            return slots <= self.dim or tokens.shape[0] * tokens.shape[1] * slots <= _DENSE_MAX_LOGITS
        return self.backend == "dense"

    def _many_slots(self) -> bool:
        """Whether the dense path takes :meth:`_route_fused`: slots ``e * s`` at least half the features ``d``
        (where it measured faster than the folded path, docs/performance-notes.md)."""
        return 2 * self.num_experts * self.num_slots >= self.dim

    def _route_fused(self, xn: Tensor, phi: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """The dense path for many slots: both softmaxes fused (:mod:`medmoe.nn.soft_route`).

        Returns the output ``(b, n, d)`` (float32 / float64) and the combine weights ``(b, n, t)``.
        """
        b, _, d = xn.shape
        dtype = torch.promote_types(xn.dtype, phi.dtype)
        if dtype in _HALF:
            dtype = torch.float32
        with torch.autocast(device_type=xn.device.type, enabled=False):
            slots, combine = soft_route(xn.to(dtype), phi.to(dtype), mask)  # (b, t, d), (b, n, t)
        slots = slots.to(xn.dtype).view(b, self.num_experts, self.num_slots, d)
        expert_out = self.experts.forward_per_expert(slots).reshape(b, -1, d)
        with torch.autocast(device_type=xn.device.type, enabled=False):
            out = soft_combine_weights(combine, expert_out.to(dtype))  # tokens attend to slots
        return out, combine

    def _route_dense(self, xn: Tensor, phi: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Dispatch, experts and combine with the ``(b, n, t)`` logits materialised once.

        Returns the output ``(b, n, d)`` (float32 / float64) and the combine weights ``(b, n, t)``.
        """
        b, _, d = xn.shape
        e, s = self.num_experts, self.num_slots
        dtype = torch.promote_types(xn.dtype, phi.dtype)
        if dtype in _HALF:
            dtype = torch.float32
        with torch.autocast(device_type=xn.device.type, enabled=False):
            xf = xn.to(dtype)
            logits = torch.matmul(xf, phi.to(dtype).t())  # (b, n, t)
            masked = logits if mask is None else logits.masked_fill(~mask.unsqueeze(-1), float("-inf"))
            dispatch = masked.softmax(dim=1)  # over tokens
            slots = torch.bmm(dispatch.transpose(1, 2), xf)  # (b, t, d)
        expert_out = self.experts(slots.to(xn.dtype).view(b, e, s, d)).reshape(b, e * s, d)
        with torch.autocast(device_type=xn.device.type, enabled=False):
            combine = logits.softmax(dim=-1)  # over slots
            out = torch.bmm(combine, expert_out.to(dtype))
        return out, combine

    def _route_folded(self, tokens: Tensor, phi: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """The dense path with the token RMSNorm folded into the dispatch (see ``soft_dispatch``).

        Returns the output ``(b, n, d)`` and the routing logits ``(b, n, t)``.
        """
        b, _, d = tokens.shape
        slots, logits = normalized_dispatch(tokens, self.norm.gamma, phi, mask, self.norm.scale, 1e-8)
        expert_out = self.experts(slots.view(b, self.num_experts, self.num_slots, d)).reshape(b, -1, d)
        return soft_combine(logits, expert_out), logits  # combine: tokens attend to slots

    @torch.no_grad()
    def _expert_assignment(self, xn: Tensor, phi: Tensor, mask: Tensor | None) -> Tensor:
        """Combine weights summed per expert, ``(b, n, e)`` float32, built ``routing_chunk`` tokens at a time."""
        b, n, _ = xn.shape
        e, s = self.num_experts, self.num_slots
        dtype = torch.float64 if xn.dtype == torch.float64 else torch.float32
        phi_t = phi.to(dtype).t()
        result = torch.empty(b, n, e, device=xn.device, dtype=dtype)
        with torch.autocast(device_type=xn.device.type, enabled=False):
            for start in range(0, n, self.routing_chunk):
                stop = min(start + self.routing_chunk, n)
                logits = torch.matmul(xn[:, start:stop].to(dtype), phi_t)  # (b, c, t)
                weights = logits.softmax(dim=-1).view(b, stop - start, e, s).sum(-1)
                result[:, start:stop] = weights
        if mask is not None:
            result.mul_(mask.unsqueeze(-1).to(dtype))
        return result

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_experts={self.num_experts}, num_slots={self.num_slots}, "
            f"use_layernorm={self.use_layernorm}, backend={self.backend!r}"
        )


class SoftMoEEmbed(PatchEmbedding):
    """Patch embedding ``Linear(in_dim, out_dim)`` followed by a residual Soft MoE: ``h + SoftMoE(h)``.

    Built by ``create_patch_embed('soft_moe', in_dim, embed_dim, **kwargs)``. One output token per patch
    (``preserves_tokens=True``). Padded patches (``mask`` False) never reach a slot, so they do not change
    the tokens of real patches; their own tokens are ``Linear(x)`` (the Soft MoE branch is zero there).

    Args:
        in_dim: patch feature size.
        out_dim: token size (the Soft MoE's ``dim``).
        num_experts: experts ``e``.
        num_slots: slots per expert ``s`` (fixed, since bags vary in size).
        expert_mult: expert hidden-size multiplier.
        geglu: GEGLU experts instead of GELU MLP experts.
        dropout: dropout inside the experts.
        use_layernorm: LayerNorm instead of RMSNorm inside the Soft MoE.
        backend: ``"auto"``, ``"sdpa"`` or ``"dense"`` (see :class:`SoftMoE`).

    Submodules: ``proj`` (``nn.Linear``), ``moe`` (:class:`SoftMoE`).

    Shapes: ``(b, n, in_dim) -> (b, n, out_dim)``; ``mask: (b, n)``.
    """

    preserves_tokens = True
    is_moe = True

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_experts: int = 4,
        num_slots: int = 16,
        expert_mult: float = 4,
        geglu: bool = False,
        dropout: float = 0.0,
        use_layernorm: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_positive_ints("SoftMoEEmbed", in_dim=in_dim, out_dim=out_dim)
        self.in_dim, self.out_dim = in_dim, out_dim
        self.proj = make_linear(in_dim, out_dim)
        self.moe = SoftMoE(
            out_dim,
            num_experts=num_experts,
            num_slots=num_slots,
            expert_mult=expert_mult,
            dropout=dropout,
            geglu=geglu,
            use_layernorm=use_layernorm,
            backend=backend,
        )

    def embed(self, x: Tensor, mask: Tensor | None = None, return_routing: bool = False) -> EmbeddedPatches:
        """``(b, n, in_dim)`` features -> :class:`EmbeddedPatches` with ``tokens (b, n, out_dim)``, the
        validated mask and, when asked, the Soft MoE routing (``expert_assignment (b, n, e)``)."""
        if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[-1] != self.in_dim:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"SoftMoEEmbed expects features (b, n, {self.in_dim}), got {shape}")
        mask = check_mask(x, mask)
        h = self.proj(x)
        if return_routing:
            delta, routing = self.moe(h, mask, return_routing=True)
        else:
            delta, routing = self.moe(h, mask), None
        return EmbeddedPatches(h + delta, mask, routing)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``(b, n, in_dim) -> (b, n, out_dim)``."""
        return self.embed(x, mask).tokens
