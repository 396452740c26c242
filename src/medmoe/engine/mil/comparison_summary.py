"""Summarise a comparison folder written by :func:`~medmoe.engine.mil.cross_validation.compare`, finished or not.

A long grid (``medmoe mil compare --k 10 --seed 0 ... --seed 4`` over many models and datasets) takes
hours; it can be stopped and resumed, and several ``compare`` processes can fill the same folder (one per
dataset, say). :func:`collect_comparison` reads every finished fold under it, without training anything::

    out_dir/<dataset>/<model>/<patch_embed>/seed<s>/fold<i>/fold_result.json

and returns one row per ``(dataset, model, patch_embed)`` with the mean ± std of the test metrics over the
folds found, the number of folds (``runs``) and the seeds they come from, so a partially finished grid
can be reported honestly (every cell says how many runs it averages).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .cross_validation import ComparisonResult
from .metrics import METRIC_NAMES, summarize
from .multilabel import MULTILABEL_METRIC_NAMES
from .survival import SURVIVAL_METRIC_NAMES

__all__ = ["collect_comparison"]

logger = logging.getLogger(__name__)


def read_test_metrics(path: Path) -> dict[str, Any] | None:
    """The ``test_metrics`` of one ``fold_result.json``; ``None`` if the fold has not finished (no file), has
    no test set, or the file is unreadable (logged)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("test_metrics") or None
    except (OSError, json.JSONDecodeError) as err:
        logger.warning("skipping unreadable %s: %s", path, err)
        return None


def _fold_results(variant_dir: Path) -> tuple[list[dict[str, float]], list[int]]:
    """Test metrics of every finished fold under ``variant_dir`` and the seed of each."""
    tests: list[dict[str, float]] = []
    seeds: list[int] = []
    for path in sorted(variant_dir.glob("seed*/fold*/fold_result.json")):
        test = read_test_metrics(path)
        if not test:
            continue
        tests.append({k: v for k, v in test.items() if v is not None})
        seed = path.parent.parent.name.removeprefix("seed")
        seeds.append(int(seed) if seed.isdigit() else -1)
    return tests, seeds


def collect_comparison(
    out_dir: str | Path,
    *,
    datasets: list[str] | None = None,
    models: list[str] | None = None,
    min_runs: int = 1,
) -> ComparisonResult:
    """Rows for every ``<dataset>/<model>/<patch_embed>`` folder under ``out_dir`` with finished folds.

    Args:
        out_dir: the ``--out`` folder of ``medmoe mil compare``.
        datasets, models: keep only these (folder names), in this order; default: all, sorted.
        min_runs: leave out variants with fewer finished folds.

    Returns:
        :class:`~medmoe.engine.mil.cross_validation.ComparisonResult` whose rows also hold ``seeds`` (sorted
        distinct seeds of the finished folds); ``runs`` is the number of finished folds.

    Raises:
        ValueError: ``out_dir`` does not exist or holds no finished fold.
    """
    root = Path(out_dir)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder; pass the --out folder of `medmoe mil compare`")
    rows: list[dict[str, Any]] = []
    ds_dirs = [root / d for d in datasets] if datasets else sorted(p for p in root.iterdir() if p.is_dir())
    for ds_dir in ds_dirs:
        if not ds_dir.is_dir():
            continue
        model_dirs = [ds_dir / m for m in models] if models else sorted(p for p in ds_dir.iterdir() if p.is_dir())
        for model_dir in model_dirs:
            if not model_dir.is_dir():
                continue
            for embed_dir in sorted(p for p in model_dir.iterdir() if p.is_dir()):
                tests, seeds = _fold_results(embed_dir)
                if len(tests) < max(1, min_runs):
                    continue
                rows.append(
                    {
                        "dataset": ds_dir.name,
                        "model": model_dir.name,
                        "patch_embed": embed_dir.name,
                        "runs": len(tests),
                        "seeds": sorted(set(seeds)),
                        "summary": summarize(tests),
                        "out_dir": str(embed_dir),
                    }
                )
    if not rows:
        raise ValueError(
            f"no finished fold (seed*/fold*/fold_result.json) under {root}/<dataset>/<model>/<patch_embed>"
        )
    # survival folders hold c_index (and no AUROC): show the metrics the runs have
    has_classification = any(m in r["summary"] for r in rows for m in METRIC_NAMES)
    if any("subset_accuracy" in r["summary"] for r in rows):
        return ComparisonResult(rows, list(MULTILABEL_METRIC_NAMES))
    return ComparisonResult(rows, list(METRIC_NAMES if has_classification else SURVIVAL_METRIC_NAMES))
