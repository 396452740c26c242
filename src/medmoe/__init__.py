"""medmoe: expert routing and long-sequence models for medical imaging."""

from __future__ import annotations

__version__ = "0.1.0"

from .nn.backend import get_backend, set_backend
from .registry import ENCODER_DIMS, create_model, list_models, register_model

__all__ = [
    "ENCODER_DIMS",
    "__version__",
    "create_model",
    "get_backend",
    "list_models",
    "register_model",
    "set_backend",
]
