"""One MOSAIC training step on CPU: PyTorch's linear and dropout layers against medmoe's fast ones.

``MosaicModel`` (ViT-B/16 with specialist adapters, frozen backbone) runs its linear layers on oneDNN
(:class:`~medmoe.nn.onednn_linear.FastLinear`) and its dropout on the compiled mask generator
(:class:`~medmoe.nn.dropout.FastDropout`). The PyTorch column switches both off (their fallbacks are
``F.linear`` and ``F.dropout``). Forward, cross-entropy and backward on a batch of 64 x 64 RGB images, best of
``--reps``, alternating the two.

    python benchmarks/bench_mosaic_step.py                 # 1 thread, batch 8
    python benchmarks/bench_mosaic_step.py --threads 2 --batch 32
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from _timing import alternate_ms, kernel_benchmark_args, patched


def main() -> None:
    args = kernel_benchmark_args(__doc__, extra=lambda p: p.add_argument("--batch", type=int, default=8))
    from medmoe.models.vit import MosaicConfig, MosaicModel, TaskSpec
    from medmoe.nn import dropout, onednn_linear

    def plain_layers() -> patched:
        return patched(
            (onednn_linear, "_onednn_applies", lambda *tensors: False),
            (dropout, "native_enabled", lambda: False),  # fast_dropout is F.dropout (bernoulli_)
        )

    torch.manual_seed(0)
    task = TaskSpec(name="pathmnist", task="multi-class", num_classes=9, spatial_dims=2, channels=3)
    model = MosaicModel(MosaicConfig(tasks=[task])).train()
    x, y = torch.randn(args.batch, 3, 64, 64), torch.randint(0, 9, (args.batch,))

    def step() -> None:
        F.cross_entropy(model(x, "pathmnist").logits, y).backward()

    slow, fast = alternate_ms(step, plain_layers, args.reps, 1)
    print(
        "| MOSAIC training step | PyTorch layers (ms) | medmoe layers (ms) | speed-up |\n|---|---:|---:|---:|"
    )
    print(f"| ViT-B/16, batch {args.batch}, 64 x 64 | {slow:.0f} | {fast:.0f} | {slow / fast:.2f}x |")


if __name__ == "__main__":
    main()
