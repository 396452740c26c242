"""Reusable layers. This package imports nothing else from medmoe."""

from .embed import PATCH_EMBED_KINDS, create_patch_embed
from .experts import FactorizedLinear
from .norms import ExpertWiseRMSNorm, LayerNorm, RMSNorm
from .patch_embedding import EmbeddedPatches, MLPEmbed, PatchEmbedding
from .routing import Routing

__all__ = [
    "create_patch_embed",
    "PATCH_EMBED_KINDS",
    "FactorizedLinear",
    "LayerNorm",
    "RMSNorm",
    "ExpertWiseRMSNorm",
    "EmbeddedPatches",
    "MLPEmbed",
    "PatchEmbedding",
    "Routing",
]
