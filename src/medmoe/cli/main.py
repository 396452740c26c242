"""Entry point of the ``medmoe`` command."""

from __future__ import annotations

import logging
import sys

import typer
from typer.core import TyperGroup

from . import bench, demo, doctor, grid, mil
from . import mosaic as mosaic_cli
from . import report as report_cli
from . import seg as seg_cli
from .error_report import is_cli_signal, leaf_context, report_error


class MedmoeGroup(TyperGroup):
    """The ``medmoe`` command group: every failure ends in one ``error:`` line and a meaningful exit code.

    * An exception a command did not handle is reported by :func:`~medmoe.cli.error_report.report_error`:
      expected errors exit 2 in one line, internal ones exit 1 as a bug (traceback with ``-vv``).
    * Usage errors (a bad option value, a missing argument) print the usage line, the help hint and one
      ``error:`` line, exit 2 (instead of a framed multi-line panel).
    """

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except Exception as err:
            if is_cli_signal(err):
                raise
            report_error(err, leaf_context(err.__traceback__) or ctx)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # type: ignore[no-untyped-def,override]
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        from typer._click.exceptions import ClickException

        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except ClickException as err:
            _show_usage_error(err)
            sys.exit(err.exit_code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def _show_usage_error(err: Exception) -> None:
    """Usage line, help hint and one ``error:`` line for a click usage error (nothing for a bare ``medmoe``)."""
    if type(err).__name__ == "NoArgsIsHelpError":  # the help was printed already
        return
    ctx = getattr(err, "ctx", None)
    if ctx is not None:
        typer.echo(ctx.get_usage(), err=True)
        if ctx.command.get_help_option(ctx) is not None:
            typer.echo(f"Try '{ctx.command_path} {ctx.help_option_names[0]}' for help.", err=True)
    message = " ".join(err.format_message().split())  # type: ignore[attr-defined]
    typer.secho(f"error: {message}", fg="red", err=True)


app = typer.Typer(
    cls=MedmoeGroup,
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
mil.app.command("grid", help=grid.grid.__doc__)(grid.grid)
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


def _set_env_for_this_command(ctx: typer.Context, name: str, value: float, flag: str) -> None:
    """Set ``$name`` (read by the library and by worker processes) for this command only: restored on exit."""
    import os

    if not value > 0:
        raise typer.BadParameter(f"must be a positive number of GB, got {value}", param_hint=flag)
    before = os.environ.get(name)
    os.environ[name] = str(value)

    def restore() -> None:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before

    ctx.call_on_close(restore)


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", help="Print the medmoe version and exit.", is_eager=True, callback=_print_version
    ),
    verbose: int = typer.Option(
        0, "--verbose", "-v", count=True, help="More log lines: -v per epoch and fold, -vv debug."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors (no per-run progress lines)."),
    max_model_gb: float = typer.Option(
        None, "--max-model-gb", help="Largest model (GB of weights) to build from a "
        "checkpoint or config; default: the memory available now (also: $MEDMOE_MAX_MODEL_GB)."
    ),
    plugins: list[str] = typer.Option(
        None, "--plugin", help="Import this module (or .py file) first, for the MIL models it registers with "
        "medmoe.register_model; repeatable (also: $MEDMOE_PLUGINS, comma-separated)."
    ),
) -> None:
    """Expert routing and long-sequence models for medical imaging."""
    ctx.meta["medmoe.verbose"] = verbose
    configure_logging(verbose, quiet)
    if max_model_gb is not None:
        _set_env_for_this_command(ctx, "MEDMOE_MAX_MODEL_GB", max_model_gb, "--max-model-gb")
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
