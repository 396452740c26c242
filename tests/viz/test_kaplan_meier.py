"""Kaplan-Meier estimator, log-rank test (vs hand values and scikit-survival) and the risk-group plot."""

import math

import numpy as np
import pytest

from medmoe.viz.kaplan_meier import kaplan_meier, logrank_test, plot_risk_groups


def test_kaplan_meier_hand_example():
    # times 1 (event), 2 (censored), 3 (event), 3 (event), 5 (censored)
    grid, surv = kaplan_meier([1, 2, 3, 3, 5], [1, 0, 1, 1, 0])
    assert grid.tolist() == [1, 2, 3, 5]
    # S(1) = 4/5; flat at the censoring; S(3) = 4/5 * (1 - 2/3)
    np.testing.assert_allclose(surv, [0.8, 0.8, 0.8 / 3, 0.8 / 3])


def test_logrank_identical_groups_and_separated_groups():
    t = [1, 2, 3, 4, 1, 2, 3, 4]
    chi2, p = logrank_test(t, [1] * 8, [0, 0, 0, 0, 1, 1, 1, 1])
    assert chi2 == pytest.approx(0.0) and p == pytest.approx(1.0)
    chi2, p = logrank_test([1, 2, 3, 4, 10, 11, 12, 13], [1] * 8, [1, 1, 1, 1, 0, 0, 0, 0])
    assert p < 0.01
    assert all(math.isnan(v) for v in logrank_test([1, 2], [1, 1], [1, 1]))  # one group only
    assert all(math.isnan(v) for v in logrank_test([1, 2], [0, 0], [0, 1]))  # no event


def test_matches_scikit_survival():
    sksurv_np = pytest.importorskip("sksurv.nonparametric")
    from sksurv.compare import compare_survival

    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(6, 60))
        t = rng.integers(0, 10, n).astype(float) if trial % 2 else rng.exponential(1.0, n)
        e = rng.uniform(size=n) < 0.6
        e[0] = True
        g = rng.uniform(size=n) < 0.5
        g[:2] = [True, False]
        x_ref, s_ref = sksurv_np.kaplan_meier_estimator(e, t)
        x, s = kaplan_meier(t, e.astype(int))
        np.testing.assert_allclose(x, x_ref)
        np.testing.assert_allclose(s, s_ref, atol=1e-12)
        y = np.array(list(zip(e, t)), dtype=[("e", bool), ("t", float)])
        chi2_ref, p_ref = compare_survival(y, g)
        chi2, p = logrank_test(t, e, g)
        assert chi2 == pytest.approx(chi2_ref, rel=1e-10) and p == pytest.approx(p_ref, rel=1e-8, abs=1e-15)


def test_plot_risk_groups_writes_a_png(tmp_path):
    rng = np.random.default_rng(1)
    high = rng.uniform(size=40) < 0.5
    t = rng.exponential(1.0, 40) / np.where(high, 3.0, 1.0)
    e = rng.uniform(size=40) < 0.7
    path = plot_risk_groups(t, e, high, tmp_path / "km.png", title="test", time_label="months")
    assert path.stat().st_size > 10_000
    with pytest.raises(ValueError, match="risk-group flags"):
        plot_risk_groups(t, e, high[:5], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="finite"):
        kaplan_meier([1.0, float("inf")], [1, 0])


def test_numbers_at_risk_under_the_axis():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medmoe.viz.kaplan_meier import _numbers_at_risk

    fig, ax = plt.subplots()
    ax.set_xlim(0, 10)
    ax.set_xticks([0, 5, 10])
    t = np.array([1.0, 6.0, 11.0, 2.0, 3.0])
    high = np.array([False, False, False, True, True])
    _numbers_at_risk(ax, t, (("low", ~high, "b"), ("high", high, "r")))
    texts = [x.get_text() for x in ax.texts]
    plt.close(fig)
    assert texts == ["at risk", "3", "2", "1", "2", "0", "0"]
