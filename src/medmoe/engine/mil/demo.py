"""The main job on its embedded default (``medmoe demo``): linear vs Mammoth patch embedding for ABMIL and
MeanMIL on two real MIL benchmarks (Musk1 and the UCSB breast-cancer histopathology set, fetched on first use),
5-fold cross-validation, then a markdown table and a bar plot. A few minutes on 2 CPU cores.

Every fold picks its decision threshold on its validation fold (maximal balanced accuracy; see
:mod:`medmoe.engine.mil.thresholds`); the table shows the test balanced accuracy and F1 both at the fixed 0.5
and at that threshold (``*_tuned``), so a model that ranks the bags well but calls every bag one class at
0.5 is told apart from one that ranks them badly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

__all__ = ["DEMO_COLUMNS", "DEMO_DATASETS", "DEMO_MODELS", "run_demo"]

DEMO_MODELS = ["abmil", "meanmil.base_relu"]  # MeanMIL with the ReLU embedding, as the published demo table
DEMO_DATASETS = ["musk1", "ucsb_breast"]
#: The demo table's columns: ranking (AUROC), then decisions at 0.5 and at the validation-chosen threshold.
DEMO_COLUMNS = ["auroc", "balanced_accuracy", "balanced_accuracy_tuned", "f1", "f1_tuned", "threshold"]


def run_demo(out: str | Path = Path("runs/demo"), epochs: int = 20, quick: bool = False,
             echo: Callable[[str], None] | None = None) -> Path:
    """Run the demo grid (:data:`DEMO_MODELS` x linear/Mammoth x :data:`DEMO_DATASETS`) into ``out``, replacing
    an earlier demo there.

    Args:
        out: the demo's folder (table, plot, checkpoints).
        epochs: epochs per fold (MIL-Lab recipe: 20, early stopping).
        quick: Musk1 only, 3 folds, 3 epochs (about a minute).
        echo: called with the protocol line, the table and the paths of the table and the plot.

    Returns:
        The plot.
    """
    from .compare_grid import compare_grid

    say = echo or (lambda _line: None)
    datasets = DEMO_DATASETS[:1] if quick else DEMO_DATASETS
    k, epochs = (3, 3) if quick else (5, epochs)
    say(f"medmoe demo: {DEMO_MODELS} x [linear, mammoth] x {datasets}, {k}-fold CV, {epochs} epochs; "
        "decision thresholds chosen on each validation fold (*_tuned columns)")
    out = Path(out)
    table, png = compare_grid(DEMO_MODELS, datasets, ["linear", "mammoth"], k=k, seeds=[0], epochs=epochs, out=out,
                              metric="auroc", columns=DEMO_COLUMNS, overwrite=True)  # a second demo replaces the first
    say(table)
    say(f"table: {out / 'comparison.md'}\nplot:  {png}")
    return png
