"""Reading state dicts from files (safetensors or torch pickles), with clear errors."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

__all__ = ["load_state_dict_file"]

_PREFERRED_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Load a state dict from ``.safetensors`` or a torch file; unwraps ``state_dict``/``model`` entries
    and strips a ``module.`` (DDP) prefix."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist or is not a file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        if isinstance(state, dict):
            for key in _PREFERRED_KEYS:
                if key in state and isinstance(state[key], dict):
                    state = state[key]
                    break
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}
