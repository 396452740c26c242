"""Reading state dicts from files (safetensors or torch pickles), with clear errors.

Every torch file is read with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts
only, so no code in a file runs. :func:`describe_torch_load_error` turns what PyTorch raises into one line
that says whether the file holds objects medmoe refuses (a pickle payload, a whole pickled model) or is
damaged, without PyTorch's advice to retry with ``weights_only=False``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import Tensor

from .errors import InputError

__all__ = ["describe_torch_load_error", "load_state_dict_file", "refused_by_safe_loader"]

_PREFERRED_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")


def refused_by_safe_loader(err: BaseException) -> bool:
    """True when ``torch.load(weights_only=True)`` refused a file for the Python objects it holds (not
    because it is damaged)."""
    text = str(err).lower()
    return "weights only load failed" in text and ("global" in text or "blocked" in text)


def describe_torch_load_error(err: BaseException) -> str:
    """One line for a failed ``torch.load(weights_only=True)``: ``"holds Python objects that medmoe does
    not load ..."`` or ``"is corrupt or truncated (what PyTorch said)"``, for "FILE {this}"."""
    if refused_by_safe_loader(err):
        return ("holds Python objects that medmoe does not load (it reads only tensors, numbers, strings, "
                "lists and dicts, so no code in a file can run)")
    if not isinstance(err, (pickle.UnpicklingError, RuntimeError, EOFError)):
        return "is corrupt or truncated (not a file PyTorch can read)"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    lines = [line for line in lines if "weights_only" not in line and "Weights only" not in line]
    said = lines[0].split(". ")[0].rstrip(".") if lines else type(err).__name__
    return f"is corrupt or truncated ({said})"


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Load a state dict from ``.safetensors`` or a torch file; unwraps ``state_dict``/``model`` entries
    and strips a ``module.`` (DDP) prefix."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {str(path)!r} does not exist or is not a file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - every failure becomes one clear line
            raise InputError(f"{path} {describe_torch_load_error(err)}") from None
        if isinstance(state, dict):
            for key in _PREFERRED_KEYS:
                if key in state and isinstance(state[key], dict):
                    state = state[key]
                    break
    if not isinstance(state, dict):
        raise InputError(f"{path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}
