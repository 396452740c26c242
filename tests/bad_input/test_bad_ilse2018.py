"""Bad-input cases: packaged run configurations (``--config NAME``) and the optimiser option."""

import pytest
from bad_input_harness import assert_clear_error


@pytest.mark.parametrize(
    ("args", "contains"),
    [
        pytest.param(["mil", "train", "--config", "ilse2017", "-d", "musk1", "--out", "{tmp}/run"],
                     ["--config", "ilse2017", "ilse2018"], id="mil-train-unknown-run-config"),
        pytest.param(["mil", "train", "--config", "ilse2018", "-d", "musk1", "--optimizer", "lion",
                      "--out", "{tmp}/run"], ["--optimizer", "lion", "adam", "sgd"], id="mil-train-unknown-optimizer"),
    ],
)
def test_run_configs(args, contains, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert_clear_error(args, contains, watch=[tmp_path])
