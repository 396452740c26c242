"""Building MOSAIC models by name: the ``vit`` family of :func:`medmoe.create_model`.

| name | backbone | notes |
|---|---|---|
| ``mosaic`` / ``mosaic.base`` | ViT-B/16 (:meth:`VisionTransformerConfig.base_patch16`) | the paper's model |
| ``mosaic.tiny`` | the tiny test ViT (:meth:`VisionTransformerConfig.tiny_test`: dim 32, depth 2) | tests, demos |

:func:`build_mosaic_config` gives a :class:`~medmoe.models.vit.MosaicConfig` with one head per MedMNIST
dataset; :func:`create_mosaic_model` builds the model from a name (``datasets``, ``size`` and any
:class:`~medmoe.models.vit.MosaicConfig` field as keywords); :func:`mosaic_model_from_config` rebuilds one
from a checkpoint's saved config.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...errors import InputError, did_you_mean
from ...model_size import build_within_limit
from .mosaic import MosaicConfig, MosaicModel
from .vit import VisionTransformerConfig

__all__ = [
    "VIT_MODELS",
    "build_mosaic_config",
    "create_mosaic_model",
    "is_vit_model_name",
    "list_vit_models",
    "mosaic_model_from_config",
    "stored_image_size",
]

#: ``mosaic.<backbone>`` -> the ViT backbone preset (a :class:`VisionTransformerConfig` class method).
_BACKBONES = {"base": "base_patch16", "tiny": "tiny_test"}
VIT_MODELS = tuple(f"mosaic.{size}" for size in _BACKBONES)


def stored_image_size(spatial_dims: int, size: int) -> int:
    """The side MedMNIST stores a dataset at for a requested ``size``: 3-D datasets exist up to 64."""
    return min(size, 64) if spatial_dims == 3 else size


def build_mosaic_config(
    flags: str | Sequence[str],
    size: int = 28,
    *,
    vit: VisionTransformerConfig | None = None,
    **model_kwargs: Any,
) -> MosaicConfig:
    """A :class:`MosaicConfig` with one head per MedMNIST dataset (``"all"``, ``"2d"``, a list, ...).

    ``size`` is the stored image side (28/64/128/224; 3-D datasets take ``min(size, 64)``); the model
    then refuses inputs of another size.
    """
    from ...data.medmnist import medmnist_info, resolve_medmnist_flags

    tasks = []
    for flag in resolve_medmnist_flags(flags):
        info = medmnist_info(flag)
        tasks.append(info.task_spec_dict(stored_image_size(info.spatial_dims, size)))
    return MosaicConfig(tasks=tasks, vit=vit or VisionTransformerConfig(), **model_kwargs)


def is_vit_model_name(name: str) -> bool:
    """Whether ``name`` (``mosaic``, ``mosaic.<backbone>``) names a model of this module (the backbone is
    checked by :func:`create_mosaic_model`)."""
    return name.lower().partition(".")[0] == "mosaic"


def list_vit_models() -> list[str]:
    """Every name :func:`create_mosaic_model` accepts (``mosaic.<backbone>``)."""
    return list(VIT_MODELS)


def _backbone(name: str) -> str:
    arch, _, size = name.lower().partition(".")
    key = f"{arch}.{size or 'base'}"
    if key not in VIT_MODELS:
        hint = did_you_mean(name, VIT_MODELS)
        raise InputError(
            f"unknown ViT/MOSAIC model {name!r}; {hint + ' ' if hint else ''}choose from "
            f"{', '.join(VIT_MODELS)}"
        )
    return key.split(".")[1]


def create_mosaic_model(
    name: str = "mosaic",
    datasets: str | Sequence[str] = "all",
    size: int = 28,
    *,
    config: MosaicConfig | None = None,
    **overrides: Any,
) -> MosaicModel:
    """Build a MOSAIC model by name.

    Args:
        name: ``mosaic`` (= ``mosaic.base``, ViT-B/16 backbone) or ``mosaic.tiny``.
        datasets: MedMNIST datasets, one head each (``"all"``, ``"2d"``, ``"3d"``, a list of flags).
        size: stored image side (see :func:`build_mosaic_config`).
        config: a complete :class:`MosaicConfig` instead (``datasets``, ``size`` and overrides must not be given).
        **overrides: :class:`MosaicConfig` fields (``routing``, ``use_adapters``, ...); ``vit`` replaces the
            backbone config, ``device``/``dtype`` say where the parameters are built (``"meta"``: free).

    Returns:
        a :class:`MosaicModel` (random weights: load ViT weights with :func:`~medmoe.models.vit.load_vit_weights`).
    """
    backbone = _backbone(name)
    placement = {k: overrides.pop(k) for k in ("device", "dtype") if k in overrides}
    if config is None:
        vit = overrides.pop("vit", None)
        if vit is None:
            vit = getattr(VisionTransformerConfig, _BACKBONES[backbone])()
        elif isinstance(vit, dict):
            vit = VisionTransformerConfig(**vit)
        config = build_mosaic_config(datasets, size, vit=vit, **overrides)
    elif overrides:
        raise ValueError(f"give either config= or MOSAIC settings, not both (got {sorted(overrides)})")
    return build_within_limit(lambda: MosaicModel(config, **placement), f"model {name}")


def mosaic_model_from_config(config: dict[str, Any]) -> MosaicModel:
    """Rebuild a MOSAIC model (untrained weights) from a checkpoint's saved config dict."""
    cfg = MosaicConfig.from_dict(config)
    return build_within_limit(lambda: MosaicModel(cfg), "the checkpoint's MOSAIC model")
