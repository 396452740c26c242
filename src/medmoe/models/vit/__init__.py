"""Vision Transformer (timm-compatible names), ImageNet weight loading, modality tokenizers and MOSAIC.

* :mod:`~medmoe.models.vit.vit` — :class:`VisionTransformer`, :class:`VisionTransformerConfig`.
* :mod:`~medmoe.models.vit.weights` — :func:`load_vit_weights` (JAX ``.npz``, timm ``.safetensors`` /
  ``.pth``; strict), :func:`jax_npz_to_timm`.
* :mod:`~medmoe.models.vit.tokenizers` — :class:`PatchEmbed2d`, :class:`PatchEmbed3d`,
  :func:`resample_pos_embed`.
* :mod:`~medmoe.models.vit.mosaic` — :class:`MosaicModel`, :class:`MosaicConfig`, :class:`TaskSpec`.
* :mod:`~medmoe.models.vit.mosaic_config` — :func:`build_mosaic_config` (one head per MedMNIST dataset),
  :func:`create_mosaic_model` (the ``vit`` family of :func:`medmoe.create_model`), :func:`list_vit_models`,
  :func:`mosaic_model_from_config`.
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
from .mosaic_config import (
    VIT_MODELS,
    build_mosaic_config,
    create_mosaic_model,
    is_vit_model_name,
    list_vit_models,
    mosaic_model_from_config,
)
from .tokenizers import PatchEmbed2d, PatchEmbed3d, grid_size, resample_pos_embed
from .vit import Attention, Block, Mlp, VisionTransformer, VisionTransformerConfig
from .weights import ViTWeightsError, WeightsReport, jax_npz_to_timm, load_vit_weights, read_vit_state_dict

__all__ = [
    "TASK_TYPES",
    "VIT_MODELS",
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
    "build_mosaic_config",
    "check_labels",
    "create_mosaic_model",
    "grid_size",
    "is_vit_model_name",
    "jax_npz_to_timm",
    "list_vit_models",
    "load_vit_weights",
    "mosaic_model_from_config",
    "read_vit_state_dict",
    "resample_pos_embed",
    "task_loss",
    "task_scores",
]
