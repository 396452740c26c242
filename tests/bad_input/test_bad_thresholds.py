"""Bad-input cases: checkpoints whose stored decision thresholds cannot be used (issue 25, point 2).

A checkpoint written by `mil train` always holds a valid record; these come from hand-made or damaged
checkpoints. `mil eval`, `mil predict` and `mil heatmap` refuse them with one line instead of a traceback."""

from __future__ import annotations

import pytest
from bad_input_harness import assert_clear_error
from inference_inputs import constant_checkpoint, feature_folder

from medmoe.engine import load_checkpoint, save_checkpoint
from medmoe.engine.mil.thresholds import THRESHOLDS_KEY

RECORDS = [
    pytest.param("0.3", ["decision_thresholds", "mapping", "save the checkpoint again"], id="record-not-a-mapping"),
    pytest.param({"values": ["low"]}, ["finite numbers", "'low'"], id="threshold-not-a-number"),
    pytest.param({"values": [None]}, ["finite numbers", "none"], id="threshold-null"),
    pytest.param({"values": [0.2, 0.7]}, ["holds 2 decision thresholds", "1 binary decision"], id="two-for-binary"),
    pytest.param({"values": []}, ["holds 0 decision thresholds"], id="none-for-binary"),
]


def _checkpoint(tmp_path, record):
    good = constant_checkpoint(tmp_path / "good")
    model, info = load_checkpoint(good)
    extra = {"class_names": info["class_names"], "task": "classification", THRESHOLDS_KEY: record}
    return save_checkpoint(tmp_path / "ckpt", model, extra)


@pytest.mark.parametrize(("record", "contains"), RECORDS)
@pytest.mark.parametrize("command", ["eval", "predict", "heatmap"])
def test_unusable_stored_thresholds(command, record, contains, tmp_path):
    ckpt = _checkpoint(tmp_path, record)
    features, labels = feature_folder(tmp_path, {"a": "normal", "b": "tumor"})
    out = tmp_path / "out"
    args = {
        "eval": ["mil", "eval", ckpt, "--features", features, "--labels", labels],
        "predict": ["mil", "predict", ckpt, features, "--labels", labels, "--out", out / "p.csv"],
        "heatmap": ["mil", "heatmap", ckpt, "--features", features / "a.h5", "--out", out],
    }[command]
    assert_clear_error(args, contains, watch=[ckpt, features])
    assert not (out / "p.csv").exists()
