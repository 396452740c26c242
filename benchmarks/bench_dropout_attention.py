"""Attention with dropout on long sequences: checkpointed query chunks against medmoe's blocked attention.

PyTorch's fused CPU attention skips dropout, so the Transformer MIL model used to form its attention weights
in chunks of queries (``attn_chunk_elements``), each recomputed in the backward pass (activation
checkpointing). medmoe now runs such sequences through :func:`medmoe.nn.attention.dropout_attention`
(cache-sized blocks, hand-written backward, dropout masks regenerated from one seed per block). Forward +
backward of the attention alone, 8 heads of 64 (the Transformer's 512-wide layer), dropout 0.25, best of
``--reps``, alternating the two. A second table compares the same blocks without dropout with PyTorch's fused
CPU attention (``F.scaled_dot_product_attention``), which the Transformer and ``SoftmaxAttention`` use outside
the 3,000-12,000-token range where the blocks are preferred.

    python benchmarks/bench_dropout_attention.py                      # 1 thread; 4,000 and 6,000 tokens
    python benchmarks/bench_dropout_attention.py --tokens 10000 --reps 1 --threads 2
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from _timing import alternate_ms, kernel_benchmark_args, patched


def main() -> None:
    args = kernel_benchmark_args(
        __doc__, extra=lambda p: p.add_argument("--tokens", type=int, nargs="+", default=[4000, 6000])
    )
    import torch.nn.functional as F

    from medmoe.models.mil import transformer
    from medmoe.nn.attention import dropout_attention as blocks
    from medmoe.nn.attention.dropout_attention import dropout_attention_applies

    if not dropout_attention_applies(torch.zeros(1)):
        raise SystemExit("the dropout kernel is not available here (no C++ compiler?): nothing to compare")

    def chunks() -> patched:
        return patched((transformer, "dropout_attention_applies", lambda q: False))

    def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *_: object) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)  # in place of dropout_attention(q, k, v, None, 0.0)

    def fused() -> patched:
        return patched((blocks, "dropout_attention", fused_attention))

    def table(header: str, attend: Callable[..., torch.Tensor], off: Callable[[], patched]) -> None:
        """Rows of ``| tokens | ms inside off() | ms outside | speed-up |`` for ``attend(q, k, v)``."""
        print(f"{header}\n|---:|---:|---:|---:|")
        for t in args.tokens:
            q, k, v = (torch.randn(1, 8, t, 64, requires_grad=True) for _ in range(3))
            g = torch.randn(1, 8, t, 64)
            slow, fast = alternate_ms(lambda: attend(q, k, v).backward(g), off, args.reps, 1)  # noqa: B023
            print(f"| {t:,} | {slow:.0f} | {fast:.0f} | {slow / fast:.2f}x |")

    torch.manual_seed(0)
    table(
        "| tokens | checkpointed chunks (ms) | medmoe blocks (ms) | speed-up |",
        lambda q, k, v: transformer.chunked_attention(q, k, v, None, 0.25),
        chunks,
    )
    table(
        "\nWithout dropout:\n\n| tokens | PyTorch fused attention (ms) | medmoe blocks (ms) | speed-up |",
        lambda q, k, v: blocks.dropout_attention(q, k, v, None, 0.0),
        fused,
    )


if __name__ == "__main__":
    main()
