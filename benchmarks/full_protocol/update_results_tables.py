"""Merge the full-protocol grid's current tables into the results page of the docs (docs/reproducing.md).

The page's full-protocol tables hold rows measured earlier (kept as they are) and the rows listed in
``units.txt``, which are (re)measured by ``run_units.sh``. For each of those rows the table shows the new
measurement once it exists, or keeps the earlier row while the new one has fewer runs than a complete earlier
row; an incomplete earlier row without a new measurement is dropped. Counts in the prose are recomputed.

    python benchmarks/full_protocol/update_results_tables.py [RUN_DIR]   # default: the committed results
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAGE = HERE.parents[1] / "docs" / "reproducing.md"
RESULTS = HERE.parent / "results" / "full_protocol"
COMPLETE = 50  # 10 folds x 5 seeds


def markdown_tables(text: str) -> list[list[str]]:
    """Every block of consecutive ``|`` lines in ``text``."""
    tables, block = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            tables.append(block)
            block = []
    return tables


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def merge(
    old: list[str], new: list[str] | None, rerun: set[tuple[str, ...]], key_len: int, count_col: int
) -> list[str]:
    """Rows of ``old`` (a table of the page) with the ``rerun`` keys taken from ``new`` (same header)."""
    rows = {tuple(cells(r)[:key_len]): r for r in old[2:]}
    fresh = {tuple(cells(r)[:key_len]): r for r in (new or [])[2:]}
    for key in rerun:
        before, after = rows.get(key), fresh.get(key)
        before_n = int(cells(before)[count_col]) if before else 0
        after_n = int(cells(after)[count_col]) if after else 0
        if after and not (before_n == COMPLETE and after_n < COMPLETE):
            rows[key] = after
        elif before and before_n < COMPLETE:
            del rows[key]
    return old[:2] + [rows[k] for k in sorted(rows)]


def main() -> None:
    run_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS
    medmoe = Path(sys.executable).parent / "medmoe"
    with tempfile.TemporaryDirectory() as tmp:  # summarize's table and plot files stay out of the results
        cmd = [str(medmoe), "mil", "summarize", str(run_dir), "--out", str(Path(tmp) / "summary")]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    new_tables = {cells(t[0])[3]: t for t in markdown_tables(out.stdout)}  # keyed by the 4th header cell
    units = [line.split() for line in (HERE / "units.txt").read_text().splitlines() if line.strip()]
    rerun_rows = {tuple(u) for u in units}
    rerun_pairs = {tuple(u[:2]) for u in units}

    text = PAGE.read_text()
    main_header = "| dataset | model | patch_embed | runs | auroc | balanced_accuracy | f1 |"
    for table in markdown_tables(text):
        head = cells(table[0])
        if table[0] == main_header:
            merged = merge(table, new_tables.get("runs"), rerun_rows, 3, 3)
            runs = sum(int(cells(r)[3]) for r in merged[2:])
            complete = sum(int(cells(r)[3]) == COMPLETE for r in merged[2:])
        elif len(head) > 3 and head[2] == "pairs" and head[3].startswith("Δ "):
            merged = merge(table, new_tables.get(head[3]), rerun_pairs, 2, 2)
        else:
            continue
        text = text.replace("\n".join(table), "\n".join(merged))
    text, n = re.subn(
        r"\([\d,]+ runs; \d+ rows complete with 50 test folds;",
        f"({runs:,} runs; {complete} rows complete with 50 test folds;",
        text,
    )
    if n != 1:
        raise SystemExit(f"{PAGE}: the '(N runs; M rows complete with 50 test folds;' sentence was not found")
    PAGE.write_text(text)
    print(f"{PAGE}: {runs:,} runs, {complete} complete rows")


if __name__ == "__main__":
    main()
