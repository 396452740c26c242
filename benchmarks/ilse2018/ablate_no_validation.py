"""Ablation: train on all nine non-test folds (no validation fold, so no early stopping) for a fixed number
of epochs and keep the last epoch, against the ilse2018 protocol (eight training folds + one validation
fold for early stopping). Same test folds (repetition 0 of the protocol's splits).

    OMP_NUM_THREADS=1 python benchmarks/ilse2018/ablate_no_validation.py musk1 25 [RUN_ROOT]

writes benchmarks/results/ilse2018/ablate-<dataset>-no-val-<epochs>ep/ (summary.md, results.json,
test_predictions.csv, command.txt). 25 epochs is the mean best epoch the protocol's validation fold chose
on MUSK1 (benchmarks/results/ilse2018/musk1-gated); 100 is the protocol's epoch budget.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import yaml

from medmoe.cli.run_configs import resolve_run_config
from medmoe.data import load_mil_benchmark
from medmoe.engine import TrainConfig, run_cross_validation


def main() -> None:
    dataset, epochs = sys.argv[1], int(sys.argv[2])
    root = Path(sys.argv[3]) if len(sys.argv) > 3 else Path("runs/ilse2018")
    protocol = yaml.safe_load(resolve_run_config(Path("ilse2018")).read_text())
    cfg = TrainConfig(
        epochs=epochs, min_epochs=epochs, patience=None, optimizer=protocol["optimizer"], lr=protocol["lr"],
        min_lr=protocol["min-lr"], weight_decay=protocol["weight-decay"], grad_clip=protocol["grad-clip"] or None,
        batch_size=protocol["batch-size"], standardize_features=protocol["standardize"], progress=False,
    )
    name = f"ablate-{dataset}-no-val-{epochs}ep"
    out = root / name
    shutil.rmtree(out, ignore_errors=True)
    result = run_cross_validation(protocol["model"], load_mil_benchmark(dataset), k=protocol["k"], seeds=[0],
                                  cfg=cfg, out_dir=out, val_folds=0)
    dest = Path(__file__).parents[1] / "results" / "ilse2018" / name
    dest.mkdir(parents=True, exist_ok=True)
    for f in ("summary.md", "results.json", "test_predictions.csv"):
        shutil.copy(out / f, dest / f)
    (dest / "command.txt").write_text(f"python benchmarks/ilse2018/ablate_no_validation.py {dataset} {epochs}\n")
    print(result.to_markdown())


if __name__ == "__main__":
    main()
