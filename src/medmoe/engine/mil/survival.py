"""Discrete-time survival analysis for MIL models: time bins, the NLL loss, risks and the c-index.

The convention of the pathology survival literature (Zadeh & Schmid 2020; PORPOISE, MCAT, SurvPath):

* follow-up times are cut into ``K`` bins at the quantiles of the **uncensored** training times
  (:func:`survival_bin_edges`), bins are left-closed, the first and last are open-ended
  (:func:`assign_time_bins`);
* a model with ``K`` outputs gives per-bin hazards ``h_k = sigmoid(z_k)`` and the survival function
  ``S_k = prod_{j <= k} (1 - h_j)``;
* the loss (:func:`nll_survival_loss`) is the negative log-likelihood of the observed bin ``y``:
  ``-log S_{y-1} - log h_y`` for an event and ``-log S_y`` for a censored patient (``S_{-1} = 1``),
  optionally up-weighting the uncensored term by ``alpha``;
* the risk is ``-sum_k S_k`` (:func:`risk_scores`) and discrimination is Harrell's concordance index
  (:func:`concordance_index`, the pairs and ties of scikit-survival's ``concordance_index_censored``).

Everything works in log space (``log h = logsigmoid(z)``, ``log(1 - h) = logsigmoid(-z)``), so large
logits neither overflow nor need the ``eps`` clamps of the reference code.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "SURVIVAL_METRIC_NAMES",
    "assign_time_bins",
    "concordance_index",
    "nll_survival_loss",
    "risk_scores",
    "survival_bin_edges",
    "survival_curves",
    "survival_metrics",
]

logger = logging.getLogger(__name__)

#: Metrics of :func:`survival_metrics` (besides ``loss``), in table order.
SURVIVAL_METRIC_NAMES: tuple[str, ...] = ("c_index",)


def _as_float64(values: Sequence[float] | Tensor, name: str) -> Tensor:
    t = torch.as_tensor(values, dtype=torch.float64).flatten()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite; got {int((~torch.isfinite(t)).sum())} NaN/inf value(s)")
    return t


def _as_events(events: Sequence[int] | Tensor, n: int) -> Tensor:
    e = torch.as_tensor(events).flatten()
    if e.numel() != n:
        raise ValueError(f"got {e.numel()} event indicators for {n} times")
    if e.dtype == torch.bool:
        return e
    bad = ~((e == 0) | (e == 1))
    if bool(bad.any()):
        raise ValueError(f"event indicators must be 0 (censored) or 1 (event), got {e[bad][:5].tolist()}")
    return e == 1


def survival_bin_edges(
    times: Sequence[float] | Tensor, events: Sequence[int] | Tensor, num_bins: int
) -> list[float]:
    """The ``num_bins - 1`` inner bin edges: quantiles of the uncensored ``times``.

    Quantiles are linearly interpolated (``numpy.quantile``'s default, what ``pandas.qcut`` uses).
    Edges that coincide (many tied event times) are kept, which leaves some bins empty; a warning says so.

    Raises:
        ValueError: ``num_bins < 1``, non-finite or negative times, or no uncensored time to cut at
            (with ``num_bins > 1``).
    """
    if not isinstance(num_bins, int) or isinstance(num_bins, bool) or num_bins < 1:
        raise ValueError(f"num_bins must be an integer >= 1, got {num_bins!r}")
    t = _as_float64(times, "survival times")
    if bool((t < 0).any()):
        raise ValueError(f"survival times must be >= 0, got minimum {float(t.min())}")
    e = _as_events(events, t.numel())
    if num_bins == 1:
        return []
    observed = t[e]
    if observed.numel() == 0:
        raise ValueError(
            "no uncensored survival time to place the time bins at: every training patient is censored"
        )
    q = torch.linspace(0, 1, num_bins + 1, dtype=torch.float64)[1:-1]
    edges = torch.quantile(observed, q).tolist()
    if len(set(edges)) < len(edges):
        logger.warning(
            "survival time bins: %d of %d inner edges coincide (tied event times); some bins stay empty",
            len(edges) - len(set(edges)),
            len(edges),
        )
    return [float(v) for v in edges]


def assign_time_bins(times: Sequence[float] | Tensor, edges: Sequence[float]) -> Tensor:
    """Bin index ``(n,)`` int64 of every time: the number of inner ``edges`` at or below it.

    Bins are left-closed, ``[edge_{k-1}, edge_k)``; times below the first edge fall into bin 0 and times
    at or beyond the last into bin ``len(edges)``.
    """
    t = _as_float64(times, "survival times")
    inner = torch.as_tensor(list(edges), dtype=torch.float64)
    if inner.numel() > 1 and bool((inner[1:] < inner[:-1]).any()):
        raise ValueError(f"bin edges must be non-decreasing, got {list(edges)}")
    return torch.searchsorted(inner, t, right=True).long()


def _log_survival(logits: Tensor) -> tuple[Tensor, Tensor]:
    """``(log h, log S)``, both ``(n, K)``, from hazard logits ``(n, K)``."""
    log_h = F.logsigmoid(logits)
    log_s = torch.cumsum(F.logsigmoid(-logits), dim=-1)
    return log_h, log_s


def nll_survival_loss(
    logits: Tensor, bins: Tensor, events: Tensor, alpha: float = 0.0, reduction: str = "mean"
) -> Tensor:
    """Discrete-time survival negative log-likelihood.

    Args:
        logits: hazard logits ``(n, K)``.
        bins: observed time bin ``(n,)`` int in ``[0, K)``.
        events: ``(n,)`` 1 / True where the event was observed, 0 / False where censored.
        alpha: weight moved onto the uncensored term: ``(1 - alpha) * nll + alpha * nll_uncensored``.
        reduction: ``'mean'``, ``'sum'`` or ``'none'`` (per patient, ``(n,)``).

    Returns:
        The loss (a scalar, or ``(n,)`` with ``reduction='none'``) in the dtype of ``logits``.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (n, K), got shape {tuple(logits.shape)}")
    n, k = logits.shape
    bins = bins.to(device=logits.device, dtype=torch.long).view(-1)
    if bins.numel() != n:
        raise ValueError(f"got {bins.numel()} time bins for {n} rows of logits")
    if n and (int(bins.min()) < 0 or int(bins.max()) >= k):
        raise ValueError(f"time bins must lie in [0, {k}), got range [{int(bins.min())}, {int(bins.max())}]")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    event = events.to(device=logits.device).view(-1).to(logits.dtype)
    log_h, log_s = _log_survival(logits)
    # log S before the observed bin (S_{-1} = 1) and at it
    log_s_padded = F.pad(log_s, (1, 0))
    log_s_before = log_s_padded.gather(1, bins.view(-1, 1)).squeeze(1)
    log_s_at = log_s.gather(1, bins.view(-1, 1)).squeeze(1)
    log_h_at = log_h.gather(1, bins.view(-1, 1)).squeeze(1)
    uncensored = -event * (log_s_before + log_h_at)
    censored = -(1 - event) * log_s_at
    loss = (1 - alpha) * (uncensored + censored) + alpha * uncensored
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def survival_curves(logits: Tensor) -> Tensor:
    """Survival probabilities ``S_k = P(T beyond bin k)``, ``(n, K)``, from hazard logits ``(n, K)``."""
    if logits.dim() != 2:
        raise ValueError(f"hazard logits must be (n, K), got shape {tuple(logits.shape)}")
    return torch.exp(_log_survival(logits.float())[1])


def risk_scores(logits: Tensor) -> Tensor:
    """Risk ``(n,)``: ``-sum_k S_k`` (higher = earlier expected event)."""
    return -survival_curves(logits).sum(dim=-1)


def concordance_index(
    risk: Sequence[float] | Tensor,
    times: Sequence[float] | Tensor,
    events: Sequence[int] | Tensor,
    tied_tol: float = 1e-8,
) -> float:
    """Harrell's concordance index of ``risk`` against censored survival ``times``.

    A pair ``(i, j)`` is comparable when patient ``i`` had the event and ``t_i < t_j``, or ``t_i == t_j``
    and ``j`` is censored; it is concordant when ``risk_i > risk_j`` and counts one half when the risks tie
    (within ``tied_tol``). Returns ``nan`` without comparable pairs (scikit-survival raises instead).
    Memory is bounded by processing the events in blocks of rows.
    """
    t = _as_float64(times, "survival times")
    r = _as_float64(risk, "risk scores")
    if r.numel() != t.numel():
        raise ValueError(f"got {r.numel()} risk scores for {t.numel()} times")
    e = _as_events(events, t.numel())
    idx = e.nonzero().flatten()
    concordant = 0.0
    comparable = 0
    block = max(1, 2**22 // max(t.numel(), 1))
    for start in range(0, idx.numel(), block):
        rows = idx[start : start + block]
        ti, ri = t[rows].unsqueeze(1), r[rows].unsqueeze(1)
        pair = (ti < t) | ((ti == t) & ~e)
        diff = ri - r
        tie = diff.abs() <= tied_tol
        concordant += float(((diff > 0) & ~tie & pair).sum()) + 0.5 * float((tie & pair).sum())
        comparable += int(pair.sum())
    return concordant / comparable if comparable else math.nan


def survival_metrics(
    logits: Tensor,
    times: Sequence[float] | Tensor,
    events: Sequence[int] | Tensor,
    edges: Sequence[float],
    alpha: float = 0.0,
) -> dict[str, float]:
    """``{'c_index', 'loss'}`` of hazard logits ``(n, K)``: c-index of :func:`risk_scores` and the mean
    :func:`nll_survival_loss` with the times binned at ``edges``."""
    logits = logits.double().cpu()
    if len(edges) != logits.shape[1] - 1:
        raise ValueError(
            f"{logits.shape[1]} hazard outputs need {logits.shape[1] - 1} bin edges, got {len(edges)}"
        )
    bins = assign_time_bins(times, edges)
    ev = _as_events(events, bins.numel())
    return {
        "c_index": concordance_index(risk_scores(logits), times, ev),
        "loss": float(nll_survival_loss(logits, bins, ev, alpha=alpha)),
    }
