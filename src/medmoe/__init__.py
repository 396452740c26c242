"""medmoe: expert routing and long-sequence models for medical imaging."""

from __future__ import annotations

__version__ = "0.1.0"

from .registry import ENCODER_DIMS, create_model, list_models, register_model

__all__ = ["ENCODER_DIMS", "__version__", "create_model", "list_models", "register_model"]
