"""MaxMIL — max pooling baseline from the MAMMOTH paper (not in MIL-Lab).

``patch_embed (Linear(in_dim, 512), or Mammoth) -> element-wise max over tokens -> Linear(512, C)``: the
MAMMOTH README's MeanMIL with max pooling (config ``maxmil.base``: a plain ``nn.Linear``, no activation);
``maxmil.base_relu`` puts a ReLU after the linear layer (config field ``act``, see
:class:`~medmoe.models.mil.meanmil.PoolMILConfig`). With Mammoth ``keep_slots`` the max runs over the slot
tokens.
"""

from __future__ import annotations

from torch import Tensor

from ...nn.pooling import masked_max
from ...registry import register_model
from .meanmil import PoolMIL

__all__ = ["MaxMIL"]


@register_model("maxmil")
class MaxMIL(PoolMIL):
    """MaxMIL: element-wise max of the (real) patch embeddings, then a linear classifier.

    ``attention_kind = "none"``. Outputs as :class:`~medmoe.models.mil.meanmil.PoolMIL`.
    """

    def pool(self, tokens: Tensor, mask: Tensor | None) -> Tensor:
        return masked_max(tokens, mask)
