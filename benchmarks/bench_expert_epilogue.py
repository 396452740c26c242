"""Mammoth's expert epilogue (bias, expert RMS norm, ReLU, dropout): PyTorch modules against the fused kernel.

Part 1 times Mammoth's expert block (``MammothExperts``, forward + backward) at batch 1 (one bag) and 8
(DTFD-MIL's pseudo-bags); part 2 one training step (AdamW, an 8 x 166 Musk-size bag) of zoo models. Each
row alternates the two settings ``--reps`` times and keeps the fastest (the module path is forced by
switching the kernel off, which leaves every other kernel as it is).

    python benchmarks/bench_expert_epilogue.py                 # 1 thread
"""

from __future__ import annotations

import contextlib

import torch
from _timing import alternate_ms, kernel_benchmark_args, musk_training_step, patched


def kernel_off() -> contextlib.AbstractContextManager[None]:
    """Mammoth's experts on the module path."""
    from medmoe.nn import expert_epilogue

    return patched((expert_epilogue, "native_enabled", lambda: False))


def main() -> None:
    models = ["dtfd.base_mammoth.uni", "abmil.base_mammoth.uni", "wikg.base_mammoth.uni", "rrt.base_paper_mammoth.uni"]
    args = kernel_benchmark_args(__doc__, models)

    from medmoe.nn.dropout import use_fast_dropout
    from medmoe.nn.expert_epilogue import native_expert_epilogue_available
    from medmoe.nn.mammoth import MammothExperts

    if not native_expert_epilogue_available():
        raise SystemExit(
            "the expert-epilogue kernel is not available here (no C++ compiler?): nothing to compare"
        )
    print("| case | modules (ms) | fused (ms) | speed-up |\n|---|---:|---:|---:|")
    block = use_fast_dropout(
        MammothExperts(256, 512, 16, 30, 3, 0.1, True)
    ).train()  # Mammoth defaults, rank 3
    for b in (1, 8):
        z = torch.randn(b, 10, 30, 16, 16, requires_grad=True)
        g = torch.randn(b, 10, 30, 16, 32)
        slow, fast = alternate_ms(lambda: block(z).backward(g), kernel_off, args.reps, 10)  # noqa: B023
        print(f"| expert block fwd + bwd, batch {b} | {slow:.2f} | {fast:.2f} | {slow / fast:.2f}x |")

    for name in args.models:
        step = musk_training_step(name)
        slow, fast = alternate_ms(step, kernel_off, args.reps, 10)
        print(f"| {name} training step, 8 x 166 bag | {slow:.1f} | {fast:.1f} | {slow / fast:.2f}x |")


if __name__ == "__main__":
    main()
