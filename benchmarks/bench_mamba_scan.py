"""medmoe's chunked selective scan vs mambapy's parallel scan (pscan): forward+backward time and peak memory.

The issue's acceptance case: L = 32,768 tokens, d_model = 96 (d_inner 192, d_state 16), batch 1, fp32, CPU.
``scan`` cases time the selective scan alone (``exp(dt A)``, inputs, scan, ``<C, h>`` and ``D u``, the same
maths in both); ``block`` cases time a whole Mamba block (medmoe ``Mamba`` vs ``mambapy`` ``MambaBlock``
with the same weights).

Every case runs in its own subprocess (fresh allocator): peak memory = the process's peak resident set
(VmHWM) during the first forward+backward minus its resident set just before (inputs already allocated),
the helper of ``medmoe.bench.mammoth_layers``. Time = median of ``--reps`` forward+backward passes after
that first one. The cases alternate (reference, medmoe, reference, ...) for ``--rounds`` rounds, so load
from other processes hits both alike; the table shows the median over rounds and the ratios.

With ``--device cuda`` (or ``cuda:N``) the inputs and both blocks (the same weights) live on the GPU, every
timed pass ends with ``torch.cuda.synchronize()``, and peak memory = ``torch.cuda.max_memory_allocated()``
during the timed passes minus the memory allocated just before them (after the warm-up pass, gradients
freed). ``--threads`` and ``--passive-omp`` apply to the CPU only.

    python benchmarks/bench_mamba_scan.py                        # L = 32768, d_model = 96, scan + block
    python benchmarks/bench_mamba_scan.py --lengths 4096 --reps 2 --rounds 1 --what scan   # quick
    python benchmarks/bench_mamba_scan.py --device cuda --lengths 32768 131072 --reps 5   # on the GPU
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

from _timing import CUDA_PEAK_NOTE, DEVICE_HELP, check_device, cuda_timed_steps, gpu_line, is_cuda

IMPLS = ("mambapy", "medmoe")


def run_case(
    impl: str, what: str, length: int, d_model: int, reps: int, threads: int, chunk: int, device: str = "cpu"
) -> dict:
    """Runs inside the subprocess."""
    import torch
    import torch.nn.functional as F

    from medmoe.bench.mammoth_layers import _rss_kib

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    d_inner, n = 2 * d_model, 16
    if what == "scan":
        u = torch.randn(1, length, d_inner)
        dt = F.softplus(torch.randn(1, length, d_inner) - 4.0)
        A = -torch.arange(1, n + 1.0).repeat(d_inner, 1)
        B, C, D = torch.randn(1, length, n), torch.randn(1, length, n), torch.ones(d_inner)
        inputs = [t.to(device).requires_grad_() for t in (u, dt, A, B, C, D)]
        if impl == "mambapy":
            from mambapy.mamba import MambaBlock

            def fn():  # MambaBlock.selective_scan does not use self
                return MambaBlock.selective_scan(None, *inputs)
        else:
            from medmoe.nn import selective_scan

            def fn():
                return selective_scan(*inputs, chunk_size=chunk)
    else:
        from mambapy.mamba import MambaBlock, MambaConfig

        ref = MambaBlock(MambaConfig(d_model=d_model, n_layers=1))
        if impl == "mambapy":
            module = ref
        else:
            from medmoe.nn import Mamba

            module = Mamba.from_reference(ref, chunk_size=chunk)
        module = module.to(device)
        inputs = [torch.randn(1, length, d_model).to(device).requires_grad_()]

        def fn():
            return module(*inputs)

    def step() -> None:
        for t in inputs:
            t.grad = None
        fn().square().mean().backward()

    if is_cuda(device):

        def zero_grad() -> None:
            for t in inputs:
                t.grad = None
            if what == "block":
                module.zero_grad(set_to_none=True)

        _, times, peak_mib = cuda_timed_steps(step, zero_grad, reps, device)
        return {"seconds": statistics.median(times) if times else float("nan"), "peak_mib": peak_mib}

    before = _rss_kib("VmRSS")
    t0 = time.perf_counter()
    step()  # warm-up, also the memory measurement
    first = time.perf_counter() - t0
    peak = _rss_kib("VmHWM") - before
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times) if times else first, "peak_mib": max(peak, 0) / 1024}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[32_768])
    parser.add_argument("--d-model", type=int, default=96)
    parser.add_argument("--what", nargs="+", choices=("scan", "block"), default=["scan", "block"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (cpu only)")
    parser.add_argument("--device", default="cpu", help=DEVICE_HELP)
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument(
        "--passive-omp",
        action="store_true",
        help="run every case with OMP_WAIT_POLICY=PASSIVE (idle OpenMP workers sleep instead of "
        "spinning; much faster for both on a machine shared with other jobs)",
    )
    parser.add_argument("--case", nargs=3, metavar=("IMPL", "WHAT", "L"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.case:
        impl, what, length = args.case
        print(
            json.dumps(
                run_case(impl, what, int(length), args.d_model, args.reps, args.threads, args.chunk_size,
                         args.device)
            )
        )
        return

    cuda = is_cuda(check_device(parser, args.device))
    import torch

    if cuda:
        print(
            f"machine: {gpu_line(args.device)}, fp32, batch 1, d_model {args.d_model} "
            f"(d_inner {2 * args.d_model}, d_state 16), medmoe chunk_size {args.chunk_size}, "
            f"{args.rounds} rounds x {args.reps} synchronised reps; peak memory: {CUDA_PEAK_NOTE}"
        )
    else:
        omp = "PASSIVE" if args.passive_omp else os.environ.get("OMP_WAIT_POLICY", "unset")
        print(
            f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}, {args.threads} threads, fp32, batch 1, d_model {args.d_model} "
            f"(d_inner {2 * args.d_model}, d_state 16), medmoe chunk_size {args.chunk_size}, "
            f"{args.rounds} rounds x {args.reps} reps, OMP_WAIT_POLICY={omp}"
        )
    env = dict(os.environ, **({"OMP_WAIT_POLICY": "PASSIVE"} if args.passive_omp else {}))
    results: dict[tuple[str, str, int], list[dict]] = {}
    failures: dict[tuple[str, str, int], str] = {}
    for length in args.lengths:
        for what in args.what:
            for _ in range(args.rounds):
                for impl in IMPLS:
                    key = (impl, what, length)
                    proc = subprocess.run(
                        [
                            sys.executable,
                            os.path.abspath(__file__),
                            "--case",
                            impl,
                            what,
                            str(length),
                            "--d-model",
                            str(args.d_model),
                            "--reps",
                            str(args.reps),
                            "--threads",
                            str(args.threads),
                            "--chunk-size",
                            str(args.chunk_size),
                            "--device",
                            args.device,
                        ],
                        capture_output=True,
                        text=True,
                        env=env,
                        check=False,
                    )
                    if proc.returncode != 0:
                        failures[key] = "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:80]
                        print(f"  {impl:8s} {what:5s} L={length}: {failures[key]}", file=sys.stderr)
                        continue
                    r = json.loads(proc.stdout.strip().splitlines()[-1])
                    results.setdefault(key, []).append(r)
                    print(f"  {impl:8s} {what:5s} L={length}: {r}", file=sys.stderr)

    def med(key: tuple[str, str, int], field: str) -> float | None:
        rs = results.get(key)
        return statistics.median(r[field] for r in rs) if rs else None

    print()
    print(
        "| case | L | mambapy s | medmoe s | speed-up (mambapy/medmoe) | mambapy peak MiB | medmoe peak MiB "
        "| memory ratio (medmoe/mambapy) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for length in args.lengths:
        for what in args.what:
            ts = [med((impl, what, length), "seconds") for impl in IMPLS]
            ms = [med((impl, what, length), "peak_mib") for impl in IMPLS]
            fmt = lambda v, f: "n/a" if v is None else f.format(v)
            speed = f"{ts[0] / ts[1]:.2f}x" if None not in ts and ts[1] > 0 else "n/a"
            mem = f"{ms[1] / ms[0]:.3f}" if None not in ms and ms[0] > 0 else "n/a"
            print(
                f"| {what} | {length:,} | {fmt(ts[0], '{:.3f}')} | {fmt(ts[1], '{:.3f}')} | {speed} "
                f"| {fmt(ms[0], '{:.0f}')} | {fmt(ms[1], '{:.0f}')} | {mem} |"
            )


if __name__ == "__main__":
    main()
