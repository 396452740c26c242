"""medmoe.engine.mil.comparison_summary and `medmoe mil summarize`: tables of finished folds, partial grids."""

import json
import statistics

import pytest
from typer.testing import CliRunner

from medmoe.cli.main import app
from medmoe.engine import collect_comparison


def write_fold(root, dataset, model, embed, seed, fold, auroc, f1=0.5):
    d = root / dataset / model / embed / f"seed{seed}" / f"fold{fold}"
    d.mkdir(parents=True)
    (d / "fold_result.json").write_text(json.dumps({"test_metrics": {"auroc": auroc, "f1": f1, "kappa": None}}))


@pytest.fixture
def grid(tmp_path):
    for seed in (0, 1):
        for fold in range(3):
            write_fold(tmp_path, "musk1", "abmil", "linear", seed, fold, 0.5 + 0.1 * fold)
    write_fold(tmp_path, "musk1", "abmil", "mammoth", 0, 0, 0.9)  # a grid still running: 1 fold
    (tmp_path / "musk1" / "abmil" / "mammoth" / "seed0" / "fold1").mkdir()  # started, not finished
    write_fold(tmp_path, "elephant", "meanmil", "linear", 3, 0, 0.7)
    return tmp_path


def test_collects_finished_folds_with_counts(grid):
    result = collect_comparison(grid)
    rows = {(r["dataset"], r["model"], r["patch_embed"]): r for r in result.rows}
    assert list(rows) == [("elephant", "meanmil", "linear"), ("musk1", "abmil", "linear"),
                          ("musk1", "abmil", "mammoth")]
    lin = rows[("musk1", "abmil", "linear")]
    assert lin["runs"] == 6 and lin["seeds"] == [0, 1]
    mean, std = lin["summary"]["auroc"]
    assert mean == pytest.approx(0.6) and std == pytest.approx(statistics.stdev([0.5, 0.6, 0.7] * 2))
    assert rows[("musk1", "abmil", "mammoth")]["runs"] == 1
    assert rows[("elephant", "meanmil", "linear")]["seeds"] == [3]
    table = result.to_markdown(["auroc"], show_runs=True)
    assert "| musk1 | abmil | linear | 6 | 0.600 ± " in table


def test_filters_and_min_runs(grid):
    result = collect_comparison(grid, datasets=["musk1"], models=["abmil"], min_runs=2)
    assert [(r["patch_embed"], r["runs"]) for r in result.rows] == [("linear", 6)]


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        collect_comparison(tmp_path / "missing")
    with pytest.raises(ValueError, match="no finished fold"):
        collect_comparison(tmp_path)


def test_cli_summarize_writes_table_and_plot(grid, tmp_path):
    out = tmp_path / "report" / "table"
    res = CliRunner().invoke(app, ["mil", "summarize", str(grid), "--metric", "auroc", "--metric", "f1",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    text = (tmp_path / "report" / "table.md").read_text()
    assert text.splitlines()[0] == "| dataset | model | patch_embed | runs | auroc | f1 |"
    assert "| musk1 | abmil | mammoth | 1 | 0.900 ± 0.000 | 0.500 ± 0.000 |" in text
    assert (tmp_path / "report" / "table.png").stat().st_size > 1000
    bad = CliRunner().invoke(app, ["mil", "summarize", str(grid), "--metric", "nope"])
    assert bad.exit_code != 0 and "unknown metric" in bad.output
