"""Mamba-HoME: hierarchical soft mixture of experts on a Mamba backbone for 3-D segmentation.

Re-implementation of gmum/MambaHoME (NeurIPS 2025), with the release's construction bugs fixed (any
``in_channels`` and ``num_classes``, no stray keyword arguments, ROI sizes as ints).

Encoder (4 stages, resolutions 1/2, 1/4, 1/8, 1/16 of the input)::

    stage 0: Conv3d(in -> C0, k 7, s 2, p 3)          stages 1-3: InstanceNorm3d, Conv3d(k 2, s 2)
    then     GatedSpatialConv(C_i)                      (GSC, residual inside)
             depth_i x [ x = x + Mamba(DyT(x));  x = x + HoME(DyT'(x)) ]   on raster-order tokens (b, DHW, C)
             InstanceNorm3d(C_i) -> skip i

Decoder (UNETR / SegMamba style, MONAI blocks, instance norm, residual units)::

    enc1 = Basic(in -> C0)(input)    enc2 = Basic(C0 -> C1)(skip0)    enc3 = Basic(C1 -> C2)(skip1)
    enc4 = Basic(C2 -> C3)(skip2)    hidden = Basic(C3 -> hidden_size)(skip3)
    dec = Up(hidden -> C3, enc4) -> Up(C3 -> C2, enc3) -> Up(C2 -> C1, enc2) -> Up(C1 -> C0, enc1)
    out = UnetOutBlock(C0 -> num_classes)(Basic(C0 -> C0)(dec))

The paper configuration (:meth:`MambaHoMEConfig.paper`) has 170.1M parameters with 16 output classes.
Inputs must have every spatial size divisible by 16 (the encoder halves it four times) and at least
32 (instance norm needs more than one voxel at the 1/16 bottleneck); use sliding-window inference with
such an ROI (e.g. 32x64x64 or 96^3) for volumes of any size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

__all__ = ["MAMBA_HOME_PRESETS", "MambaHoME", "MambaHoMEConfig", "MambaHoMEEncoder", "MambaHoMEStage"]


def _four(name: str, value: Any, cast: type = int) -> tuple:
    try:
        out = tuple(cast(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} needs 4 numbers (one per encoder stage), e.g. [1, 1, 1, 1]; got {value!r}") from None
    if len(out) != 4:
        raise ValueError(f"{name} needs 4 values (one per encoder stage), got {value!r}")
    return out


@dataclass
class MambaHoMEConfig:
    """Every setting of :class:`MambaHoME` (saved inside checkpoints).

    Attributes:
        in_channels: image channels (modalities).
        num_classes: output channels (classes including background).
        feature_size: channels per encoder stage ``(C0, C1, C2, C3)``; paper ``(48, 96, 192, 384)``.
        depths: [Mamba, HoME] repeats per stage; paper ``(2, 2, 2, 2)``.
        hidden_size: channels of the bottleneck UNETR block; paper 768.
        num_experts: first-level (local) experts per stage; paper ``(4, 8, 12, 16)``.
        num_experts_second: second-level (global) experts per stage; paper ``(8, 16, 24, 32)``.
        group_sizes: tokens per local group per stage; paper ``(2048, 1024, 512, 256)``.
        slots_per_expert: first-level slots per expert (paper 4).
        expert_mult: GEGLU expert width multiplier (paper 2).
        geglu: GEGLU experts (else GELU MLP).
        moe_dropout: dropout inside the experts.
        d_state, d_conv, expand: Mamba block settings (paper 16, 4, 2).
        norm_name: MONAI norm of the decoder blocks (``"instance"``).
        res_block: residual UNETR blocks.
        mamba_backend: ``"auto"`` (``mamba_ssm`` on CUDA when installed, else pure PyTorch) or a backend name.
        checkpointing: activation checkpointing inside Mamba blocks (saves memory on long sequences).
    """

    in_channels: int = 1
    num_classes: int = 2
    feature_size: tuple[int, int, int, int] = (48, 96, 192, 384)
    depths: tuple[int, int, int, int] = (2, 2, 2, 2)
    hidden_size: int = 768
    num_experts: tuple[int, int, int, int] = (4, 8, 12, 16)
    num_experts_second: tuple[int, int, int, int] = (8, 16, 24, 32)
    group_sizes: tuple[int, int, int, int] = (2048, 1024, 512, 256)
    slots_per_expert: int = 4
    expert_mult: int = 2
    geglu: bool = True
    moe_dropout: float = 0.0
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    norm_name: str = "instance"
    res_block: bool = True
    mamba_backend: str = "auto"
    checkpointing: bool = False

    def __post_init__(self) -> None:
        for name in ("feature_size", "depths", "num_experts", "num_experts_second", "group_sizes"):
            setattr(self, name, _four(name, getattr(self, name)))
        for name in ("in_channels", "num_classes", "hidden_size", "slots_per_expert", "expert_mult", "d_state",
                     "d_conv", "expand"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
            setattr(self, name, int(getattr(self, name)))
        if min(self.feature_size) < 1 or min(self.num_experts) < 1 or min(self.num_experts_second) < 1:
            raise ValueError("feature_size, num_experts and num_experts_second must be positive")
        if min(self.group_sizes) < 1 or min(self.depths) < 0:
            raise ValueError("group_sizes must be positive and depths non-negative")
        if not 0.0 <= float(self.moe_dropout) < 1.0:
            raise ValueError(f"moe_dropout must be in [0, 1), got {self.moe_dropout}")

    @classmethod
    def paper(cls, in_channels: int = 1, num_classes: int = 16, **overrides: Any) -> MambaHoMEConfig:
        """The NeurIPS 2025 configuration (features 48/96/192/384, 170.1M parameters at 16 classes)."""
        return cls(in_channels=in_channels, num_classes=num_classes, **overrides)

    @classmethod
    def tiny(cls, in_channels: int = 1, num_classes: int = 2, **overrides: Any) -> MambaHoMEConfig:
        """A CPU-sized model (features 8/16/32/64, one repeat per stage, few experts): a 32x64x64 patch
        takes well under a second per training step on a laptop CPU."""
        base: dict[str, Any] = {
            "feature_size": (8, 16, 32, 64), "depths": (1, 1, 1, 1), "hidden_size": 128,
            "num_experts": (2, 2, 4, 4), "num_experts_second": (2, 4, 4, 8), "group_sizes": (512, 256, 128, 64),
            "slots_per_expert": 2, "d_state": 8,
        }
        base.update(overrides)
        return cls(in_channels=in_channels, num_classes=num_classes, **base)

    @classmethod
    def preset(cls, name: str, in_channels: int = 1, num_classes: int = 2, **overrides: Any) -> MambaHoMEConfig:
        """``"paper"`` or ``"tiny"`` with the given channels and overrides."""
        if name not in MAMBA_HOME_PRESETS:
            raise ValueError(f"unknown Mamba-HoME preset {name!r}; choose from {sorted(MAMBA_HOME_PRESETS)}")
        return getattr(cls, name)(in_channels=in_channels, num_classes=num_classes, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


MAMBA_HOME_PRESETS = ("paper", "tiny")


class MambaHoMEStage(nn.Module):
    """One encoder stage after its downsampling conv: GSC, ``depth`` x [Mamba, HoME], skip norm.

    Shapes: ``(b, C, D, H, W) -> (b, C, D, H, W)``; the token mixers see ``(b, D*H*W, C)`` in raster order.
    """

    def __init__(self, channels: int, depth: int, num_experts: int, num_experts_second: int, group_size: int,
                 cfg: MambaHoMEConfig) -> None:
        super().__init__()
        from ...nn import DynamicTanh, GatedSpatialConv, HoME, Mamba

        self.gsc = GatedSpatialConv(channels)
        self.mamba_norms = nn.ModuleList(DynamicTanh(channels, alpha_init=0.5) for _ in range(depth))
        self.mambas = nn.ModuleList(
            Mamba(channels, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand, backend=cfg.mamba_backend,
                  checkpointing=cfg.checkpointing)
            for _ in range(depth)
        )
        self.moe_norms = nn.ModuleList(DynamicTanh(channels, alpha_init=0.5) for _ in range(depth))
        self.moes = nn.ModuleList(
            HoME(channels, num_experts, num_experts_second, group_size, slots_per_expert=cfg.slots_per_expert,
                 mult=cfg.expert_mult, geglu=cfg.geglu, dropout=cfg.moe_dropout)
            for _ in range(depth)
        )
        self.out_norm = nn.InstanceNorm3d(channels)

    def forward(self, x: Tensor) -> Tensor:
        x = self.gsc(x)
        b, c, d, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (b, DHW, C)
        for norm1, mamba, norm2, moe in zip(self.mamba_norms, self.mambas, self.moe_norms, self.moes):
            tokens = tokens + mamba(norm1(tokens))
            tokens = tokens + moe(norm2(tokens))
        x = tokens.transpose(1, 2).reshape(b, c, d, h, w)
        return self.out_norm(x)


class MambaHoMEEncoder(nn.Module):
    """Four downsampling stages; returns the four skip tensors ``[(b, C_i, S/2^(i+1), ...)]``."""

    def __init__(self, cfg: MambaHoMEConfig) -> None:
        super().__init__()
        c = cfg.feature_size
        self.downsample = nn.ModuleList([nn.Conv3d(cfg.in_channels, c[0], kernel_size=7, stride=2, padding=3)])
        for i in range(3):
            self.downsample.append(
                nn.Sequential(nn.InstanceNorm3d(c[i]), nn.Conv3d(c[i], c[i + 1], kernel_size=2, stride=2))
            )
        self.stages = nn.ModuleList(
            MambaHoMEStage(c[i], cfg.depths[i], cfg.num_experts[i], cfg.num_experts_second[i], cfg.group_sizes[i], cfg)
            for i in range(4)
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        skips = []
        for down, stage in zip(self.downsample, self.stages):
            x = stage(down(x))
            skips.append(x)
        return skips


class MambaHoME(nn.Module):
    """Mamba-HoME U-Net: ``(b, in_channels, D, H, W) -> (b, num_classes, D, H, W)`` logits.

    ``D``, ``H`` and ``W`` must each be divisible by 16. Build it from a config:
    ``MambaHoME(MambaHoMEConfig.tiny(in_channels=2, num_classes=3))`` or
    ``medmoe.models.seg.create_seg_model("mamba_home.paper", in_channels=1, num_classes=14)``.
    """

    config_class = MambaHoMEConfig
    family = "seg"  # the model family recorded in checkpoints
    divisor = 16
    min_size = 32

    def __init__(self, config: MambaHoMEConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = MambaHoMEConfig(**kwargs)
        elif kwargs:
            config = dataclasses.replace(config, **kwargs)
        from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock

        self.config = config
        self.model_name = "mamba_home"
        c, norm, res = config.feature_size, config.norm_name, config.res_block

        def basic(cin: int, cout: int) -> nn.Module:
            return UnetrBasicBlock(3, cin, cout, kernel_size=3, stride=1, norm_name=norm, res_block=res)

        def up(cin: int, cout: int) -> nn.Module:
            return UnetrUpBlock(3, cin, cout, kernel_size=3, upsample_kernel_size=2, norm_name=norm, res_block=res)

        self.encoder = MambaHoMEEncoder(config)
        self.encoder1 = basic(config.in_channels, c[0])
        self.encoder2 = basic(c[0], c[1])
        self.encoder3 = basic(c[1], c[2])
        self.encoder4 = basic(c[2], c[3])
        self.encoder5 = basic(c[3], config.hidden_size)
        self.decoder5 = up(config.hidden_size, c[3])
        self.decoder4 = up(c[3], c[2])
        self.decoder3 = up(c[2], c[1])
        self.decoder2 = up(c[1], c[0])
        self.decoder1 = basic(c[0], c[0])
        self.out = UnetOutBlock(3, c[0], config.num_classes)

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``(b, in_channels, D, H, W)`` with sizes divisible by 16, >= 32."""
        if x.ndim != 5:
            raise ValueError(f"MambaHoME expects (batch, channels, D, H, W); got shape {tuple(x.shape)}")
        if x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"MambaHoME was built for in_channels={self.config.in_channels}, got {x.shape[1]} channels"
            )
        bad = [int(s) for s in x.shape[2:] if int(s) % self.divisor or int(s) < 2 * self.divisor]
        if bad:
            raise ValueError(
                f"MambaHoME needs every spatial size divisible by {self.divisor} and at least "
                f"{2 * self.divisor} (the 1/16 bottleneck must keep 2 voxels for instance norm); got "
                f"{tuple(x.shape[2:])}. Pad or crop the input, or use sliding-window inference with such an ROI"
            )

    def forward(self, x: Tensor) -> Tensor:
        """``x (b, in_channels, D, H, W)`` (sizes multiples of 16, >= 32) -> logits ``(b, num_classes, D, H, W)``."""
        self.check_input(x)
        s0, s1, s2, s3 = self.encoder(x)
        enc1 = self.encoder1(x)
        enc2 = self.encoder2(s0)
        enc3 = self.encoder3(s1)
        enc4 = self.encoder4(s2)
        hidden = self.encoder5(s3)
        dec = self.decoder5(hidden, enc4)
        dec = self.decoder4(dec, enc3)
        dec = self.decoder3(dec, enc2)
        dec = self.decoder2(dec, enc1)
        return self.out(self.decoder1(dec))

    def parameter_groups(self) -> dict[str, int]:
        """Parameter counts by part: ``home``, ``mamba``, ``gsc``, ``encoder`` (all Mamba-HoME stages and
        downsampling), ``unetr`` (decoder side MONAI blocks) and ``total``."""

        def count(module: nn.Module) -> int:
            return sum(p.numel() for p in module.parameters())

        stages = self.encoder.stages
        return {
            "home": sum(count(m) for s in stages for m in s.moes),
            "mamba": sum(count(m) for s in stages for m in s.mambas),
            "gsc": sum(count(s.gsc) for s in stages),
            "encoder": count(self.encoder),
            "unetr": count(self) - count(self.encoder),
            "total": count(self),
        }

