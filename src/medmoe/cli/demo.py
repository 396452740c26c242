"""The main job on its embedded default: linear vs Mammoth patch embedding for ABMIL and MeanMIL on two
real MIL benchmarks (Musk1 and the UCSB breast-cancer histopathology set, fetched on first use), 5-fold
cross-validation, then a markdown table and a bar plot. A few minutes on 2 CPU cores.

Every fold picks its decision threshold on its validation fold (maximal balanced accuracy; see
:mod:`medmoe.engine.mil.thresholds`); the table shows the test balanced accuracy and F1 both at the fixed 0.5
and at that threshold (``*_tuned``), so a model that ranks the bags well but calls every bag one class at
0.5 is told apart from one that ranks them badly.
"""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Output folder (table, plot, checkpoints)."),
    epochs: int = typer.Option(20, min=1, help="Epochs per fold (MIL-Lab recipe: 20, early stopping)."),
    quick: bool = typer.Option(False, help="Musk1 only, 3 folds, 3 epochs (about a minute)."),
    layers: bool = typer.Option(False, help="Instead: the Mammoth layer benchmark (vs mammoth-moe and nn.Linear)."),
) -> None:
    if layers:
        from ..bench.mammoth_layers import run_mammoth_benchmark

        run_mammoth_benchmark([1000, 10_000, 50_000], reps=2)
        return
    from ..engine.mil.demo import run_demo
    from .common import fail

    try:
        run_demo(out, epochs, quick, echo=typer.echo)
    except (ValueError, RuntimeError) as err:
        fail(err)  # one line for bad input; an internal error says so
