"""Timing helper shared by the benchmark scripts (run them from the repository root: ``python benchmarks/X.py``)."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time
from collections.abc import Callable, Iterator
from typing import Any


def best_ms(fn: Callable[[], object], reps: int, inner: int) -> float:
    """Milliseconds per call of ``fn``: the fastest of ``reps`` rounds of ``inner`` calls, after one warm-up call.

    The minimum is the statistic least disturbed by other processes on a shared machine.
    """
    fn()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - start) / inner)
    return best * 1e3


def musk_training_step(name: str) -> Callable[[], None]:
    """One training step (forward, loss, backward, AdamW) of zoo model ``name`` on a fixed Musk-size bag.

    The bag is 8 instances x 166 features, batch 1, two classes; returns the step as a closure to time.
    """
    import torch
    import torch.nn.functional as F

    from medmoe import create_model
    from medmoe.engine.optim import make_adamw

    x, mask, y = torch.randn(1, 8, 166), torch.ones(1, 8, dtype=torch.bool), torch.tensor([1])
    model = create_model(name, in_dim=166, num_classes=2).train()
    opt = make_adamw([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-5)

    def step() -> None:
        out = model(x, mask, label=y)
        loss = out.total_loss(F.cross_entropy(out.logits, y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


@contextlib.contextmanager
def patched(*changes: tuple[Any, str, Any]) -> Iterator[None]:
    """Set ``setattr(obj, name, value)`` for each ``(obj, name, value)`` inside the block, restore them after.

    The benchmarks switch one native kernel off this way (its availability check returns False) and leave
    every other kernel as it is.
    """
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in changes]
    for obj, name, value in changes:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def alternate_ms(
    fn: Callable[[], object],
    off: Callable[[], contextlib.AbstractContextManager[None]],
    reps: int,
    inner: int,
) -> tuple[float, float]:
    """``(ms inside off(), ms outside)``: the fastest of ``reps`` alternating rounds of ``inner`` calls each.

    Alternating, so that drifting machine load hits both settings alike.
    """
    best = [float("inf"), float("inf")]
    for _ in range(reps):
        with off():
            best[0] = min(best[0], best_ms(fn, 1, inner))
        best[1] = min(best[1], best_ms(fn, 1, inner))
    return best[0], best[1]


def kernel_benchmark_args(
    doc: str | None, models: list[str] | None = None, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    """Parse the kernel benchmarks' common options, set torch's thread count and print the machine line.

    Options: ``--threads`` (1), ``--reps`` (5), ``--models`` when ``models`` (the default list) is given, and
    whatever ``extra(parser)`` adds. ``doc`` is the script's docstring (the ``--help`` text).
    """
    import torch

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if models is not None:
        parser.add_argument("--models", nargs="+", default=models)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads} thread(s)\n"
    )
    return args


# device helpers (--device cpu/cuda), shared with the packaged benchmarks
from medmoe.bench.device import (  # noqa: F401
    CUDA_PEAK_NOTE,
    DEVICE_HELP,
    check_device,
    cuda_peak_mib,
    cuda_peak_start,
    cuda_timed_steps,
    gpu_line,
    is_cuda,
    sync,
)
