"""Entry point of the ``medmoe`` command."""

from __future__ import annotations

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


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="Print the medmoe version and exit.", is_eager=True, callback=_print_version
    ),
) -> None:
    """Expert routing and long-sequence models for medical imaging."""


if __name__ == "__main__":  # pragma: no cover
    app()
