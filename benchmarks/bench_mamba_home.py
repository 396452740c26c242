"""Mamba-HoME (paper configuration) vs MONAI SwinUNETR (feature_size 48), measured side by side.

Two workloads per model, each in a fresh subprocess (clean peak-memory numbers):

* ``train``: forward + backward on a ``patch^3`` batch of 1 (paper: 96^3);
* ``infer``: Gaussian-blended sliding-window inference (overlap 0.5, ROI ``roi^3``) on a ``volume^3``
  volume (paper: 128^3 volume, 96^3 ROI).

Reports the median time over ``--reps`` runs after one warm-up, peak memory (CUDA: max allocated;
CPU: peak resident set size of the worker minus its size after building the model), and the
Mamba-HoME / SwinUNETR ratios.

    python benchmarks/bench_mamba_home.py                 # reduced sizes (CPU default): 64^3 / 96^3, ROI 64
    python benchmarks/bench_mamba_home.py --full          # 96^3 fwd+bwd, 128^3 volume with a 96^3 ROI
    python benchmarks/bench_mamba_home.py --models mamba_home.tiny unet.small --patch 64
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _worker(name: str, task: str, patch: int, volume: int, roi: int, reps: int, device: str, classes: int,
            queue: mp.Queue) -> None:
    import torch

    from medmoe.bench.device import is_cuda, sync
    from medmoe.engine.seg.inference import sliding_window_logits
    from medmoe.models.seg import create_seg_model

    try:
        torch.manual_seed(0)
        model = create_seg_model(name, in_channels=1, num_classes=classes).to(device)
        params = sum(p.numel() for p in model.parameters())
        cuda = is_cuda(device)

        if task == "train":
            model.train()
            x = torch.randn(1, 1, patch, patch, patch, device=device)

            def run() -> None:
                model.zero_grad(set_to_none=True)
                model(x).float().square().mean().backward()
        else:
            model.eval()
            x = torch.randn(1, 1, volume, volume, volume, device=device)

            def run() -> None:
                sliding_window_logits(model, x, (roi, roi, roi), overlap=0.5, mode="gaussian", sw_batch_size=1)

        base = _rss_mb()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        run()  # warm-up
        sync(device)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            run()
            sync(device)
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _rss_mb() - base
        queue.put({"model": name, "task": task, "params_M": params / 1e6, "seconds": statistics.median(times),
                   "peak_MB": peak})
    except Exception as err:  # noqa: BLE001 (report any failure to the parent, do not hang it)
        queue.put({"model": name, "task": task, "error": f"{type(err).__name__}: {err}"})


def measure(name: str, task: str, args: argparse.Namespace) -> dict:
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(name, task, args.patch, args.volume, args.roi, args.reps, args.device,
                                             args.classes, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main(argv: list[str] | None = None) -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["mamba_home.paper", "swinunetr.base"])
    p.add_argument("--full", action="store_true", help="paper sizes: 96^3 patch, 128^3 volume, 96^3 ROI")
    p.add_argument("--patch", type=int, default=None, help="fwd+bwd patch side (default 64 CPU / 96 --full)")
    p.add_argument("--volume", type=int, default=None, help="inference volume side (default 96 / 128)")
    p.add_argument("--roi", type=int, default=None, help="sliding-window ROI side (default 64 / 96)")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--classes", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tasks", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    args = p.parse_args(argv)
    full = args.full
    args.patch = args.patch or (96 if full else 64)
    args.volume = args.volume or (128 if full else 96)
    args.roi = args.roi or (96 if full else 64)
    print(f"device {args.device}; fwd+bwd on {args.patch}^3, sliding window on {args.volume}^3 with ROI "
          f"{args.roi}^3 (overlap 0.5, gaussian); median of {args.reps} after warm-up; {args.classes} classes")
    rows = []
    for task in args.tasks:
        for name in args.models:
            r = measure(name, task, args)
            rows.append(r)
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
    print()
    print("| task | model | params (M) | time (s) | peak memory (MB) |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['task']} | {r['model']} | - | error: {r['error']} | - |")
        else:
            print(f"| {r['task']} | {r['model']} | {r['params_M']:.1f} | {r['seconds']:.3f} | {r['peak_MB']:.0f} |")
    ok = {(r["task"], r["model"]): r for r in rows if "error" not in r}
    if len(args.models) >= 2:
        a, b = args.models[:2]
        for task in args.tasks:
            if (task, a) in ok and (task, b) in ok:
                ra, rb = ok[(task, a)], ok[(task, b)]
                print(f"{task}: {a} / {b}: time x{ra['seconds'] / rb['seconds']:.2f}, "
                      f"peak memory x{ra['peak_MB'] / max(rb['peak_MB'], 1e-6):.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
