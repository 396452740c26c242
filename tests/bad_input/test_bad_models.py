"""Bad-input cases: model names."""

import pytest
from bad_input_harness import assert_clear_error


@pytest.mark.parametrize(
    ("args", "contains"),
    [
        pytest.param(["mil", "train", "-m", "nosuch.base", "-d", "musk1", "--out", "{tmp}/run"], ["nosuch"],
                     id="mil-train-unknown-model"),
        pytest.param(["mil", "train", "-m", "abmil.base.unii", "-d", "musk1", "--out", "{tmp}/run"],
                     ["unknown encoder 'unii'", "did you mean 'uni'", "leave the encoder out"],
                     id="mil-train-misspelt-encoder"),
    ],
)
def test_model_names(args, contains, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert_clear_error(args, contains, watch=[tmp_path])
