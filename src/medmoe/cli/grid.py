"""``medmoe mil grid``: run the units of a grid, shared with other workers through one Optuna storage."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import fail


def grid(
    units_file: Path = typer.Argument(
        ..., help="One 'dataset model patch_embed' line per grid row (# comments)."
    ),
    compare_args: list[str] = typer.Argument(
        None,
        metavar="-- COMPARE_FLAGS",
        help="Further `mil compare` flags of every unit, after --, e.g. -- --epochs 5.",
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        help="The grid's folder, shared by all workers: runs in OUT/out, "
        "logs in OUT/logs and OUT/log_grid.txt.",
    ),
    storage: str = typer.Option(
        None,
        "--storage",
        help="Optuna storage URL every worker reaches (default: "
        "sqlite:///OUT/grid.db); the same kind of storage `mil tune --storage` takes.",
    ),
    seeds: list[int] = typer.Option(
        list(range(5)), "--seed", help="Seeds of every row (repeat the option; default 0 to 4)."
    ),
    k: int = typer.Option(10, "--k", min=3, help="Folds per unit (mil compare --k)."),
    study_name: str = typer.Option(
        None,
        "--study-name",
        help="The Optuna study holding the grid (default: the units file's name without extension).",
    ),
    worker: str = typer.Option(
        None, "--worker", help="This worker's name in log_grid.txt (default host:pid)."
    ),
    max_retry: int = typer.Option(
        2, "--max-retry", min=0, help="How often a failed or abandoned unit is queued again."
    ),
    heartbeat: int = typer.Option(
        60,
        "--heartbeat",
        min=1,
        help="Seconds between a running unit's heartbeats; "
        "a unit silent for twice as long (its worker killed) is queued again.",
    ),
    wait: bool = typer.Option(
        True,
        "--wait/--no-wait",
        help="When no unit is waiting but some run elsewhere: "
        "wait to retry one whose worker dies (--wait), or stop.",
    ),
) -> None:
    """Run the units of a grid (each a `mil compare ... --k K --seed S --resume --jobs 1` of one row and
    seed) until none is left; start as many workers as you like, on any machine that reaches --storage and
    --out (docs: Scaling out). A killed or failed unit is queued again; finished units are skipped."""
    import optuna

    from ..engine.mil.grid import GridSpec, read_units, run_grid_worker

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the grid logs each unit's start and end itself
    try:
        units = read_units(units_file, seeds)
        spec = GridSpec(
            tuple(units),
            k=k,
            compare_args=tuple(compare_args or ()),
            study_name=study_name or units_file.stem,
        )
        report = run_grid_worker(
            spec,
            storage or f"sqlite:///{out.resolve() / 'grid.db'}",
            out,
            worker=worker,
            max_retry=max_retry,
            heartbeat_interval=heartbeat,
            wait=wait,
        )
    except (ValueError, RuntimeError) as err:
        fail(err)
    typer.echo(report.summary())
    for name, rc in report.failed.items():
        typer.echo(f"failed: {name} (exit status {rc}; log: {out / 'logs' / (name + '.log')})")
