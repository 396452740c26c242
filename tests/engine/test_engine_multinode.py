"""Two ``torchrun`` "nodes" of one CPU process each (loopback, gloo) reach the same model as one process.

Each node is its own ``torchrun --nnodes 2 --nproc-per-node 1 --node-rank R`` started as a subprocess, the
way two machines would start it; the trainer runs with ``num_nodes=2, devices=1`` and Lightning Fabric
takes the ranks and the rendezvous address from torchrun's environment. With ``batch_size=1`` on each of
the 2 ranks the run sees the same bag pairs as one process with ``batch_size=2`` (see test_engine_ddp.py),
so both reach the same metrics and weights up to floating-point reduction order.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
from engine_synthetic import DISTRIBUTED_CFG, TINY_ABMIL, assert_same_as_one_process, synthetic_bags

from medmoe.engine import TrainConfig, train_one_fold

SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {here!r})
    import torch.distributed as dist
    from engine_synthetic import TINY_ABMIL, synthetic_bags
    from medmoe.engine import TrainConfig, train_one_fold

    cfg = TrainConfig(**{cfg!r}, batch_size=1, devices=1, num_nodes=2, strategy="ddp")
    res = train_one_fold("abmil.base", synthetic_bags(48, seed=0), synthetic_bags(24, seed=1),
                         synthetic_bags(24, seed=2), cfg, {out!r}, TINY_ABMIL)
    if dist.get_rank() == 0:
        with open({out!r} + "/nodes_result.json", "w") as fh:
            json.dump({{"val": res.val_metrics, "test": res.test_metrics, "world": dist.get_world_size(),
                       "backend": dist.get_backend(), "best_epoch": res.best_epoch}}, fh)
    """
)

#: variables of an enclosing distributed run that would confuse the two nodes started here
_LAUNCH_VARS = (
    "LOCAL_RANK",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "NODE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "SLURM_NTASKS",
    "SLURM_JOB_NAME",
    "SLURM_PROCID",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow  # about 50 s on 2 shared cores: two torchrun launchers, two trainers and the reference
def test_two_torchrun_nodes_match_one_process(tmp_path):
    single = train_one_fold(
        "abmil.base",
        synthetic_bags(48, seed=0),
        synthetic_bags(24, seed=1),
        synthetic_bags(24, seed=2),
        TrainConfig(**DISTRIBUTED_CFG, batch_size=2),
        tmp_path / "single",
        TINY_ABMIL,
    )
    out = tmp_path / "nodes"
    script = tmp_path / "nodes_train.py"
    script.write_text(SCRIPT.format(here=os.path.dirname(__file__), cfg=DISTRIBUTED_CFG, out=str(out)))
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS}
    env["OMP_NUM_THREADS"] = "1"
    port = _free_port()
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--node-rank",
                str(rank),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                str(port),
                str(script),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    logs = []
    try:
        for node in nodes:
            logs.append(node.communicate(timeout=300)[0])
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    assert [n.returncode for n in nodes] == [0, 0], "\n----\n".join(log[-3000:] for log in logs)
    nodes_res = json.loads((out / "nodes_result.json").read_text())
    assert nodes_res["world"] == 2
    assert nodes_res["backend"] == "gloo"
    assert_same_as_one_process(nodes_res, single, out, tmp_path / "single")


def test_num_nodes_is_validated_and_kept_out_of_old_run_folders():
    with pytest.raises(ValueError, match="num_nodes"):
        TrainConfig(num_nodes=0)
    from medmoe.engine.mil.config import recorded_settings

    # a run folder written before num_nodes existed records no such key: one node must still match it
    assert "num_nodes" not in recorded_settings(TrainConfig().to_dict())
    assert recorded_settings(TrainConfig(num_nodes=2).to_dict())["num_nodes"] == 2
