"""Run the main job on its embedded default: the Mammoth layer benchmark (medmoe vs the reference
mammoth-moe vs the nn.Linear it replaces) at 1k, 10k and 50k patches."""

from __future__ import annotations

import importlib.util

import typer


def demo(
    quick: bool = typer.Option(False, help="Only 1k and 10k patches (under a minute)."),
) -> None:
    from ..bench.mammoth_layers import main

    if importlib.util.find_spec("mammoth") is None:
        typer.echo("the reference package is missing: pip install 'medmoe[parity]' (the reference is skipped)")
    sizes = ["1000", "10000"] if quick else ["1000", "10000", "50000"]
    main(["--sizes", *sizes, "--reps", "2"])
