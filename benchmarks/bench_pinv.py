"""Nyström attention's Moore–Penrose iterations: autograd through the loop against medmoe's one-node path.

Both columns run the same oneDNN products (results agree bit for bit); the loop column lets autograd record
every product, stack each batched product and build the ``c I - M`` temporaries, the medmoe column iterates
each matrix as one autograd node with a hand-written backward (:mod:`medmoe.nn.attention.pinv`). Forward +
backward of the pinv alone, then one TransMIL + Mammoth training step on a Musk-size bag (two attention
layers, each a (1, 4, 164, 164) pinv). Best of ``--reps``, alternating the two.

    python benchmarks/bench_pinv.py              # 1 thread
    python benchmarks/bench_pinv.py --threads 2
"""

from __future__ import annotations

import torch
from _timing import alternate_ms, kernel_benchmark_args, musk_training_step, patched


def main() -> None:
    args = kernel_benchmark_args(__doc__)

    from medmoe.nn.attention import pinv

    def loop() -> patched:
        return patched((pinv, "_onednn_applies", lambda *tensors: False))

    print("| work | autograd loop (ms) | medmoe (ms) | speed-up |\n|---|---:|---:|---:|")
    torch.manual_seed(0)
    for heads, m, where in ((4, 164, "TransMIL + Mammoth, Musk bag"), (4, 256, "TransMIL, >= 256 tokens")):
        x = (3 * torch.randn(1, heads, m, m)).softmax(dim=-1).requires_grad_()
        weights = torch.randn(1, heads, m, m)

        def pinv_step() -> None:
            (pinv.moore_penrose_pinv(x, iters=6) * weights).sum().backward()  # noqa: B023

        slow, fast = alternate_ms(pinv_step, loop, args.reps, 5)
        print(
            f"| pinv fwd + bwd, {heads} x {m} x {m} ({where}) | {slow:.2f} | {fast:.2f} | {slow / fast:.2f}x |"
        )

    step = musk_training_step("transmil.base_mammoth.uni")
    slow, fast = alternate_ms(step, loop, args.reps, 5)
    print(f"| TransMIL + Mammoth training step, 8 x 166 bag | {slow:.1f} | {fast:.1f} | {slow / fast:.2f}x |")


if __name__ == "__main__":
    main()
