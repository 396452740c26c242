"""Packaged run configurations: ``--config NAME`` as well as ``--config FILE.yaml``.

A run configuration is a YAML mapping of a command's options (the same format as a user's ``--config``
file) shipped inside the package under ``medmoe/configs/runs/<name>.yaml``, e.g. ``ilse2018`` (the
attention-MIL protocol of Ilse et al. 2018: ``medmoe mil train --config ilse2018 -d musk1``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import typer

__all__ = ["list_run_configs", "resolve_run_config"]


def _root():  # type: ignore[no-untyped-def]
    return resources.files("medmoe") / "configs" / "runs"


def list_run_configs() -> list[str]:
    """Names of the packaged run configurations (``ilse2018``, ...)."""
    root = _root()
    if not root.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def resolve_run_config(value: Path) -> Path:
    """The file ``--config VALUE`` names: an existing file as given, else the packaged run configuration
    of that name.

    Raises:
        typer.BadParameter: ``VALUE`` is neither an existing file nor a packaged name (a bare name, one
            without a folder or ``.yaml`` suffix, is reported with the packaged names).
    """
    path = Path(value)
    if path.exists():
        return path
    name = str(value)
    if name in list_run_configs():
        return Path(str(_root() / f"{name}.yaml"))
    if path.suffix.lower() not in (".yaml", ".yml") and len(path.parts) == 1:
        raise typer.BadParameter(
            f"{name!r} is neither a file nor a packaged run configuration; packaged: "
            f"{', '.join(list_run_configs()) or 'none'}",
            param_hint="'--config'",
        )
    return path
