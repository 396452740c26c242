"""Two CPU processes (DDP, gloo) reach the same model as one process with the same effective batch.

With ``batch_size=1`` on each of 2 ranks, rank r takes bag ``order[2 s + r]`` at step s: the same pairs a
single process sees with ``batch_size=2``, and DDP's gradient average equals the batch-mean gradient.
So without dropout both runs must agree up to floating-point reduction order.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from engine_synthetic import (
    DISTRIBUTED_CFG,
    TINY_ABMIL,
    assert_same_as_one_process,
    multilabel_bags,
    survival_bags,
    synthetic_bags,
)

from medmoe.engine import TrainConfig, train_one_fold

SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {here!r})
    import torch.distributed as dist
    from engine_synthetic import TINY_ABMIL, {bags}
    from medmoe.engine import TrainConfig, train_one_fold

    cfg = TrainConfig(**{cfg!r}, batch_size=1, devices=2, strategy="ddp")
    res = train_one_fold("abmil.base", {bags}(48, seed=0), {bags}(24, seed=1),
                         {bags}(24, seed=2), cfg, {out!r}, TINY_ABMIL)
    if dist.get_rank() == 0:
        with open({out!r} + "/ddp_result.json", "w") as fh:
            json.dump({{"val": res.val_metrics, "test": res.test_metrics, "world": dist.get_world_size(),
                       "best_epoch": res.best_epoch}}, fh)
    """
)


@pytest.mark.parametrize("task", ["classification", "survival", "multilabel"])
def test_ddp_two_cpu_processes_match_one_process(tmp_path, task):
    bags = {"survival": survival_bags, "multilabel": multilabel_bags}.get(task, synthetic_bags)
    cfg = {**DISTRIBUTED_CFG, "task": task}
    single = train_one_fold(
        "abmil.base",
        bags(48, seed=0),
        bags(24, seed=1),
        bags(24, seed=2),
        TrainConfig(**cfg, batch_size=2),
        tmp_path / "single",
        TINY_ABMIL,
    )
    out = tmp_path / "ddp"
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT.format(here=os.path.dirname(__file__), cfg=cfg, out=str(out), bags=bags.__name__))
    env = {
        k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_PORT")
    }
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp = json.loads((out / "ddp_result.json").read_text())
    assert ddp["world"] == 2
    assert_same_as_one_process(ddp, single, out, tmp_path / "single")
    assert single.history[-1]["train_loss"] < single.history[0]["train_loss"]
