"""medmoe's deliberate errors: the refusals a user can act on, and how they name settings.

Two kinds of failure reach a user, and they must not look alike:

* **Expected errors**: the input, a file or the machine is not what medmoe needs (a missing column, a
  truncated checkpoint, a model too large for the memory). medmoe raises them on purpose with a message that
  says what to change. They are instances of :class:`MedmoeError`; :class:`InputError` (also a
  ``ValueError``, so ``except ValueError`` keeps working for Python callers) is the one to raise for bad
  input, and medmoe's specialised errors (``CheckpointError``, ``FeatureFileError``, ``VolumeError``, ...)
  derive from it.
* **Internal errors**: anything else (a ``TypeError``, an ``IndexError``, a ``ValueError`` raised inside
  PyTorch or by a builtin such as ``min([])``). The command line reports them as a bug, with the traceback
  under ``-vv`` (see :mod:`medmoe.cli.error_report`).

**Naming a setting.** A message that tells the user to change a setting names it once, as a placeholder, and
passes the setting as a keyword::

    raise InputError("non-finite loss; lower {lr} or use {precision}", lr=SETTING, precision="32-true")

``str(err)`` speaks Python (``"lower lr or use precision='32-true'"``); the command line renders the same
error with the flag its user types (``"lower --lr or use --precision 32-true"``) through :meth:`InputError.render`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any

__all__ = [
    "SETTING",
    "InputError",
    "MedmoeError",
    "SizeLimitError",
    "closest_names",
    "did_you_mean",
    "python_setting",
    "render_message",
]


class _SettingName:
    """Sentinel value of a placeholder that names a setting without suggesting a value."""

    def __repr__(self) -> str:
        return "SETTING"

    def __reduce__(self) -> str:
        return "SETTING"  # one sentinel, also after pickling (by reference to medmoe.errors.SETTING)


#: Placeholder value meaning "name this setting, suggest no value" (``lower {lr}``).
SETTING: Any = _SettingName()

#: ``render(keyword, value) -> text``: how one audience spells a setting (``value`` may be :data:`SETTING`).
SettingRenderer = Callable[[str, Any], str]


def python_setting(keyword: str, value: Any) -> str:
    """A Python caller's spelling: ``lr`` (name only) or ``precision='32-true'``."""
    return keyword if value is SETTING else f"{keyword}={value!r}"


def render_message(template: str, settings: dict[str, Any], render: SettingRenderer = python_setting) -> str:
    """``template`` with each ``{keyword}`` placeholder replaced by ``render(keyword, settings[keyword])``.

    Only the named placeholders are touched, so braces elsewhere in a message (a dict, a set) stay as they are.
    A placeholder ``{keyword__anything}`` names ``keyword`` too: one setting can appear with two values
    (``{patient_mode}`` = ``'concat'``, ``{patient_mode__other}`` = ``'separate'``).
    """
    out = template
    for keyword, value in settings.items():
        out = out.replace("{" + keyword + "}", render(keyword.split("__")[0], value))
    return out


class MedmoeError(Exception):
    """Base of every error medmoe raises on purpose: the user can fix the input, file or machine it names."""


class InputError(MedmoeError, ValueError):
    """The user's input (an argument, a file, a setting) is wrong; the message says what to change.

    Args:
        template: the message; ``{keyword}`` marks where a setting is named (see the module docstring).
        **settings: ``keyword -> suggested value`` for each placeholder, or :data:`SETTING` to name it only.

    Attributes:
        template: the message before rendering.
        settings: the settings it names, for :meth:`render`.
    """

    def __init__(self, template: str, /, **settings: Any) -> None:
        self.template = template
        self.settings = dict(settings)
        super().__init__(render_message(template, self.settings))

    def __reduce__(self) -> tuple[Any, ...]:
        # keep the template and settings across processes (a worker's error is pickled to the parent)
        return (_rebuild_input_error, (type(self), self.template, self.settings))

    def render(self, render: SettingRenderer) -> str:
        """The message with every named setting spelled by ``render`` (the CLI passes its flag renderer)."""
        return render_message(self.template, self.settings, render)


def _rebuild_input_error(cls: type[InputError], template: str, settings: dict[str, Any]) -> InputError:
    return cls(template, **settings)


class SizeLimitError(InputError):
    """Something declares a size (a model's parameters, a dataset's shape) beyond the memory medmoe allows."""


def closest_names(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` names of ``choices`` closest to ``word`` (difflib; case-insensitive), best first."""
    by_lower: dict[str, str] = {}
    for choice in choices:
        by_lower.setdefault(str(choice).lower(), str(choice))
    found = difflib.get_close_matches(str(word).lower(), list(by_lower), n=n, cutoff=0.6)
    return [by_lower[f] for f in found]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"did you mean 'abmil'?"`` / ``"did you mean 'abmil' (or 'maxmil')?"``, or ``""`` when nothing is close."""
    close = closest_names(word, choices)
    if not close:
        return ""
    more = f" (or {', '.join(repr(c) for c in close[1:])})" if close[1:] else ""
    return f"did you mean {close[0]!r}{more}?"
