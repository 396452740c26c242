"""One self-contained HTML report per run folder: config, metrics, learning curves, folds, heatmaps."""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["report"]


def report(
    run_dir: Path = typer.Argument(..., help="A run folder: the --out of `medmoe mil train`, `compare`, `heatmap` "
                                   "or `medmoe demo`."),
    out: Path = typer.Option(None, "--out", "-o", help="HTML file to write (default RUN_DIR/report.html)."),
    title: str = typer.Option(None, help="Report title."),
    max_images: int = typer.Option(80, min=0, help="Most images to inline."),
) -> None:
    """Write an HTML report (config, metrics, learning curves, fold results, heatmaps, expert plots) with every
    image inlined, so the one file can be mailed or archived."""
    from ..viz.report import build_report

    try:
        path = build_report(run_dir, out, title=title, max_images=max_images)
    except (ValueError, OSError) as err:
        from .common import fail

        fail(err)  # one line for bad input; an internal error says so
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
