"""Converting a reference checkpoint into a medmoe checkpoint folder (``medmoe mil convert``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import SETTING, InputError
from .report import LoadReport

__all__ = ["convert_checkpoint"]

#: Info keys a converted checkpoint gets anew (the rest of a medmoe source's info, e.g. its task, is kept).
_RESERVED = {"format_version", "checkpoint_id", "model_name", "model_class", "model_config", "medmoe_version",
             "source", "load_report", "class_names"}


def convert_checkpoint(
    source: str | Path,
    out: str | Path,
    model: str | None = None,
    *,
    num_classes: int | None = None,
    in_dim: int | None = None,
    class_names: str | Sequence[str] | None = None,
    reinit_head: bool = False,
    patch_embed_only: bool = False,
    overwrite: bool = False,
    overrides: dict[str, Any] | None = None,
) -> tuple[nn.Module, list[str], LoadReport]:
    """Build a medmoe MIL model from ``source`` (:func:`~medmoe.interop.load_model`) and save it as the checkpoint
    folder ``out`` (what ``medmoe mil train`` writes; ``eval``, ``predict``, ``heatmap`` and
    ``create_model(..., checkpoint_path=out)`` take it), recording where it came from and the load report.

    Args:
        source: a MIL-Lab / MAMMOTH-fork / FEATHER state dict (``.safetensors``, ``.bin``, ``.pth`` or a Hugging
            Face folder), a CLAM-repository checkpoint, a bare Mammoth layer, or a medmoe checkpoint.
        out: the checkpoint folder to write.
        model: the medmoe model name (optional for a Hugging Face folder whose ``config.json`` names it).
        num_classes: classes (default: the checkpoint's head); in_dim: feature size (default: the encoder's).
        class_names: names of the head's outputs in order (a list or comma-separated text; default the source's,
            else ``0, 1, ...``).
        reinit_head: start from a fresh classification head instead of the checkpoint's.
        patch_embed_only: load only the patch embedding (a Mammoth layer inside another code base's checkpoint).
        overwrite: replace a checkpoint already in ``out``.
        overrides: model config overrides.

    Returns:
        ``(model, class names, load report)``.

    Raises:
        ValueError: a bad setting, ``out`` holds a checkpoint (without ``overwrite``) or is the source, or the
            weights do not fit the model (every unknown, missing or mis-shaped tensor listed).
    """
    from ..engine.checkpoint import CONFIG_NAME, WEIGHTS_NAME, save_checkpoint
    from .loader import load_model

    source, out = Path(source), Path(out)
    if num_classes is not None and num_classes < 1:
        raise InputError(f"{{num_classes}} must be a positive integer, got {num_classes}", num_classes=SETTING)
    if in_dim is not None and in_dim < 1:
        raise InputError(f"{{in_dim}} must be a positive integer, got {in_dim}", in_dim=SETTING)
    if out.exists() and not out.is_dir():
        raise InputError(f"{{out}} {out} is a file; give a folder for the checkpoint", out=SETTING)
    if out.is_dir() and any((out / n).exists() for n in (WEIGHTS_NAME, CONFIG_NAME)) and not overwrite:
        raise InputError(f"{{out}} {out} already holds a checkpoint; pass {{overwrite}} to replace it", out=SETTING,
                         overwrite=True)
    if out.resolve() == source.resolve():
        raise InputError("{out} must differ from the source checkpoint", out=SETTING)
    net, info, report = load_model(source, model, num_classes=num_classes, in_dim=in_dim, reinit_head=reinit_head,
                                   patch_embed_only=patch_embed_only, **(overrides or {}))
    names = info.get("class_names") or [str(i) for i in range(net.config.num_classes)]
    if class_names is not None:
        given = class_names.split(",") if isinstance(class_names, str) else list(class_names)
        names = [str(c).strip() for c in given]
        if len(names) != net.config.num_classes or not all(names) or len(set(names)) != len(names):
            raise InputError(f"{{class_names}} needs {net.config.num_classes} distinct non-empty names (the head's "
                             f"outputs), got {class_names!r}", class_names=SETTING)
    keep = {k: v for k, v in info.items() if k not in _RESERVED}  # a medmoe source's task, stats, ...
    save_checkpoint(out, net, {**keep, "class_names": names, "converted_from": str(source),
                               "conversion_report": report.summary()})
    return net, names, report
