"""Benchmark: ``medmoe.nn.SoftMoE`` vs ``soft_moe_pytorch.SoftMoE`` (0.1.9), side by side in one run.

Both layers get the same configuration (``dim``, ``experts``, ``s`` slots per expert, GELU or GEGLU
experts, RMSNorm; fp32, batch 1, input ``x: (1, n, dim)`` with ``requires_grad=True``) and the same
weights (medmoe loads the reference's state dict). medmoe is measured with each requested ``backend``
(``auto`` = the default, ``sdpa``, ``dense``; see ``medmoe.nn.SoftMoE``).

* **Time**: one subprocess per case holds all layers and *alternates* them rep by rep (``warmup``
  untimed passes each, then ``reps`` timed forward+backward passes each, ``out.sum().backward()``), so
  all see the same machine load; the table reports the **median** and, in parentheses, the best time.
  ``--forward`` times forward passes alone (under ``torch.no_grad()``, inference) instead.
* **Peak memory**: one fresh subprocess per case and implementation runs one forward+backward (or forward) and
  reports the growth of the process's peak resident set size
  (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) over its resident size right before the pass (from
  ``/proc/self/statm``). Everything the pass allocates counts: saved activations, the reference's
  ``(b, n, e, s)`` logits and softmaxes, kernel workspaces, gradients.

Children run with ``OMP_WAIT_POLICY=PASSIVE`` unless the variable is already set: on a shared machine
with more runnable processes than cores, spinning OpenMP threads starve each other and forward+backward
times inflate 3-10x by amounts that depend on how many parallel regions an implementation launches
(measured: the reference 1.5 s instead of 0.15 s at n = 4096), i.e. the timings then measure the
scheduler, not the code. Set ``OMP_WAIT_POLICY=ACTIVE`` to measure with spinning threads.

``--slots`` may contain ``auto``: ``n // experts`` slots per expert (the reference's ``seq_len=n``
setting, one slot per token), where the reference's ``(n, e * s)`` tensors are quadratic in ``n``.

Examples::

    python benchmarks/bench_soft_moe.py                       # n = 4096, 16384; 16 and 64 slots/expert
    python benchmarks/bench_soft_moe.py --ns 4096 --slots auto
    python benchmarks/bench_soft_moe.py --ns 4096 --slots auto --forward   # forward only (no_grad)
    python benchmarks/bench_soft_moe.py --quick                # small smoke run (< 1 min)

Prints a markdown table with the ratios medmoe / reference (time, memory) and the speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REF = "reference"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _build(args: argparse.Namespace, impls: list[str]) -> dict:
    """Layers with identical weights: ``reference`` and ``medmoe:<backend>`` (loads the reference's weights)."""
    import torch
    from soft_moe_pytorch import SoftMoE as Ref

    from medmoe.nn.soft_moe import SoftMoE

    torch.manual_seed(0)
    ref = Ref(args.dim, num_experts=args.experts, num_slots=args.slots_per_expert, geglu=args.geglu)
    layers = {}
    for impl in impls:
        if impl == REF:
            layers[impl] = ref
        else:
            layers[impl] = SoftMoE.from_reference(ref, backend=impl.split(":", 1)[1])
    return layers


def _child(args: argparse.Namespace) -> None:
    import resource

    import torch

    torch.set_num_threads(args.threads)
    impls = args.impl.split(",")
    layers = _build(args, impls)
    n = args.n
    x = torch.randn(1, n, args.dim, requires_grad=True)
    mask = None
    if args.mask:
        mask = torch.ones(1, n, dtype=torch.bool)
        mask[:, n - n // 8 :] = False

    def step(layer: torch.nn.Module) -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        if args.forward:
            with torch.no_grad():
                layer(x, mask=mask) if mask is not None else layer(x)
            return
        out = layer(x, mask=mask) if mask is not None else layer(x)
        out.sum().backward()

    if args.memory:  # one pass in a fresh process
        (impl,) = impls
        base = _rss_bytes()
        step(layers[impl])
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        print(json.dumps({"peak_growth": max(0, peak - base)}))
        return
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    for rep in range(args.warmup + args.reps):
        for impl in impls if rep % 2 == 0 else impls[::-1]:
            t0 = time.perf_counter()
            step(layers[impl])
            if rep >= args.warmup:
                times[impl].append(time.perf_counter() - t0)
    print(json.dumps({"times": times}))


def _run_child(impls: list[str], n: int, s: int, args: argparse.Namespace, memory: bool) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", "--impl", ",".join(impls)]
    cmd += ["--n", str(n), "--slots-per-expert", str(s), "--dim", str(args.dim)]
    cmd += ["--experts", str(args.experts), "--threads", str(args.threads)]
    cmd += ["--reps", str(args.reps), "--warmup", str(args.warmup)]
    cmd += (
        ["--geglu"] * args.geglu
        + ["--mask"] * args.mask
        + ["--memory"] * memory
        + ["--forward"] * args.forward
    )
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.0f}"


def _mb(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.0f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small run: n = 1024, 4096; 16 slots; 3 reps")
    p.add_argument("--ns", default="4096,16384", help="comma-separated sequence lengths n")
    p.add_argument(
        "--slots", default="16,64", help="comma-separated slots per expert; 'auto' = n // experts (seq_len=n)"
    )
    p.add_argument(
        "--backends", default="auto,sdpa", help="comma-separated medmoe backends: auto, sdpa, dense"
    )
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--geglu", action="store_true", help="GEGLU experts (default: GELU MLP experts)")
    p.add_argument("--mask", action="store_true", help="pass a padding mask (last 1/8 of the tokens padded)")
    p.add_argument(
        "--forward",
        action="store_true",
        help="time forward passes alone (no_grad) instead of forward+backward",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    # internal: one measurement in a child process
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--slots-per-expert", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        _child(args)
        return
    if args.quick:
        args.ns, args.slots, args.reps = "1024,4096", "16", min(args.reps, 3)

    import torch

    ns = [int(v) for v in args.ns.split(",")]
    slot_specs = [v.strip() for v in args.slots.split(",")]
    meds = [f"medmoe:{b.strip()}" for b in args.backends.split(",")]
    mode = "forward (no_grad)" if args.forward else "forward+backward"
    print(f"# Soft MoE {mode}: soft_moe_pytorch.SoftMoE (reference) vs medmoe.nn.SoftMoE\n")
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), fp32, batch 1, dim {args.dim}, "
        f"{args.experts} experts, {'GEGLU' if args.geglu else 'GELU'} experts, RMSNorm, "
        f"{'padding mask' if args.mask else 'no mask'}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}. Time: median (best) of {args.reps} {mode} "
        f"reps after {args.warmup} warm-up, implementations alternating in one process. Peak memory: growth "
        f"of peak RSS during one {mode} pass in a fresh process; load average before the run: "
        f"{os.getloadavg()[0]:.1f}.\n"
    )
    print(
        "| n | slots (e x s) | medmoe backend | reference ms | medmoe ms | time ratio medmoe/ref | "
        "speed-up | reference peak MB | medmoe peak MB | memory ratio medmoe/ref |"
    )
    print("|---:|---:|:---|---:|---:|---:|---:|---:|---:|---:|")
    for n in ns:
        for spec in slot_specs:
            s = n // args.experts if spec == "auto" else int(spec)
            label = f"{args.experts} x {s}" + (" (auto)" if spec == "auto" else "")
            timing = _run_child([REF, *meds], n, s, args, memory=False)
            peaks = {impl: _run_child([impl], n, s, args, memory=True) for impl in [REF, *meds]}
            errors = [r["error"] for r in (timing, *peaks.values()) if "error" in r]
            if errors:
                print(f"| {n} | {label} | | error: {errors[0]} | | | | | | |", flush=True)
                continue
            times = timing["times"]
            t_ref, b_ref = statistics.median(times[REF]), min(times[REF])
            m_ref = peaks[REF]["peak_growth"]
            for med in meds:
                t_med, b_med = statistics.median(times[med]), min(times[med])
                m_med = peaks[med]["peak_growth"]
                mem_ratio = f"{m_med / m_ref:.2f}" if m_ref > 0 else "n/a"
                print(
                    f"| {n} | {label} | {med.split(':')[1]} | {_ms(t_ref)} ({_ms(b_ref)}) | "
                    f"{_ms(t_med)} ({_ms(b_med)}) | {t_med / t_ref:.2f} | {t_ref / t_med:.2f}x | "
                    f"{_mb(m_ref)} | {_mb(m_med)} | {mem_ratio} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
