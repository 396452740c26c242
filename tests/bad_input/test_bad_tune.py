"""Bad-input cases: `medmoe mil tune` and `medmoe mil compare --tune` (budget, storage, search space, folds)."""

import pytest
from bad_input_harness import assert_clear_error

TUNE = ["mil", "tune", "-d", "musk1", "--out", "{tmp}/tune"]
COMPARE = ["mil", "compare", "--tune", "-d", "musk1", "-m", "abmil", "--out", "{tmp}/cmp"]


def _space(tmp_path, text: str) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("args", "space", "contains"),
    [
        pytest.param([*TUNE, "--trials", "0"], None, ["--trials"], id="tune-zero-trials"),
        pytest.param([*TUNE, "--inner-k", "2"], None, ["--inner-k"], id="tune-inner-k-2"),
        pytest.param([*TUNE, "--storage", "nosuchdb://host/db"], None, ["--storage", "nosuchdb"],
                     id="tune-storage-unknown-dialect"),
        pytest.param([*TUNE, "--storage", "tune.db"], None, ["--storage", "database url"], id="tune-storage-not-url"),
        pytest.param([*TUNE, "--pruner", "hyperband"], None, ["--pruner", "median"], id="tune-bad-pruner"),
        pytest.param([*TUNE, "--metric", "speed"], None, ["--metric", "auroc"], id="tune-bad-metric"),
        pytest.param([*TUNE, "--metric", "c_index"], None, ["--metric", "c_index", "classification"],
                     id="tune-metric-of-another-task"),
        pytest.param([*TUNE, "--space", "{tmp}/missing.yaml"], None, ["--space", "missing.yaml"],
                     id="tune-space-missing-file"),
        pytest.param([*TUNE, "--space", "{space}"], "lr: {type: float, low: 1.0e-3\n", ["--space", "yaml"],
                     id="tune-space-invalid-yaml"),
        pytest.param([*TUNE, "--space", "{space}"], "lr: {type: float, low: 1.0e-3, high: 1.0e-5}\n",
                     ["--space", "'lr'", "low"], id="tune-space-low-above-high"),
        pytest.param([*TUNE, "--space", "{space}"], "lr: {type: float, low: 0.0, high: 1.0e-3, log: true}\n",
                     ["--space", "log scale"], id="tune-space-log-of-zero"),
        pytest.param([*TUNE, "--space", "{space}"], "seed: {type: int, low: 0, high: 3}\n",
                     ["--space", "'seed'", "not a tunable"], id="tune-space-untunable-setting"),
        pytest.param([*TUNE, "--space", "{space}"], "num_slots: {type: categorical, choices: []}\n",
                     ["--space", "num_slots", "non-empty"], id="tune-space-empty-choices"),
        pytest.param([*TUNE, "--space", "{space}"], "- lr\n- epochs\n", ["--space", "mapping"],
                     id="tune-space-not-a-mapping"),
        pytest.param([*COMPARE, "--trials", "0"], None, ["--trials"], id="compare-tune-zero-trials"),
        pytest.param([*COMPARE, "--jobs", "2"], None, ["--jobs", "--search-only"], id="compare-tune-jobs"),
        pytest.param([*COMPARE, "--storage", "postgres:/nohost"], None, ["--storage"], id="compare-tune-bad-storage"),
        pytest.param([*COMPARE, "--space", "{space}"], "lr: {type: float, hi: 1.0e-3}\n", ["--space", "unknown keys"],
                     id="compare-tune-space-unknown-key"),
    ],
)
def test_tune_inputs(args, space, contains, tmp_path):
    pytest.importorskip("optuna")
    space_path = _space(tmp_path, space) if space is not None else ""
    args = [a.replace("{tmp}", str(tmp_path)).replace("{space}", space_path) for a in args]
    assert_clear_error(args, contains, watch=[tmp_path])
    assert not (tmp_path / "tune").exists() and not (tmp_path / "cmp").exists()


def test_tune_refuses_a_folder_holding_another_run(tmp_path):
    pytest.importorskip("optuna")
    out = tmp_path / "tune"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_clear_error([*[a.replace("{tmp}", str(tmp_path)) for a in TUNE], "--trials", "1"], ["--out"],
                       watch=[tmp_path])
