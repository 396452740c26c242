"""Keep the finished units of a full-protocol grid in the repository, and put them back on a fresh machine.

A unit is one (dataset, model, patch embedding, seed): its ``splits.json`` and the ``fold_result.json`` of
its 10 folds, a few kB each (checkpoints stay behind). ``medmoe mil summarize`` and the paired tests read
exactly these files, so the committed folder reproduces the tables of docs/reproducing.md:

    python benchmarks/full_protocol/sync_results.py RUNS_DIR            # finished units -> results folder
    python benchmarks/full_protocol/sync_results.py RUNS_DIR --restore  # results folder -> RUNS_DIR/out
    medmoe mil summarize benchmarks/results/full_protocol

``run_units.sh`` (``medmoe mil grid``) skips restored units (their 10 fold results exist), so a grid continues
where it stopped.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results" / "full_protocol"
FOLDS = 10


def finished_units(root: Path) -> list[Path]:
    """Seed folders ``<dataset>/<model>/<patch_embed>/seed<s>`` under ``root`` with all folds finished."""
    return sorted(
        seed_dir
        for seed_dir in root.glob("*/*/*/seed*")
        if (seed_dir / "splits.json").is_file()
        and len(list(seed_dir.glob("fold*/fold_result.json"))) >= FOLDS
    )


def copy_unit(seed_dir: Path, src_root: Path, dst_root: Path) -> bool:
    """Copy one unit's result files; ``True`` if anything changed."""
    files = [seed_dir / "splits.json", *sorted(seed_dir.glob("fold*/fold_result.json"))]
    changed = False
    for f in files:
        dst = dst_root / f.relative_to(src_root)
        if dst.is_file() and dst.read_bytes() == f.read_bytes():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dst)
        changed = True
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs_dir", type=Path, help="the folder run_units.sh fills (its out/ holds the runs)")
    parser.add_argument("--restore", action="store_true", help="copy the kept units back into RUNS_DIR/out")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"kept units (default {RESULTS})")
    args = parser.parse_args()
    src, dst = (
        (args.results, args.runs_dir / "out") if args.restore else (args.runs_dir / "out", args.results)
    )
    if not src.is_dir():
        raise SystemExit(f"{src} does not exist")
    units = finished_units(src)
    changed = sum(copy_unit(u, src, dst) for u in units)
    print(f"{len(units)} finished units in {src}; {changed} copied to {dst}")


if __name__ == "__main__":
    main()
