"""RRT-MIL (Tang et al., CVPR 2024, "Feature re-embedding"): a re-embedding transformer before ABMIL pooling.

The paper's model (``mil_lab_compat: false``, configs ``rrt.base_paper`` and ``rrt.base_paper_mammoth``)::

    h  = Dropout(patch_embed(x))                                         (t, d)
    R-MSA layers (n_layers - 1, or n_layers without CR-MSA):
         the t tokens are laid out row-major on an s x s grid (s = ceil(sqrt(t)) rounded up to a multiple
         of region_num, zero-filled), cut into region_num x region_num regions, and multi-head
         self-attention runs inside every region; EPEG adds a depthwise (epeg_k x 1) convolution of each
         head's attention logits to the logits before the softmax
         h = h + R-MSA(LN(h))     [+ FFN]
    PPEG/PEG (``pos``) applied after layer ``pos_pos`` (-1: before the first layer): depthwise convs on the
         square token grid (padded by repeating the first tokens), as RRT's ``PPEG``
    CR-MSA layer: every region is summarised by crmsa_k tokens (softmax over its tokens of
         ``h phi``), the summaries of all regions attend to each other (per summary index), and the results
         are spread back to the tokens with min-max-normalised dispatch x softmax-over-k combine weights
    LN, attention pooling (Linear(d, 128), act, Linear(128, 1), no bias; softmax over tokens), Linear(d, C)

MIL-Lab's model (``mil_lab_compat: true``, configs ``rrt.base`` and ``rrt.base_mammoth``: MIL-Lab's and the
MAMMOTH fork's names mean their model): MIL-Lab's ``rrt`` builds the region attention and the PPEG but
never applies them; its model is ``n_layers`` pre-norm Nyström attention layers (heads ``n_heads``,
dim_head ``trans_dim``, 256 landmarks, dropout 0 because ``trans_dropout`` never reaches the layers),
LayerNorm and the same attention pooling. That model is reproduced here without the unused modules (loading a
MIL-Lab checkpoint accounts for their keys).

The grid, the regions, the PPEG padding and the Nyström landmarks depend on the bag length, so bags of a
padded batch are processed one at a time on their real tokens (an unpadded batch runs at once).

Cost: R-MSA attention is quadratic inside regions of about ``t / region_num**2`` tokens, i.e.
``O(t**2 / region_num**2)`` time. EPEG is applied to the queries instead of the logits (``(q + conv(q)) k^T``
equals ``q k^T + conv(q k^T)``; the conv's bias shifts all logits of a head alike, which the softmax ignores),
so R-MSA runs as fused attention (``F.scaled_dot_product_attention``) and never stores the ``t**2 / 8`` logits
per layer (1.25 GB at 50k patches in fp32 for the reference); same maths, float rounding apart, and the EPEG
bias gets its exact gradient, 0. Only where SDPA would fall back to its math backend, which materialises
the logits (other devices, or fused kernels switched off), are regions processed in chunks of about
``attn_chunk_elements`` logits (under activation checkpointing when gradients are needed). CR-MSA, PPEG and
the Nyström layers are linear in ``t``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ...nn.attention.nystrom import NystromAttention
from ...nn.backend import make_dropout, make_linear
from ...nn.checks import check_positive_fields
from ...nn.depthwise_conv import depthwise_conv2d_nhwc, folded_depthwise_kernel, head_sequence_conv
from ...nn.embed import create_patch_embed
from ...nn.patch_embedding import make_activation
from ...registry import register_model
from ._init import initialize_weights
from .base import MILConfig, MILModel, MILOutput

__all__ = [
    "RRTMIL",
    "CrossRegionAttention",
    "RRTConfig",
    "RegionAttention",
    "RegionInnerAttention",
    "region_grid",
]


@dataclass
class RRTConfig(MILConfig):
    """RRT-MIL hyper-parameters (MIL-Lab ``rrt/base`` values; see the module docstring for the two modes).

    Attributes:
        act: activation of the linear patch embedding (``relu`` | ``gelu``).
        dropout: dropout after the patch embedding (0.25).
        region_num: regions per grid side for R-MSA and CR-MSA (8, i.e. 64 regions).
        n_layers: re-embedding layers, CR-MSA included when ``cr_msa`` (MIL-Lab compat: Nyström layers).
        n_heads: heads of R-MSA (head width ``embed_dim / n_heads``) and of the Nyström layers.
        trans_dim: head width of the Nyström layers (``attn: ntrans`` and compat mode).
        trans_dropout: dropout after each attention's output projection and in the FFN (paper mode).
        attn: ``rmsa`` (region attention, the paper) or ``ntrans`` (global Nyström attention) for the
            non-CR-MSA layers in paper mode.
        epeg: EPEG inside R-MSA (conv ``(epeg_k, 1)`` over each head's attention logits).
        epeg_k: EPEG kernel length (15, the repository default).
        cr_msa: make the last layer a cross-region MSA layer.
        crmsa_k: summary tokens per region in CR-MSA.
        crmsa_heads: heads of CR-MSA's attention.
        crmsa_mlp: compute CR-MSA's region logits with a small MLP instead of a matrix.
        all_shortcut: add the encoder input to its output before the final LayerNorm.
        pos: ``ppeg``, ``peg`` or ``none`` positional encoding generator.
        pos_pos: apply ``pos`` after layer ``pos_pos`` (0 = after the first), -1 = before the first.
        peg_k: PPEG/PEG kernel size.
        ffn, ffn_act, mlp_ratio: optional feed-forward sub-layer per layer.
        drop_path: stochastic-depth rate of the residual branches.
        qkv_bias: bias of the R-MSA / CR-MSA ``qkv`` projections.
        min_region_num, min_region_ratio: fall back to one region (global attention) when a bag has fewer
            tokens than ``min_region_num`` or the grid padding exceeds ``t / min_region_ratio``.
        num_landmarks: landmarks of the Nyström layers.
        pool: ``attn`` (attention pooling) or ``mean``.
        da_act, da_gated, da_bias, da_dropout: attention-pooling options (act of the hidden layer, gated
            variant, linear biases, dropout 0.25 in the pooling network).
        mil_lab_compat: reproduce MIL-Lab's ``rrt`` (see the module docstring); ``attn``, ``epeg``,
            ``cr_msa``, ``pos`` and ``trans_dropout`` are then ignored.
        attn_chunk_elements: budget (floats) of R-MSA logits per chunk of regions (checkpointed when
            gradients are needed) where attention would store its logits (no fused SDPA kernel for the
            device and dtype); ``<= 0`` disables chunking.

    MIL-Lab keys with a single supported value are not fields: ``mlp_dim`` (= ``embed_dim``),
    ``multi_scale`` (False), ``n_cycle`` (1), ``shift_size`` (False), ``no_norm`` (False).
    """

    act: str = "relu"
    region_num: int = 8
    n_layers: int = 2
    n_heads: int = 8
    trans_dim: int = 64
    trans_dropout: float = 0.1
    attn: str = "rmsa"
    epeg: bool = True
    epeg_k: int = 15
    cr_msa: bool = True
    crmsa_k: int = 3
    crmsa_heads: int = 8
    crmsa_mlp: bool = False
    all_shortcut: bool = False
    pos: str = "ppeg"
    pos_pos: int = 0
    peg_k: int = 7
    ffn: bool = False
    ffn_act: str = "gelu"
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    qkv_bias: bool = True
    min_region_num: int = 0
    min_region_ratio: float = 0.0
    num_landmarks: int = 256
    pool: str = "attn"
    da_act: str = "relu"
    da_gated: bool = False
    da_bias: bool = False
    da_dropout: bool = False
    mil_lab_compat: bool = False
    attn_chunk_elements: int = 1 << 26

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_positive_fields(
            self, "region_num", "n_layers", "n_heads", "trans_dim", "epeg_k", "crmsa_k", "crmsa_heads",
            "peg_k", "num_landmarks",
        )
        if self.attn not in ("rmsa", "ntrans"):
            raise ValueError(f"{name}.attn must be 'rmsa' or 'ntrans', got {self.attn!r}")
        if self.pos not in ("ppeg", "peg", "none"):
            raise ValueError(f"{name}.pos must be 'ppeg', 'peg' or 'none', got {self.pos!r}")
        if self.pool not in ("attn", "mean"):
            raise ValueError(f"{name}.pool must be 'attn' or 'mean', got {self.pool!r}")
        if self.ffn_act not in ("gelu", "relu"):
            raise ValueError(f"{name}.ffn_act must be 'gelu' or 'relu', got {self.ffn_act!r}")
        for key in ("trans_dropout", "drop_path"):
            if not 0.0 <= float(getattr(self, key)) < 1.0:
                raise ValueError(f"{name}.{key} must be in [0, 1), got {getattr(self, key)}")
        if not self.mil_lab_compat:
            if self.embed_dim % self.n_heads or self.embed_dim % self.crmsa_heads:
                raise ValueError(
                    f"{name}: embed_dim={self.embed_dim} must be divisible by n_heads={self.n_heads} "
                    f"and crmsa_heads={self.crmsa_heads}"
                )
            if self.pos != "none" and not -1 <= self.pos_pos < self.n_layers:
                raise ValueError(
                    f"{name}.pos_pos must be in [-1, n_layers) = [-1, {self.n_layers}), got {self.pos_pos}"
                )
            if self.epeg and self.epeg_k % 2 == 0:
                raise ValueError(f"{name}.epeg_k must be odd, got {self.epeg_k}")


# ----------------------------------------------------------------------------------------- helpers
def _ceil_sqrt(n: int) -> int:
    return math.isqrt(n - 1) + 1 if n > 0 else 0


def region_grid(
    num_tokens: int, region_num: int, min_region_num: int = 0, min_region_ratio: float = 0.0
) -> tuple[int, int]:
    """Grid side ``s`` and region side ``r`` for a bag of ``num_tokens`` tokens (RRT's ``padding``).

    ``s = ceil(sqrt(t))`` rounded up to a multiple of ``region_num`` and ``r = s / region_num``; when the
    bag is smaller than ``min_region_num`` or the padding ``s*s - t`` exceeds ``t / min_region_ratio``,
    the grid is ``ceil(sqrt(t))`` rounded up to even and holds a single region (``r = s``).
    """
    side = _ceil_sqrt(num_tokens)
    side += (-side) % region_num
    region = side // region_num
    extra = side * side - num_tokens
    if extra > num_tokens / (min_region_ratio + 1e-8) or num_tokens < min_region_num:
        side = _ceil_sqrt(num_tokens)
        side += side % 2
        region = side
    return side, region


def _to_regions(x: Tensor, side: int, region: int) -> Tensor:
    """``(b, t, c)`` -> zero-filled ``s x s`` grid -> ``(b, R, r*r, c)`` regions (row-major region order)."""
    b, t, c = x.shape
    if side * side > t:
        x = torch.cat([x, x.new_zeros(b, side * side - t, c)], dim=1)
    k = side // region
    x = x.reshape(b, k, region, k, region, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, k * k, region * region, c)


def _from_regions(x: Tensor, side: int, region: int, num_tokens: int) -> Tensor:
    """Inverse of :func:`_to_regions`: ``(b, R, r*r, c)`` -> ``(b, t, c)`` (grid padding dropped)."""
    b, _, _, c = x.shape
    k = side // region
    x = x.reshape(b, k, k, region, region, c).permute(0, 1, 3, 2, 4, 5).reshape(b, side * side, c)
    return x[:, :num_tokens]


def _drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: zero a sample's residual branch with probability ``p`` (rescaled by ``1/(1-p)``)."""
    if p <= 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


# ----------------------------------------------------------------------------------------- attention
class RegionInnerAttention(nn.Module):
    """Multi-head softmax attention inside groups of tokens, with optional EPEG on the logits.

    ``logits = (q k^T) / sqrt(head_dim)``; with EPEG ``logits += DWConv_(k, 1)(logits)`` (one filter per
    head, along the query axis); ``softmax``; ``proj``; dropout. Computed as SDPA on ``q + DWConv(q)``
    (see the module docstring).

    Shapes: ``x (g, p, dim)`` (``g`` groups of ``p`` tokens) -> ``(g, p, dim)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        epeg: bool = False,
        epeg_k: int = 15,
        dropout: float = 0.0,
        chunk_elements: int = 0,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.chunk_elements = chunk_elements
        self.qkv = make_linear(dim, dim * 3, bias=qkv_bias)
        self.proj = make_linear(dim, dim)
        self.proj_drop = make_dropout(dropout)
        self.pe: nn.Conv2d | None = (
            nn.Conv2d(num_heads, num_heads, (epeg_k, 1), padding=(epeg_k // 2, 0), groups=num_heads)
            if epeg
            else None
        )

    def _attend(self, x: Tensor) -> Tensor:
        g, p, c = x.shape
        q, k, v = self.qkv(x).view(g, p, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.pe is not None:
            # EPEG on the logits, (q k^T) + conv_query_axis(q k^T), is linear in q: it equals (q + conv(q)) k^T,
            # plus the conv's bias, which shifts all logits of a head alike and so cannot change the softmax.
            # So the attention runs as SDPA on q + conv(q) (one pass: identity folded into the centre tap), and
            # the (g, h, p, p) logits are never stored (faster at large regions: docs/performance-notes.md).
            q = head_sequence_conv(q, self.pe, identity=True, use_bias=False)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (g, h, p, head_dim)
        if self.pe is not None and self.pe.bias is not None:
            # The bias stays in the graph with weight 0: it gets its exact gradient (0) like every parameter
            # (DDP, optimisers), and a non-finite bias still poisons the output, as it does the logits.
            out = out + 0.0 * self.pe.bias.sum()
        return out.transpose(1, 2).reshape(g, p, c)

    def forward(self, x: Tensor) -> Tensor:
        g, p, _ = x.shape
        per_group = self.num_heads * p * p  # logits per group
        if (
            self.chunk_elements <= 0
            or g == 1
            or g * per_group <= self.chunk_elements
            or not _attention_stores_logits(x, self.head_dim)
        ):
            out = self._attend(x)
        else:  # bounded memory: chunks of groups, recomputed in backward when gradients are needed
            step = max(1, self.chunk_elements // per_group)
            recompute = torch.is_grad_enabled() and x.requires_grad
            parts = []
            for i in range(0, g, step):
                xi = x[i : i + step]
                parts.append(
                    checkpoint(self._attend, xi, use_reentrant=False) if recompute else self._attend(xi)
                )
            out = torch.cat(parts, dim=0)
        return self.proj_drop(self.proj(out))


def _attention_stores_logits(x: Tensor, head_dim: int) -> bool:
    """Whether ``F.scaled_dot_product_attention`` on ``x``'s device and dtype falls back to the math backend,
    which forms (and under autograd stores) the full logits; the fused kernels keep O(tokens) state only.

    CPU: PyTorch's fused (flash) kernel takes float32/float64/bfloat16/float16 dense 4-D inputs unless flash
    attention is switched off. CUDA: flash or memory-efficient attention take float32 (memory-efficient),
    float16 and bfloat16 with head sizes up to 256. Anything else is assumed to store logits, so it is chunked.
    Chunking a fused kernel only costs time: under autograd each chunk is recomputed in backward, while the
    unchunked fused kernel's memory is still linear in ``t`` (measurements in docs/performance-notes.md).
    """
    if x.device.type == "cpu":
        return not (
            torch.backends.cuda.flash_sdp_enabled()
            and x.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16)
        )
    if x.device.type == "cuda":
        fused = torch.backends.cuda.flash_sdp_enabled() or torch.backends.cuda.mem_efficient_sdp_enabled()
        return not (fused and x.dtype in (torch.float32, torch.float16, torch.bfloat16) and head_dim <= 256)
    return True


class RegionAttention(nn.Module):
    """R-MSA: attention within the ``region_num x region_num`` regions of the token grid.

    Shapes: ``x (b, t, dim)`` (every bag of the batch has ``t`` real tokens) -> ``(b, t, dim)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        region_num: int,
        qkv_bias: bool = True,
        epeg: bool = True,
        epeg_k: int = 15,
        dropout: float = 0.0,
        min_region_num: int = 0,
        min_region_ratio: float = 0.0,
        chunk_elements: int = 0,
    ) -> None:
        super().__init__()
        self.region_num, self.min_region_num, self.min_region_ratio = (
            region_num,
            min_region_num,
            min_region_ratio,
        )
        self.attn = RegionInnerAttention(dim, num_heads, qkv_bias, epeg, epeg_k, dropout, chunk_elements)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        side, region = region_grid(t, self.region_num, self.min_region_num, self.min_region_ratio)
        regions = _to_regions(x, side, region)  # (b, R, P, c)
        nreg, p = regions.shape[1], regions.shape[2]
        out = self.attn(regions.reshape(b * nreg, p, c)).view(b, nreg, p, c)
        return _from_regions(out, side, region, t)


class CrossRegionAttention(nn.Module):
    """CR-MSA: ``k`` soft summaries per region attend across regions, then are spread back to the tokens.

    For the tokens ``x_r (P, c)`` of region ``r``: ``logits = (x_r phi)^T (k, P)``; summaries
    ``z_r = softmax_P(logits) x_r (k, c)``; ``z`` of all regions go through multi-head attention per
    summary index (sequence = regions); token ``p`` of region ``r`` receives
    ``sum_k minmax_P(logits)[k, p] * softmax_k(logits)[k, p] * z'_r[k]``.

    Shapes: ``x (b, t, dim)`` -> ``(b, t, dim)``; regions never mix across the bags of a batch.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        region_num: int,
        k: int = 3,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        mlp: bool = False,
        min_region_num: int = 0,
        min_region_ratio: float = 0.0,
    ) -> None:
        super().__init__()
        self.region_num, self.min_region_num, self.min_region_ratio = (
            region_num,
            min_region_num,
            min_region_ratio,
        )
        self.attn = RegionInnerAttention(dim, num_heads, qkv_bias, epeg=False, dropout=dropout)
        if mlp:
            self.phi: nn.Module | nn.Parameter = nn.Sequential(
                make_linear(dim, dim // 4, bias=False), nn.Tanh(), make_linear(dim // 4, k, bias=False)
            )
        else:
            self.phi = nn.Parameter(torch.empty(dim, k))
            nn.init.kaiming_uniform_(self.phi, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        side, region = region_grid(t, self.region_num, self.min_region_num, self.min_region_ratio)
        regions = _to_regions(x, side, region)  # (b, R, P, c)
        if isinstance(self.phi, nn.Parameter):
            logits = torch.einsum("brpc,ck->brkp", regions, self.phi)
        else:
            logits = self.phi(regions).transpose(-1, -2)  # (b, R, k, P)
        dispatch = logits.softmax(dim=-1)
        combine = logits.softmax(dim=2)
        lo = logits.amin(dim=-1, keepdim=True)
        hi = logits.amax(dim=-1, keepdim=True)
        spread = (logits - lo) / (hi - lo + 1e-8)
        summaries = dispatch @ regions  # (b, R, k, c)
        nreg, k = summaries.shape[1], summaries.shape[2]
        seq = summaries.permute(0, 2, 1, 3).reshape(b * k, nreg, c)  # per summary index, sequence = regions
        mixed = self.attn(seq).view(b, k, nreg, c).permute(0, 2, 1, 3)  # (b, R, k, c)
        out = (spread * combine).transpose(-1, -2) @ mixed  # (b, R, P, c)
        return _from_regions(out, side, region, t)


class PositionEncodingGenerator(nn.Module):
    """RRT's PPEG (``pyramid=True``: convs ``peg_k``, 5, 3 plus identity) or PEG (``peg_k`` + identity).

    The tokens are put on a square grid padded by repeating the first tokens (zero-filled up to 7 x 7 for
    tiny bags in the PPEG case, as RRT does); the padding is dropped afterwards. The convolutions and the
    identity run as one folded depthwise convolution on the channels-last grid (:mod:`medmoe.nn.depthwise_conv`).
    Shapes: ``x (b, t, dim)`` -> ``(b, t, dim)``.
    """

    def __init__(self, dim: int, k: int = 7, pyramid: bool = True) -> None:
        super().__init__()
        self.pyramid = pyramid
        self.proj = nn.Conv2d(dim, dim, k, 1, k // 2, groups=dim)
        if pyramid:
            self.proj1 = nn.Conv2d(dim, dim, 5, 1, 2, groups=dim)
            self.proj2 = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        side = _ceil_sqrt(t)
        extra = side * side - t
        if extra > 0:
            x = torch.cat([x, x[:, :extra]], dim=1)
        if self.pyramid and side < 7:
            x = torch.cat([x, x.new_zeros(b, 49 - side * side, c)], dim=1)
            side = 7
        convs = (self.proj, self.proj1, self.proj2) if self.pyramid else (self.proj,)
        weight, bias = folded_depthwise_kernel(convs, identity=True)  # convs + identity as one kernel
        out = depthwise_conv2d_nhwc(x.reshape(b, side, side, c), weight, bias)
        return out.reshape(b, side * side, c)[:, :t]


class RRTLayer(nn.Module):
    """Pre-norm residual layer ``x + DropPath(attn(LN(x)))`` (+ ``x + DropPath(FFN(LN2(x)))`` if ``ffn``)."""

    def __init__(
        self,
        dim: int,
        attn: nn.Module,
        drop_path: float = 0.0,
        ffn: bool = False,
        ffn_act: str = "gelu",
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = attn
        self.drop_path = drop_path
        self.ffn: nn.Module | None = None
        if ffn:
            hidden = int(dim * mlp_ratio)
            self.norm2 = nn.LayerNorm(dim)
            self.ffn = nn.Sequential(
                make_linear(dim, hidden),
                make_activation(ffn_act),
                make_dropout(dropout),
                make_linear(hidden, dim),
                make_dropout(dropout),
            )

    def forward(self, x: Tensor) -> Tensor:
        x = x + _drop_path(self.attn(self.norm(x)), self.drop_path, self.training)
        if self.ffn is not None:
            x = x + _drop_path(self.ffn(self.norm2(x)), self.drop_path, self.training)
        return x


class _NystromBlockAttention(NystromAttention):
    """Nyström attention with the single-argument call used by :class:`RRTLayer`."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(x)  # type: ignore[return-value]


class AttentionPooling(nn.Module):
    """RRT's ``DAttention``: ``score = Linear(128, 1)(act(Linear(d, 128)(h)))``
    (gated: ``act(.) * sigmoid(.)``),
    ``w = softmax_t(score)``, ``pooled = w h``.

    Shapes: ``h (b, t, dim)`` -> ``pooled (b, dim)``, ``weights (b, t)``.
    """

    def __init__(
        self,
        dim: int,
        act: str = "relu",
        gated: bool = False,
        bias: bool = False,
        dropout: bool = False,
        hidden: int = 128,
    ) -> None:
        super().__init__()
        self.gated = gated
        a: list[nn.Module] = [make_linear(dim, hidden, bias=bias), make_activation(act)]
        if dropout:
            a.append(make_dropout(0.25))
        self.attention_a = nn.Sequential(*a)
        self.attention_b: nn.Module | None = None
        if gated:
            g: list[nn.Module] = [make_linear(dim, hidden, bias=bias), nn.Sigmoid()]
            if dropout:
                g.append(make_dropout(0.25))
            self.attention_b = nn.Sequential(*g)
        self.attention_c = make_linear(hidden, 1, bias=bias)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        a = self.attention_a(h)
        if self.attention_b is not None:
            a = a * self.attention_b(h)
        weights = self.attention_c(a).squeeze(-1).float().softmax(dim=-1).to(h.dtype)  # (b, t)
        return torch.einsum("bt,btd->bd", weights, h), weights


# ----------------------------------------------------------------------------------------- model
@register_model("rrt")
class RRTMIL(MILModel):
    """RRT-MIL: region-based re-embedding transformer (R-MSA + EPEG + CR-MSA) and attention pooling.

    ``attention_kind = "post-softmax"``: ``MILOutput.attention (b, 1, n)`` holds the pooling weights over
    the patches (0 at padded patches); ``None`` with ``pool: mean``. With Mammoth ``keep_slots`` the slot
    weights are carried to the patches. ``mil_lab_compat: true`` gives MIL-Lab's model (see the module
    docstring).

    Outputs: ``logits (b, C)``, ``slide_features (b, embed_dim)``.
    """

    config_class: ClassVar[type[MILConfig]] = RRTConfig
    attention_kind: ClassVar[str] = "post-softmax"
    #: Test hook (generic model tests): small Nyström layers for tiny instances.
    tiny_config: ClassVar[dict] = {"num_landmarks": 16, "trans_dim": 8}

    def __init__(self, config: RRTConfig) -> None:
        super().__init__(config, build_patch_embed=False)
        self.config: RRTConfig
        d = config.embed_dim
        args = dict(config.patch_embed_args)
        if config.patch_embed in ("linear", "mlp"):
            args.setdefault("act", config.act)
        self.patch_embed = create_patch_embed(config.patch_embed, config.in_dim, d, **args)
        self.embed_dropout = make_dropout(config.dropout)

        def layer(attn: nn.Module, dropout: float) -> RRTLayer:
            return RRTLayer(d, attn, config.drop_path, config.ffn, config.ffn_act, config.mlp_ratio, dropout)

        def nystrom(dropout: float) -> NystromAttention:
            return _NystromBlockAttention(
                d, dim_head=config.trans_dim, heads=config.n_heads, num_landmarks=config.num_landmarks,
                pinv_iterations=6, residual=True, dropout=dropout, pinv_scale="sample",
            )  # fmt: skip

        regions = {
            "region_num": config.region_num, "qkv_bias": config.qkv_bias, "dropout": config.trans_dropout,
            "min_region_num": config.min_region_num, "min_region_ratio": config.min_region_ratio,
        }  # fmt: skip
        layers: list[nn.Module] = []
        self.pos_embedding: nn.Module | None = None
        self.pos_after = -2  # -1: before the first layer, i >= 0: after layer i, -2: never
        if config.mil_lab_compat:  # MIL-Lab never passes trans_dropout to its layers: dropout 0
            layers = [layer(nystrom(0.0), 0.0) for _ in range(config.n_layers)]
        else:
            drop = config.trans_dropout
            for _ in range(config.n_layers - 1 if config.cr_msa else config.n_layers):
                if config.attn == "rmsa":
                    attn: nn.Module = RegionAttention(
                        d, config.n_heads, epeg=config.epeg, epeg_k=config.epeg_k,
                        chunk_elements=config.attn_chunk_elements, **regions,
                    )  # fmt: skip
                else:
                    attn = nystrom(drop)
                layers.append(layer(attn, drop))
            if config.cr_msa:
                cross = CrossRegionAttention(
                    d, config.crmsa_heads, k=config.crmsa_k, mlp=config.crmsa_mlp, **regions
                )  # fmt: skip
                layers.append(layer(cross, drop))
            if config.pos != "none":
                self.pos_embedding = PositionEncodingGenerator(d, config.peg_k, pyramid=config.pos == "ppeg")
                self.pos_after = config.pos_pos
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(d)
        self.pool_fn: AttentionPooling | None = (
            AttentionPooling(d, config.da_act, config.da_gated, config.da_bias, config.da_dropout)
            if config.pool == "attn"
            else None
        )
        self.classifier = make_linear(d, config.num_classes)
        initialize_weights(self)

    def _encode(self, h: Tensor) -> Tensor:
        """Re-embed bags of equal length without padding: ``(b, t, d) -> (b, t, d)``."""
        shortcut = h
        if self.pos_embedding is not None and self.pos_after == -1:
            h = self.pos_embedding(h)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if self.pos_embedding is not None and self.pos_after == i:
                h = self.pos_embedding(h)
        if self.config.all_shortcut and not self.config.mil_lab_compat:
            h = h + shortcut
        return self.norm(h)

    def _aggregate(self, h: Tensor) -> tuple[Tensor, Tensor | None]:
        h = self._encode(h)
        if self.pool_fn is None:
            return h.mean(dim=1), None
        return self.pool_fn(h)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        *,
        label: Tensor | None = None,
        return_attention: bool = False,
        return_routing: bool = False,
    ) -> MILOutput:
        """Classify bags ``x: (b, n, in_dim)`` with optional bool ``mask: (b, n)`` (True = real patch).

        ``label`` is accepted for the common interface and unused.
        """
        x, mask = self.check_input(x, mask)
        emb = self.embed(x, mask, return_routing=return_routing, return_attention=return_attention)
        tokens, tmask = self.embed_dropout(emb.tokens), emb.mask
        if tmask is None:
            slide, weights = self._aggregate(tokens)
        else:
            slides, rows = [], []
            for i in range(tokens.shape[0]):
                s, w = self._aggregate(tokens[i : i + 1, tmask[i]])
                slides.append(s)
                if w is not None:
                    row = w.new_zeros(1, tokens.shape[1])
                    row[:, tmask[i]] = w
                    rows.append(row)
            slide = torch.cat(slides, dim=0)
            weights = torch.cat(rows, dim=0) if rows else None
        out = MILOutput(logits=self.classifier(slide), slide_features=slide)
        if return_attention and weights is not None:
            out.attention = self.to_patch_attention(emb, weights.unsqueeze(1))
            out.extras["attention_kind"] = "post-softmax"
        if return_routing:
            out.routing = emb.routing
        return out
