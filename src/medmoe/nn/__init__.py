"""Reusable layers. This package imports nothing else from medmoe."""

from .adapters import (
    ROUTING_TABLES,
    Adapter,
    MixtureOfSpecialists,
    RoutingTable,
    Specialist,
    get_routing_table,
)
from .dynamic_tanh import DynamicTanh
from .embed import PATCH_EMBED_KINDS, create_patch_embed
from .experts import BatchedFeedForward, FactorizedLinear
from .gated_spatial_conv import GatedSpatialConv
from .home import DynamicSlotsSoftMoE, HoME
from .mamba import Mamba
from .mammoth import Mammoth, MammothExperts, mammoth_auto_rank
from .norms import ExpertWiseRMSNorm, LayerNorm, RMSNorm
from .onednn_linear import FastLinear, fast_linear
from .patch_embedding import EmbeddedPatches, MLPEmbed, PatchEmbedding
from .routing import Routing
from .selective_scan import selective_scan
from .soft_moe import SoftMoE, SoftMoEEmbed

__all__ = [
    "PATCH_EMBED_KINDS",
    "ROUTING_TABLES",
    "Adapter",
    "BatchedFeedForward",
    "DynamicSlotsSoftMoE",
    "DynamicTanh",
    "EmbeddedPatches",
    "ExpertWiseRMSNorm",
    "FactorizedLinear",
    "FastLinear",
    "GatedSpatialConv",
    "HoME",
    "LayerNorm",
    "MLPEmbed",
    "Mamba",
    "Mammoth",
    "MammothExperts",
    "MixtureOfSpecialists",
    "PatchEmbedding",
    "RMSNorm",
    "Routing",
    "RoutingTable",
    "SoftMoE",
    "SoftMoEEmbed",
    "Specialist",
    "create_patch_embed",
    "fast_linear",
    "get_routing_table",
    "mammoth_auto_rank",
    "selective_scan",
]
