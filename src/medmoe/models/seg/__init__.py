"""3-D segmentation networks: Mamba-HoME and MONAI baselines behind one factory.

* :class:`MambaHoME`, :class:`MambaHoMEConfig` (presets ``paper`` and ``tiny``) — :mod:`.mamba_home`.
* :func:`create_seg_model`, :func:`list_seg_models`, :func:`seg_model_from_config`, :class:`MonaiSegNet`
  (UNet, SegResNet, SwinUNETR) — :mod:`.baselines`.

Needs the ``seg`` extra (``monai``).
"""

from .baselines import (
    SEG_MODELS,
    MonaiSegNet,
    MonaiSegNetConfig,
    create_seg_model,
    list_seg_models,
    seg_model_from_config,
)
from .mamba_home import MAMBA_HOME_PRESETS, MambaHoME, MambaHoMEConfig, MambaHoMEEncoder, MambaHoMEStage

__all__ = [
    "MAMBA_HOME_PRESETS",
    "SEG_MODELS",
    "MambaHoME",
    "MambaHoMEConfig",
    "MambaHoMEEncoder",
    "MambaHoMEStage",
    "MonaiSegNet",
    "MonaiSegNetConfig",
    "create_seg_model",
    "list_seg_models",
    "seg_model_from_config",
]
