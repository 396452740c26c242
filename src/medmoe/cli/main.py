"""Entry point of the ``medmoe`` command."""

from __future__ import annotations

import logging
import sys

import typer

from . import bench, demo, doctor, mil
from . import mosaic as mosaic_cli
from . import report as report_cli
from . import seg as seg_cli

app = typer.Typer(
    name="medmoe",
    help="Expert routing and long-sequence models for medical imaging.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
app.command("doctor", help=doctor.__doc__)(doctor.doctor)
app.command("demo", help=demo.__doc__)(demo.demo)
app.add_typer(bench.app, name="bench")
app.add_typer(mil.app, name="mil")
app.add_typer(seg_cli.app, name="seg")
app.add_typer(mosaic_cli.app, name="mosaic")
app.command("report", help=report_cli.__doc__)(report_cli.report)


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(__version__)
        raise typer.Exit()


class _StderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is when it emits (test runners swap it)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Show medmoe's log on stderr: per-run progress lines of long grids (``medmoe.progress``) and
    warnings by default, every info line (per epoch, per fold) with ``-v``, debug with ``-vv``, only
    errors with ``--quiet``. Rich formatting in a terminal, plain time-stamped lines otherwise.

    Only the ``medmoe`` loggers are touched (one handler, replaced on a second call); their records
    still propagate, so a host application's own handlers keep working."""
    if quiet:
        level, progress_level = logging.ERROR, logging.ERROR
    else:
        level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
        progress_level = min(level, logging.INFO)
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(
            console=Console(stderr=True), show_path=False, log_time_format="%H:%M:%S"
        )
    else:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))

    def wanted(record: logging.LogRecord) -> bool:
        floor = progress_level if record.name.startswith("medmoe.progress") else level
        return record.levelno >= floor

    handler.addFilter(wanted)
    handler._medmoe_cli = True  # type: ignore[attr-defined]
    package = logging.getLogger("medmoe")
    for old in [h for h in package.handlers if getattr(h, "_medmoe_cli", False)]:
        package.removeHandler(old)
    package.addHandler(handler)
    if verbose:
        package.setLevel(level)
    logging.getLogger("medmoe.progress").setLevel(progress_level)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="Print the medmoe version and exit.", is_eager=True, callback=_print_version
    ),
    verbose: int = typer.Option(
        0, "--verbose", "-v", count=True, help="More log lines: -v per epoch and fold, -vv debug."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors (no per-run progress lines)."),
    plugins: list[str] = typer.Option(
        None, "--plugin", help="Import this module (or .py file) first, for the MIL models it registers with "
        "medmoe.register_model; repeatable (also: $MEDMOE_PLUGINS, comma-separated)."
    ),
) -> None:
    """Expert routing and long-sequence models for medical imaging."""
    configure_logging(verbose, quiet)
    if plugins:
        import os

        from ..registry import PLUGIN_ENV, load_plugin

        try:
            for spec in plugins:
                load_plugin(spec)
        except ValueError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        # worker processes (--jobs) import the registry anew: they find the plugins in the environment
        known = [s for s in os.environ.get(PLUGIN_ENV, "").split(",") if s.strip()]
        os.environ[PLUGIN_ENV] = ",".join(dict.fromkeys([*known, *plugins]))


if __name__ == "__main__":  # pragma: no cover
    app()
