"""Sliding-window segmentation of a many-class volume: MONAI's full-volume stitching vs medmoe's slabs.

Both produce the same label map (checked here, and bit for bit in the tests). MONAI's
``sliding_window_inference`` holds the blended logits of the whole volume, ``(K, D, H, W)`` float32, plus
a weight map; :func:`medmoe.engine.seg.inference.sliding_window_labels` holds one ROI-deep slab and reduces
every finished slab to its arg-max. Each variant runs in a fresh subprocess (peak resident memory from
``getrusage``), alternating, best time of ``--reps``. The network is one 1x1x1 convolution to ``K``
classes, so the stitching dominates.

    python benchmarks/bench_slab_sliding_window.py                     # 32 classes, 160 x 160 x 160, ROI 64
    python benchmarks/bench_slab_sliding_window.py --classes 104 --size 128 256 256 --roi 64 96 96
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import torch
from torch import nn
from medmoe.engine.seg.inference import sliding_window_labels, sliding_window_logits
variant, k, size, roi = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
torch.set_num_threads(int(sys.argv[5]))
torch.manual_seed(0)
net = nn.Conv3d(1, k, 1).eval()
image = torch.randn(1, 1, *size)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if variant == "monai":
    labels = sliding_window_logits(net, image, roi, overlap=0.5).argmax(1)[0]
else:
    labels = sliding_window_labels(net, image, roi, overlap=0.5)
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_mib": peak / 1024, "added_mib": (peak - base) / 1024,
                  "checksum": int((labels * torch.arange(labels.numel()).view_as(labels) % 1000003).sum())}))
"""


def run(variant: str, k: int, size: list[int], roi: list[int], threads: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, variant, str(k), json.dumps(size), json.dumps(roi), str(threads)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--classes", type=int, default=32)
    parser.add_argument("--size", type=int, nargs=3, default=[160, 160, 160])
    parser.add_argument("--roi", type=int, nargs=3, default=[64, 64, 64])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"monai": [], "medmoe": []}
    for _ in range(args.reps):
        for variant, runs in results.items():
            runs.append(run(variant, args.classes, args.size, args.roi, args.threads))
    a, b = results["monai"], results["medmoe"]
    if {r["checksum"] for r in a} != {r["checksum"] for r in b}:
        raise SystemExit("the two label maps differ")
    full_gib = args.classes * args.size[0] * args.size[1] * args.size[2] * 4 / 2**30
    print(
        f"{args.classes} classes, volume {tuple(args.size)}, ROI {tuple(args.roi)}, overlap 0.5, "
        f"{args.threads} threads; full logits {full_gib:.2f} GiB; same labels"
    )
    print("| | MONAI full volume | medmoe slabs | ratio |\n|---|---:|---:|---:|")
    ta, tb = min(r["seconds"] for r in a), min(r["seconds"] for r in b)
    pa, pb = min(r["added_mib"] for r in a), min(r["added_mib"] for r in b)
    print(f"| time (s) | {ta:.2f} | {tb:.2f} | {ta / tb:.2f}x |")
    print(f"| peak memory added by the call (MiB) | {pa:.0f} | {pb:.0f} | {pa / pb:.2f}x |")


if __name__ == "__main__":
    main()
