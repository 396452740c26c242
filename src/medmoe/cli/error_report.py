"""How the command line reports a failure: expected errors in one line, internal errors as bugs.

The rule (see :mod:`medmoe.errors`):

* **expected** (exit 2, one ``error:`` line, no traceback): an instance of :class:`~medmoe.errors.MedmoeError`;
  an ``OSError`` (the file system or the machine refused: the message names the file) or a ``MemoryError``;
  or a ``ValueError``/``RuntimeError``/``ArithmeticError`` raised by a ``raise`` statement in medmoe's own code
  (medmoe's older refusals, not yet :class:`~medmoe.errors.InputError`);
* **internal** (exit 1): everything else, including a ``ValueError`` raised inside Python, PyTorch or another
  library (``min() arg is an empty sequence``). The line says it is a bug and asks for a report; ``-vv``
  prints the traceback.

Settings named in an :class:`~medmoe.errors.InputError` are spelled as the running command's flags
(``precision='32-true'`` becomes ``--precision 32-true``).
"""

from __future__ import annotations

import dis
import re
import shlex
import sys
import traceback
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

import typer

from ..errors import SETTING, InputError, MedmoeError, python_setting

__all__ = [
    "ISSUES_URL",
    "cli_setting_renderer",
    "cli_text",
    "current_context",
    "is_cli_signal",
    "is_expected",
    "report_error",
    "verbosity",
]

ISSUES_URL = "https://github.com/medmoe/medmoe/issues"

_PACKAGE_DIR = Path(__file__).resolve().parents[1]
_RAISE = dis.opmap["RAISE_VARARGS"]

#: Library keywords whose flag has another name: ``keyword -> the CLI function's parameter name``.
KEYWORD_TO_PARAM = {
    "out_dir": "out",
    "output_dir": "out",
    "model_overrides": "set_",
    "overrides": "set_",
    "standardize_features": "standardize",
    "model_name": "model",
    "seed": "seeds",
    "normalize_2d": "normalize",
}

#: Exit codes: the input is wrong (also what every usage error exits with) / medmoe failed.
EXIT_INPUT, EXIT_INTERNAL = 2, 1


def current_context() -> Any | None:
    """The click context of the command running now (``None`` outside a command)."""
    try:
        from typer._click.globals import get_current_context  # typer >= 0.20 ships its own click
    except ImportError:  # pragma: no cover - older typer on top of click
        from click import get_current_context  # type: ignore[no-redef]
    return get_current_context(silent=True)


def verbosity(ctx: Any | None = None) -> int:
    """``-v`` count given to ``medmoe`` (0 outside the command line)."""
    ctx = ctx if ctx is not None else current_context()
    return int(ctx.meta.get("medmoe.verbose", 0)) if ctx is not None else 0


def _innermost(tb: TracebackType | None) -> TracebackType | None:
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb


def _raised_by_medmoe(err: BaseException) -> bool:
    """True when a ``raise`` statement in medmoe's own source raised ``err`` (not a builtin, not a library)."""
    tb = _innermost(err.__traceback__)
    if tb is None:
        return False
    code = tb.tb_frame.f_code
    try:
        in_medmoe = Path(code.co_filename).resolve().is_relative_to(_PACKAGE_DIR)
    except (OSError, ValueError):
        return False
    if not in_medmoe:
        return False
    raw = code.co_code
    return 0 <= tb.tb_lasti < len(raw) and raw[tb.tb_lasti] == _RAISE


def _raised_remotely_by_medmoe(err: BaseException) -> bool:
    """A worker process's error re-raised here (``concurrent.futures`` keeps the worker's traceback as text
    in ``__cause__``): True when that traceback ends in a ``raise`` statement in medmoe's source."""
    cause = err.__cause__
    text = getattr(cause, "tb", None) if type(cause).__name__ == "_RemoteTraceback" else None
    if not isinstance(text, str):
        return False
    frames = re.findall(r'File "([^"]+)", line \d+, in [^\n]*\n([^\n]*)', text)
    if not frames:
        return False
    filename, line = frames[-1]
    try:
        in_medmoe = Path(filename).resolve().is_relative_to(_PACKAGE_DIR)
    except (OSError, ValueError):
        return False
    return in_medmoe and line.strip().startswith("raise ")


def is_expected(err: BaseException) -> bool:
    """Whether ``err`` is a deliberate refusal a user can act on (the rule in the module docstring)."""
    if isinstance(err, (MedmoeError, OSError, MemoryError)):
        return True
    if type(err).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError: the machine, not a bug
        return True
    return isinstance(err, (ValueError, RuntimeError, ArithmeticError)) and (
        _raised_by_medmoe(err) or _raised_remotely_by_medmoe(err)
    )


def _long_opt(opts: list[str]) -> str:
    longs = [o for o in opts if o.startswith("--")]
    return (longs or opts)[0]


def cli_setting_renderer(command: Any | None) -> Any:
    """A :data:`~medmoe.errors.SettingRenderer` that spells a keyword as ``command``'s flag.

    A keyword that is one of the command's positional arguments is spelled as the argument (``FEATURES``);
    a keyword with neither keeps its Python spelling, marked as such.
    """
    options: dict[str, Any] = {}
    arguments: dict[str, Any] = {}
    for param in getattr(command, "params", None) or []:
        kind = getattr(param, "param_type_name", "")
        if kind in ("option", "argument") and param.name:
            (options if kind == "option" else arguments)[param.name] = param

    def render(keyword: str, value: Any) -> str:
        param = options.get(keyword) or options.get(KEYWORD_TO_PARAM.get(keyword, ""))
        argument = arguments.get(keyword) or arguments.get(KEYWORD_TO_PARAM.get(keyword, ""))
        if param is None and argument is not None:  # a positional argument: its name as the usage line shows it
            name = str(getattr(argument, "metavar", None) or argument.name).upper()
            return name if value is SETTING else f"{name} {shlex.quote(str(value))}"
        if param is None:  # no flag for it: say so rather than pass a Python keyword off as an option
            return f"{python_setting(keyword, value)} (a Python API setting; the command has no flag for it)"
        flag = _long_opt(list(param.opts))
        if value is SETTING:
            return flag
        if isinstance(value, bool) and getattr(param, "is_flag", False):
            if value:
                return flag
            secondary = list(getattr(param, "secondary_opts", []) or [])
            return _long_opt(secondary) if secondary else f"no {flag}"
        if isinstance(value, (list, tuple)):
            return " ".join(f"{flag} {shlex.quote(str(v))}" for v in value)
        return f"{flag} {shlex.quote(str(value))}"

    return render


def cli_text(err: BaseException, command: Any | None = None) -> str:
    """``str(err)`` as the running command (or ``command``) shows it: the settings an
    :class:`~medmoe.errors.InputError` names are spelled as the command's flags; any other error as it is.
    For an error a command reports without exiting (a skipped file of a folder)."""
    if command is None:
        command = getattr(current_context(), "command", None)
    if isinstance(err, InputError):
        return err.render(cli_setting_renderer(command))
    return str(err)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _message(err: BaseException, command: Any | None) -> str:
    if isinstance(err, InputError) or (isinstance(err, MedmoeError) and callable(getattr(err, "render", None))):
        return _one_line(err.render(cli_setting_renderer(command)))  # type: ignore[attr-defined]
    if isinstance(err, MemoryError) and not str(err):
        return "out of memory; use smaller inputs or a machine with more memory"
    text = str(err) or type(err).__name__
    if type(err).__name__ == "OutOfMemoryError":
        text = text.splitlines()[0]
    return _one_line(text)


def is_cli_signal(err: BaseException) -> bool:
    """typer/click's own control flow (exit, abort, usage errors): left to the command-line machinery.
    (``typer.Exit`` is a ``RuntimeError``, so ``except RuntimeError`` blocks in commands can catch it.)"""
    from typer.exceptions import TyperException

    return isinstance(err, (typer.Exit, typer.Abort, TyperException))


def report_error(err: BaseException, ctx: Any | None = None) -> NoReturn:
    """Print ``err`` as the user should see it and exit: 2 for an expected error, 1 for an internal one
    (typer's own exit and usage signals pass through unchanged)."""
    if is_cli_signal(err):
        raise err
    ctx = ctx if ctx is not None else current_context()
    command = getattr(ctx, "command", None)
    if is_expected(err):
        typer.secho(f"error: {_message(err, command)}", fg="red", err=True)
        raise typer.Exit(code=EXIT_INPUT)
    if verbosity(ctx) >= 2:
        traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
    summary = _one_line(f"{type(err).__name__}: {err}") if str(err) else type(err).__name__
    typer.secho(f"error: internal error in medmoe (a bug, not your input): {summary}", fg="red", err=True)
    hint = "the traceback is above" if verbosity(ctx) >= 2 else "run again as `medmoe -vv ...` for the traceback"
    typer.secho(f"  {hint}, and please report it at {ISSUES_URL} with the command you ran", err=True)
    raise typer.Exit(code=EXIT_INTERNAL)


def leaf_context(tb: TracebackType | None) -> Any | None:
    """The context of the innermost command on the traceback (where a failure happened), if any."""
    found = None
    while tb is not None:
        ctx = tb.tb_frame.f_locals.get("ctx")
        if ctx is not None and hasattr(ctx, "command") and hasattr(ctx, "meta"):
            found = ctx
        tb = tb.tb_next
    return found

