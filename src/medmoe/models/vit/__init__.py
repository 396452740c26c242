"""Vision Transformer (timm-compatible names), ImageNet weight loading, modality tokenizers and MOSAIC.

* :mod:`~medmoe.models.vit.vit` — :class:`VisionTransformer`, :class:`VisionTransformerConfig`.
* :mod:`~medmoe.models.vit.weights` — :func:`load_vit_weights` (JAX ``.npz``, timm ``.safetensors`` /
  ``.pth``; strict), :func:`jax_npz_to_timm`.
* :mod:`~medmoe.models.vit.tokenizers` — :class:`PatchEmbed2d`, :class:`PatchEmbed3d`,
  :func:`resample_pos_embed`.
* :mod:`~medmoe.models.vit.mosaic` — :class:`MosaicModel`, :class:`MosaicConfig`, :class:`TaskSpec`.
"""

from .mosaic import (
    TASK_TYPES,
    MosaicConfig,
    MosaicModel,
    MosaicOutput,
    TaskSpec,
    check_labels,
    task_loss,
    task_scores,
)
from .tokenizers import PatchEmbed2d, PatchEmbed3d, grid_size, resample_pos_embed
from .vit import Attention, Block, Mlp, VisionTransformer, VisionTransformerConfig
from .weights import ViTWeightsError, WeightsReport, jax_npz_to_timm, load_vit_weights, read_vit_state_dict

__all__ = [
    "TASK_TYPES",
    "Attention",
    "Block",
    "Mlp",
    "MosaicConfig",
    "MosaicModel",
    "MosaicOutput",
    "PatchEmbed2d",
    "PatchEmbed3d",
    "TaskSpec",
    "ViTWeightsError",
    "VisionTransformer",
    "VisionTransformerConfig",
    "WeightsReport",
    "check_labels",
    "grid_size",
    "jax_npz_to_timm",
    "load_vit_weights",
    "read_vit_state_dict",
    "resample_pos_embed",
    "task_loss",
    "task_scores",
]
