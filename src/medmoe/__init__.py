"""medmoe: expert routing and long-sequence models for medical imaging."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from .nn.backend import get_backend, set_backend
from .registry import ENCODER_DIMS, FAMILIES, create_model, list_models, register_model

__all__ = [
    "ENCODER_DIMS",
    "FAMILIES",
    "__version__",
    "create_model",
    "get_backend",
    "list_models",
    "load_checkpoint",
    "register_model",
    "set_backend",
]


def __getattr__(name: str) -> Any:
    """``medmoe.load_checkpoint``: :func:`medmoe.engine.checkpoint.load_checkpoint`, imported on first use."""
    if name == "load_checkpoint":
        from .engine.checkpoint import load_checkpoint

        return load_checkpoint
    raise AttributeError(f"module 'medmoe' has no attribute {name!r}")
