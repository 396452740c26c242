"""Gated spatial convolution (GSC) block of SegMamba, as used at the start of every Mamba-HoME encoder stage.

    x1  = ReLU(IN(proj2(ReLU(IN(proj(x))))))      # two 3x3x3 convolutions
    x2  = ReLU(IN(proj3(x)))                       # a 1x1x1 convolution (keeps low-level detail)
    out = x + ReLU(IN(proj4(x1 + x2)))             # 1x1x1 fusion convolution, then the residual

Every convolution keeps the channel count and has a bias; ``IN`` is ``InstanceNorm3d`` without affine
parameters (PyTorch's default), so the parameter count is ``2 (27 c^2 + c) + 2 (c^2 + c)``: 0.13M, 0.52M,
2.07M and 8.26M for ``c`` = 48, 96, 192, 384, the numbers quoted for Mamba-HoME. Submodule names
(``proj``, ``norm``, ``proj2``, ``norm2``, ``proj3``, ``norm3``, ``proj4``, ``norm4``) follow the release.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["GatedSpatialConv"]


class GatedSpatialConv(nn.Module):
    """SegMamba's GSC block with its residual connection.

    Args:
        channels: channels ``c`` (kept by every convolution).

    Shapes: ``(b, c, D, H, W) -> (b, c, D, H, W)``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            raise ValueError(f"GatedSpatialConv: channels must be a positive integer, got {channels!r}")
        self.channels = channels
        self.proj = nn.Conv3d(channels, channels, kernel_size=3, padding=1)
        self.norm = nn.InstanceNorm3d(channels)
        self.proj2 = nn.Conv3d(channels, channels, kernel_size=3, padding=1)
        self.norm2 = nn.InstanceNorm3d(channels)
        self.proj3 = nn.Conv3d(channels, channels, kernel_size=1)
        self.norm3 = nn.InstanceNorm3d(channels)
        self.proj4 = nn.Conv3d(channels, channels, kernel_size=1)
        self.norm4 = nn.InstanceNorm3d(channels)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 5 or x.shape[1] != self.channels:
            raise ValueError(f"GatedSpatialConv expects (b, {self.channels}, D, H, W), got {tuple(x.shape)}")
        x1 = self.act(self.norm(self.proj(x)))
        x1 = self.act(self.norm2(self.proj2(x1)))
        x2 = self.act(self.norm3(self.proj3(x)))
        return x + self.act(self.norm4(self.proj4(x1 + x2)))

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
