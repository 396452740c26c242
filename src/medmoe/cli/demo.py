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

DEMO_MODELS = ["abmil", "meanmil.base_relu"]  # MeanMIL with the ReLU embedding, as the published demo table
DEMO_DATASETS = ["musk1", "ucsb_breast"]
#: The demo table's columns: ranking (AUROC), then decisions at 0.5 and at the validation-chosen threshold.
DEMO_COLUMNS = ["auroc", "balanced_accuracy", "balanced_accuracy_tuned", "f1", "f1_tuned", "threshold"]


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
    from .mil import run_compare

    datasets = DEMO_DATASETS[:1] if quick else DEMO_DATASETS
    k, epochs = (3, 3) if quick else (5, epochs)
    typer.echo(f"medmoe demo: {DEMO_MODELS} x [linear, mammoth] x {datasets}, {k}-fold CV, {epochs} epochs; "
               "decision thresholds chosen on each validation fold (*_tuned columns)")
    try:
        run_compare(DEMO_MODELS, datasets, ["linear", "mammoth"], k=k, seeds=[0], epochs=epochs, out=out,
                    metric="auroc", columns=DEMO_COLUMNS, overwrite=True)  # the demo's own folder: a second demo replaces the first
    except (ValueError, RuntimeError) as err:
        from .common import fail

        fail(err)  # one line for bad input; an internal error says so
