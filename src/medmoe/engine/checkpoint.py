"""Self-describing, atomically written checkpoints: one format and one loader for every model family.

A model checkpoint is a directory::

    CKPT/
      model.safetensors   weights; its metadata also embeds the full config JSON (the commit point)
      config.json         the same info, human readable
      teacher.safetensors MOSAIC only: the teacher's trainable tensors

``config.json`` holds ``family`` (``"mil"``, ``"seg"`` or ``"vit"``: :data:`medmoe.registry.FAMILIES`),
``model_name`` (``'abmil.base_mammoth'``, ``'unet.small'``, ``'mosaic'``), ``model_config`` (every field of the
model's config dataclass), ``medmoe_version``, ``seed``, ``split_hash``, ``class_names``,
``feature_stats`` (``{'mean': [...], 'std': [...]}`` or ``None``), ``train_config``, ``epoch`` and
``metrics``, plus ``checkpoint_id`` (random, identifies one save). Binary and multi-label MIL checkpoints
also hold ``decision_thresholds`` (chosen on the validation set; read with
:func:`medmoe.engine.mil.thresholds.checkpoint_thresholds`, which gives 0.5 to checkpoints saved without them).

Atomicity: each file is written to a temporary file in the same directory, flushed and fsynced, then
moved over the old one with :func:`os.replace`. The weights file, which carries its own copy of the
config, is replaced first and is the single commit point: a crash before it leaves the previous
checkpoint intact; a crash between the two renames leaves a stale ``config.json``, which
:func:`load_checkpoint` detects (``checkpoint_id`` mismatch) and ignores with a warning. A partial file
never replaces a good one.

The trainer's resume state (``trainer_state.pt``: model, optimiser, scheduler, epoch, RNG states,
early-stopping state, history) is written the same way by :func:`save_trainer_state`.

Loading: :func:`load_checkpoint` returns ``(model, info)`` for a checkpoint of any family (a run folder
holding ``checkpoint/`` is accepted too); ``family=`` makes a caller that needs one family refuse the others
with a message naming the command for them. Checkpoints written before the family was recorded (format
version 1) load unchanged: their family is read from what the folder holds (:func:`checkpoint_family`:
``transform_config`` -> segmentation, the model ``mosaic`` or a teacher file -> MOSAIC, else MIL).
``load_seg_checkpoint`` and ``load_mosaic_checkpoint`` are deprecated aliases of
``load_checkpoint(..., family="seg" | "vit")``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import tempfile
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint_io import describe_torch_load_error, refused_by_safe_loader
from ..errors import InputError
from ..model_size import build_within_limit

__all__ = [
    "CONFIG_NAME",
    "TRAINER_STATE_NAME",
    "WEIGHTS_NAME",
    "CheckpointError",
    "atomic_write_bytes",
    "atomic_write_text",
    "build_model_from_info",
    "checkpoint_family",
    "load_checkpoint",
    "load_checkpoint_state",
    "load_mosaic_checkpoint",
    "load_seg_checkpoint",
    "load_trainer_state",
    "read_checkpoint_info",
    "save_checkpoint",
    "save_trainer_state",
    "unwrap_model",
]

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
TRAINER_STATE_NAME = "trainer_state.pt"
TEACHER_NAME = "teacher.safetensors"
#: The folder of a run that holds its checkpoint (``seg train``, ``mosaic train``): a run folder loads too.
RUN_CHECKPOINT_DIR = "checkpoint"
_META_KEY = "medmoe_config"
#: 2: ``config.json`` records the model ``family``; version 1 checkpoints (without it) still load.
FORMAT_VERSION = 2
#: How messages name each family, and the command that uses its checkpoints.
_FAMILY_TITLES = {"mil": "MIL", "seg": "segmentation", "vit": "MOSAIC"}
_FAMILY_USE = {
    "mil": "evaluate it with `medmoe mil eval CHECKPOINT ...` or `medmoe mil predict`",
    "seg": "apply it to volumes with `medmoe seg infer CHECKPOINT ...`",
    "vit": "use `medmoe mosaic eval` or `medmoe mosaic predict`",
}


class CheckpointError(InputError):
    """A checkpoint is missing, incomplete or corrupt (a ``ValueError``, as before)."""


def atomic_write_bytes(path: str | Path, write: Callable[[io.BufferedWriter], None] | bytes) -> None:
    """Write ``path`` atomically: temp file in the same directory, fsync, :func:`os.replace`.

    ``write`` is either the bytes or a function receiving the open binary temp file. On any error the
    temp file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(write):
                write(fh)
            else:
                fh.write(write)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _jsonable(value: Any) -> Any:
    """Convert tensors, tuples, dataclasses and numpy scalars into JSON types."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and hasattr(value, "dtype"):  # numpy scalar / array
        return value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return None  # NaN is not JSON; stored as null
    return value


def save_checkpoint(
    directory: str | Path, model: nn.Module, extra_state: dict[str, Any] | None = None
) -> Path:
    """Save ``model`` with its config and ``extra_state`` to ``directory`` (created if needed).

    Args:
        directory: checkpoint folder; an existing checkpoint there is replaced atomically.
        model: a medmoe model (has ``model_name`` and a dataclass ``config``) of any family; its class
            attribute ``family`` (``"mil"`` when absent, e.g. a plugin's model) is recorded.
        extra_state: JSON-serialisable info stored in ``config.json`` (``seed``, ``split_hash``,
            ``class_names``, ``feature_stats``, ``train_config``, ``epoch``, ``metrics``, ...). Tensors
            are converted to lists. A ``family`` key equal to the model's is accepted (the info of a loaded
            checkpoint saved again).

    Returns:
        The checkpoint directory.
    """
    from safetensors.torch import save as st_save

    from .. import __version__

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    module = unwrap_model(model)
    config = getattr(module, "config", None)
    if config is None or not dataclasses.is_dataclass(config):
        raise ValueError(
            f"save_checkpoint needs a medmoe model with a dataclass `config`; got {type(module).__name__}"
        )
    model_name = getattr(module, "model_name", None)
    if not model_name:
        raise ValueError("the model has no `model_name`; build it with medmoe.create_model(...)")
    family = str(getattr(module, "family", "mil"))
    info: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "checkpoint_id": uuid.uuid4().hex,
        "family": family,
        "model_name": model_name,
        "model_class": f"{type(module).__module__}.{type(module).__qualname__}",
        "model_config": _jsonable(dataclasses.asdict(config)),
        "medmoe_version": __version__,
    }
    reserved = set(info)
    for key, value in (extra_state or {}).items():
        if key == "family" and value == family:
            continue
        if key in reserved:
            raise ValueError(f"extra_state key {key!r} is reserved by the checkpoint format; rename it")
        info[key] = _jsonable(value)
    text = json.dumps(info, indent=2, sort_keys=False, allow_nan=False)

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    state = _dedupe_shared(state)
    payload = st_save(state, metadata={_META_KEY: text, "format": "pt"})
    atomic_write_bytes(directory / WEIGHTS_NAME, payload)  # commit point
    atomic_write_text(directory / CONFIG_NAME, text + "\n")
    return directory


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module inside Lightning Fabric / DDP wrappers (the module itself otherwise)."""
    from torch.nn.parallel import DistributedDataParallel

    for _ in range(4):
        original = model._modules.get("_original_module") if type(model).__name__ == "_FabricModule" else None
        if original is not None:
            model = original
        elif isinstance(model, DistributedDataParallel):
            model = model.module
        else:
            break
    return model


def _dedupe_shared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory: clone the later aliases."""
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    out = {}
    for k, v in state.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)) if v.numel() else None
        if key is not None and key in seen:
            v = v.clone()
        elif key is not None:
            seen[key] = k
        out[k] = v
    return out


def read_checkpoint_info(directory: str | Path) -> dict[str, Any]:
    """The info dict of a checkpoint (from the weights' embedded copy, else ``config.json``)."""
    info, _ = _read(directory, load_weights=False)
    return info


def load_checkpoint_state(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(info, state)``: a checkpoint's info dict and its raw weights, without building the model
    (for :mod:`medmoe.interop`, which maps them into a model built elsewhere)."""
    info, state = _read(directory, load_weights=True)
    if state is None:  # pragma: no cover - _read returns weights when asked
        raise CheckpointError(f"no weights read from {directory}")
    return info, state


def _read(directory: str | Path, load_weights: bool) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    from safetensors import safe_open
    from safetensors.torch import load as st_load

    directory = Path(directory)
    if directory.is_file() and directory.name in (WEIGHTS_NAME, CONFIG_NAME):
        directory = directory.parent
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {str(directory)!r} does not exist")
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(
            f"{str(directory)!r} is not a medmoe checkpoint: {WEIGHTS_NAME} is missing "
            f"(found: {sorted(p.name for p in directory.iterdir())})"
        )
    try:
        with safe_open(str(weights), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as err:
        raise CheckpointError(f"{weights} is corrupt or truncated and cannot be read: {err}") from err
    embedded = meta.get(_META_KEY)
    file_info = None
    config_path = directory / CONFIG_NAME
    if config_path.is_file():
        try:
            file_info = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            if embedded is None:
                raise CheckpointError(f"{config_path} is corrupt: {err}") from err
            logger.warning(
                "%s is corrupt (%s); using the config embedded in %s", config_path, err, WEIGHTS_NAME
            )
    if embedded is not None:
        info = json.loads(embedded)
        if file_info is not None and file_info.get("checkpoint_id") != info.get("checkpoint_id"):
            logger.warning(
                "%s does not belong to %s (an interrupted save?); using the config embedded in the weights",
                config_path,
                WEIGHTS_NAME,
            )
    elif file_info is not None:
        info = file_info
    else:
        raise CheckpointError(
            f"{str(directory)!r} has weights but no {CONFIG_NAME}; cannot rebuild the model"
        )
    for key in ("model_name", "model_config"):
        if key not in info:
            raise CheckpointError(f"checkpoint config in {str(directory)!r} lacks {key!r}")
    state = None
    if load_weights:
        try:
            state = st_load(weights.read_bytes())
        except Exception as err:
            raise CheckpointError(f"{weights} is corrupt or truncated and cannot be read: {err}") from err
    return info, state


def checkpoint_family(info: dict[str, Any], directory: str | Path | None = None) -> str:
    """The model family of a checkpoint: ``info["family"]``, or for checkpoints written before it was recorded
    (format version 1) what the folder holds: a ``transform_config`` -> ``"seg"``, the model ``mosaic`` or a
    ``teacher.safetensors`` -> ``"vit"``, anything else -> ``"mil"``.

    Raises:
        CheckpointError: ``family`` names a family this medmoe does not know.
    """
    from ..registry import FAMILIES

    family = info.get("family")
    if family is not None:
        if family not in FAMILIES:
            raise CheckpointError(f"checkpoint family {family!r} is unknown (known: {', '.join(FAMILIES)}); was it "
                                  f"written by a newer medmoe (checkpoint: {info.get('medmoe_version')})?")
        return str(family)
    if "transform_config" in info:  # written by `seg train`
        return "seg"
    if info.get("model_name") == "mosaic" or (directory is not None and (Path(directory) / TEACHER_NAME).is_file()):
        return "vit"
    return "mil"


def _check_family(family: str, expect: str, info: dict[str, Any], where: str) -> None:
    """``CheckpointError`` naming the command for ``family`` when a caller that needs ``expect`` got another."""
    if family == expect:
        return
    name, use = info.get("model_name"), _FAMILY_USE[family]
    if expect == "seg":
        raise CheckpointError(f"{where} is not a segmentation checkpoint: it holds the {_FAMILY_TITLES[family]} "
                              f"model {name!r}; {use}")
    raise CheckpointError(f"{where} is a {_FAMILY_TITLES[family]} checkpoint ({name}), not a "
                          f"{_FAMILY_TITLES[expect]} one: {use}")


def build_model_from_info(info: dict[str, Any], family: str | None = "mil") -> nn.Module:
    """Rebuild an (untrained) model from a checkpoint info dict: ``config_cls(**model_config)``.

    Args:
        info: a checkpoint's info dict (``config.json``).
        family: the family the caller needs (``"mil"``, as before the families were unified: a segmentation
            or MOSAIC checkpoint is a ``CheckpointError`` naming its command); ``None`` builds any family.
    """
    found = checkpoint_family(info)
    if family is not None:
        _check_family(found, family, info, "this")
    name = info["model_name"]
    if found == "seg":
        from ..models.seg import seg_model_from_config

        try:
            return build_within_limit(lambda: seg_model_from_config(name, info["model_config"]),
                                      f"the checkpoint's model {name}")
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"cannot rebuild {name} from the checkpoint: {err}") from err
    if found == "vit":
        from ..models.vit import mosaic_model_from_config

        return mosaic_model_from_config(info["model_config"])
    return _build_mil_model(info)


def _build_mil_model(info: dict[str, Any]) -> nn.Module:
    """A MIL model from the registry entry of ``info["model_name"]`` and its saved config (untrained)."""
    from ..registry import get_entry

    name = info["model_name"]
    short = name.split(".")[0]
    entry = get_entry(short)
    fields = {f.name for f in dataclasses.fields(entry.config_cls)}
    cfg_dict = dict(info["model_config"])
    unknown = sorted(set(cfg_dict) - fields)
    if unknown:
        raise CheckpointError(
            f"checkpoint config has settings {unknown} that {entry.config_cls.__name__} does not know; "
            f"was it written by a newer medmoe (checkpoint: {info.get('medmoe_version')})?"
        )
    config = entry.config_cls(**cfg_dict)
    model = build_within_limit(lambda: entry.model_cls(config), f"the checkpoint's model {name}")
    model.model_name = name
    return model


def _checkpoint_dir(directory: str | Path) -> Path:
    """The checkpoint folder ``directory`` names: itself, the folder of its ``model.safetensors`` /
    ``config.json``, or the ``checkpoint/`` folder of a run folder."""
    directory = Path(directory)
    if directory.is_file() and directory.name in (WEIGHTS_NAME, CONFIG_NAME, TEACHER_NAME):
        return directory.parent
    if directory.is_dir() and not (directory / WEIGHTS_NAME).is_file() and (directory / RUN_CHECKPOINT_DIR).is_dir():
        return directory / RUN_CHECKPOINT_DIR  # a run folder was given
    return directory


def load_checkpoint(
    directory: str | Path, map_location: str | torch.device = "cpu", *, family: str | None = None,
    teacher: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load any medmoe checkpoint written by :func:`save_checkpoint`: MIL, segmentation or MOSAIC.

    Args:
        directory: the checkpoint folder (or its ``model.safetensors`` / ``config.json``, or a run folder
            holding ``checkpoint/``).
        map_location: device of the returned model.
        family: the family the caller needs (``"mil"``, ``"seg"``, ``"vit"``): a checkpoint of another family
            is a ``CheckpointError`` that names the command for it. ``None`` (default) loads any family.
        teacher: MOSAIC only: overlay the saved teacher tensors (``teacher.safetensors``) on the student.

    Returns:
        ``(model, info)``: the model in eval mode on ``map_location`` with the saved weights (strict),
        and the info dict (``config.json``'s content, with ``family`` filled in for checkpoints written
        before it was recorded). A segmentation checkpoint's preprocessing is
        :func:`medmoe.engine.seg.training.transform_config_from_info` of ``info``.

    Raises:
        CheckpointError: the directory or weights are missing, truncated or do not match the config, or the
            checkpoint is not of ``family``.
        ValueError: ``family`` is not a known family, or ``teacher=True`` for a model other than MOSAIC.
    """
    from ..registry import FAMILIES

    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; the families are {', '.join(FAMILIES)}")
    directory = _checkpoint_dir(directory)
    info, state = _read(directory, load_weights=True)
    found = checkpoint_family(info, directory if directory.is_dir() else None)
    if family is not None:
        _check_family(found, family, info, str(directory))
    if teacher and found != "vit":
        raise ValueError(f"teacher=True applies to MOSAIC checkpoints; {directory} holds a "
                         f"{_FAMILY_TITLES[found]} model")
    info = {**info, "family": found}
    model = build_model_from_info(info, family=None)
    assert state is not None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"weights in {directory} do not match the saved model config: {err}") from err
    if teacher:
        _load_teacher(model, directory)
    model.to(map_location).eval()
    return model, info


def _load_teacher(model: nn.Module, directory: Path) -> None:
    """Overlay a MOSAIC checkpoint's teacher tensors (its trainable ones) on ``model``."""
    from safetensors.torch import load_file

    path = directory / TEACHER_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory} has no teacher weights ({TEACHER_NAME})")
    try:
        tensors = load_file(str(path))
    except Exception as err:
        raise CheckpointError(f"{path} is corrupt or truncated and cannot be read: {err}") from err
    missing = model.load_state_dict(tensors, strict=False)
    if missing.unexpected_keys:
        raise CheckpointError(f"teacher weights have unknown tensors {missing.unexpected_keys[:5]}")


def load_seg_checkpoint(
    directory: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Deprecated: :func:`load_checkpoint` with ``family="seg"`` (same arguments and result)."""
    warnings.warn("load_seg_checkpoint is deprecated; use medmoe.engine.load_checkpoint(path, family='seg')",
                  DeprecationWarning, stacklevel=2)
    return load_checkpoint(directory, map_location, family="seg")


def load_mosaic_checkpoint(
    directory: str | Path, map_location: str | torch.device = "cpu", *, teacher: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """Deprecated: :func:`load_checkpoint` with ``family="vit"`` (same arguments and result)."""
    warnings.warn("load_mosaic_checkpoint is deprecated; use medmoe.engine.load_checkpoint(path, family='vit')",
                  DeprecationWarning, stacklevel=2)
    return load_checkpoint(directory, map_location, family="vit", teacher=teacher)


def save_trainer_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write the trainer's resume state atomically with :func:`torch.save` (tensors, numbers, lists,
    dicts and strings only, so it loads with ``weights_only=True``)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


_RESUME_TENSORS = ("model", "optimizer", "scheduler", "rng")


def finished_trainer_state(state: dict[str, Any]) -> dict[str, Any]:
    """The resume state of a finished run: ``state`` without the model, optimiser, scheduler and RNG
    states (the best model is in the checkpoint; resuming a finished run only re-evaluates it), marked
    ``"complete": True``. A few kB instead of three copies of the weights."""
    slim = {k: v for k, v in state.items() if k not in _RESUME_TENSORS}
    slim["complete"] = True
    return slim


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    """Read a state written by :func:`save_trainer_state` (``CheckpointError`` if corrupt)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no trainer state at {str(path)!r}")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every failure becomes one clear line
        what = describe_torch_load_error(err)
        advice = "; it was not written by medmoe: remove it or train into another folder" if (
            refused_by_safe_loader(err)) else ""
        raise CheckpointError(f"trainer state {path} {what}{advice}") from None
