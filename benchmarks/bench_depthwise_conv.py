"""PPEG and Nyström's residual convolution: PyTorch's depthwise Conv2d against medmoe's kernel, side by side.

TransMIL and RRT-MIL add three depthwise convolutions (7, 5, 3) plus the identity on the token grid (PPEG);
Nyström attention adds a per-head 33-tap convolution of the values along the sequence. The PyTorch column
runs them as the reference models do (``nn.Conv2d`` on ``(b, c, h, w)`` / ``(b, heads, n, d)``); the medmoe
column folds the PPEG into one kernel and runs both on the channels-last CPU kernel
(:mod:`medmoe.nn.depthwise_conv`). Forward + backward, best of ``--reps``, alternating the two.

    python benchmarks/bench_depthwise_conv.py              # 1 thread; 324 tokens (Mammoth) and 10k patches
    python benchmarks/bench_depthwise_conv.py --threads 2
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from _timing import best_ms, kernel_benchmark_args
from torch import nn


def main() -> None:
    args = kernel_benchmark_args(__doc__)

    from medmoe.nn.depthwise_conv import (
        depthwise_conv2d_nhwc,
        folded_depthwise_kernel,
        head_sequence_conv,
        native_depthwise_conv_available,
    )

    if not native_depthwise_conv_available():
        raise SystemExit("the depthwise kernel is not available here (no C++ compiler?): nothing to compare")
    print(
        "| layer, fwd + bwd | torch (ms) | medmoe (ms) | speed-up | max abs diff |\n|---|---:|---:|---:|---:|"
    )
    torch.manual_seed(0)
    for side, c in ((18, 512), (100, 512)):
        convs = [nn.Conv2d(c, c, k, 1, k // 2, groups=c) for k in (7, 5, 3)]
        feat = torch.randn(1, side * side, c, requires_grad=True)
        g = torch.randn(1, side * side, c)

        def torch_ppeg() -> torch.Tensor:
            grid = feat.transpose(1, 2).reshape(1, c, side, side)  # noqa: B023
            out = convs[0](grid) + grid + convs[1](grid) + convs[2](grid)  # noqa: B023
            return out.flatten(2).transpose(1, 2)

        def medmoe_ppeg() -> torch.Tensor:
            weight, bias = folded_depthwise_kernel(convs, identity=True)  # noqa: B023
            return depthwise_conv2d_nhwc(feat.view(1, side, side, c), weight, bias).view(1, side * side, c)  # noqa: B023

        diff = (torch_ppeg() - medmoe_ppeg()).abs().max().item()
        times = _alternate(torch_ppeg, medmoe_ppeg, g, args.reps)
        print(f"| PPEG (7, 5, 3), {side} x {side} grid, {c} channels | {_row(times, diff)} |")

    for n in (325, 10_000):
        conv = nn.Conv2d(4, 4, (33, 1), padding=(16, 0), groups=4, bias=False)  # TransMIL: 4 heads x 128
        v = torch.randn(1, 4, n, 128, requires_grad=True)
        g = torch.randn(1, 4, n, 128)
        diff = (conv(v) - head_sequence_conv(v, conv)).abs().max().item()
        times = _alternate(lambda: conv(v), lambda: head_sequence_conv(v, conv), g, args.reps)  # noqa: B023
        print(f"| Nyström residual conv (33 taps), 4 heads x {n} x 128 | {_row(times, diff)} |")


def _alternate(
    torch_fn: Callable[[], torch.Tensor], medmoe_fn: Callable[[], torch.Tensor], g: torch.Tensor, reps: int
) -> tuple[float, float]:
    best = [float("inf"), float("inf")]
    inner = 10
    for _ in range(reps):
        for i, fn in enumerate((torch_fn, medmoe_fn)):
            best[i] = min(best[i], best_ms(lambda: fn().backward(g), 1, inner))  # noqa: B023
    return best[0], best[1]


def _row(times: tuple[float, float], diff: float) -> str:
    return f"{times[0]:.2f} | {times[1]:.2f} | {times[0] / times[1]:.1f}x | {diff:.1e}"


if __name__ == "__main__":
    main()
