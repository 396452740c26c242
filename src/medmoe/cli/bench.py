"""Benchmarks: print side-by-side ratios measured in one run."""

from __future__ import annotations

import typer

app = typer.Typer(help=__doc__, no_args_is_help=True)


@app.command("mammoth")
def mammoth(
    sizes: list[int] = typer.Option([1000, 10_000, 50_000, 200_000], "--size", "-n",
                                    help="Patches per bag (repeat the option for several)."),
    reps: int = typer.Option(3, min=1, help="Timed repetitions per case (median reported)."),
    threads: int = typer.Option(2, min=1, help="torch threads (CPU)."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    memory_budget_gib: float | None = typer.Option(
        None, help="Skip the reference where it would need more (default 16 GiB on CPU, 90 % of a GPU's memory)."
    ),
) -> None:
    """Mammoth (medmoe) vs mammoth-moe vs nn.Linear(1024, 512): forward+backward time and peak memory."""
    import torch

    from ..bench.device import is_cuda
    from ..bench.mammoth_layers import run_mammoth_benchmark
    from .common import fail

    if is_cuda(device) and not torch.cuda.is_available():
        raise typer.BadParameter("CUDA is not available here (torch.cuda.is_available() is False)", param_hint="--device")
    try:
        run_mammoth_benchmark(sizes, reps=reps, threads=threads, device=device, memory_budget_gib=memory_budget_gib)
    except ValueError as err:
        fail(err)
