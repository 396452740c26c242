"""CPU dropout: PyTorch's Bernoulli masks against medmoe's counter-based kernel, side by side in one run.

Part 1 times dropout alone (forward + backward) on the shapes that dominate the MIL grid. Part 2 times one
training step (AdamW, batch 1, a Musk-size bag of 8 instances x 166 features) of zoo models with the
kernel and with it switched off (every dropout then runs ``torch.nn.functional.dropout``, the Transformer's
attention dropout SDPA's own path), alternating the two settings ``--reps`` times and keeping the fastest.

    python benchmarks/bench_dropout.py                  # 1 thread, the grid's heavy Mammoth rows
    python benchmarks/bench_dropout.py --models transformer.base_mammoth.uni abmil.base.uni --threads 2
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from _timing import alternate_ms, best_ms, kernel_benchmark_args, musk_training_step, patched


def kernel_off() -> contextlib.AbstractContextManager[None]:
    """Every dropout on torch's path (the Transformer's attention dropout on SDPA's)."""
    from medmoe.models.mil import transformer
    from medmoe.nn import dropout

    return patched(
        (dropout, "native_enabled", lambda: False),  # fast_dropout is F.dropout (bernoulli_)
        (transformer, "dropout_attention_applies", lambda q: False),
    )


def main() -> None:
    models = [
        "transformer.base_mammoth.uni",
        "dtfd.base_mammoth.uni",
        "rrt.base_paper_mammoth.uni",
        "wikg.base_mammoth.uni",
        "transmil.base_mammoth.uni",
        "abmil.base_mammoth.uni",
        "transformer.base.uni",
    ]
    args = kernel_benchmark_args(__doc__, models, lambda p: p.add_argument("--steps", type=int, default=10))

    from medmoe.nn.dropout import fast_dropout, native_dropout_available

    if not native_dropout_available():
        raise SystemExit("the dropout kernel is not available here (no C++ compiler?): nothing to compare")

    print("| dropout fwd + bwd | torch (ms) | medmoe (ms) | speed-up |\n|---|---:|---:|---:|")
    for shape in [(1, 8, 301, 301), (1, 301, 2048), (8, 10, 30, 16, 32), (1, 10_000, 512)]:
        x = torch.randn(shape, requires_grad=True)
        g = torch.randn(shape)
        t_torch = best_ms(lambda: F.dropout(x, 0.25).backward(g), args.reps, 10)  # noqa: B023
        t_fast = best_ms(lambda: fast_dropout(x, 0.25).backward(g), args.reps, 10)  # noqa: B023
        print(f"| {tuple(shape)} | {t_torch:.2f} | {t_fast:.2f} | {t_torch / t_fast:.1f}x |")

    print(
        "\n| training step, 8 x 166 bag | torch dropout (ms) | medmoe dropout (ms) | speed-up |\n|---|---:|---:|---:|"
    )
    for name in args.models:
        step = musk_training_step(name)
        slow, fast = alternate_ms(step, kernel_off, args.reps, args.steps)
        print(f"| {name} | {slow:.1f} | {fast:.1f} | {slow / fast:.2f}x |")


if __name__ == "__main__":
    main()
