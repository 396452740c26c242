"""Training throughput on UNI-sized slides read from TRIDENT ``.h5`` files, and the share of data waiting.

Writes ``--slides`` synthetic TRIDENT-style slides (``features`` float32 ``(n, 1024)`` with ``n`` drawn in
``--patches`` +- 10 %, ``coords``; about 40 MB per slide at 10k patches) into a folder, then trains
``--model`` (default ABMIL with the Mammoth patch embedding) with :func:`medmoe.engine.train_one_fold`, the
code ``medmoe mil train`` runs, for ``--epochs`` epochs, once per ``--workers`` setting, all in one run.

Per setting it reports, from the trainer's own ``metrics.csv`` columns:

* **slides/s** = slides / ``train_seconds`` (the training pass of an epoch: read, collate, forward,
  backward, optimiser step; validation excluded);
* **data wait** = ``data_wait_seconds / train_seconds``: the share of the pass the training loop spent
  blocked on the DataLoader (reading the ``.h5``, collating, moving to the device). Target: <= 10 %.

The first epoch reads the files cold only if the OS page cache was dropped; both the first and the
best later epoch are printed. A separate line times a plain sequential read of every slide (the cost
the loader has to hide).

    python benchmarks/bench_mil_throughput.py                       # 16 slides x 10k patches, workers 0 1 2
    python benchmarks/bench_mil_throughput.py --slides 32 --workers 0 2 --epochs 3
    python benchmarks/bench_mil_throughput.py --model abmil.base    # linear patch embedding
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def write_slides(root: Path, n_slides: int, n_patches: int, dim: int, seed: int = 0) -> None:
    """``root/features/slide_XXX.h5`` and ``root/labels.csv`` (balanced binary labels)."""
    from medmoe.data import write_trident_h5

    rng = np.random.default_rng(seed)
    fdir = root / "features"
    fdir.mkdir(parents=True, exist_ok=True)
    rows = ["slide_id,label"]
    for i in range(n_slides):
        n = int(rng.integers(int(n_patches * 0.9), int(n_patches * 1.1) + 1))
        label = i % 2
        feats = rng.standard_normal((n, dim), dtype=np.float32)
        feats[: n // 10, :8] += 1.5 * (1 if label else -1)
        side = int(np.ceil(np.sqrt(n)))
        coords = np.stack(np.divmod(np.arange(n), side), axis=1)[:, ::-1] * 256
        write_trident_h5(fdir / f"slide_{i:03d}.h5", feats, coords.astype(np.int64), patch_size_level0=256)
        rows.append(f"slide_{i:03d},{label}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")


def time_plain_read(dataset) -> float:
    t0 = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slides", type=int, default=16)
    parser.add_argument("--patches", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=1024, help="feature dim (UNI: 1024)")
    parser.add_argument("--model", default="abmil.base_mammoth")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--folder", default=None, help="reuse/keep the generated slides here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from medmoe.data import FeatureFolderBags
    from medmoe.engine import TrainConfig, train_one_fold

    tmp = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="medmoe_tput_"))
    if not (tmp / "labels.csv").exists():
        t0 = time.perf_counter()
        write_slides(tmp, args.slides, args.patches, args.dim)
        print(f"wrote {args.slides} slides to {tmp} in {time.perf_counter() - t0:.1f} s")
    dataset = FeatureFolderBags(tmp / "features", tmp / "labels.csv")
    size_mb = sum(p.stat().st_size for p in (tmp / "features").glob("*.h5")) / 2**20
    read_s = time_plain_read(dataset)
    n = len(dataset)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {args.threads} threads; {n} slides, {size_mb:.0f} MiB of .h5"
    )
    print(f"plain sequential read of every slide: {read_s:.2f} s ({n / read_s:.1f} slides/s)\n")

    rows = []
    for workers in args.workers:
        out = tmp / f"run_w{workers}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = TrainConfig(
            epochs=args.epochs, min_epochs=args.epochs, patience=None, num_workers=workers, progress=False
        )
        train_one_fold(args.model, dataset, None, None, cfg, out)
        with open(out / "metrics.csv") as fh:
            hist = list(csv.DictReader(fh))
        for r in hist:
            r["slides_per_s"] = n / float(r["train_seconds"])
            r["wait_share"] = float(r["data_wait_seconds"]) / float(r["train_seconds"])
        later = max(hist[1:], key=lambda r: r["slides_per_s"]) if len(hist) > 1 else hist[0]
        rows.append((workers, hist[0], later))

    print("| model | workers | epoch | slides/s | data wait share (target <= 10 %) |")
    print("|---|---|---|---|---|")
    for workers, first, later in rows:
        print(f"| {args.model} | {workers} | first | {first['slides_per_s']:.2f} | {100 * first['wait_share']:.1f} % |")
        if later is not first:
            print(
                f"| {args.model} | {workers} | best later | {later['slides_per_s']:.2f} | "
                f"{100 * later['wait_share']:.1f} % |"
            )
    if not args.folder:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
