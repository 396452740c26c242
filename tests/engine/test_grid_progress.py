import logging
import math
from types import SimpleNamespace

import pytest
from engine_synthetic import TINY_ABMIL, synthetic_bags

from medmoe.engine import TrainConfig, run_cross_validation
from medmoe.engine.mil.grid_progress import GridProgress, format_duration


def _result(auroc=0.9, epochs=3):
    return SimpleNamespace(monitor="auroc", test_metrics={"auroc": auroc}, val_metrics={"auroc": 1.0}, epochs_run=epochs)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4, "0 s"), (45, "45 s"), (90, "2 min"), (3599, "1 h 00 min"), (5520, "1 h 32 min"), (math.nan, "?"), (-1, "?")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_eta_counts_only_trained_runs(monkeypatch, caplog):
    clock = iter([0.0, 10.0, 10.0, 10.5, 20.0, 50.0])  # run 1: 10 s, run 2 (finished before), run 3: 30 s
    monkeypatch.setattr("medmoe.engine.mil.grid_progress.time.perf_counter", lambda: next(clock))
    progress = GridProgress(5)
    assert math.isnan(progress.eta())
    with caplog.at_level(logging.INFO, logger="medmoe.progress"):
        progress.start_run()
        progress.finish_run("musk1 abmil linear seed 0 fold 0", _result())
        assert progress.eta() == pytest.approx(4 * 10.0)
        progress.start_run()
        progress.finish_run("musk1 abmil linear seed 0 fold 1", _result(), skipped=True)
        assert progress.eta() == pytest.approx(3 * 10.0)  # the skipped run does not shorten the mean
        progress.start_run()
        progress.finish_run("musk1 abmil linear seed 0 fold 2", _result(0.75, 7))
    assert progress.done == 3 and progress.eta() == pytest.approx(2 * 20.0)
    lines = [r.getMessage() for r in caplog.records if r.name == "medmoe.progress"]
    assert lines[0] == "[1/5] musk1 abmil linear seed 0 fold 0: test auroc 0.900, 10.0 s (3 epochs); 40 s left"
    assert lines[1].startswith("[2/5] musk1 abmil linear seed 0 fold 1: test auroc 0.900, finished before;")
    assert lines[2] == "[3/5] musk1 abmil linear seed 0 fold 2: test auroc 0.750, 30.0 s (7 epochs); 40 s left"


def test_eta_follows_the_latest_runs():
    progress = GridProgress(100)
    for _ in range(20):
        progress.record_run("light", _result(), 1.0)
    progress.parallel = 2
    for _ in range(10):
        progress.record_run("heavy", _result(), 50.0)
    assert progress.eta() == pytest.approx(70 * 50.0 / 2)  # the last ten runs, two at a time


def test_disabled_progress_counts_silently(caplog):
    progress = GridProgress(2, enabled=False)
    with caplog.at_level(logging.INFO, logger="medmoe.progress"):
        progress.start_run()
        progress.finish_run("x", _result())
    assert progress.done == 1 and not [r for r in caplog.records if r.name == "medmoe.progress"]
    with pytest.raises(ValueError, match="at least one run"):
        GridProgress(0)


def test_cross_validation_logs_each_run_and_resume_skips(tmp_path, caplog):
    cfg = TrainConfig(epochs=1, lr=5e-3, min_epochs=1, patience=None, progress=False, accelerator="cpu")
    data = synthetic_bags(24)
    with caplog.at_level(logging.INFO, logger="medmoe.progress"):
        run_cross_validation("abmil.base", data, k=3, cfg=cfg, out_dir=tmp_path, model_overrides=TINY_ABMIL)
        run_cross_validation(
            "abmil.base", data, k=3, cfg=cfg, out_dir=tmp_path, model_overrides=TINY_ABMIL, resume=True, label="again"
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "medmoe.progress"]
    assert [line.split(":")[0] for line in lines] == [
        "[1/3] abmil.base seed 0 fold 0",
        "[2/3] abmil.base seed 0 fold 1",
        "[3/3] abmil.base seed 0 fold 2",
        "[1/3] again seed 0 fold 0",
        "[2/3] again seed 0 fold 1",
        "[3/3] again seed 0 fold 2",
    ]
    assert all("finished before" in line for line in lines[3:]) and lines[2].endswith("0 s left")
