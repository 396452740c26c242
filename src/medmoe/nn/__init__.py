"""Reusable layers. This package imports nothing else from medmoe."""

from .embed import PATCH_EMBED_KINDS, create_patch_embed
from .experts import BatchedFeedForward, FactorizedLinear
from .mammoth import Mammoth, MammothExperts, mammoth_auto_rank
from .norms import ExpertWiseRMSNorm, LayerNorm, RMSNorm
from .patch_embedding import EmbeddedPatches, MLPEmbed, PatchEmbedding
from .routing import Routing
from .soft_moe import SoftMoE, SoftMoEEmbed

__all__ = [
    "create_patch_embed",
    "PATCH_EMBED_KINDS",
    "FactorizedLinear",
    "BatchedFeedForward",
    "SoftMoE",
    "SoftMoEEmbed",
    "Mammoth",
    "MammothExperts",
    "mammoth_auto_rank",
    "LayerNorm",
    "RMSNorm",
    "ExpertWiseRMSNorm",
    "EmbeddedPatches",
    "MLPEmbed",
    "PatchEmbedding",
    "Routing",
]
