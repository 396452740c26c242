"""Reading weights from what users have, without running pickle code.

:func:`read_source` accepts

* a medmoe checkpoint folder (``model.safetensors`` whose metadata embeds the config, + ``config.json``);
* a Hugging Face model folder (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``), as
  MIL-Lab's hub repositories (FEATHER) and ``save_pretrained`` write them;
* a ``.safetensors`` file;
* a torch file (``.bin``, ``.pth``, ``.pt``, ``.ckpt``) read with ``torch.load(weights_only=True)``: only
  tensors and plain containers are accepted, no code is executed. A training checkpoint's weights are
  found under ``state_dict_ema`` > ``model_ema`` > ``state_dict`` > ``model`` (MIL-Lab's order).

Wrapper prefixes on every key (``module.`` of DDP, ``_orig_mod.`` of torch.compile) are stripped and noted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["WeightSource", "is_medmoe_folder", "read_source"]

_NESTED_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


@dataclass
class WeightSource:
    """Tensors read from one path.

    Attributes:
        path: the path given.
        file_format: ``medmoe``, ``huggingface-folder``, ``safetensors`` or ``torch``.
        state: key -> tensor, as stored (after the ``module.`` strip).
        config: ``config.json`` of a folder (medmoe info or the Hugging Face config), else ``None``.
        notes: remarks for the load report.
    """

    path: str
    file_format: str
    state: dict[str, Tensor]
    config: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from err


def _read_torch(path: Path) -> tuple[dict[str, Tensor], list[str]]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        from ..checkpoint_io import describe_torch_load_error

        raise ValueError(
            f"{path} {describe_torch_load_error(err)}. "
            "Save the weights with torch.save(model.state_dict(), path) or as .safetensors."
        ) from err
    notes: list[str] = []
    for _ in range(3):  # {'model': {'state_dict': ...}} happens
        if isinstance(obj, dict) and not _is_state_dict(obj):
            inner = next((k for k in _NESTED_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            notes.append(f"weights taken from the file's {inner!r} entry")
            obj = obj[inner]
    if not isinstance(obj, dict) or not _is_state_dict(obj):
        kind = type(obj).__name__
        keys = sorted(map(str, obj))[:10] if isinstance(obj, dict) else []
        raise ValueError(
            f"{path} does not hold a state dict (found a {kind}{' with keys ' + str(keys) if keys else ''}); "
            f"expected name -> tensor, possibly under one of {list(_NESTED_KEYS)}"
        )
    return dict(obj), notes


def _is_state_dict(obj: dict[Any, Any]) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


_WRAPPER_PREFIXES = {"module.": "distributed training (DDP / DataParallel)", "_orig_mod.": "torch.compile"}


def _strip_ddp(state: dict[str, Tensor], notes: list[str]) -> dict[str, Tensor]:
    """Strip the prefixes wrappers add to every key (``module.`` of DDP, ``_orig_mod.`` of torch.compile)."""
    changed = True
    while changed:
        changed = False
        for prefix, what in _WRAPPER_PREFIXES.items():
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                notes.append(f"stripped the prefix {prefix!r} of {what}")
                changed = True
    return state


def read_source(path: str | Path) -> WeightSource:
    """Read the tensors (and the config, for folders) of ``path``; see the module docstring.

    Raises:
        ValueError: the path does not exist, is a folder without weights, or holds no state dict.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"checkpoint {str(p)!r} does not exist")
    notes: list[str] = []
    if p.is_file() and p.name == "config.json":
        p = p.parent
    if p.is_dir():
        config_path = p / "config.json"
        config = None
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                config = None
                notes.append(f"config.json is unreadable ({err}); ignored")
        if (p / "model.safetensors").is_file() and is_medmoe_folder(p, config):
            from ..engine.checkpoint import load_checkpoint_state

            info, state = load_checkpoint_state(p)
            return WeightSource(str(path), "medmoe", state, info, notes)
        weights = next((p / name for name in _HF_WEIGHTS if (p / name).is_file()), None)
        if weights is None:
            raise ValueError(
                f"{str(p)!r} is a folder without weights: expected a medmoe checkpoint "
                f"(model.safetensors + config.json) or a Hugging Face model folder ({' or '.join(_HF_WEIGHTS)} "
                f"+ config.json); found {sorted(q.name for q in p.iterdir())[:10]}"
            )
        if weights.suffix == ".safetensors":
            state = _read_safetensors(weights)
        else:
            state, more = _read_torch(weights)
            notes += more
        notes.append(f"Hugging Face model folder ({weights.name}{' + config.json' if config else ''})")
        return WeightSource(str(path), "huggingface-folder", _strip_ddp(state, notes), config, notes)
    if p.suffix == ".safetensors":
        return WeightSource(str(path), "safetensors", _strip_ddp(_read_safetensors(p), notes), None, notes)
    state, more = _read_torch(p)
    notes += more
    return WeightSource(str(path), "torch", _strip_ddp(state, notes), None, notes)


def is_medmoe_folder(folder: Path, config: dict[str, Any] | None) -> bool:
    """True when ``folder`` holds a medmoe checkpoint (its config names the model, or the weights embed it)."""
    if config is not None and "model_name" in config and "model_config" in config:
        return True
    from safetensors import safe_open

    try:
        with safe_open(str(folder / "model.safetensors"), framework="pt") as fh:
            return "medmoe_config" in (fh.metadata() or {})
    except Exception:  # noqa: BLE001 - unreadable: let the Hugging Face path report it
        return False
