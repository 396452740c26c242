"""Argument checks shared by layers and model configs, with messages that name the owner and the argument."""

from __future__ import annotations

from typing import Any


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def positive_int(owner: str, name: str, value: Any) -> int:
    """``value`` if it is an int >= 1 (``True`` is refused), else ``ValueError("<owner>: <name> must be ...")``."""
    if not _is_positive_int(value):
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return value


def check_positive_ints(owner: str, **values: Any) -> None:
    """:func:`positive_int` for each keyword: ``check_positive_ints("Adapter", dim=dim, bottleneck=b)``."""
    for name, value in values.items():
        positive_int(owner, name, value)


def check_positive_fields(config: Any, *names: str) -> None:
    """Dataclass fields that must be ints >= 1; errors read ``"<ConfigClass>.<field> must be ..."``."""
    for name in names:
        value = getattr(config, name)
        if not _is_positive_int(value):
            raise ValueError(f"{type(config).__name__}.{name} must be a positive integer, got {value!r}")
