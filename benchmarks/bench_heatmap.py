"""Heatmap canvas painting: medmoe (difference array for many patches, slices for few) vs a per-patch loop
(CLAM-style).

Both paint ``n`` overlapping squares (stride = half a patch) and average overlaps; the script checks they agree
and prints the times and the ratio, measured side by side in one run.

    python benchmarks/bench_heatmap.py --sizes 1000 10000 50000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from medmoe.viz.heatmap import HeatmapCanvas, scores_to_canvas


def loop_canvas(coords: np.ndarray, scores: np.ndarray, size0: float, canvas: HeatmapCanvas) -> np.ndarray:
    h, w = canvas.shape
    ds = canvas.downsample
    total, count = np.zeros((h, w)), np.zeros((h, w))
    for (x, y), s in zip(coords, scores):
        x0, y0 = int(np.floor(x / ds)), int(np.floor(y / ds))
        x1, y1 = max(int(np.ceil((x + size0) / ds)), x0 + 1), max(int(np.ceil((y + size0) / ds)), y0 + 1)
        total[y0:y1, x0:x1] += s
        count[y0:y1, x0:x1] += 1
    out = np.full((h, w), np.nan)
    out[count > 0] = total[count > 0] / count[count > 0]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--max-size", type=int, default=2048, help="canvas longer side")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    size0 = 256
    print(f"{'patches':>8} {'canvas':>11} {'loop ms':>9} {'medmoe ms':>10} {'speed-up':>9} {'max |diff|':>11}")
    for n in args.sizes:
        side = int(np.ceil(np.sqrt(n)))
        step = size0 // 2  # 50% overlap
        idx = np.arange(n)
        coords = np.stack([idx % side, idx // side], 1).astype(np.float64) * step
        scores = rng.random(n)
        extent = side * step + size0
        ds = extent / args.max_size
        canvas = HeatmapCanvas((args.max_size, args.max_size), ds)
        t_loop, t_vec = [], []
        for _ in range(args.reps):
            t = time.perf_counter()
            ref = loop_canvas(coords, scores, size0, canvas)
            t_loop.append(time.perf_counter() - t)
            t = time.perf_counter()
            ours = scores_to_canvas(coords, scores, size0, canvas)
            t_vec.append(time.perf_counter() - t)
        diff = np.nanmax(np.abs(ref - ours))
        assert np.array_equal(np.isnan(ref), np.isnan(ours))
        lo, vo = min(t_loop) * 1e3, min(t_vec) * 1e3
        print(f"{n:>8} {args.max_size:>5}x{args.max_size:<5} {lo:>9.1f} {vo:>10.1f} {lo / vo:>8.1f}x {diff:>11.2e}")


if __name__ == "__main__":
    main()
