"""Grids shared through one Optuna storage (medmoe.engine.mil.grid): every unit runs exactly once across
workers, a unit whose worker is killed is queued again and finished by another worker, and a unit's
process ends with its worker.

The workers are separate processes on one SQLite storage, as on a machine or a cluster; their units are
a small Python function (the unit's command is covered by the slow end-to-end test at the end), so that
the claim / report / retry machinery is what the time goes to.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from medmoe.engine.mil.grid import (
    GridSpec,
    GridUnit,
    compare_command,
    grid_state,
    open_grid,
    read_units,
    run_grid_worker,
)
from medmoe.errors import InputError

optuna = pytest.importorskip("optuna")

UNITS = "musk1 abmil linear\nmusk1 meanmil linear  # a comment\n\nelephant abmil mammoth\n"

WORKER = textwrap.dedent(
    """
    import sys, time
    from medmoe.engine.mil.grid import GridSpec, read_units, run_grid_worker

    units_file, storage, out, runs_file, name, slow, heartbeat = sys.argv[1:8]
    spec = GridSpec(tuple(read_units(units_file, seeds=[0, 1])), k=3, study_name="g")

    def run_unit(unit, log_path):
        with open(runs_file, "a") as fh:
            fh.write(f"{name} {unit.name}\\n")
        time.sleep(120 if unit.name == slow else 0.3)
        return 0

    report = run_grid_worker(spec, storage, out, worker=name, heartbeat_interval=int(heartbeat),
                             run_unit=run_unit)
    print(report.summary())
    """
)


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[2] / "src")
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }


def _start(tmp_path: Path, name: str, slow: str = "-", heartbeat: int = 5) -> subprocess.Popen:
    """A worker process; ``slow`` names a unit it takes two minutes over; a unit silent for ``2 * heartbeat``
    seconds counts as abandoned (not too short: a loaded test machine may stall a process for a second)."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    args = [
        str(tmp_path / "units.txt"),
        f"sqlite:///{tmp_path / 'grid.db'}",
        str(tmp_path / "grid"),
        str(tmp_path / "runs.txt"),
        name,
        slow,
        str(heartbeat),
    ]
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _trials_by_unit(tmp_path: Path) -> dict[str, list]:
    study = optuna.load_study(study_name="g", storage=f"sqlite:///{tmp_path / 'grid.db'}")
    out: dict[str, list] = {}
    for t in study.get_trials():
        if "medmoe_unit" in t.user_attrs:
            out.setdefault(t.user_attrs["medmoe_unit"], []).append(t)
    return out


def _finish(proc: subprocess.Popen) -> str:
    output = proc.communicate(timeout=240)[0]
    assert proc.returncode == 0, output[-3000:]
    return output


def test_read_units_and_spec(tmp_path):
    path = tmp_path / "units.txt"
    path.write_text(UNITS)
    units = read_units(path, seeds=[0, 1])
    assert [u.name for u in units[:3]] == [
        "musk1.abmil.linear.seed0",
        "musk1.abmil.linear.seed1",
        "musk1.meanmil.linear.seed0",
    ]
    assert len(units) == 6 and units[-1] == GridUnit("elephant", "abmil", "mammoth", 1)
    argv = compare_command(units[0], tmp_path / "out", 10, ["--epochs", "5"])
    assert argv[1:] == [
        "-m",
        "medmoe.cli",
        "mil",
        "compare",
        "-m",
        "abmil",
        "-d",
        "musk1",
        "--patch-embed",
        "linear",
        "--k",
        "10",
        "--seed",
        "0",
        "--out",
        str(tmp_path / "out"),
        "--resume",
        "--jobs",
        "1",
        "--epochs",
        "5",
    ]
    path.write_text("musk1 abmil\n")
    with pytest.raises(ValueError, match="line 1: expected 'dataset model patch_embed'"):
        read_units(path)
    path.write_text("musk1 abmil linear\nmusk1 abmil linear\n")
    with pytest.raises(ValueError, match="line 2: the row 'musk1 abmil linear' is already listed"):
        read_units(path)
    with pytest.raises(InputError, match="sets --seed"):
        GridSpec(tuple(units), compare_args=("--seed", "3"))


def test_a_second_worker_of_another_grid_is_refused(tmp_path):
    path = tmp_path / "units.txt"
    path.write_text(UNITS)
    units = tuple(read_units(path, seeds=[0]))
    storage = f"sqlite:///{tmp_path / 'grid.db'}"
    study = open_grid(GridSpec(units, k=3, study_name="g"), storage)
    assert len(study.get_trials()) == 3  # every unit queued once, by the worker that created the study
    assert (
        len(open_grid(GridSpec(units, k=3, study_name="g"), storage).get_trials()) == 3
    )  # joined, not queued
    with pytest.raises(InputError, match="holds another grid"):
        open_grid(GridSpec(units, k=5, study_name="g"), storage)


def test_two_workers_run_every_unit_exactly_once(tmp_path):
    (tmp_path / "units.txt").write_text(UNITS)
    workers = [_start(tmp_path, "a"), _start(tmp_path, "b")]
    outputs = [_finish(w) for w in workers]
    runs = (tmp_path / "runs.txt").read_text().split("\n")[:-1]
    names = sorted(line.split()[1] for line in runs)
    assert names == sorted(u.name for u in read_units(tmp_path / "units.txt", seeds=[0, 1]))  # each once
    by_unit = _trials_by_unit(tmp_path)
    assert len(by_unit) == 6
    assert all([t.state.name for t in trials] == ["COMPLETE"] for trials in by_unit.values())
    assert set(
        grid_state(optuna.load_study(study_name="g", storage=f"sqlite:///{tmp_path / 'grid.db'}")).values()
    ) == {"done"}
    assert all("grid g: 6/6 units done" in out for out in outputs), outputs
    log = (tmp_path / "grid" / "log_grid.txt").read_text()
    assert log.count(" start ") == 6 and log.count(" end ") == 6 and log.count("rc=0") == 6


def test_a_unit_whose_worker_is_killed_is_run_again(tmp_path):
    (tmp_path / "units.txt").write_text("musk1 abmil linear\n")
    slow = "musk1.abmil.linear.seed0"  # the first unit queued: the first worker takes it
    first = _start(tmp_path, "a", slow=slow, heartbeat=2)
    runs = tmp_path / "runs.txt"
    deadline = time.monotonic() + 120
    while not (runs.is_file() and f"a {slow}" in runs.read_text()):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0][-3000:]
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)  # a node lost: no cleanup at all
    first.wait()
    output = _finish(_start(tmp_path, "b", heartbeat=2))
    lines = runs.read_text().split("\n")[:-1]
    assert lines == [f"a {slow}", "b musk1.abmil.linear.seed1", f"b {slow}"], lines
    by_unit = _trials_by_unit(tmp_path)
    killed = by_unit[slow]
    assert [t.state.name for t in killed] == ["FAIL", "COMPLETE"]
    assert killed[1].system_attrs["retry_history"] == [killed[0].number]
    assert [t.state.name for t in by_unit["musk1.abmil.linear.seed1"]] == ["COMPLETE"]
    assert "grid g: 2/2 units done" in output


def test_a_unit_process_ends_with_its_worker(tmp_path):
    """``python -m medmoe.cli`` started with MEDMOE_EXIT_WITH_PARENT (as grid workers start their units) exits
    when its parent is killed, so a unit queued again never runs beside an orphan of itself."""
    child = (
        "import os, time\n"
        "from medmoe.cli.__main__ import _exit_with_parent\n"
        "_exit_with_parent(os.getppid())\n"
        "print(os.getpid(), flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {child!r}])\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], env=_env(), stdout=subprocess.PIPE, text=True)
    pid = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while _alive(pid):
        assert time.monotonic() < deadline, "the child outlived its parent"
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.is_file() and "\nState:\tZ" in status.read_text())  # a zombie has exited


@pytest.mark.slow
def test_grid_command_runs_mil_compare_units(tmp_path):
    """Two `medmoe mil grid` workers share a tiny real grid: every unit's folds are written once."""
    (tmp_path / "units.txt").write_text("musk1 meanmil linear\n")
    cmd = [
        sys.executable,
        "-m",
        "medmoe.cli",
        "mil",
        "grid",
        str(tmp_path / "units.txt"),
        "--out",
        str(tmp_path / "grid"),
        "--seed",
        "0",
        "--seed",
        "1",
        "--k",
        "3",
        "--heartbeat",
        "2",
    ]
    workers = [
        subprocess.Popen(
            [*cmd, "--worker", w, "--", "--epochs", "1"],  # flags after -- go to every mil compare
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
        )
        for w in ("a", "b")
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    if any("could not fetch" in o for o in outputs):
        pytest.skip("package index unreachable: " + outputs[0][-200:])
    assert [w.returncode for w in workers] == [0, 0], outputs
    assert all("grid units: 2/2 units done" in o for o in outputs), outputs
    runs = tmp_path / "grid" / "out" / "musk1" / "meanmil" / "linear"
    assert sorted(p.relative_to(runs).as_posix() for p in runs.glob("seed*/fold*/fold_result.json")) == [
        f"seed{s}/fold{f}/fold_result.json" for s in (0, 1) for f in range(3)
    ]
    log = (tmp_path / "grid" / "log_grid.txt").read_text()
    assert log.count(" start ") == 2 and log.count("rc=0") == 2


def test_a_failing_unit_is_retried_then_left_failed_and_finished_units_are_skipped(tmp_path):
    """In one process: a unit whose command fails is queued again ``max_retry`` times, then stays failed;
    a unit whose fold results exist completes without running."""
    path = tmp_path / "units.txt"
    path.write_text("musk1 abmil linear\n")
    units = read_units(path, seeds=[0, 1, 2])
    done = units[2].run_dir(tmp_path / "grid" / "out")
    for fold in range(3):
        (done / f"fold{fold}").mkdir(parents=True)
        (done / f"fold{fold}" / "fold_result.json").write_text("{}")
    calls: list[str] = []

    def run_unit(unit: GridUnit, log_path: Path) -> int:
        calls.append(unit.name)
        return 3 if unit.seed == 0 else 0

    report = run_grid_worker(
        GridSpec(tuple(units), k=3, study_name="g"),
        f"sqlite:///{tmp_path / 'grid.db'}",
        tmp_path / "grid",
        max_retry=1,
        heartbeat_interval=5,
        run_unit=run_unit,
    )
    assert calls == ["musk1.abmil.linear.seed0", "musk1.abmil.linear.seed1", "musk1.abmil.linear.seed0"]
    assert report.states == {units[0].name: "failed", units[1].name: "done", units[2].name: "done"}
    assert report.failed == {units[0].name: 3}
    by_unit = _trials_by_unit(tmp_path)
    assert [t.state.name for t in by_unit[units[0].name]] == ["FAIL", "FAIL"]
    assert by_unit[units[2].name][0].user_attrs["note"] == "already finished"
    assert "grid g: 2/3 units done, 0 running, 0 waiting, 1 failed" in report.summary()


def test_grid_command_refuses_bad_input_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from medmoe.cli.main import app

    runner = CliRunner()
    result = runner.invoke(app, ["mil", "grid", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "g")])
    assert result.exit_code == 2 and "units file" in result.output and "not found" in result.output
    (tmp_path / "units.txt").write_text("musk1 abmil linear\n")
    result = runner.invoke(
        app, ["mil", "grid", str(tmp_path / "units.txt"), "--out", str(tmp_path / "g"), "--", "--seed", "3"]
    )
    assert result.exit_code == 2 and "--seed" in result.output and "--k" in result.output


def test_an_interrupted_unit_is_queued_again_and_the_worker_stops(tmp_path):
    path = tmp_path / "units.txt"
    path.write_text("musk1 abmil linear\n")
    spec = GridSpec(tuple(read_units(path, seeds=[0, 1])), k=3, study_name="g")
    storage, calls = f"sqlite:///{tmp_path / 'grid.db'}", []

    def interrupted(unit: GridUnit, log_path: Path) -> int:
        calls.append(unit.name)
        raise KeyboardInterrupt  # Ctrl-C while the unit runs

    with pytest.raises(KeyboardInterrupt):
        run_grid_worker(spec, storage, tmp_path / "grid", heartbeat_interval=5, run_unit=interrupted)
    assert calls == ["musk1.abmil.linear.seed0"]  # the worker stopped after it
    report = run_grid_worker(
        spec,
        storage,
        tmp_path / "grid",
        heartbeat_interval=5,
        run_unit=lambda unit, log_path: calls.append(unit.name) or 0,
    )
    assert calls[1:] == ["musk1.abmil.linear.seed1", "musk1.abmil.linear.seed0"]
    assert set(report.states.values()) == {"done"}
    assert [t.state.name for t in _trials_by_unit(tmp_path)["musk1.abmil.linear.seed0"]] == [
        "FAIL",
        "COMPLETE",
    ]
    assert "interrupted musk1.abmil.linear.seed0" in (tmp_path / "grid" / "log_grid.txt").read_text()
