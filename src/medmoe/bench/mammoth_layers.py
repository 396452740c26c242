"""Mammoth vs the reference ``mammoth-moe`` vs ``nn.Linear``: forward+backward time and peak memory.

Every case runs in its own subprocess (fresh allocator, so peak memory is that case's alone):
peak memory = the process's peak resident set (VmHWM) during one forward+backward minus its resident
set just before it (model and input already allocated). Time = median of ``--reps`` forward+backward
passes after one warm-up. All cases of one run share the machine, threads and dtype, so the printed
ratios compare like with like.

With ``--device cuda`` (or ``cuda:N``) the layers and the input live on the GPU, every timed pass ends
with ``torch.cuda.synchronize()``, and peak memory = ``torch.cuda.max_memory_allocated()`` during the
timed passes minus the memory allocated just before them (after the warm-up, gradients freed; so the
model and the input are not counted, one-off allocations such as cuBLAS workspaces neither).
``--threads`` applies to the CPU only.

    medmoe bench mammoth                                # N = 1k, 10k, 50k, 200k (UNI: 1024 -> 512)
    python benchmarks/bench_mammoth.py --sizes 1000 --reps 2    # the same script, quick
    python benchmarks/bench_mammoth.py --device cuda --sizes 10000 50000 200000    # on the GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

from .device import check_device, cuda_timed_steps, is_cuda, validate_device

LAYERS = ("reference", "medmoe", "linear")


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def run_case(layer: str, n: int, reps: int, threads: int, device: str = "cpu") -> dict:
    """Runs inside the subprocess: build the layer, time forward+backward, measure peak memory."""
    import torch

    cuda = is_cuda(device)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = {"num_experts": 30, "num_slots": 10, "num_heads": 16, "slot_dim": 256, "keep_slots": True, "dropout": 0.0}
    if layer == "reference":
        import contextlib
        import io

        import mammoth

        with contextlib.redirect_stdout(io.StringIO()):  # the reference prints its auto rank
            module = mammoth.Mammoth(1024, 512, **cfg)
    elif layer == "medmoe":
        from medmoe.nn import Mammoth

        module = Mammoth(1024, 512, **cfg)
    else:
        module = torch.nn.Linear(1024, 512)
    module = module.to(device)
    feats = torch.randn(1, n, 1024, device=device)

    def step() -> None:
        module.zero_grad(set_to_none=True)
        out = module(feats)
        out.float().square().mean().backward()

    if cuda:
        _, times, peak_mib = cuda_timed_steps(step, lambda: module.zero_grad(set_to_none=True), reps, device)
        return {"seconds": statistics.median(times), "peak_mib": peak_mib}

    before = _rss_kib("VmRSS")
    step()  # warm-up, also the memory measurement
    peak = _rss_kib("VmHWM") - before
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times), "peak_mib": max(peak, 0) / 1024}


def reference_fits(n: int, budget_gib: float) -> bool:
    """The reference materialises (n, 30*16*10) fp32 logits several times (logits, two softmaxes and
    their gradients): about 6 copies."""
    return 6 * n * 4800 * 4 / 2**30 <= budget_gib


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 50_000, 200_000])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (cpu only)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--memory-budget-gib", type=float, default=None,
                        help="skip the reference where its estimated peak exceeds this "
                        "(default 16 on cpu, 90%% of the GPU's memory on cuda)")
    parser.add_argument("--case", nargs=2, metavar=("LAYER", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.case:
        print(json.dumps(run_case(args.case[0], int(args.case[1]), args.reps, args.threads, args.device)))
        return

    check_device(parser, args.device)
    run_mammoth_benchmark(args.sizes, reps=args.reps, threads=args.threads, device=args.device,
                          memory_budget_gib=args.memory_budget_gib)


def run_mammoth_benchmark(
    sizes: Sequence[int] = (1000, 10_000, 50_000, 200_000),
    *,
    reps: int = 3,
    threads: int = 2,
    device: str = "cpu",
    memory_budget_gib: float | None = None,
) -> dict[tuple[str, int], dict | str]:
    """Time the three layers (:data:`LAYERS`) at every bag size, each case in its own subprocess, and print the
    machine line, one progress line per case (stderr) and the ratio table (Markdown).

    Args:
        sizes: patches per bag.
        reps: timed forward+backward passes per case (the median is reported).
        threads: torch threads (CPU only).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        memory_budget_gib: skip the reference where its estimated peak exceeds this (default 16 GiB on the CPU,
            90 % of the GPU's memory on CUDA).

    Returns:
        ``(layer, n) -> {"seconds", "peak_mib", ...}``, or a text saying why the case was skipped or failed.

    Raises:
        ValueError: a device this machine does not have (:func:`~medmoe.bench.device.validate_device`).
    """
    validate_device(device)
    import torch

    if is_cuda(device):
        dev = torch.device(device)
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        total_gib = torch.cuda.get_device_properties(index).total_memory / 2**30
        if memory_budget_gib is None:
            memory_budget_gib = round(0.9 * total_gib, 1)
        print(f"machine: {torch.cuda.get_device_name(index)} (cuda:{index}, {total_gib:.1f} GiB), "
              f"torch {torch.__version__}, CUDA {torch.version.cuda}, fp32, batch 1, input 1024 -> 512, "
              "30 experts x 10 slots x 16 heads, slot_dim 256, keep_slots; time: median of "
              f"{reps} synchronised passes after a warm-up; peak memory: "
              "torch.cuda.max_memory_allocated() during forward+backward minus the memory allocated "
              "just before it")
    else:
        if memory_budget_gib is None:
            memory_budget_gib = 16.0
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"torch {torch.__version__}, {threads} threads, fp32, batch 1, input 1024 -> 512, "
              "30 experts x 10 slots x 16 heads, slot_dim 256, keep_slots")
    results: dict[tuple[str, int], dict | str] = {}
    for n in sizes:
        for layer in LAYERS:
            if layer == "reference" and not reference_fits(n, memory_budget_gib):
                results[(layer, n)] = f"skipped (would need > {memory_budget_gib:.0f} GiB)"
                continue
            proc = subprocess.run(
                [sys.executable, "-m", "medmoe.bench.mammoth_layers", "--case", layer, str(n), "--reps", str(reps),
                 "--threads", str(threads), "--device", device],
                capture_output=True, text=True, check=False,
            )
            if proc.returncode != 0:
                results[(layer, n)] = "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:80]
            else:
                results[(layer, n)] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"  done {layer:9s} N={n}: {results[(layer, n)]}", file=sys.stderr)

    def cell(layer: str, n: int, key: str, fmt: str) -> str:
        r = results[(layer, n)]
        return fmt.format(r[key]) if isinstance(r, dict) else r

    def ratio(a: str, b: str, n: int, key: str) -> str:
        ra, rb = results[(a, n)], results[(b, n)]
        if isinstance(ra, dict) and isinstance(rb, dict) and rb[key] > 0:
            return f"{ra[key] / rb[key]:.3f}"
        return "n/a"

    print()
    print("| N | reference s | medmoe s | linear s | medmoe/reference time | medmoe/linear time "
          "| reference MiB | medmoe MiB | linear MiB | medmoe/reference memory |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        print(
            f"| {n:,} | {cell('reference', n, 'seconds', '{:.3f}')} | {cell('medmoe', n, 'seconds', '{:.3f}')} "
            f"| {cell('linear', n, 'seconds', '{:.3f}')} | {ratio('medmoe', 'reference', n, 'seconds')} "
            f"| {ratio('medmoe', 'linear', n, 'seconds')} | {cell('reference', n, 'peak_mib', '{:.0f}')} "
            f"| {cell('medmoe', n, 'peak_mib', '{:.0f}')} | {cell('linear', n, 'peak_mib', '{:.0f}')} "
            f"| {ratio('medmoe', 'reference', n, 'peak_mib')} |"
        )
    return results


if __name__ == "__main__":
    main()
