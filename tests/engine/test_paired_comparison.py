"""medmoe.engine.mil.paired_comparison: fold-paired differences and the corrected resampled t-test."""

import json
import logging
import math

import pytest
from scipy import stats
from typer.testing import CliRunner

from medmoe.cli.main import app
from medmoe.data.splits import Split, save_splits
from medmoe.engine import paired_comparison
from medmoe.engine.mil.paired_comparison import corrected_resampled_ttest, paired_markdown

SPLITS = [Split(train=list(range(8)), val=[8], test=[9, 10]), Split(train=list(range(2, 10)), val=[0], test=[1, 11])]
IDS = [f"bag{i}" for i in range(12)]


def write_variant(root, embed, seed, values, splits=SPLITS):
    seed_dir = root / "musk1" / "abmil" / embed / f"seed{seed}"
    seed_dir.mkdir(parents=True)
    save_splits(splits, seed_dir / "splits.json", bag_ids=IDS)
    for fold, value in enumerate(values):
        (seed_dir / f"fold{fold}").mkdir()
        if value == "running":
            continue
        metrics = {"auroc": value, "f1": 0.5}
        (seed_dir / f"fold{fold}" / "fold_result.json").write_text(json.dumps({"test_metrics": metrics}))


def test_without_correction_it_is_the_paired_t_test():
    diffs = [0.1, -0.05, 0.2, 0.0, 0.07, 0.12]
    mean, low, high, p = corrected_resampled_ttest(diffs, 0.0)
    ref = stats.ttest_1samp(diffs, 0.0)
    assert mean == pytest.approx(sum(diffs) / 6)
    assert p == pytest.approx(ref.pvalue)
    ci = ref.confidence_interval(0.95)
    assert (low, high) == pytest.approx((ci.low, ci.high))


def test_the_correction_widens_the_interval_and_raises_p():
    diffs = [0.1, -0.05, 0.2, 0.0, 0.07, 0.12]
    _, low0, high0, p0 = corrected_resampled_ttest(diffs, 0.0)
    mean, low, high, p = corrected_resampled_ttest(diffs, 0.25)
    # se grows by sqrt((1/J + r) / (1/J))
    assert (high - mean) / (high0 - mean) == pytest.approx(math.sqrt((1 / 6 + 0.25) * 6))
    assert low < low0 and p > p0


def test_degenerate_inputs():
    mean, low, high, p = corrected_resampled_ttest([0.1, 0.1, 0.1], 0.1)  # no spread: certain, up to rounding
    assert (mean, low, high) == pytest.approx((0.1, 0.1, 0.1)) and p < 1e-12
    assert corrected_resampled_ttest([0.0, 0.0], 0.1)[3] == 1.0
    with pytest.raises(ValueError, match="at least 2"):
        corrected_resampled_ttest([0.1], 0.1)
    with pytest.raises(ValueError, match="test_train_ratio"):
        corrected_resampled_ttest([0.1, 0.2], -1.0)


def test_pairs_only_finished_folds_on_identical_splits(tmp_path, caplog):
    write_variant(tmp_path, "linear", 0, [0.5, 0.6])
    write_variant(tmp_path, "mammoth", 0, [0.7, "running"])
    write_variant(tmp_path, "linear", 1, [0.5, float("nan")])
    write_variant(tmp_path, "mammoth", 1, [0.4, 0.9])
    other = [Split(train=list(range(4, 12)), val=[3], test=[0, 1]), SPLITS[1]]
    write_variant(tmp_path, "linear", 2, [0.5, 0.5])
    write_variant(tmp_path, "mammoth", 2, [0.9, 0.9], splits=other)  # different folds: never paired
    with caplog.at_level(logging.WARNING):
        (result,) = paired_comparison(tmp_path, "auroc")
    assert "different splits" in caplog.text
    # pairs: seed 0 fold 0 (+0.2) and seed 1 fold 0 (-0.1); the running fold and the NaN fold are left out
    assert result.pairs == 2 and result.mean_diff == pytest.approx(0.05)
    assert result.win_rate == 0.5 and result.test_train_ratio == pytest.approx(2 / 8)
    _, low, high, p = corrected_resampled_ttest([0.2, -0.1], 0.25)
    assert (result.ci_low, result.ci_high, result.p_value) == pytest.approx((low, high, p))
    table = paired_markdown([result])
    assert "| musk1 | abmil | 2 | +0.050 |" in table and "Δ auroc (mammoth − linear)" in table
    assert paired_comparison(tmp_path, "auroc", models=["clam"]) == []
    with pytest.raises(ValueError, match="not a folder"):
        paired_comparison(tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown metric 'aurc'"):
        paired_comparison(tmp_path, "aurc")
    with pytest.raises(ValueError, match="two different"):
        paired_comparison(tmp_path, baseline="linear", variant="linear")


def test_cli_summarize_prints_the_paired_table(tmp_path):
    write_variant(tmp_path, "linear", 0, [0.5, 0.6])
    write_variant(tmp_path, "mammoth", 0, [0.7, 0.65])
    res = CliRunner().invoke(app, ["mil", "summarize", str(tmp_path), "--metric", "auroc", "--out", str(tmp_path / "t")])
    assert res.exit_code == 0, res.output
    assert "| musk1 | abmil | 2 | +0.125 |" in res.output
    assert "| musk1 | abmil | 2 | +0.125 |" in (tmp_path / "t.md").read_text()
    res = CliRunner().invoke(app, ["mil", "summarize", str(tmp_path), "--no-paired", "--out", str(tmp_path / "u")])
    assert res.exit_code == 0 and "corrected" not in res.output
    res = CliRunner().invoke(app, ["mil", "summarize", str(tmp_path), "--variant", "linear", "--out", str(tmp_path / "v")])
    assert res.exit_code == 2 and "two different" in res.output
