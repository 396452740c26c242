"""One factory for every 3-D segmentation network: Mamba-HoME and the MONAI baselines.

``create_seg_model(name, in_channels, num_classes, **overrides)`` with ``name`` one of

| name | network | notes |
|---|---|---|
| ``mamba_home`` / ``mamba_home.tiny`` | :class:`~medmoe.models.seg.MambaHoME`, CPU-sized preset | sizes divisible by 16 |
| ``mamba_home.paper`` | Mamba-HoME paper configuration | 170.1M parameters at 16 classes |
| ``unet`` / ``unet.small`` | MONAI ``UNet`` (channels 16..256 / 8..64, residual units, instance norm) | |
| ``segresnet`` / ``segresnet.small`` | MONAI ``SegResNet`` (init_filters 16 / 8) | sizes divisible by 8 |
| ``swinunetr`` | MONAI ``SwinUNETR`` (feature_size 48) | sizes divisible by 32 |

Every returned module has ``model_name``, a dataclass ``config`` (what checkpoints store), a ``divisor``
and a ``min_size`` (spatial sizes must be multiples of the divisor and at least ``min_size``).
:func:`seg_model_from_config` rebuilds a model from ``(model_name, config dict)`` as saved by
:mod:`medmoe.engine.seg.training`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from ...errors import InputError, did_you_mean
from ...model_size import build_within_limit
from .mamba_home import MambaHoME, MambaHoMEConfig

__all__ = ["SEG_MODELS", "MonaiSegNet", "MonaiSegNetConfig", "create_seg_model", "is_seg_model_name",
           "list_seg_models", "seg_model_from_config"]

#: ``arch.size`` -> (MONAI class name, default kwargs, spatial divisor)
_MONAI_PRESETS: dict[str, tuple[str, dict[str, Any], int]] = {
    "unet.base": ("UNet", {"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "num_res_units": 2,
                               "norm": "instance"}, 16),
    "unet.small": ("UNet", {"channels": (8, 16, 32, 64), "strides": (2, 2, 2), "num_res_units": 1,
                                "norm": "instance"}, 8),
    "segresnet.base": ("SegResNet", {"init_filters": 16, "blocks_down": (1, 2, 2, 4), "blocks_up": (1, 1, 1)}, 8),
    "segresnet.small": ("SegResNet", {"init_filters": 8, "blocks_down": (1, 2, 2, 4), "blocks_up": (1, 1, 1)}, 8),
    "swinunetr.base": ("SwinUNETR", {"feature_size": 48}, 32),
}

SEG_MODELS = ("mamba_home.tiny", "mamba_home.paper", *_MONAI_PRESETS)


@dataclass
class MonaiSegNetConfig:
    """A MONAI network by class name and keyword arguments (``spatial_dims`` is always 3)."""

    arch: str
    in_channels: int = 1
    num_classes: int = 2
    kwargs: dict[str, Any] = field(default_factory=dict)
    divisor: int = 16

    def __post_init__(self) -> None:
        if self.arch not in ("UNet", "SegResNet", "SwinUNETR"):
            raise ValueError(f"unsupported MONAI network {self.arch!r}; use UNet, SegResNet or SwinUNETR")
        if int(self.in_channels) < 1 or int(self.num_classes) < 1:
            raise ValueError(f"in_channels and num_classes must be >= 1, got {self.in_channels}, {self.num_classes}")


class MonaiSegNet(nn.Module):
    """A MONAI segmentation network with a medmoe config: ``(b, in, D, H, W) -> (b, classes, D, H, W)``."""

    config_class = MonaiSegNetConfig
    family = "seg"  # the model family recorded in checkpoints

    def __init__(self, config: MonaiSegNetConfig, model_name: str = "") -> None:
        super().__init__()
        from monai.networks import nets

        self.config = config
        self.model_name = model_name or config.arch.lower()
        self.divisor = int(config.divisor)
        # instance-normed bottlenecks need > 1 voxel: the smallest input side is twice the downsampling
        self.min_size = 2 * self.divisor
        cls = getattr(nets, config.arch)
        kwargs = dict(config.kwargs)
        if config.arch == "SwinUNETR":
            self.net = cls(in_channels=config.in_channels, out_channels=config.num_classes, spatial_dims=3, **kwargs)
        else:
            self.net = cls(spatial_dims=3, in_channels=config.in_channels, out_channels=config.num_classes, **kwargs)

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 5 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"{self.model_name} expects (batch, {self.config.in_channels}, D, H, W); got {tuple(x.shape)}"
            )
        bad = [int(s) for s in x.shape[2:] if int(s) % self.divisor or int(s) < self.min_size]
        if bad:
            raise ValueError(
                f"{self.model_name} needs spatial sizes divisible by {self.divisor} and >= {self.min_size}; "
                f"got {tuple(x.shape[2:])}"
            )
        return self.net(x)


def _split_name(name: str) -> tuple[str, str]:
    arch, _, size = name.lower().partition(".")
    arch = {"mambahome": "mamba_home", "mamba-home": "mamba_home", "swin_unetr": "swinunetr"}.get(arch, arch)
    if arch == "mamba_home":
        return arch, size or "tiny"
    return arch, size or "base"


def is_seg_model_name(name: str) -> bool:
    """Whether ``name``'s architecture (its part before the first dot, aliases included) is a segmentation
    network of this module (its size is checked by :func:`create_seg_model`)."""
    return _split_name(name)[0] in {key.split(".")[0] for key in SEG_MODELS}


def list_seg_models() -> list[str]:
    """Every name :func:`create_seg_model` accepts (``arch.size``)."""
    return list(SEG_MODELS)


def create_seg_model(name: str, in_channels: int = 1, num_classes: int = 2, **overrides: Any) -> nn.Module:
    """Build a 3-D segmentation network by name (see the module table).

    Args:
        name: ``mamba_home[.tiny|.paper]``, ``unet[.base|.small]``, ``segresnet[.base|.small]``, ``swinunetr``.
        in_channels: image channels.
        num_classes: output classes (including background).
        overrides: config fields (Mamba-HoME) or MONAI constructor arguments (baselines).
    """
    arch, size = _split_name(name)
    key = f"{arch}.{size}"
    if key not in SEG_MODELS:
        hint = did_you_mean(name, list_seg_models())
        raise InputError(f"unknown segmentation model {name!r}; {hint + ' ' if hint else ''}choose from "
                         f"{', '.join(list_seg_models())}")
    _check_overrides(key, overrides)
    if arch == "mamba_home":
        config = MambaHoMEConfig.preset(size, in_channels, num_classes, **overrides)
        model: nn.Module = build_within_limit(lambda: MambaHoME(config), f"model {key}")
        model.model_name = f"mamba_home.{size}"
        return model
    cls_name, defaults, divisor = _MONAI_PRESETS[key]
    kwargs = {**defaults, **overrides}
    monai_config = MonaiSegNetConfig(cls_name, in_channels, num_classes, kwargs, divisor)
    return build_within_limit(lambda: MonaiSegNet(monai_config, model_name=key), f"model {key}")


def _check_overrides(key: str, overrides: dict[str, Any]) -> None:
    """Unknown settings (``--set foo=1``) raise ``InputError`` naming the closest valid ones."""
    import inspect

    if key.startswith("mamba_home"):
        valid = {f.name for f in dataclasses.fields(MambaHoMEConfig)} - {"in_channels", "num_classes"}
    else:
        from monai.networks import nets

        params = inspect.signature(getattr(nets, _MONAI_PRESETS[key][0])).parameters
        valid = set(params) - {"self", "spatial_dims", "in_channels", "out_channels", "args", "kwargs"}
    for setting in overrides:
        if setting not in valid:
            hint = did_you_mean(setting, valid)
            raise InputError(f"{key} has no setting {setting!r}; {hint + ' ' if hint else ''}valid settings: "
                             f"{', '.join(sorted(valid))}")


def seg_model_from_config(model_name: str, config: dict[str, Any]) -> nn.Module:
    """Rebuild a network from a checkpoint's ``model_name`` and config dict (untrained weights)."""
    arch, _ = _split_name(model_name)
    if arch == "mamba_home":
        fields = {f.name for f in dataclasses.fields(MambaHoMEConfig)}
        unknown = sorted(set(config) - fields)
        if unknown:
            raise ValueError(f"checkpoint config has unknown Mamba-HoME settings {unknown}; newer medmoe?")
        model: nn.Module = MambaHoME(MambaHoMEConfig(**config))
        model.model_name = model_name
        return model
    cfg = dict(config)
    return MonaiSegNet(MonaiSegNetConfig(**cfg), model_name=model_name)
