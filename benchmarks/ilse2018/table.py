"""Tables of docs/reproducing-ilse2018.md from the committed per-fold results (benchmarks/results/ilse2018/).

    python benchmarks/ilse2018/table.py [RESULTS_DIR] [--seed0] [--paired-with NAME]
    python benchmarks/ilse2018/table.py --summary   # the README's table (also on docs/reproducing.md)

For every run folder (``<dataset>-<model>``, ``recipe-...``, ``ablate-...``): the test accuracy
mean ± sample std over all folds x repetitions (as medmoe's ``summary.md``), the out-of-fold accuracy of
each repetition (every bag tested once) with its mean ± standard error over the repetitions, the mean
test AUROC and the mean epochs run (and best epoch). A folder ``<name>.more`` holds further repetitions
(other seeds) of ``<name>`` and is merged into it. ``--seed0`` restricts every run to repetition 0: the
test folds the one-repetition ablations share; ``--paired-with NAME`` adds the per-fold accuracy difference
to run ``NAME`` over the folds whose test bags are the same bags of the same dataset (named in the folder
name; the test bag ids from ``test_predictions.csv``), mean ± standard error.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

#: Ilse et al. (2018), Table 1 (as recalled, see the docs page): accuracy, mean ± the paper's error bar.
PAPER = {
    ("musk1", "attention"): (0.892, 0.040), ("musk1", "gated"): (0.900, 0.050),
    ("musk2", "attention"): (0.858, 0.048), ("musk2", "gated"): (0.863, 0.042),
    ("elephant", "attention"): (0.868, 0.022), ("elephant", "gated"): (0.857, 0.027),
}


#: The datasets a run folder's name can name (``musk1-gated``, ``ablate-musk1-adamw``, ...).
DATASETS = ("musk1", "musk2", "elephant", "fox", "tiger")


def run_dataset(folder: Path) -> str | None:
    """The dataset a run folder's name names, or ``None``."""
    return next((part for part in folder.name.removesuffix(".more").split("-") if part in DATASETS), None)


def read_runs(folder: Path, seed0: bool) -> tuple[str, list[dict], dict[int, list[bool]]]:
    """``(model name, per-fold runs, {seed: [bag correct, ...]})`` of one results folder. Each run gets
    ``"test_bags"``: its dataset and the frozenset of its test bag ids (what paired differences match on)."""
    data = json.loads((folder / "results.json").read_text())
    runs = [r for r in data["runs"] if not seed0 or r["seed"] == 0]
    per_seed: dict[int, list[bool]] = {}
    bags: dict[tuple[int, int], set[str]] = {}
    with (folder / "test_predictions.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            seed = int(row["seed"])
            if seed0 and seed != 0:
                continue
            probs = [float(v) for k, v in row.items() if k.startswith("prob_")]
            per_seed.setdefault(seed, []).append(probs.index(max(probs)) == int(row["label"]))
            bags.setdefault((seed, int(row["fold"])), set()).add(row["bag_id"])
    dataset = run_dataset(folder)
    runs = [{**r, "test_bags": (dataset, frozenset(bags.get((r["seed"], r["fold"]), ())))} for r in runs]
    return data["model_name"], runs, per_seed


def summarize(folders: list[Path], seed0: bool) -> dict | None:
    model, runs, per_seed = "", [], {}
    for folder in folders:
        model, more_runs, more_seeds = read_runs(folder, seed0)
        runs += more_runs
        per_seed.update(more_seeds)
    if not runs:
        return None
    accs = [r["test"]["accuracy"] for r in runs]
    oof = [sum(v) / len(v) for _, v in sorted(per_seed.items())]
    return {
        "model": model, "runs": len(runs), "seeds": sorted(per_seed),
        "acc": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else float("nan"),
        "oof": statistics.mean(oof),
        "sem": statistics.stdev(oof) / len(oof) ** 0.5 if len(oof) > 1 else float("nan"),
        "epochs": statistics.mean(r["epochs_run"] for r in runs),
        "best_epoch": statistics.mean(r["best_epoch"] for r in runs),
        "auroc": statistics.mean(r["test"]["auroc"] for r in runs),
    }


#: The summary table's rows (dataset -> its title) and its header.
SUMMARY_DATASETS = {"musk1": "MUSK1", "musk2": "MUSK2", "elephant": "ELEPHANT"}
SUMMARY_HEADER = [
    "| dataset | gated (`ilse.base`) | paper | plain (`ilse.attention`) | paper | MIL-Lab ABMIL, same protocol |",
    "|---|---|---|---|---|---|",
]


def summary_table(results: Path) -> list[str]:
    """The README's table: test accuracy mean ± std over every fold of every repetition of ``<dataset>-gated``,
    ``-attention`` and ``-abmil`` (a cell marked ¹ has one repetition), with the paper's values."""
    lines = list(SUMMARY_HEADER)
    for dataset, title in SUMMARY_DATASETS.items():
        cells = [title]
        for variant in ("gated", "attention", "abmil"):
            name = f"{dataset}-{variant}"
            folders = [p for p in (results / name, results / f"{name}.more") if (p / "results.json").is_file()]
            row = summarize(folders, seed0=False)
            cells.append("—" if row is None else
                         f"{row['acc']:.3f} ± {row['std']:.3f}{' ¹' if len(row['seeds']) == 1 else ''}")
            if variant != "abmil":
                cells.append(f"{PAPER[(dataset, variant)][0]:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="?", default=Path(__file__).parents[1] / "results" / "ilse2018", type=Path)
    parser.add_argument("--seed0", action="store_true", help="only repetition 0 of every run (shared folds)")
    parser.add_argument("--paired-with", default=None, help="reference run for per-fold paired differences")
    parser.add_argument("--summary", action="store_true", help="only the README's summary table")
    args = parser.parse_args()
    if args.summary:
        print("\n".join(summary_table(args.results)))
        return
    groups: dict[str, list[Path]] = {}
    for folder in sorted(p for p in args.results.iterdir() if (p / "results.json").is_file()):
        groups.setdefault(folder.name.removesuffix(".more"), []).append(folder)
    ref: dict[tuple[str | None, frozenset[str]], float] = {}
    if args.paired_with:
        for folder in groups[args.paired_with]:
            ref.update({r["test_bags"]: r["test"]["accuracy"] for r in read_runs(folder, args.seed0)[1]})
    paired_head = f" accuracy - {args.paired_with} (same folds) |" if ref else ""
    print("| run | model | folds x reps | test accuracy (mean ± std over folds) | out-of-fold accuracy "
          "(mean ± s.e. over reps) | AUROC | epochs run (best) | paper |" + paired_head)
    print("|---|---|---|---|---|---|---|---|" + ("---|" if ref else ""))
    for name, folders in groups.items():
        row = summarize(folders, args.seed0)
        if row is None:
            continue
        dataset, _, variant = name.partition("-")
        paper = PAPER.get((dataset, variant))
        sem = "" if row["sem"] != row["sem"] else f" ± {row['sem']:.3f}"
        print(f"| {name} | {row['model']} | {row['runs'] // len(row['seeds'])} x {len(row['seeds'])} | "
              f"{row['acc']:.3f} ± {row['std']:.3f} | {row['oof']:.3f}{sem} | {row['auroc']:.3f} | "
              f"{row['epochs']:.0f} ({row['best_epoch']:.0f}) | "
              f"{'' if paper is None else f'{paper[0]:.3f} ± {paper[1]:.3f}'} |" + paired(folders, ref, args.seed0))


def paired(folders: list[Path], ref: dict[tuple[str | None, frozenset[str]], float], seed0: bool) -> str:
    """`` mean ± s.e. |`` of the per-fold accuracy differences to ``ref`` over the folds with the same test
    bags of the same dataset (empty without a reference)."""
    if not ref:
        return ""
    diffs = [r["test"]["accuracy"] - ref[r["test_bags"]] for folder in folders
             for r in read_runs(folder, seed0)[1] if r["test_bags"][0] is not None and r["test_bags"] in ref]
    if len(diffs) < 2:
        return " |"
    return f" {statistics.mean(diffs):+.3f} ± {statistics.stdev(diffs) / len(diffs) ** 0.5:.3f} ({len(diffs)}) |"


if __name__ == "__main__":
    main()
