"""Reusable layers. This package imports nothing else from medmoe."""

from .adapters import ROUTING_TABLES, Adapter, MixtureOfSpecialists, RoutingTable, Specialist, get_routing_table
from .embed import PATCH_EMBED_KINDS, create_patch_embed
from .experts import BatchedFeedForward, FactorizedLinear
from .onednn_linear import FastLinear, fast_linear
from .mammoth import Mammoth, MammothExperts, mammoth_auto_rank
from .norms import ExpertWiseRMSNorm, LayerNorm, RMSNorm
from .patch_embedding import EmbeddedPatches, MLPEmbed, PatchEmbedding
from .routing import Routing
from .soft_moe import SoftMoE, SoftMoEEmbed
from .dynamic_tanh import DynamicTanh
from .gated_spatial_conv import GatedSpatialConv
from .home import DynamicSlotsSoftMoE, HoME
from .mamba import Mamba
from .selective_scan import selective_scan

__all__ = [
    "Adapter",
    "MixtureOfSpecialists",
    "ROUTING_TABLES",
    "RoutingTable",
    "Specialist",
    "get_routing_table",
    "create_patch_embed",
    "PATCH_EMBED_KINDS",
    "FactorizedLinear",
    "FastLinear",
    "fast_linear",
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
    "DynamicTanh",
    "GatedSpatialConv",
    "DynamicSlotsSoftMoE",
    "HoME",
    "Mamba",
    "selective_scan",
]
