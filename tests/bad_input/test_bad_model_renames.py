"""Bad-input cases: model names renamed by issue 24 (same name, same model) say what they became."""

import pytest
from bad_input_harness import assert_clear_error


@pytest.mark.parametrize(
    ("args", "contains"),
    [
        pytest.param(["mil", "train", "-m", "clam.base_svm", "-d", "musk1", "--out", "{tmp}/run"],
                     ["clam.base_svm was renamed", "clam.base", "clam.base_ce"], id="mil-train-clam-base-svm"),
        pytest.param(["mil", "train", "-m", "rrt.base_millab.uni", "-d", "musk1", "--out", "{tmp}/run"],
                     ["rrt.base_millab was renamed", "now rrt.base", "rrt.base_paper"], id="mil-train-rrt-base-millab"),
        pytest.param(["mil", "compare", "-m", "clam.base_svm", "-d", "musk1", "--out", "{tmp}/cmp"],
                     ["clam.base_svm was renamed", "clam.base"], id="mil-compare-clam-base-svm"),
    ],
)
def test_renamed_model_names(args, contains, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    (tmp_path / "keep.txt").write_text("a user's file")
    assert_clear_error(args, contains, watch=[tmp_path])
