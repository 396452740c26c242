"""Helpers shared by the command groups: error exit and ``KEY=VALUE`` option parsing."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, NoReturn

import typer
import yaml

from .error_report import report_error


def fail(err: BaseException) -> NoReturn:
    """Report ``err`` on stderr and exit, as every command does: one ``error:`` line and exit code 2 for an
    expected error (bad input, a refused file), an internal-error line and exit code 1 otherwise (the
    traceback with ``-vv``); see :mod:`medmoe.cli.error_report`."""
    report_error(err)


def yaml_error_text(err: yaml.YAMLError) -> str:
    """One line from a PyYAML error: what the parser expected and where (``line 2, column 5``)."""
    problem = getattr(err, "problem", None)
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    text = " ".join(str(problem or err).split())
    if mark is not None:
        text += f" at line {mark.line + 1}, column {mark.column + 1}"
    return text


def parse_overrides(pairs: list[str] | None, option: str = "--set") -> dict[str, Any]:
    """``["embed_dim=128", "dropout=0.1"]`` -> ``{"embed_dim": 128, "dropout": 0.1}`` (values read as YAML).

    A pair without ``=``, with an empty key or whose value is not valid YAML raises ``typer.BadParameter``
    naming ``option`` and the pair."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if not isinstance(pair, str) or "=" not in pair:
            raise typer.BadParameter(f"expects KEY=VALUE, got {pair!r}", param_hint=option)
        key, value = pair.split("=", 1)
        if not key.strip():
            raise typer.BadParameter(f"expects KEY=VALUE, got {pair!r} (no KEY)", param_hint=option)
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise typer.BadParameter(
                f"{pair!r}: the value is not valid YAML ({yaml_error_text(err)}); write it as YAML, "
                "e.g. KEY=[1, 2], KEY=0.1 or KEY='a: b' for text", param_hint=option
            ) from None
    return out


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping in a ``--config`` YAML file; ``typer.BadParameter`` (one line: the file, what is wrong and
    where) when it cannot be read, is not valid YAML or is not a mapping."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise typer.BadParameter(f"cannot read config file {path}: {reason}", param_hint="'--config'") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise typer.BadParameter(
            f"config file {path} is not valid YAML: {yaml_error_text(err)}; fix that line", param_hint="'--config'"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise typer.BadParameter(
            f"config file {path} must hold a mapping of option: value (e.g. 'epochs: 30'), not a "
            f"{type(data).__name__}", param_hint="'--config'"
        )
    return data


def config_keys(command: Any) -> dict[str, str]:
    """``{config key with '_' for '-': the command's parameter name}`` for every option of ``command`` but
    ``--config``: each option can be written as its flag without dashes (``time-col``, ``seed``, ``set``) or
    as its parameter name."""
    names: dict[str, str] = {}
    for p in command.params:
        if p.name in (None, "config"):
            continue
        names[p.name] = p.name
        for opt in getattr(p, "opts", []):
            if opt.startswith("--"):
                names[opt[2:].replace("-", "_")] = p.name
    return names


def config_key_spelling(command: Any) -> list[str]:
    """The keys a user writes in a config file, one per option of ``command``: its long flag without dashes
    (``time-col``, ``seed``, ``set``)."""
    keys = []
    for p in command.params:
        if p.name in (None, "config"):
            continue
        longs = [o[2:] for o in getattr(p, "opts", []) if o.startswith("--")]
        keys.append(longs[0] if longs else p.name.replace("_", "-"))
    return sorted(keys)


def unknown_config_keys_text(path: Path, unknown: list[str], command: Any) -> str:
    """One line: the unknown keys of a config file, the closest valid key for each, and all valid keys."""
    valid = config_key_spelling(command)
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key.replace("_", "-"), valid, n=1, cutoff=0.6)
        if close:
            hints.append(f"{key!r}: did you mean {close[0]!r}?")
    text = f"config file {path}: unknown option(s) {unknown}"
    if hints:
        text += " (" + "; ".join(hints) + ")"
    return text + f"; valid keys are the command's options without '--': {', '.join(valid)}"


def check_device(device: str, flag: str = "--device") -> str:
    """``device`` if this machine has it (``cpu``, ``cuda``, ``cuda:N``, ``mps``); ``typer.BadParameter``
    naming ``flag`` otherwise (a misspelt name, CUDA without a GPU, a GPU index that does not exist)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise typer.BadParameter(f"{device!r} is not a device; use cpu, cuda, cuda:N or mps", param_hint=flag) from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise typer.BadParameter(f"{device!r}: CUDA is not available on this machine; use cpu", param_hint=flag)
        if dev.index is not None and dev.index >= count:
            raise typer.BadParameter(f"{device!r}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})",
                                     param_hint=flag)
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise typer.BadParameter(f"{device!r}: MPS is not available on this machine; use cpu", param_hint=flag)
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise typer.BadParameter(f"{device!r}: medmoe runs on cpu, cuda or mps", param_hint=flag)
    return device


def check_choice(value: str, choices: tuple[str, ...] | list[str], flag: str, what: str | None = None) -> str:
    """``value`` if it is one of ``choices``; ``typer.BadParameter`` naming ``flag`` and the closest choice
    otherwise, with all choices (or, for a long list, ``what`` they are, e.g. "a matplotlib colour map")."""
    if value in choices:
        return value
    from ..errors import did_you_mean

    hint = did_you_mean(value, choices)
    known = f"a {what}" if what else f"one of {', '.join(choices)}"
    raise typer.BadParameter(f"{value!r} is not {known}{'; ' + hint if hint else ''}", param_hint=flag)
