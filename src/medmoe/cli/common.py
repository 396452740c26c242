"""Helpers shared by the command groups: error exit and ``KEY=VALUE`` option parsing."""

from __future__ import annotations

from typing import Any, NoReturn

import typer
import yaml


def fail(err: Exception) -> NoReturn:
    """Print ``err`` in red on stderr and exit with code 2 (bad input), as every command does."""
    typer.secho(f"error: {err}", fg="red", err=True)
    raise typer.Exit(code=2)


def parse_overrides(pairs: list[str] | None, option: str = "--set") -> dict[str, Any]:
    """``["embed_dim=128", "dropout=0.1"]`` -> ``{"embed_dim": 128, "dropout": 0.1}`` (values read as YAML)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise typer.BadParameter(f"{option} expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out
