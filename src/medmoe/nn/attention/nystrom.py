"""Nyström self-attention (Xiong et al., AAAI 2021), as used by TransMIL, RRT-MIL and Lin-MIL's ablation.

Same maths, constructor arguments and state-dict keys (``to_qkv.weight``, ``to_out.0.weight``,
``to_out.0.bias``, ``res_conv.weight``) as ``NystromAttention`` of the pip package
``nystrom-attention`` 0.0.14, so weights load unchanged and outputs agree to float precision.

For a sequence of ``n`` tokens, ``m`` landmarks, ``h`` heads of width ``d``::

    pad       x at the *front* with zeros to n' = ceil(n / m) * m tokens (and the mask with False)
    q, k, v   = split(x W_qkv)                                  (b, h, n', d); q scaled by d^-1/2
    landmarks q~, k~ = means of q, k over m contiguous segments of l = n' / m tokens
                                                                (masked means when a mask is given)
    A1 = softmax(q k~^T)   (b, h, n', m)     A2 = softmax(q~ k~^T)   (b, h, m, m)
    A3 = softmax(q~ k^T)   (b, h, m, n')
    out = (A1 pinv(A2)) (A3 v) + DepthwiseConv_(kernel, 1)(v)   -> merge heads -> W_out -> last n rows

``pinv`` is the iterative Moore–Penrose approximation ``Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4``
started from ``Z0 = A^T / (max_i sum_j |A_ij| * max_j sum_i |A_ij|)``. Time and memory are linear in ``n``
(``O(n m)``) unless the full attention matrix is requested.

Differences from the reference (documented, off by default where they change numbers):

* ``pinv_scale="sample"`` takes the maxima of the pinv starting point per sequence instead of over the
  whole batch (the reference's choice makes a bag's output depend on the other bags of the batch).
* ``return_attn=True`` returns the attention matrix cropped to the ``n`` real positions, ``(b, h, n, n)``;
  the reference returns it including the front padding, ``(b, h, n', n')``.
* Input validation raises ``ValueError``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backend import make_dropout, make_linear
from ..checks import check_positive_ints
from ..depthwise_conv import head_sequence_conv
from ..onednn_linear import fast_matmul
from .pinv import moore_penrose_pinv, pinv_iterations

__all__ = ["NystromAttention", "moore_penrose_pinv"]


def _split_heads(qkv: Tensor, heads: int, dim_head: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(b, n, 3 * heads * dim_head)`` -> contiguous ``q, k, v (b, heads, n, dim_head)``.

    Contiguous per head so that every product below reads them (and ``k.T``, ``v.T``) in place: as views of
    the projection, each head's rows are ``3 * heads * dim_head`` apart and every oneDNN product copied them
    again, transposing copies of ``v.T`` included (a visible share of a TransMIL step at 50k patches; the
    measurement is in docs/performance-notes.md).
    """
    b, n, _ = qkv.shape
    q, k, v = qkv.reshape(b, n, 3, heads, dim_head).permute(2, 0, 3, 1, 4).contiguous().unbind(0)
    return q, k, v


def _softmax_with_zeros(logits: Tensor, zeros: int) -> tuple[Tensor, Tensor]:
    """Softmax over ``logits (..., r)`` and ``zeros`` more logits equal to 0, along the last dim.

    Returns the probabilities of ``logits`` ``(..., r)`` and the probability of each zero logit ``(..., 1)``;
    ``zeros >= 1``.
    """
    # one fused softmax over the logits and log(zeros), the zero logits' total weight
    lumped = torch.cat([logits, logits.new_full((*logits.shape[:-1], 1), math.log(zeros))], dim=-1).softmax(dim=-1)
    return lumped[..., :-1], lumped[..., -1:] / zeros


class NystromAttention(nn.Module):
    """Multi-head self-attention approximated with ``num_landmarks`` Nyström landmarks.

    Args:
        dim: token width.
        dim_head: width of each head.
        heads: number of heads.
        num_landmarks: number of landmarks ``m``; the sequence is front-padded to a multiple of it.
        pinv_iterations: Moore–Penrose iterations for ``pinv(A2)``.
        residual: add a depthwise convolution of ``v`` along the sequence (kernel ``(k, 1)``).
        residual_conv_kernel: the convolution's length ``k`` (odd).
        eps: added to the landmark token counts when a mask is given.
        dropout: dropout after the output projection.
        pinv_scale: ``"batch"`` (reference) or ``"sample"`` (per-sequence pinv start; a sequence's
            output then does not depend on the other sequences of the batch).

    Shapes:
        ``x: (b, n, dim)``, ``mask: (b, n)`` bool (True = real token) -> ``(b, n, dim)``.
    """

    def __init__(
        self,
        dim: int,
        dim_head: int = 64,
        heads: int = 8,
        num_landmarks: int = 256,
        pinv_iterations: int = 6,
        residual: bool = True,
        residual_conv_kernel: int = 33,
        eps: float = 1e-8,
        dropout: float = 0.0,
        *,
        pinv_scale: str = "batch",
    ) -> None:
        super().__init__()
        check_positive_ints(
            "NystromAttention", dim=dim, dim_head=dim_head, heads=heads, num_landmarks=num_landmarks,
            residual_conv_kernel=residual_conv_kernel,
        )
        if not isinstance(pinv_iterations, int) or pinv_iterations < 0:
            raise ValueError(f"NystromAttention: pinv_iterations must be >= 0, got {pinv_iterations!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"NystromAttention: dropout must be in [0, 1), got {dropout}")
        if pinv_scale not in ("batch", "sample"):
            raise ValueError(f"NystromAttention: pinv_scale must be 'batch' or 'sample', got {pinv_scale!r}")
        self.dim = dim
        self.heads = heads
        self.dim_head = dim_head
        self.num_landmarks = num_landmarks
        self.pinv_iterations = pinv_iterations
        self.eps = eps
        self.scale = dim_head**-0.5
        self.pinv_scale = pinv_scale
        #: compute bags padded by whole landmark segments on the real landmarks (same maths; see
        #: :meth:`_forward_padded`); ``False`` always runs the full padded computation
        self.exploit_padding = True
        inner = heads * dim_head
        self.to_qkv = make_linear(dim, inner * 3, bias=False)
        self.to_out = nn.Sequential(make_linear(inner, dim), make_dropout(dropout))
        self.residual = bool(residual)
        if self.residual:
            k = residual_conv_kernel
            self.res_conv = nn.Conv2d(heads, heads, (k, 1), padding=(k // 2, 0), groups=heads, bias=False)

    def _forward_padded(self, x: Tensor) -> Tensor:
        """The same output when whole landmark segments are front padding (``n`` well below a multiple of ``m``,
        e.g. every bag under 192 tokens in TransMIL), computed on the ``r = m - z`` real landmarks only. Used
        when ``z >= m / 4``: then the pinv's saving outweighs the extra copies of the landmark products.

        The ``z`` all-zero landmarks give identical rows and columns in ``A1``, ``A2`` and ``A3``. Matrices
        with that symmetry (invariant under permuting the zero landmarks) form an algebra that the pinv
        iteration never leaves; on the vectors constant over the zero landmarks, which are all that ``A1``'s
        rows and ``A3 V``'s columns contain, such a matrix acts as the ``(r + 1) x (r + 1)`` matrix over the
        real landmarks plus ``u = 1_z / sqrt(z)``. So ``out = [A1_R, sqrt(z) w1] P~ [A3_R V; sqrt(z) v_Z]``
        with ``P~`` the pinv iteration on ``A2~`` (started with the full matrix's maxima): the reference maths
        with ``(r + 1)^3`` instead of ``m^3`` products (TransMIL, 9-token bag: 11 instead of 256). Padded
        tokens have zero q, k, v (``to_qkv`` has no bias), so their logits are 0 and their values vanish.
        """
        b, n, _ = x.shape
        h, m, d = self.heads, self.num_landmarks, self.dim_head
        pad = (-n) % m
        total = n + pad
        seg = total // m
        zeros = pad // seg  # landmarks made of padding only
        lead = pad - zeros * seg  # padding tokens inside the first real landmark
        r = m - zeros
        q, k, v = _split_heads(self.to_qkv(x), h, d)  # (b, h, n, d) each
        q = q * self.scale
        q_land = F.pad(q, (0, 0, lead, 0)).reshape(b, h, r, seg, d).sum(dim=3) / seg  # (b, h, r, d)
        k_land = F.pad(k, (0, 0, lead, 0)).reshape(b, h, r, seg, d).sum(dim=3) / seg

        a1, w1 = _softmax_with_zeros(fast_matmul(q, k_land.transpose(-1, -2)), zeros)  # (b, h, n, r), (.., 1)
        a2, w2 = _softmax_with_zeros(fast_matmul(q_land, k_land.transpose(-1, -2)), zeros)  # (b, h, r, r)
        a3, _ = _softmax_with_zeros(fast_matmul(q_land, k.transpose(-1, -2)), pad)  # (b, h, r, n)

        # A2 on the real landmarks + u: zero-landmark rows are uniform (1 / m)
        root = math.sqrt(zeros)
        bottom = torch.cat([a2.new_full((b, h, 1, r), root / m), a2.new_full((b, h, 1, 1), zeros / m)], dim=-1)
        x2 = torch.cat([torch.cat([a2, root * w2], dim=-1), bottom], dim=-2)  # (b, h, r + 1, r + 1)
        # the full matrix's absolute row and column sums (all entries are positive)
        rows = torch.cat([a2.sum(dim=-1) + zeros * w2.squeeze(-1), a2.new_ones((b, h, 1))], dim=-1)  # (b, h, r+1)
        cols = torch.cat([a2.sum(dim=-2) + zeros / m, w2.sum(dim=-2) + zeros / m], dim=-1)
        if self.pinv_scale == "sample":
            denom = (rows.amax(dim=(1, 2)) * cols.amax(dim=(1, 2))).reshape(b, 1, 1, 1)
        else:
            denom = rows.max() * cols.max()
        p2 = pinv_iterations(x2, x2.transpose(-1, -2) / denom, self.pinv_iterations)

        values = torch.cat([fast_matmul(a3, v), v.sum(dim=-2, keepdim=True) * (root / total)], dim=-2)
        left = torch.cat([a1, root * w1], dim=-1)  # (b, h, n, r + 1)
        out = fast_matmul(fast_matmul(left, p2), values)  # (b, h, n, d)
        if self.residual:
            # the padding's v is 0, as the convolution's own zero padding; adding into the convolution's output,
            # laid out (b, n, h, d), makes the head merge below a view instead of a copy
            out = head_sequence_conv(v, self.res_conv).add_(out)
        return self.to_out(out.transpose(1, 2).reshape(b, n, h * d))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, heads={self.heads}, dim_head={self.dim_head}, "
            f"num_landmarks={self.num_landmarks}, pinv_iterations={self.pinv_iterations}, "
            f"residual={self.residual}, pinv_scale={self.pinv_scale!r}"
        )

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        return_attn: bool = False,
        return_attn_matrices: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor] | tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """Attend.

        Args:
            x: ``(b, n, dim)`` tokens.
            mask: optional ``(b, n)`` bool, True = real token. Masked tokens are zeroed in q, k, v and
                excluded from the landmark means and softmaxes.
            return_attn: also return the approximate attention ``A1 pinv(A2) A3`` cropped to the real
                positions, ``(b, h, n, n)`` (quadratic memory).
            return_attn_matrices: also return the factors ``(A1 (b,h,n',m), pinv(A2) (b,h,m,m),
                A3 (b,h,m,n'))`` over the front-padded sequence of ``n'`` tokens (linear memory).

        Returns:
            ``(b, n, dim)``, or a pair with the attention (matrices) as above.
        """
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"NystromAttention expects (b, n, {self.dim}), got {tuple(x.shape)}")
        b, n, _ = x.shape
        if mask is not None:
            if mask.shape != (b, n):
                raise ValueError(f"mask must have shape {(b, n)}, got {tuple(mask.shape)}")
            mask = mask.to(device=x.device, dtype=torch.bool)
        h, m, d = self.heads, self.num_landmarks, self.dim_head

        pad = (-n) % m
        if (
            mask is None
            and not (return_attn or return_attn_matrices)
            and 4 * (pad // math.ceil(n / m)) >= m  # a quarter of the landmarks or more are padding only
            and self.exploit_padding
        ):
            return self._forward_padded(x)
        if pad > 0:
            x = F.pad(x, (0, 0, pad, 0), value=0.0)
            if mask is not None:
                mask = F.pad(mask, (pad, 0), value=False)
        total = n + pad
        seg = math.ceil(n / m)  # tokens per landmark segment; total == m * seg

        q, k, v = _split_heads(self.to_qkv(x), h, d)  # (b, h, n', d) each
        if mask is not None:
            keep = mask[:, None, :, None].to(q.dtype)  # (b, 1, n', 1)
            q, k, v = q * keep, k * keep, v * keep
        q = q * self.scale

        q_land = q.reshape(b, h, m, seg, d).sum(dim=3)  # (b, h, m, d)
        k_land = k.reshape(b, h, m, seg, d).sum(dim=3)
        land_mask: Tensor | None = None
        if mask is not None:
            counts = mask.reshape(b, m, seg).sum(dim=-1)  # (b, m)
            divisor: Tensor | float = counts[:, None, :, None] + self.eps
            land_mask = counts > 0  # (b, m)
        else:
            divisor = seg
        q_land = q_land / divisor
        k_land = k_land / divisor

        sim1 = fast_matmul(q, k_land.transpose(-1, -2))  # (b, h, n', m)
        sim2 = fast_matmul(q_land, k_land.transpose(-1, -2))  # (b, h, m, m)
        sim3 = fast_matmul(q_land, k.transpose(-1, -2))  # (b, h, m, n')
        if mask is not None and land_mask is not None:
            fill = -torch.finfo(q.dtype).max
            tok = mask[:, None, :]  # (b, 1, n')
            lm = land_mask[:, None, :]  # (b, 1, m)
            sim1 = sim1.masked_fill(~(tok[..., :, None] & lm[..., None, :]), fill)
            sim2 = sim2.masked_fill(~(lm[..., :, None] & lm[..., None, :]), fill)
            sim3 = sim3.masked_fill(~(lm[..., :, None] & tok[..., None, :]), fill)

        attn1, attn2, attn3 = sim1.softmax(dim=-1), sim2.softmax(dim=-1), sim3.softmax(dim=-1)
        attn2_inv = moore_penrose_pinv(attn2, self.pinv_iterations, per_sample=self.pinv_scale == "sample")

        out = fast_matmul(fast_matmul(attn1, attn2_inv), fast_matmul(attn3, v))  # (b, h, n', d)
        if self.residual:
            out = head_sequence_conv(v, self.res_conv).add_(out)  # (b, n', h, d) memory: the merge is a view
        out = out.transpose(1, 2).reshape(b, total, h * d)
        out = self.to_out(out)[:, -n:]

        if return_attn_matrices:
            return out, (attn1, attn2_inv, attn3)
        if return_attn:
            attn = (attn1 @ attn2_inv @ attn3)[..., -n:, -n:]
            return out, attn
        return out
