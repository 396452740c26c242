"""Paired comparison of two patch embeddings over the same folds: is Mammoth better than linear?

``medmoe mil compare`` trains every patch embedding on exactly the same splits (same seeds, same folds), so
the fair question is not whether two mean ± std intervals overlap (with ~10 test bags per fold they always
do) but how the *per-fold differences* behave. :func:`paired_comparison` pairs the finished folds of two
variants of each ``(dataset, model)`` and reports, for one metric:

* the mean difference ``variant - baseline`` and the share of folds where the variant wins (ties: half);
* the **corrected resampled t-test** for repeated k-fold cross-validation (Nadeau & Bengio 2003,
  Bouckaert & Frank 2004): the folds share training bags, so the plain paired t-test is far too
  optimistic; the variance of the ``J`` differences is inflated to ``(1/J + n_test/n_train) * s^2``,
  with ``n_test/n_train`` read from the saved splits, and compared with Student's t with ``J - 1``
  degrees of freedom. The 95 % interval uses the same corrected standard error.

Pairs are only formed within a seed whose two ``splits.json`` have the same hash, and only for folds
where both variants have a finite value of the metric.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from ...data.splits import load_splits
from .comparison_summary import read_test_metrics
from .metrics import ALL_METRIC_NAMES

__all__ = ["PairedResult", "corrected_resampled_ttest", "paired_comparison", "paired_markdown"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairedResult:
    """The paired comparison of ``variant`` against ``baseline`` on one ``(dataset, model)``.

    Attributes:
        dataset, model, metric, baseline, variant: what was compared.
        pairs: folds finished by both (finite metric) on identical splits.
        mean_diff: mean of ``variant - baseline`` over the pairs.
        ci_low, ci_high: 95 % interval of the mean difference (corrected standard error; NaN below 2 pairs).
        p_value: two-sided corrected resampled t-test (NaN below 2 pairs).
        win_rate: share of pairs where the variant is better (ties count half).
        test_train_ratio: mean ``n_test / n_train`` of the paired folds (the correction's term).
    """

    dataset: str
    model: str
    metric: str
    baseline: str
    variant: str
    pairs: int
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    win_rate: float
    test_train_ratio: float


def corrected_resampled_ttest(diffs: list[float], test_train_ratio: float) -> tuple[float, float, float, float]:
    """``(mean, ci_low, ci_high, p)`` of paired differences from repeated k-fold cross-validation.

    Args:
        diffs: one difference per (seed, fold), ``J >= 2`` of them.
        test_train_ratio: ``n_test / n_train`` of the folds (Nadeau & Bengio's correction term).

    Returns:
        the mean, its 95 % interval and the two-sided p-value with ``J - 1`` degrees of freedom. With every
        difference equal the interval is the point and ``p`` is 1 (all zero) or 0.
    """
    if len(diffs) < 2:
        raise ValueError(f"the corrected t-test needs at least 2 paired differences, got {len(diffs)}")
    if not test_train_ratio >= 0:
        raise ValueError(f"test_train_ratio must be >= 0, got {test_train_ratio}")
    from scipy import stats

    j = len(diffs)
    mean = math.fsum(diffs) / j
    var = math.fsum((d - mean) ** 2 for d in diffs) / (j - 1)
    se = math.sqrt((1.0 / j + test_train_ratio) * var)
    if se == 0.0:
        return mean, mean, mean, 1.0 if mean == 0.0 else 0.0
    t = mean / se
    p = float(2.0 * stats.t.sf(abs(t), df=j - 1))
    half = float(stats.t.ppf(0.975, df=j - 1)) * se
    return mean, mean - half, mean + half, p


def _fold_metric(path: Path, metric: str) -> float | None:
    value = (read_test_metrics(path) or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _split_hash(seed_dir: Path) -> str | None:
    try:
        return json.loads((seed_dir / "splits.json").read_text()).get("hash")
    except (OSError, json.JSONDecodeError):
        return None


def _pairs(baseline_dir: Path, variant_dir: Path, metric: str) -> tuple[list[float], list[float]]:
    """Differences ``variant - baseline`` of the folds both finished, and each fold's test/train ratio."""
    diffs: list[float] = []
    ratios: list[float] = []
    for seed_dir in sorted(p for p in variant_dir.glob("seed*") if p.is_dir()):
        other = baseline_dir / seed_dir.name
        if not other.is_dir():
            continue
        h_variant, h_baseline = _split_hash(seed_dir), _split_hash(other)
        if h_variant is None or h_variant != h_baseline:
            logger.warning("%s and %s used different splits; not paired", seed_dir, other)
            continue
        splits = load_splits(seed_dir / "splits.json")
        for fold_dir in sorted(seed_dir.glob("fold*")):
            index = fold_dir.name.removeprefix("fold")
            if not index.isdigit() or int(index) >= len(splits):
                continue
            a = _fold_metric(other / fold_dir.name / "fold_result.json", metric)
            b = _fold_metric(fold_dir / "fold_result.json", metric)
            if a is None or b is None:
                continue
            split = splits[int(index)]
            diffs.append(b - a)
            ratios.append(len(split.test) / max(len(split.train), 1))
    return diffs, ratios


def paired_comparison(
    out_dir: str | Path,
    metric: str = "auroc",
    *,
    baseline: str = "linear",
    variant: str = "mammoth",
    datasets: list[str] | None = None,
    models: list[str] | None = None,
) -> list[PairedResult]:
    """One :class:`PairedResult` per ``<dataset>/<model>`` under ``out_dir`` with both variants finished.

    Args:
        out_dir: the ``--out`` folder of ``medmoe mil compare`` (finished or not).
        metric: a test metric of ``fold_result.json`` (``auroc``, ``balanced_accuracy``, ``f1``, ...).
        baseline, variant: the two patch-embedding folders to pair.
        datasets, models: keep only these (folder names), in this order; default: all, sorted.

    Raises:
        ValueError: ``out_dir`` is not a folder, ``metric`` is not a test metric, or ``baseline == variant``.
    """
    known = (*ALL_METRIC_NAMES, "loss")
    if metric not in known and not metric.startswith("auroc_"):
        raise ValueError(f"unknown metric {metric!r}; choose from {list(known)} (or auroc_<label> of a multi-label run)")
    if baseline == variant:
        raise ValueError(f"baseline and variant are both {baseline!r}; pair two different patch embeddings")
    root = Path(out_dir)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder; pass the --out folder of `medmoe mil compare`")
    results: list[PairedResult] = []
    ds_dirs = [root / d for d in datasets] if datasets else sorted(p for p in root.iterdir() if p.is_dir())
    for ds_dir in ds_dirs:
        model_dirs = [ds_dir / m for m in models] if models else sorted(p for p in ds_dir.glob("*") if p.is_dir())
        for model_dir in model_dirs:
            if not ((model_dir / baseline).is_dir() and (model_dir / variant).is_dir()):
                continue
            diffs, ratios = _pairs(model_dir / baseline, model_dir / variant, metric)
            if not diffs:
                continue
            ratio = math.fsum(ratios) / len(ratios)
            if len(diffs) >= 2:
                mean, low, high, p = corrected_resampled_ttest(diffs, ratio)
            else:
                mean, low, high, p = diffs[0], math.nan, math.nan, math.nan
            wins = sum(1.0 if d > 0 else 0.5 if d == 0 else 0.0 for d in diffs) / len(diffs)
            results.append(
                PairedResult(ds_dir.name, model_dir.name, metric, baseline, variant, len(diffs), mean, low, high, p,
                             wins, ratio)
            )
    return results


def paired_markdown(results: list[PairedResult], digits: int = 3) -> str:
    """A markdown table of :func:`paired_comparison` results (empty string for none)."""
    if not results:
        return ""
    first = results[0]
    lines = [
        (
            f"| dataset | model | pairs | Δ {first.metric} ({first.variant} − {first.baseline}) "
            f"| 95% CI (corrected) | p (corrected t) | {first.variant} better |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ci = "n/a" if math.isnan(r.ci_low) else f"[{r.ci_low:+.{digits}f}, {r.ci_high:+.{digits}f}]"
        p = "n/a" if math.isnan(r.p_value) else f"{r.p_value:.2g}"
        lines.append(
            f"| {r.dataset} | {r.model} | {r.pairs} | {r.mean_diff:+.{digits}f} | {ci} | {p} | {r.win_rate:.0%} |"
        )
    return "\n".join(lines) + "\n"
