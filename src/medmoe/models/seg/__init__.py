"""3-D segmentation networks: Mamba-HoME and MONAI baselines behind one factory.

* :class:`MambaHoME`, :class:`MambaHoMEConfig` (presets ``paper`` and ``tiny``) — :mod:`.mamba_home`.
* :func:`create_seg_model` (the ``seg`` family of :func:`medmoe.create_model`), :func:`list_seg_models`,
  :func:`is_seg_model_name`, :func:`seg_model_from_config`, :class:`MonaiSegNet` (UNet, SegResNet, SwinUNETR)
  — :mod:`.baselines`.
* :class:`NearestClassMean` — the per-voxel nearest-class-mean intensity floor — :mod:`.nearest_class_mean`.

Needs the ``seg`` extra (``monai``).
"""

from .baselines import (
    SEG_MODELS,
    MonaiSegNet,
    MonaiSegNetConfig,
    create_seg_model,
    is_seg_model_name,
    list_seg_models,
    seg_model_from_config,
)
from .mamba_home import MAMBA_HOME_PRESETS, MambaHoME, MambaHoMEConfig, MambaHoMEEncoder, MambaHoMEStage
from .nearest_class_mean import NearestClassMean

__all__ = [
    "MAMBA_HOME_PRESETS",
    "SEG_MODELS",
    "MambaHoME",
    "MambaHoMEConfig",
    "MambaHoMEEncoder",
    "MambaHoMEStage",
    "MonaiSegNet",
    "MonaiSegNetConfig",
    "NearestClassMean",
    "create_seg_model",
    "is_seg_model_name",
    "list_seg_models",
    "seg_model_from_config",
]
