from .seg import MambaHoME, MambaHoMEConfig, create_seg_model, list_seg_models  # noqa: F401
from .vit import MosaicConfig, MosaicModel, VisionTransformer, VisionTransformerConfig  # noqa: F401
