"""Discrete-time survival: bins, NLL loss, risks, c-index (vs brute force and scikit-survival)."""

import math

import numpy as np
import pytest
import torch

from medmoe.engine.mil.survival import (
    assign_time_bins,
    concordance_index,
    nll_survival_loss,
    risk_scores,
    survival_bin_edges,
    survival_curves,
    survival_metrics,
)


def _brute_force_cindex(risk, times, events):
    """Harrell's c-index by looping over every ordered pair (the definition, written independently)."""
    num = den = 0.0
    for i in range(len(times)):
        if not events[i]:
            continue
        for j in range(len(times)):
            if i == j:
                continue
            if times[i] < times[j] or (times[i] == times[j] and not events[j]):
                den += 1
                if abs(risk[i] - risk[j]) <= 1e-8:
                    num += 0.5
                elif risk[i] > risk[j]:
                    num += 1
    return num / den if den else math.nan


def test_concordance_index_hand_cases():
    t, e = [1.0, 2.0, 3.0, 4.0], [1, 1, 1, 1]
    assert concordance_index([4, 3, 2, 1], t, e) == 1.0
    assert concordance_index([1, 2, 3, 4], t, e) == 0.0
    assert concordance_index([1, 1, 1, 1], t, e) == 0.5
    # censored patient 0 (t=1) is comparable to nobody as the earlier one; pairs: (1,2) (1,3) (2,3)
    assert concordance_index([9, 3, 1, 2], t, [0, 1, 1, 1]) == pytest.approx(2 / 3)
    # tied times: an event is comparable to a censored patient at the same time, not to another event
    assert concordance_index([2, 1], [5.0, 5.0], [1, 0]) == 1.0
    assert math.isnan(concordance_index([2, 1], [5.0, 5.0], [1, 1]))
    assert math.isnan(concordance_index([1, 2, 3], [1.0, 2.0, 3.0], [0, 0, 0]))


@pytest.mark.parametrize("seed", range(6))
def test_concordance_index_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 40
    times = rng.integers(0, 6, n).astype(float) if seed % 2 else rng.exponential(1.0, n)
    events = (rng.uniform(size=n) < 0.6).astype(int)
    risk = rng.integers(0, 3, n).astype(float) if seed % 3 == 0 else rng.standard_normal(n)
    ours = concordance_index(risk, times, events)
    assert ours == pytest.approx(_brute_force_cindex(risk, times, events), abs=1e-12)


def test_concordance_index_in_row_blocks_matches_full_pair_matrix():
    # 3,000 patients: the events are processed in 2**22 // 3000 = 1,398-row blocks (two blocks here)
    rng = np.random.default_rng(3)
    n = 3000
    t, e, r = (
        rng.integers(0, 50, n).astype(float),
        rng.uniform(size=n) < 0.7,
        rng.integers(0, 20, n).astype(float),
    )
    comparable = e[:, None] & ((t[:, None] < t[None, :]) | ((t[:, None] == t[None, :]) & ~e[None, :]))
    d = r[:, None] - r[None, :]
    expected = (
        ((d > 1e-8) & comparable).sum() + 0.5 * ((np.abs(d) <= 1e-8) & comparable).sum()
    ) / comparable.sum()
    assert concordance_index(r, t, e.astype(int)) == pytest.approx(expected, abs=1e-12)


def test_concordance_index_matches_scikit_survival():
    sksurv_metrics = pytest.importorskip("sksurv.metrics")
    rng = np.random.default_rng(0)
    for trial in range(40):
        n = int(rng.integers(5, 60))
        times = rng.integers(0, 8, n).astype(float) if trial % 2 else rng.exponential(1.0, n)
        events = rng.uniform(size=n) < 0.6
        if not events.any():
            continue
        risk = rng.integers(0, 4, n).astype(float) if trial % 3 == 0 else rng.standard_normal(n)
        ref = sksurv_metrics.concordance_index_censored(events, times, risk)[0]
        assert concordance_index(risk, times, events.astype(int)) == pytest.approx(ref, abs=1e-12)


def test_concordance_index_rejects_bad_input():
    with pytest.raises(ValueError, match="0 \\(censored\\) or 1"):
        concordance_index([1, 2], [1.0, 2.0], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        concordance_index([1, 2], [1.0, float("nan")], [1, 1])
    with pytest.raises(ValueError, match="risk scores for"):
        concordance_index([1, 2, 3], [1.0, 2.0], [1, 1])


def test_bin_edges_are_quantiles_of_uncensored_times():
    times = [1.0, 2.0, 3.0, 4.0, 5.0, 100.0, 200.0]
    events = [1, 1, 1, 1, 1, 0, 0]  # the censored long times must not move the edges
    edges = survival_bin_edges(times, events, 4)
    assert edges == pytest.approx(np.quantile([1, 2, 3, 4, 5], [0.25, 0.5, 0.75]).tolist())
    assert survival_bin_edges(times, events, 1) == []
    # left-closed bins; below the first edge -> 0, at or beyond the last -> K - 1
    assert assign_time_bins([0.0, 2.0, 2.5, 3.0, 4.0, 1e6], edges).tolist() == [0, 1, 1, 2, 3, 3]


def test_bin_edges_errors():
    with pytest.raises(ValueError, match="every training patient is censored"):
        survival_bin_edges([1.0, 2.0], [0, 0], 4)
    with pytest.raises(ValueError, match=">= 0"):
        survival_bin_edges([-1.0, 2.0], [1, 1], 4)
    with pytest.raises(ValueError, match="num_bins"):
        survival_bin_edges([1.0, 2.0], [1, 1], 0)
    with pytest.raises(ValueError, match="non-decreasing"):
        assign_time_bins([1.0], [3.0, 2.0])


def _reference_nll(logits, bins, events, alpha):
    """The loss written with probabilities, as in the survival papers (hazards, cumulative product)."""
    h = torch.sigmoid(logits)
    s = torch.cumprod(1 - h, dim=1)
    s_pad = torch.cat([torch.ones_like(s[:, :1]), s], 1)
    y = bins.view(-1, 1)
    c = 1 - events.view(-1, 1).to(logits.dtype)  # censorship
    unc = -(1 - c) * (torch.log(s_pad.gather(1, y)) + torch.log(h.gather(1, y)))
    cen = -c * torch.log(s_pad.gather(1, y + 1))
    return ((1 - alpha) * (unc + cen) + alpha * unc).mean()


@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_nll_loss_matches_probability_form_values_and_gradients(alpha):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 4, generator=g, dtype=torch.float64)
    bins = torch.randint(0, 4, (32,), generator=g)
    events = torch.randint(0, 2, (32,), generator=g)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    ours = nll_survival_loss(a, bins, events, alpha=alpha)
    ref = _reference_nll(b, bins, events, alpha)
    ours.backward()
    ref.backward()
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-12)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


def test_nll_loss_is_finite_for_extreme_logits_and_checks_input():
    logits = torch.tensor([[80.0, -80.0, 80.0], [-80.0, -80.0, -80.0]], requires_grad=True)
    loss = nll_survival_loss(logits, torch.tensor([2, 2]), torch.tensor([1, 0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert nll_survival_loss(logits, torch.tensor([0, 1]), torch.tensor([1, 0]), reduction="none").shape == (
        2,
    )
    with pytest.raises(ValueError, match="time bins must lie"):
        nll_survival_loss(logits, torch.tensor([0, 3]), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="alpha"):
        nll_survival_loss(logits, torch.tensor([0, 1]), torch.tensor([1, 0]), alpha=2.0)
    with pytest.raises(ValueError, match="reduction"):
        nll_survival_loss(logits, torch.tensor([0, 1]), torch.tensor([1, 0]), reduction="max")


def test_curves_risks_and_metrics():
    logits = torch.tensor([[3.0, 3.0], [-3.0, -3.0]])  # patient 0: high hazards
    curves = survival_curves(logits)
    assert torch.all(curves[:, 1] <= curves[:, 0])  # survival never increases
    assert curves[0, 0] == pytest.approx(1 - torch.sigmoid(torch.tensor(3.0)).item())
    risk = risk_scores(logits)
    assert risk[0] > risk[1]
    m = survival_metrics(logits, [1.0, 5.0], [1, 0], edges=[2.0])
    assert m["c_index"] == 1.0 and m["loss"] > 0
    with pytest.raises(ValueError, match="bin edges"):
        survival_metrics(logits, [1.0, 5.0], [1, 0], edges=[1.0, 2.0])
    with pytest.raises(ValueError, match="must be \\(n, K\\)"):
        risk_scores(torch.zeros(3))
