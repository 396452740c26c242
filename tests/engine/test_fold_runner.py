"""medmoe.engine.mil.fold_runner: folds in worker processes give the results of the sequential run."""

import json
import logging

import pytest
import torch
from engine_synthetic import TINY_ABMIL, synthetic_bags

from medmoe.engine import TrainConfig, compare, make_fabric, run_cross_validation
from medmoe.engine.mil.fold_runner import run_folds

CFG = TrainConfig(epochs=2, lr=5e-3, min_epochs=1, patience=None, progress=False, accelerator="cpu")
TINY_MAMMOTH = {"num_experts": 2, "num_slots": 2, "num_heads": 2, "slot_dim": 8}


def _tests(result):
    return [(r["dataset"], r["model"], r["patch_embed"], r["summary"]) for r in result.rows]


def test_two_jobs_match_one_job(tmp_path, caplog):
    data = {"a": synthetic_bags(18, seed=0), "b": synthetic_bags(18, seed=1)}
    kwargs = {"k": 3, "seeds": [0], "cfg": CFG, "model_overrides": TINY_ABMIL,
              "patch_embed_args": {"mammoth": TINY_MAMMOTH}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers below get 2 // 2 = 1 thread each: same arithmetic
    try:
        one = compare(["abmil"], data, out_dir=tmp_path / "one", **kwargs)
    finally:
        torch.set_num_threads(threads)
    caplog.clear()  # records of the sequential run (logged when an earlier test configured the CLI's logging)
    with caplog.at_level(logging.INFO, logger="medmoe.progress"):
        two = compare(["abmil"], data, out_dir=tmp_path / "two", jobs=2, **kwargs)
    assert _tests(one) == _tests(two)
    lines = [r.getMessage() for r in caplog.records if r.name == "medmoe.progress"]
    assert len(lines) == 12 and all(line.startswith(f"[{i + 1}/12] ") for i, line in enumerate(lines))
    for variant in ("a/abmil/linear", "b/abmil/mammoth"):
        saved = json.loads((tmp_path / "two" / variant / "results.json").read_text())
        assert [(r["seed"], r["fold"]) for r in saved["runs"]] == [(0, 0), (0, 1), (0, 2)]
    # resuming a finished grid with jobs only re-evaluates, in the parent, without starting workers
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="medmoe.progress"):
        again = compare(["abmil"], data, out_dir=tmp_path / "two", jobs=2, resume=True, **kwargs)
    assert _tests(again) == _tests(two)
    assert sum("finished before" in r.getMessage() for r in caplog.records if r.name == "medmoe.progress") == 12


def test_a_worker_error_reaches_the_caller(tmp_path):
    with pytest.raises(ValueError, match="embed_dim"):
        run_cross_validation("abmil.base", synthetic_bags(12), k=3, cfg=CFG, out_dir=tmp_path,
                             model_overrides={**TINY_ABMIL, "embed_dim": -4}, jobs=2)


class _Unpicklable:
    def __reduce__(self):
        raise TypeError("cannot pickle this dataset")


def test_bad_jobs_settings_are_explained(tmp_path):
    data = synthetic_bags(12)
    with pytest.raises(ValueError, match="positive integer"):
        run_folds([], {}, CFG, jobs=0)
    with pytest.raises(ValueError, match="cannot share a Fabric"):
        run_cross_validation("abmil.base", data, k=3, cfg=CFG, out_dir=tmp_path, model_overrides=TINY_ABMIL,
                             fabric=make_fabric(CFG), jobs=2)
    data.unpicklable = _Unpicklable()
    with pytest.raises(ValueError, match="picklable"):
        run_cross_validation("abmil.base", data, k=3, cfg=CFG, out_dir=tmp_path / "p", model_overrides=TINY_ABMIL,
                             jobs=2)


def test_a_script_without_main_guard_gets_the_reason(tmp_path):
    """spawn re-imports the calling script; without `if __name__ == "__main__":` the pool breaks."""
    import subprocess
    import sys

    script = tmp_path / "no_guard.py"
    script.write_text(
        "import torch\n"
        "from medmoe.data import InMemoryBags\n"
        "from medmoe.engine import TrainConfig, run_cross_validation\n"
        "data = InMemoryBags([torch.ones(5, 4) * (i % 2) for i in range(12)], [i % 2 for i in range(12)])\n"
        "run_cross_validation('meanmil.base', data, k=3, cfg=TrainConfig(epochs=1, progress=False, "
        f"accelerator='cpu'), out_dir={str(tmp_path / 'out')!r}, jobs=2)\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False
    )
    assert proc.returncode != 0
    assert "main guard" in proc.stderr and 'if __name__ == "__main__":' in proc.stderr
