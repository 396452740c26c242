"""Attention layers over token sequences ``(b, n, dim)``.

* :class:`NystromAttention` — Nyström approximation with landmarks (as ``nystrom-attention``), O(n).
* :class:`SoftmaxAttention` — multi-head softmax attention through SDPA.
* :class:`LinearAttention` — kernelised linear attention (Lin-MIL), O(n).
* :class:`DilatedAttention` — LongNet-style dilated attention.
"""

from .dilated import DilatedAttention
from .linear import FEATURE_MAPS, LinearAttention, make_feature_map
from .nystrom import NystromAttention
from .pinv import moore_penrose_pinv
from .softmax import SoftmaxAttention

__all__ = [
    "FEATURE_MAPS",
    "DilatedAttention",
    "LinearAttention",
    "NystromAttention",
    "SoftmaxAttention",
    "make_feature_map",
    "moore_penrose_pinv",
]
