"""Wall time of a small cross-validation grid with ``jobs=1`` against ``jobs=N`` worker processes, side by side.

Runs :func:`medmoe.engine.compare` (the code behind ``medmoe mil compare``) on a real MIL benchmark, once per
``--jobs`` setting, each into a fresh folder, and prints the wall time, runs per minute and the speed-up
over the first setting. It also checks that every setting produced the same table (the runs are seeded
per fold; the thread count per run changes only float rounding, reported as the largest difference).

    python benchmarks/bench_grid_jobs.py                           # musk1, abmil + meanmil, k=5, jobs 1 2
    python benchmarks/bench_grid_jobs.py --dataset ucsb_breast --models abmil --jobs 1 2 4 --k 10
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="musk1")
    parser.add_argument("--models", nargs="+", default=["abmil", "meanmil"])
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    from medmoe.data import load_mil_benchmark
    from medmoe.engine import TrainConfig, compare

    data = {args.dataset: load_mil_benchmark(args.dataset)}
    cfg = TrainConfig(epochs=args.epochs, lr=1e-4, patience=5, min_epochs=min(args.epochs, 5),
                      standardize_features=True, progress=False, accelerator="cpu")
    runs = len(args.models) * 2 * args.k
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.dataset}: {', '.join(args.models)} x linear/mammoth x "
          f"{args.k} folds = {runs} runs")
    rows, tables = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for jobs in args.jobs:
            start = time.perf_counter()
            result = compare(args.models, data, k=args.k, seeds=[0], cfg=cfg, out_dir=Path(tmp) / f"jobs{jobs}",
                             jobs=jobs)
            seconds = time.perf_counter() - start
            rows.append((jobs, seconds))
            tables.append({(r["model"], r["patch_embed"]): r["summary"]["auroc"][0] for r in result.rows})
    base = rows[0][1]
    print(f"| jobs | wall (s) | runs / min | speed-up vs jobs={rows[0][0]} |")
    print("|---|---|---|---|")
    for jobs, seconds in rows:
        print(f"| {jobs} | {seconds:.1f} | {runs / seconds * 60:.1f} | {base / seconds:.2f}x |")
    worst = max(abs(t[key] - tables[0][key]) for t in tables for key in t)
    print(f"largest difference of a mean test AUROC between settings: {worst:.2e}")


if __name__ == "__main__":
    main()
