"""Lin-MIL forward+backward time per bag: ``lin_mil.Lin_MIL`` (pip ``lin-mil`` 1.0.1) vs medmoe's ``linmil``.

Both models are built with the reference defaults (``lin_mil.Config()``: latent 512, depth 4, 8 heads,
linear attention with ReLU, cls pooling) for UNI features (``in_dim`` 1024, 2 classes); the reference's
weights are copied into medmoe's model (:meth:`LinMIL.load_reference_state_dict`). Per size ``N``, one
bag (batch 1, fp32, ``--threads`` threads) runs forward + ``logits.sum().backward()`` in eval mode
(dropout off, so both models compute the same function; training mode only adds the embedding
dropout). The two models alternate, after one warm-up step each.

Reported per size:

* time: the fastest of ``--reps`` steps and the median;
* speed-up: lin_mil / medmoe, as the median over the reps of the ratio within each back-to-back pair
  (``paired``: the least disturbed by other processes on a shared machine, whose load drifts), and as
  the ratio of the fastest steps;
* saved: MiB of the distinct tensors autograd keeps for the backward (deterministic);
* equality: max |difference| of the logits and of every parameter gradient (medmoe vs reference);
* with ``--device cuda`` also peak: ``torch.cuda.max_memory_allocated()`` during one step minus the
  memory allocated just before it (MiB; model, input and the other model's gradients not counted).

With ``--device cuda`` (or ``cuda:N``) both models (the same copied weights) and the bag live on the GPU
and every step ends with ``torch.cuda.synchronize()`` before the timer is read; ``--threads`` applies to
the CPU only.

Where medmoe's speed comes from: with cls pooling only the cls token of the last block is read, so
medmoe computes that block's query projection, attention output, output projection and MLP for the cls
token only (keys/values still for every token); the linear attention fuses the key sum into the
``K^T V`` product (one matmul gives numerator and denominator) and avoids the reference's extra copies.

    python benchmarks/bench_linmil.py                  # N = 10k, 50k (several minutes on 2 cores)
    python benchmarks/bench_linmil.py --quick          # N = 1k, 2k
    python benchmarks/bench_linmil.py --sizes 20000 --reps 5
    python benchmarks/bench_linmil.py --device cuda --sizes 10000 50000 --reps 5    # on the GPU

``lin_mil`` imports ``timm`` only for ``DropPath``; a stand-in module is installed for the import.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from typing import Any

import torch
from _timing import (
    CUDA_PEAK_NOTE,
    DEVICE_HELP,
    check_device,
    cuda_peak_mib,
    cuda_peak_start,
    gpu_line,
    is_cuda,
    sync,
)
from torch import nn

from medmoe.bench.references import import_lin_mil
from medmoe.models.mil.linmil import LinMIL

IN_DIM = 1024
NUM_CLASSES = 2


def build_pair(lin_mil: Any) -> tuple[nn.Module, LinMIL]:
    torch.manual_seed(0)
    cfg = lin_mil.Config()
    ref = lin_mil.Lin_MIL(num_classes=NUM_CLASSES, input_dim=IN_DIM, config=cfg).eval()
    ours = LinMIL(LinMIL.config_from_reference(cfg, input_dim=IN_DIM, num_classes=NUM_CLASSES)).eval()
    ours.load_reference_state_dict(ref.state_dict())
    return ref, ours


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out[0] if isinstance(out, tuple) else out.logits


def step(model: nn.Module, x: torch.Tensor, device: str = "cpu") -> tuple[float, torch.Tensor]:
    """One forward + backward; returns (seconds, detached logits)."""
    model.zero_grad(set_to_none=True)
    sync(device)
    start = time.perf_counter()
    logits = logits_of(model, x)
    logits.sum().backward()
    sync(device)
    return time.perf_counter() - start, logits.detach()


def cuda_peak_step_mib(model: nn.Module, x: torch.Tensor, device: str) -> float:
    """CUDA: MiB allocated at the peak of one step above the memory allocated before it (gradients freed)."""
    model.zero_grad(set_to_none=True)
    start = cuda_peak_start(device)
    step(model, x, device)
    peak = cuda_peak_mib(device, start)
    model.zero_grad(set_to_none=True)
    return peak


def saved_mib(model: nn.Module, x: torch.Tensor) -> float:
    """MiB of the distinct storages autograd saves during one forward."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits_of(model, x)
    model.zero_grad(set_to_none=True)
    return sum(seen.values()) / 2**20


def grad_diff(ref: nn.Module, ours: LinMIL) -> float:
    ref_params = dict(ref.named_parameters())
    worst = 0.0
    for name, p in ours.named_parameters():
        ref_p = ref_params[name.replace("patch_embed.0.", "projection.")]
        if p.grad is None or ref_p.grad is None:
            return float("nan")
        worst = max(worst, (p.grad - ref_p.grad).abs().max().item())
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     epilog="on the GPU: --device cuda --sizes 10000 50000 --reps 5")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000], help="bag sizes N")
    parser.add_argument("--quick", action="store_true", help="N = 1k, 2k")
    parser.add_argument("--reps", type=int, default=3, help="timed steps per model and size")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (cpu only)")
    parser.add_argument("--device", default="cpu", help=DEVICE_HELP)
    args = parser.parse_args(argv)
    sizes = [1_000, 2_000] if args.quick else args.sizes
    if args.reps < 1 or min(sizes) < 1:
        parser.error("--reps and --sizes must be positive")
    device = check_device(parser, args.device)
    cuda = is_cuda(device)
    try:
        lin_mil = import_lin_mil()
    except ImportError:
        sys.stderr.write("lin_mil is not installed: pip install lin-mil==1.0.1 (or medmoe[parity])\n")
        return 1
    torch.set_num_threads(args.threads)
    ref, ours = build_pair(lin_mil)
    ref, ours = ref.to(device), ours.to(device)

    rows = []
    peaks: dict[int, tuple[float, float]] = {}  # CUDA only
    for n in sizes:
        x = torch.randn(1, n, IN_DIM, generator=torch.Generator().manual_seed(n)).to(device)
        _, logits_ref = step(ref, x, device)  # warm-up; keeps the reference's gradients for the comparison
        _, logits_ours = step(ours, x, device)
        logit_diff = (logits_ref - logits_ours).abs().max().item()
        gdiff = grad_diff(ref, ours)
        times: dict[str, list[float]] = {"ref": [], "ours": []}
        for _ in range(args.reps):
            times["ref"].append(step(ref, x, device)[0])
            times["ours"].append(step(ours, x, device)[0])
        mem_ref, mem_ours = saved_mib(ref, x), saved_mib(ours, x)
        if cuda:
            peaks[n] = (cuda_peak_step_mib(ref, x, device), cuda_peak_step_mib(ours, x, device))
        rows.append((n, times, mem_ref, mem_ours, logit_diff, gdiff))

    print(f"# Lin-MIL forward+backward per bag: lin_mil {getattr(lin_mil, '__version__', '1.0.1')} vs medmoe")
    if cuda:
        print(f"{gpu_line(device)}, in_dim {IN_DIM}, batch 1, fp32, eval mode, synchronised steps, "
              f"{args.reps} reps: fastest (median); peak = {CUDA_PEAK_NOTE}\n")
    else:
        cpu = platform.processor() or platform.machine()
        print(f"torch {torch.__version__}, {args.threads} threads, {cpu}, "
              f"in_dim {IN_DIM}, batch 1, fp32, eval mode, {args.reps} reps: fastest (median)\n")
    peak_head, peak_rule = (" peak lin_mil / medmoe (MiB) |", "---:|") if cuda else ("", "")
    print("| N | lin_mil (s) | medmoe (s) | speed-up paired | speed-up fastest | saved lin_mil / medmoe (MiB) | "
          f"max abs diff logits | max abs diff grads |{peak_head}")
    print(f"|---:|---:|---:|---:|---:|---:|---:|---:|{peak_rule}")
    digits = 4 if cuda else 2  # GPU steps are short
    for n, times, mem_ref, mem_ours, logit_diff, gdiff in rows:
        best_ref, best_ours = min(times["ref"]), min(times["ours"])
        med_ref, med_ours = statistics.median(times["ref"]), statistics.median(times["ours"])
        paired = statistics.median(r / o for r, o in zip(times["ref"], times["ours"]))
        peak = f" {peaks[n][0]:,.0f} / {peaks[n][1]:,.0f} |" if cuda else ""
        print(f"| {n:,} | {best_ref:.{digits}f} ({med_ref:.{digits}f}) | {best_ours:.{digits}f} "
              f"({med_ours:.{digits}f}) | {paired:.2f}x | {best_ref / best_ours:.2f}x | "
              f"{mem_ref:,.0f} / {mem_ours:,.0f} | {logit_diff:.1e} | {gdiff:.1e} |{peak}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
