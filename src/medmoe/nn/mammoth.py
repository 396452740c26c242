"""MAMMOTH: a low-rank mixture of experts with soft slot routing (Shao et al., ICLR 2026).

Drop-in replacement for the patch-embedding ``Linear(input_dim, dim)`` of a MIL model. Constructor
arguments, defaults, the auto-rank formula and the state-dict keys/shapes are those of
``mammoth.Mammoth`` from ``mammoth-moe==0.1.2``, so its weights load unchanged.

Maths (``E`` experts, ``S`` slots per expert, ``H`` heads, ``d_s = slot_dim / H``, ``d_o = dim / H``)::

    x        = LN(W_q f + b_q)                        (b, n, slot_dim) -> heads (b, H, n, d_s)
    logits   = <x[b, h, n], LN(slot[e, h, s])>        (b, n, E, H, S), no temperature
    dispatch = softmax over n (patches)               slot z[b, e, h, s] = sum_n D * x
    experts  = ReLU(ExpertRMSNorm((z A_h + a_h) B_eh + c_eh)), dropout
    out      = (b, E*S, dim)  slot tokens            if keep_slots
             = sum_(e,s) softmax_(e,s)(logits) * y   (b, n, dim) otherwise (combine)

Speed: the dispatch is "slots attend to patches" and the combine is "patches attend to slots", so
both run as ``scaled_dot_product_attention`` with scale 1: the ``(b, n, E, H, S)`` logits tensor (about
1 GB at 50k patches) is never materialised. On CPU with float32 and head size 16 the dispatch runs a fused
compiled kernel instead (:mod:`medmoe.nn.slot_dispatch`, faster than PyTorch's flash attention there:
docs/performance-notes.md). Routing weights are computed only when asked for, in
chunks of ``routing_chunk_size`` patches. Routing softmaxes run in fp32 under autocast.

Differences from the reference (all fixes of sharp edges; outputs are identical otherwise):

* ``input_dim`` need not be divisible by ``num_heads`` (real feature sizes are 166, 230, 708, ...).
* ``dim == slot_dim`` (auto rank 0, a ZeroDivisionError in the reference) clamps the rank to 1 and logs
  a warning; any rank below 1 is handled the same way.
* No printing (``logging``); an optional padding ``mask (b, n)``: padded patches get zero dispatch
  weight, so a padded batch gives the same outputs as the bags one at a time.
* Unknown constructor arguments raise ``ValueError`` instead of being swallowed.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backend import make_dropout, make_linear
from .checks import positive_int
from .expert_epilogue import expert_epilogue
from .experts import FactorizedLinear
from .norms import ExpertWiseRMSNorm, LayerNorm, RMSNorm
from .patch_embedding import EmbeddedPatches, PatchEmbedding
from .routing import Routing, check_mask, drop_full_mask
from .slot_dispatch import slot_dispatch

__all__ = ["Mammoth", "MammothExperts", "mammoth_auto_rank"]

logger = logging.getLogger(__name__)


def mammoth_auto_rank(input_dim: int, slot_dim: int, dim: int, num_experts: int) -> int:
    """Rank giving Mammoth the parameter budget of one ``Linear(input_dim, dim)`` (biases ignored).

    ``W_q`` costs ``input_dim * slot_dim``, the shared low-rank factor ``slot_dim * r`` and the expert
    factors ``E * r * dim``; solving for ``r`` and rounding gives the reference's formula
    ``int((input_dim*dim - input_dim*slot_dim) / (slot_dim + E*dim) + 0.5)``. May be < 1.
    """
    numerator = input_dim * dim - input_dim * slot_dim
    denominator = slot_dim + num_experts * dim
    return int(numerator / denominator + 0.5)


class MammothExperts(nn.Module):
    """Mammoth's expert block: factorised low-rank linear -> expert-wise RMS norm -> ReLU -> dropout.

    State-dict compatible with ``mammoth.mammoth.MultiheadLinear`` (``lora_layers.*``, ``norm.gamma``).

    Shapes: ``(..., E, H, slot_dim / H) -> (..., E, H, dim / H)``.
    """

    def __init__(
        self, slot_dim: int, dim: int, num_heads: int, num_experts: int, rank: int, dropout: float,
        share_weights: bool,
    ) -> None:
        super().__init__()
        self.in_head_dim = slot_dim // num_heads
        self.out_head_dim = dim // num_heads
        self.lora_layers = FactorizedLinear(
            self.in_head_dim, self.out_head_dim, rank, num_experts, num_heads, share_weights
        )
        self.norm = ExpertWiseRMSNorm(self.out_head_dim, num_heads, num_experts)
        self.dropout = make_dropout(dropout)

    def forward(self, z: Tensor) -> Tensor:
        t = self.lora_layers.project(z)  # without the expert bias, which the epilogue adds
        p = self.dropout.p if self.training else 0.0
        # bias, norm, ReLU and dropout in one pass on CPU (the modules' maths; fast_dropout's mask)
        fused = expert_epilogue(t, self.lora_layers.bias, self.norm.gamma, self.norm.scale, p)
        if fused is not None:
            return fused
        return self.dropout(F.relu(self.norm(t + self.lora_layers.bias)))


def _fp32(t: Tensor) -> Tensor:
    """Upcast half/bfloat16 to float32 for the routing softmaxes; float32/float64 pass through."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class Mammoth(PatchEmbedding):
    """MAMMOTH mixture-of-mini-experts patch embedding.

    Args:
        input_dim: instance feature size (any positive integer).
        dim: output width; must be divisible by ``num_heads``.
        num_experts: experts ``E`` (30).
        num_slots: slots per expert ``S`` (10).
        num_heads: routing heads ``H`` (16).
        dropout: dropout after the experts (0.1).
        slot_dropout: probability of dropping individual routing logits in training (0, off). When on,
            training uses the explicit (materialised) routing path.
        slot_dim: query/slot width (256); ``<= 0`` means ``dim``. Must be divisible by ``num_heads``.
        lora_rank: expert rank when ``auto_rank`` is False.
        auto_rank: pick the rank that matches the parameter budget of ``Linear(input_dim, dim)``.
        keep_slots: output the ``E*S`` slot tokens (True, the paper's setting) instead of combining
            them back to one token per patch.
        share_lora_weights: share the first low-rank factor across experts.
        use_layernorm: LayerNorm (True) or RMSNorm for the query and slot norms.
        routing_chunk_size: patches per chunk when routing weights are materialised on request.
        device, dtype: factory arguments for the parameters.

    Shapes:
        ``feats (b, n, input_dim)`` or ``(n, input_dim)`` -> ``(b, E*S, dim)`` if ``keep_slots`` else
        ``(b, n, dim)``. ``mask (b, n)`` bool, True = real patch.
    """

    is_moe = True

    def __init__(
        self,
        input_dim: int,
        dim: int,
        *,
        num_experts: int = 30,
        num_slots: int = 10,
        num_heads: int = 16,
        dropout: float = 0.1,
        slot_dropout: float = 0.0,
        slot_dim: int = 256,
        lora_rank: int = 16,
        auto_rank: bool = True,
        keep_slots: bool = True,
        share_lora_weights: bool = True,
        use_layernorm: bool = True,
        routing_chunk_size: int = 8192,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.input_dim = self.in_dim = positive_int("Mammoth", "input_dim", input_dim)
        self.dim = self.out_dim = positive_int("Mammoth", "dim", dim)
        self.num_experts = positive_int("Mammoth", "num_experts", num_experts)
        self.num_slots = positive_int("Mammoth", "num_slots", num_slots)
        self.num_heads = positive_int("Mammoth", "num_heads", num_heads)
        self.routing_chunk_size = positive_int("Mammoth", "routing_chunk_size", routing_chunk_size)
        for name, p in (("dropout", dropout), ("slot_dropout", slot_dropout)):
            if not 0.0 <= float(p) < 1.0:
                raise ValueError(f"Mammoth: {name} must be in [0, 1), got {p}")
        if not isinstance(slot_dim, int) or isinstance(slot_dim, bool):
            raise ValueError(f"Mammoth: slot_dim must be an integer, got {slot_dim!r}")
        self.slot_dim = slot_dim if slot_dim > 0 else dim
        for name, value in (("dim", self.dim), ("slot_dim", self.slot_dim)):
            if value % num_heads:
                raise ValueError(
                    f"Mammoth: {name}={value} must be divisible by num_heads={num_heads}; change num_heads "
                    f"to a divisor of {value} (e.g. {max(h for h in (1, 2, 4, 8, 16) if value % h == 0)})"
                )
        if auto_rank:
            rank = mammoth_auto_rank(self.input_dim, self.slot_dim, self.dim, self.num_experts)
            if rank < 1:
                logger.warning(
                    "Mammoth: auto rank is %d for input_dim=%d, slot_dim=%d, dim=%d, num_experts=%d (the "
                    "parameter budget of Linear(input_dim, dim) is spent on the query projection); using "
                    "rank 1. Choose slot_dim < dim to get a larger rank.",
                    rank, self.input_dim, self.slot_dim, self.dim, self.num_experts,
                )
                rank = 1
            else:
                logger.debug("Mammoth: auto rank %d", rank)
        else:
            rank = positive_int("Mammoth", "lora_rank", lora_rank)
        self.lora_rank = rank
        self.keep_slots = bool(keep_slots)
        self.preserves_tokens = not self.keep_slots
        self.slot_dropout = float(slot_dropout)
        self.head_dim_input = self.slot_dim // num_heads
        self.head_dim = self.dim // num_heads

        norm_cls = LayerNorm if use_layernorm else RMSNorm
        self.wq = make_linear(self.input_dim, self.slot_dim, bias=True)  # native backend: oneDNN on large CPU inputs
        self.norm = norm_cls(self.slot_dim)
        self.slot_norm = norm_cls(self.head_dim_input)
        self.slot_embeds = nn.Parameter(
            torch.empty(self.num_experts, self.num_heads, self.num_slots, self.head_dim_input)
        )
        self.expert_heads = MammothExperts(
            self.slot_dim, self.dim, self.num_heads, self.num_experts, rank, float(dropout), share_lora_weights
        )
        self.reset_parameters()
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        """Xavier-uniform query projection (zero bias) and slot embeddings, as the reference."""
        nn.init.xavier_uniform_(self.wq.weight)
        nn.init.zeros_(self.wq.bias)
        nn.init.xavier_uniform_(self.slot_embeds)
        self.expert_heads.lora_layers.reset_parameters()

    @property
    def num_tokens(self) -> int:
        """Output tokens per bag when ``keep_slots`` (``E * S``)."""
        return self.num_experts * self.num_slots

    # ------------------------------------------------------------------ pieces
    def _queries(self, feats: Tensor) -> Tensor:
        """``(b, n, input_dim) -> (b, H, n, d_s)`` normalised routing queries."""
        b, n, _ = feats.shape
        x = self.norm(self.wq(feats))
        return x.view(b, n, self.num_heads, self.head_dim_input).transpose(1, 2)

    def _slot_keys(self) -> Tensor:
        """Normalised slot embeddings per head, ``(H, E*S, d_s)`` with ``(e, s)`` flattened e-major."""
        slots = self.slot_norm(self.slot_embeds)  # (E, H, S, d)
        return slots.permute(1, 0, 2, 3).reshape(self.num_heads, self.num_tokens, self.head_dim_input)

    def _run_experts(self, z: Tensor) -> Tensor:
        """Slot inputs ``(b, H, E*S, d_s)`` -> expert outputs ``(b, S, E, H, d_o)``."""
        b = z.shape[0]
        z = z.view(b, self.num_heads, self.num_experts, self.num_slots, self.head_dim_input)
        return self.expert_heads(z.permute(0, 3, 2, 1, 4))

    def _slot_tokens(self, y: Tensor) -> Tensor:
        """Expert outputs ``(b, S, E, H, d_o)`` -> slot tokens ``(b, E*S, dim)`` ordered ``(e, s)``."""
        b = y.shape[0]
        return y.permute(0, 2, 1, 3, 4).reshape(b, self.num_tokens, self.dim)

    # ------------------------------------------------------------------ forward
    def forward(
        self, feats: Tensor, return_weights: bool = False, mask: Tensor | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Embed patches.

        Args:
            feats: ``(b, n, input_dim)`` or an unbatched ``(n, input_dim)`` bag (output stays batched,
                as in the reference).
            return_weights: also return the dispatch weights ``(b, n, E, H, S)`` (materialised in chunks).
            mask: optional bool ``(b, n)``, True = real patch.

        Returns:
            ``out`` or ``(out, dispatch_weights)``; ``out`` is ``(b, E*S, dim)`` if ``keep_slots`` else
            ``(b, n, dim)`` (zeros at padded patches).
        """
        feats, mask = self._check(feats, mask)
        if self.slot_dropout > 0 and self.training:
            out, dispatch = self._forward_explicit(feats, mask)
            return (out, dispatch) if return_weights else out
        xh = self._queries(feats)
        keys = self._slot_keys()
        out = self._forward_attention(xh, keys, mask)
        if return_weights:
            return out, self._routing_weights(xh, keys, mask, want_dispatch=True)[2]
        return out

    def embed(self, x: Tensor, mask: Tensor | None = None, return_routing: bool = False) -> EmbeddedPatches:
        """Patch-embedding contract: tokens, their mask and (on request) the routing summary.

        With ``keep_slots`` the tokens are the ``E*S`` slots (all real, mask ``None``) and the routing's
        ``slot_composition (b, n, E*S)`` carries slot scores back to patches. Routing is detached.
        """
        x, mask = self._check(x, mask)
        if self.slot_dropout > 0 and self.training:
            out = self._forward_explicit(x, mask)[0]
            routing = None
            if return_routing:
                with torch.no_grad():
                    routing = self._routing_summary(self._queries(x), self._slot_keys(), mask)
        else:
            xh = self._queries(x)
            keys = self._slot_keys()
            out = self._forward_attention(xh, keys, mask)
            routing = None
            if return_routing:
                with torch.no_grad():
                    routing = self._routing_summary(xh.detach(), keys.detach(), mask)
        return EmbeddedPatches(out, None if self.keep_slots else mask, routing)

    def _check(self, feats: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if feats.ndim == 2:
            feats = feats.unsqueeze(0)
            mask = None if mask is None else mask.reshape(1, -1)
        if feats.ndim != 3 or feats.shape[-1] != self.input_dim:
            raise ValueError(
                f"Mammoth expects features (b, n, {self.input_dim}) or (n, {self.input_dim}), got "
                f"{tuple(feats.shape)}"
            )
        if feats.shape[1] == 0:
            raise ValueError("Mammoth needs at least one patch per bag; got n = 0")
        return feats, drop_full_mask(check_mask(feats, mask))

    def _forward_attention(self, xh: Tensor, keys: Tensor, mask: Tensor | None) -> Tensor:
        b, _, n, _ = xh.shape
        out_dtype = xh.dtype
        # Routing softmaxes in fp32 (also under autocast), with the dispatch as one fused attention.
        with torch.autocast(device_type=xh.device.type, enabled=False):
            q32 = _fp32(xh)
            k32 = _fp32(keys).to(q32.dtype)  # (H, E*S, d_s)
            z = slot_dispatch(k32, q32, mask)  # fused CPU kernel where it applies, else SDPA
        y = self._run_experts(z.to(out_dtype))
        if self.keep_slots:
            return self._slot_tokens(y)
        # Combine: patches attend to slots (softmax over the E*S slots of each head).
        vals = y.permute(0, 3, 2, 1, 4).reshape(b, self.num_heads, self.num_tokens, self.head_dim)
        with torch.autocast(device_type=xh.device.type, enabled=False):
            out = F.scaled_dot_product_attention(q32, k32.expand(b, -1, -1, -1), vals.to(q32.dtype), scale=1.0)
        out = out.transpose(1, 2).reshape(b, n, self.dim).to(y.dtype)
        if mask is not None:
            out = out * mask.unsqueeze(-1).to(out.dtype)
        return out

    def _forward_explicit(self, feats: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Materialised routing (used for slot dropout in training). Returns ``(out, dispatch)``."""
        b, n, _ = feats.shape
        xh = self._queries(feats)
        with torch.autocast(device_type=feats.device.type, enabled=False):
            x32 = _fp32(xh)
            keys = _fp32(self.slot_norm(self.slot_embeds)).to(x32.dtype)  # (E, H, S, d)
            logits = torch.einsum("bhnd,ehsd->bnehs", x32, keys)
            drop = torch.zeros_like(logits, dtype=torch.bool)
            if self.slot_dropout > 0 and self.training:
                drop = torch.rand(logits.shape, device=logits.device) < self.slot_dropout
            dispatch_drop = drop if mask is None else drop | ~mask[:, :, None, None, None]
            dispatch = logits.masked_fill(dispatch_drop, float("-inf")).softmax(dim=1)
            dispatch = torch.nan_to_num(dispatch, nan=0.0)  # a slot whose every logit was dropped
            z = torch.einsum("bhnd,bnehs->bhesd", x32, dispatch)
        z = z.reshape(b, self.num_heads, self.num_tokens, self.head_dim_input).to(xh.dtype)
        y = self._run_experts(z)
        if self.keep_slots:
            return self._slot_tokens(y), dispatch
        with torch.autocast(device_type=feats.device.type, enabled=False):
            comb_logits = logits.permute(0, 1, 3, 2, 4).reshape(b, n, self.num_heads, self.num_tokens)
            comb_drop = drop.permute(0, 1, 3, 2, 4).reshape(comb_logits.shape)
            combine = torch.nan_to_num(comb_logits.masked_fill(comb_drop, float("-inf")).softmax(-1), nan=0.0)
            vals = y.permute(0, 3, 2, 1, 4).reshape(b, self.num_heads, self.num_tokens, self.head_dim)
            vals = vals.to(x32.dtype)
            out = torch.einsum("bnht,bhtd->bnhd", combine, vals).reshape(b, n, self.dim)
        if mask is not None:
            out = out * mask.unsqueeze(-1).to(out.dtype)
        return out.to(y.dtype), dispatch

    # ------------------------------------------------------------------ routing on request
    def _chunk_logits(self, xh: Tensor, keys: Tensor, start: int, stop: int, mask: Tensor | None) -> Tensor:
        """Routing logits of patches ``start:stop``: ``(b, H, c, E*S)``, ``-inf`` at padding (fp32)."""
        q = _fp32(xh[:, :, start:stop])
        logits = torch.einsum("bhnd,htd->bhnt", q, keys.to(q.dtype))
        if mask is not None:
            logits = logits.masked_fill(~mask[:, None, start:stop, None], float("-inf"))
        return logits

    def _dispatch_lse(self, xh: Tensor, keys: Tensor, mask: Tensor | None) -> Tensor:
        """Log-normaliser of the dispatch softmax over patches, ``(b, H, 1, E*S)``, in chunks."""
        n, step = xh.shape[2], self.routing_chunk_size
        lse = None
        for start in range(0, n, step):
            part = torch.logsumexp(self._chunk_logits(xh, keys, start, start + step, mask), dim=2, keepdim=True)
            lse = part if lse is None else torch.logaddexp(lse, part)
        assert lse is not None
        return lse

    def _routing_weights(
        self, xh: Tensor, keys: Tensor, mask: Tensor | None, want_dispatch: bool
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Chunked routing: ``(expert_assignment (b,n,E), slot_composition (b,n,E*S), dispatch or None)``.

        ``dispatch`` is ``(b, n, E, H, S)`` exactly as the reference's ``return_weights``.
        """
        b, H, n, _ = xh.shape
        E, S, _T = self.num_experts, self.num_slots, self.num_tokens
        lse = self._dispatch_lse(xh, keys, mask)
        assignment, composition, dispatch = [], [], []
        for start in range(0, n, self.routing_chunk_size):
            stop = min(start + self.routing_chunk_size, n)
            p = torch.exp(self._chunk_logits(xh, keys, start, stop, mask) - lse)  # (b, H, c, T)
            composition.append(p.mean(dim=1))
            per_expert = p.view(b, H, stop - start, E, S).sum(dim=(1, 4))  # (b, c, E)
            assignment.append(per_expert / per_expert.sum(-1, keepdim=True).clamp_min(1e-30))
            if want_dispatch:
                dispatch.append(p.view(b, H, stop - start, E, S).permute(0, 2, 3, 1, 4))
        return (
            torch.cat(assignment, 1),
            torch.cat(composition, 1),
            torch.cat(dispatch, 1) if want_dispatch else None,
        )

    def _routing_summary(self, xh: Tensor, keys: Tensor, mask: Tensor | None) -> Routing:
        assignment, composition, _ = self._routing_weights(xh, keys, mask, want_dispatch=False)
        return Routing(expert_assignment=assignment, slot_composition=composition if self.keep_slots else None)

    def extra_repr(self) -> str:
        return (
            f"input_dim={self.input_dim}, dim={self.dim}, num_experts={self.num_experts}, "
            f"num_slots={self.num_slots}, num_heads={self.num_heads}, slot_dim={self.slot_dim}, "
            f"rank={self.lora_rank}, keep_slots={self.keep_slots}"
        )
