"""Forward+backward time and peak memory of every registered MIL model, linear vs Mammoth embedding.

Runs every model in ``medmoe.list_models()`` with the configs ``base`` (linear patch embedding) and
``base_mammoth`` (Mammoth), one training step per bag (``model.train()``, forward, ``out.total_loss``
of the cross-entropy, backward) on random UNI-sized bags: ``in_dim`` 1024, batch 1, fp32, 2 threads.
Aliases (another name for the same class and config, e.g. ``dftd`` = ``dtfd``) are run once.

Every case runs in its own subprocess, under ``--timeout`` seconds and an address-space limit
(``--mem-limit-gib``), so a model that runs out of memory or time is reported as ``OOM`` /
``timeout`` / ``error: ...`` in the table instead of stopping the script.

Measurements (per case):

* **time**: the fastest of ``--reps`` training steps after one warm-up step (the minimum is the
  statistic least disturbed by other processes on a shared machine).
* **peak memory** (``MiB``): the process's peak resident set during the warm-up step minus its resident
  set just before it (model, optimiser-free gradients excepted, and the input already allocated). The
  peak counter (``VmHWM``) is reset first through ``/proc/self/clear_refs``; where that is not
  possible, ``ru_maxrss`` is used (then the baseline is the peak so far, a lower bound).
* **saved** (``MiB``): bytes of the distinct tensors autograd saves for the backward in one forward,
  counted with ``torch.autograd.graph.saved_tensors_hooks`` (deterministic; independent of the
  allocator). Shown in the second table.

A model is marked **quadratic** when, with the linear embedding, its autograd-saved memory grows at
least like ``N^1.5`` between the smallest and the largest size, or its time does so over a size ratio
of at least 4 (time exponents over smaller ratios are too noisy), or when it fails (OOM/timeout) at the
larger size only. With Mammoth's ``keep_slots`` the aggregator sees a fixed number of slot tokens, so
every model is linear in N there. At ``--quick`` sizes fixed costs dominate and the exponents are
indicative only.

With ``--device cuda`` (or ``cuda:N``) the model and the bag live on the GPU and every timed step ends
with ``torch.cuda.synchronize()``. No address-space limit is set there (CUDA reserves a huge virtual
address space); ``--mem-limit-gib`` then caps the GPU memory instead
(``torch.cuda.set_per_process_memory_fraction``; default: the whole GPU), and running out of it is
reported as ``OOM``. **Peak memory** on CUDA is ``torch.cuda.max_memory_allocated()`` during the timed
steps (after the warm-up, gradients freed) minus the memory allocated just before them. ``--threads``
applies to the CPU only.

    python benchmarks/bench_mil_zoo.py --quick                   # N = 1k, 2k
    python benchmarks/bench_mil_zoo.py                           # N = 10k, 50k
    python benchmarks/bench_mil_zoo.py --models 'wikg*' 'dtfd*' --sizes 10000 50000 --timeout 900
    python benchmarks/bench_mil_zoo.py --device cuda --sizes 10000 50000 --timeout 300   # on the GPU
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from _timing import CUDA_PEAK_NOTE, DEVICE_HELP, check_device, cuda_timed_steps, gpu_line, is_cuda

CONFIGS = {"base": "linear", "base_mammoth": "mammoth"}
EMBEDS = ("linear", "mammoth")
IN_DIM = 1024


# --------------------------------------------------------------------------- child process
def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM); False where this is not supported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _proc_status_kib("VmHWM") is not None
    except OSError:
        return False


def _maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def run_case(name: str, n: int, reps: int, threads: int, seed: int, device: str = "cpu",
             mem_limit_gib: float | None = None) -> dict[str, Any]:
    """Inside the subprocess: build ``name``, time training steps on one bag of ``n`` instances."""
    import torch
    import torch.nn.functional as F

    import medmoe

    cuda = is_cuda(device)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    if cuda and mem_limit_gib is not None:
        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
        if mem_limit_gib * 2**30 < total:
            torch.cuda.set_per_process_memory_fraction(mem_limit_gib * 2**30 / total, torch.device(device))
    model = medmoe.create_model(name, num_classes=2, in_dim=IN_DIM).train().to(device)
    x = torch.randn(1, n, IN_DIM, device=device)
    label = torch.tensor([1], device=device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        out = model(x, label=label)
        out.total_loss(F.cross_entropy(out.logits, label)).backward()

    if cuda:
        warm, times, peak_mib = cuda_timed_steps(step, lambda: model.zero_grad(set_to_none=True), reps, device)
        method = "cuda.max_memory_allocated"
    else:
        use_hwm = _reset_peak()
        before = _proc_status_kib("VmRSS") if use_hwm else _maxrss_kib()
        t0 = time.perf_counter()
        step()  # warm-up; also the memory measurement
        warm = time.perf_counter() - t0
        peak = (_proc_status_kib("VmHWM") if use_hwm else _maxrss_kib()) or 0
        peak_mib = max(peak - (before or 0), 0) / 1024
        method = "VmHWM" if use_hwm else "ru_maxrss"
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)

    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):  # e.g. tensors without storage
            seen[id(t)] = t.numel() * t.element_size()
        return t

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x, label=label)
        loss = out.total_loss(F.cross_entropy(out.logits, label))
    del loss, out
    return {
        "seconds": min(times) if times else warm,
        "median_seconds": statistics.median(times) if times else warm,
        "peak_mib": peak_mib,
        "saved_mib": sum(seen.values()) / 2**20,
        "peak_method": method,
    }


# --------------------------------------------------------------------------- parent
def _mem_total_gib() -> float:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 16.0


def _limit_memory(gib: float):  # type: ignore[no-untyped-def]
    def apply() -> None:
        limit = int(gib * 2**30)
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ValueError, OSError):
            pass

    return apply


def _classify_failure(returncode: int, stderr: str) -> str:
    text = stderr.strip()
    lines = text.splitlines() or ["?"]
    oom_marks = ("can't allocate memory", "DefaultCPUAllocator", "MemoryError", "out of memory",
                 "Cannot allocate memory", "std::bad_alloc", "CUBLAS_STATUS_ALLOC_FAILED")
    if returncode in (-9, 137) or any(m in text for m in oom_marks):
        return "OOM"
    last = lines[-1].strip()
    return "error: " + (last[:70] + "..." if len(last) > 70 else last)


def run_in_subprocess(name: str, n: int, args: argparse.Namespace) -> dict[str, Any] | str:
    cmd = [sys.executable, os.path.abspath(__file__), "--case", name, str(n), "--reps", str(args.reps),
           "--threads", str(args.threads), "--seed", str(args.seed), "--device", args.device,
           "--mem-limit-gib", str(args.mem_limit_gib)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    # CUDA maps a huge virtual address space: no RLIMIT_AS there, the child caps the GPU memory instead
    limit = None if is_cuda(args.device) else _limit_memory(args.mem_limit_gib)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, check=False,
                              preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return f"timeout (> {args.timeout:.0f} s)"
    if proc.returncode != 0:
        return _classify_failure(proc.returncode, proc.stderr)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return "error: no result"


def discover(patterns: list[str]) -> dict[str, dict[str, str]]:
    """``{model: {embed: 'model.config'}}`` for configs ``base``/``base_mammoth``, aliases dropped."""
    import medmoe
    from medmoe.registry import get_entry

    table: dict[str, dict[str, str]] = {}
    seen: set[tuple[type, str, str]] = set()
    # Names whose configs are packaged YAML files first: an alias registered with in-code copies of
    # another name's configs (e.g. 'dftd' for 'dtfd') is then the one dropped.
    names = sorted(medmoe.list_models(), key=lambda f: (bool(get_entry(f.split(".", 1)[0]).configs), f))
    for full in names:
        model, config = full.split(".", 1)
        if config not in CONFIGS or not any(fnmatch.fnmatch(full, p) or fnmatch.fnmatch(model, p)
                                            for p in patterns):
            continue
        entry = get_entry(model)
        key = (entry.model_cls, config, json.dumps(entry.config_dict(config), sort_keys=True, default=str))
        if key in seen:  # an alias of a model already listed
            continue
        seen.add(key)
        table.setdefault(model, {})[CONFIGS[config]] = full
    return dict(sorted(table.items()))


def _fmt_n(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def _exponent(a: float, b: float, n1: int, n2: int) -> float | None:
    if a <= 0 or b <= 0 or n1 == n2:
        return None
    return math.log(b / a) / math.log(n2 / n1)


def scaling(results: dict, name: str | None, sizes: list[int]) -> str:
    """Fitted growth exponents between the smallest and largest size (linear embedding)."""
    if name is None or len(sizes) < 2:
        return "n/a"
    n1, n2 = sizes[0], sizes[-1]
    r1, r2 = results.get((name, n1)), results.get((name, n2))
    if isinstance(r1, dict) and not isinstance(r2, dict):
        return f"**quadratic?** (fails at {_fmt_n(n2)})" if r2 and r2.startswith(("OOM", "timeout")) else "n/a"
    if not (isinstance(r1, dict) and isinstance(r2, dict)):
        return "n/a"
    et = _exponent(r1["seconds"], r2["seconds"], n1, n2)
    em = _exponent(max(r1["saved_mib"], 1e-3), max(r2["saved_mib"], 1e-3), n1, n2)
    parts = []
    if et is not None:
        parts.append(f"time N^{et:.2f}")
    if em is not None:
        parts.append(f"mem N^{em:.2f}")
    quadratic = (em is not None and em >= 1.5) or (et is not None and et >= 1.5 and n2 / n1 >= 4)
    return ("**quadratic** " if quadratic else "") + ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 1k and 2k (checks that everything runs)")
    parser.add_argument("--sizes", type=int, nargs="+", help="bag sizes (default 10000 50000)")
    parser.add_argument("--models", nargs="+", default=["*"], help="glob(s) on 'model' or 'model.config'")
    parser.add_argument("--embeds", nargs="+", choices=EMBEDS, default=list(EMBEDS))
    parser.add_argument("--reps", type=int, default=3, help="timed steps after the warm-up (the fastest is reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (cpu only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help=DEVICE_HELP)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per case")
    parser.add_argument("--mem-limit-gib", type=float, default=None,
                        help="address-space limit per case (default 90%% of RAM); on cuda: cap on the GPU "
                        "memory per case (default the whole GPU)")
    parser.add_argument("--out", help="also write the markdown to this file")
    parser.add_argument("--case", nargs=2, metavar=("NAME", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.case:
        sys.stdout.write(json.dumps(run_case(args.case[0], int(args.case[1]), args.reps, args.threads,
                                             args.seed, args.device, args.mem_limit_gib)) + "\n")
        return

    cuda = is_cuda(check_device(parser, args.device))
    import torch

    if args.mem_limit_gib is None:
        if cuda:
            dev = torch.device(args.device)
            index = dev.index if dev.index is not None else torch.cuda.current_device()
            args.mem_limit_gib = round(torch.cuda.get_device_properties(index).total_memory / 2**30, 1)
        else:
            args.mem_limit_gib = round(0.9 * _mem_total_gib(), 1)

    sizes = args.sizes or ([1000, 2000] if args.quick else [10_000, 50_000])
    if args.quick and args.reps == 3:
        args.reps = 2
    models = discover(args.models)
    results: dict[tuple[str, int], dict[str, Any] | str] = {}
    started = time.perf_counter()
    for model, names in models.items():
        for embed in args.embeds:
            name = names.get(embed)
            if name is None:
                continue
            for n in sizes:
                prev = results.get((name, sizes[sizes.index(n) - 1])) if sizes.index(n) else None
                if isinstance(prev, str) and prev.startswith(("OOM", "timeout")):
                    results[(name, n)] = prev.split(" ")[0] + " (skipped: failed at smaller N)"
                else:
                    results[(name, n)] = run_in_subprocess(name, n, args)
                sys.stderr.write(f"  {name:28s} N={n:>7}: {results[(name, n)]}\n")
                sys.stderr.flush()

    def cell(name: str | None, n: int, key: str, unit: str, fmt: str = "{:.2f}") -> str:
        if name is None:
            return "n/a"
        r = results.get((name, n), "n/a")
        return (fmt.format(r[key]) + unit) if isinstance(r, dict) else str(r)

    tfmt = "{:.4f}" if cuda else "{:.2f}"  # GPU steps are short

    cols = [(e, n) for e in args.embeds for n in sizes]
    head = "| model | " + " | ".join(f"{e} N={_fmt_n(n)}" for e, n in cols) + " | scaling (linear embedding) |"
    rule = "|" + "---|" * (len(cols) + 2)
    if cuda:
        machine = (f"machine: {gpu_line(args.device)}, fp32, batch 1, in_dim {IN_DIM}, train-mode "
                   f"forward+backward (fastest of {args.reps} synchronised steps after 1 warm-up), per-case "
                   f"timeout {args.timeout:.0f} s, GPU memory limit {args.mem_limit_gib:.1f} GiB; total wall "
                   f"{time.perf_counter() - started:.0f} s")
        caption = f"Time per bag (s) and peak CUDA memory of the step (MiB, {CUDA_PEAK_NOTE}):"
    else:
        wall = time.perf_counter() - started
        machine = (f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{args.threads} threads, fp32, batch 1, in_dim {IN_DIM}, train-mode forward+backward "
                   f"(fastest of {args.reps} after 1 warm-up), per-case timeout {args.timeout:.0f} s, "
                   f"memory limit {args.mem_limit_gib:.1f} GiB; total wall {wall:.0f} s; "
                   f"load average at the end {os.getloadavg()[0]:.1f}")
        caption = "Time per bag (s) and peak resident memory of the step (MiB, peak RSS minus RSS before it):"
    lines = [machine, "", caption, "", head, rule]
    for model, names in models.items():
        row = [f"{cell(names.get(e), n, 'seconds', ' s', tfmt)} / "
               f"{cell(names.get(e), n, 'peak_mib', ' MiB', '{:.0f}')}"
               if isinstance(results.get((names.get(e), n)), dict) else cell(names.get(e), n, "seconds", "")
               for e, n in cols]
        lines.append(f"| {model} | " + " | ".join(row) + f" | {scaling(results, names.get('linear'), sizes)} |")
    if args.quick:
        lines += ["", "(--quick: fixed costs dominate at these sizes, the scaling exponents are indicative only)"]
    lines += ["", "Tensors saved by autograd for the backward (MiB, one forward):", "",
              "| model | " + " | ".join(f"{e} N={_fmt_n(n)}" for e, n in cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for model, names in models.items():
        lines.append(f"| {model} | " + " | ".join(cell(names.get(e), n, "saved_mib", "", "{:.0f}")
                                                  for e, n in cols) + " |")
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
