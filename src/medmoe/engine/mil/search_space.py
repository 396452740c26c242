"""The hyper-parameter search space of ``medmoe mil tune``: a documented, overridable structure.

A space maps a parameter name to how it is drawn and where it goes. In YAML (``--space FILE``)::

    lr:           {type: float, low: 1.0e-5, high: 1.0e-3, log: true}   # TrainConfig.lr
    weight_decay: {type: float, low: 1.0e-6, high: 1.0e-2, log: true}
    epochs:       {type: int, low: 10, high: 40}
    patience:     {type: int, low: 3, high: 10}
    dropout:      {type: float, low: 0.0, high: 0.5, target: model}     # the model config's dropout
    num_experts:  {type: categorical, choices: [4, 8, 16, 30], target: mammoth}
    num_slots:    {type: categorical, choices: [2, 5, 10], target: mammoth}

``type`` is ``float``, ``int`` or ``categorical``; ``log: true`` samples on a log scale. ``target`` says
where the value goes:

* ``train`` — a :class:`~medmoe.engine.TrainConfig` field (the default for a name that is one);
* ``model`` — a model config override (``--set``), used only for models whose config has that key
  (``dropout`` is skipped for ILRA, which has none);
* ``mammoth`` — a Mammoth patch-embedding argument (``patch_embed_args``), used only when the model's
  patch embedding is ``mammoth`` (the default for ``num_experts``, ``num_slots``, ``num_heads``,
  ``slot_dim``).

A parameter is left out with ``name: null`` in a file merged over the default space
(:func:`load_space` with ``merge=True``), or by giving a complete space.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import SETTING, InputError
from .config import TrainConfig

__all__ = ["DEFAULT_SPACE", "ParamSpec", "SearchSpace", "load_space"]

_TYPES = ("float", "int", "categorical")
_TARGETS = ("train", "model", "mammoth")
_MAMMOTH_KEYS = ("num_experts", "num_slots", "num_heads", "slot_dim")
_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_NOT_TUNABLE = {"task", "seed", "accelerator", "devices", "num_nodes", "strategy", "num_workers", "progress", "loggers",
                "precision"}


@dataclass(frozen=True)
class ParamSpec:
    """How one hyper-parameter is drawn (see the module docstring).

    Attributes:
        name: the parameter (a TrainConfig field, a model config key or a Mammoth argument).
        type: ``'float'``, ``'int'`` or ``'categorical'``.
        low, high: the range of ``float`` / ``int`` parameters (inclusive).
        log: sample on a log scale (``low`` must be > 0).
        choices: the values of a ``categorical`` parameter.
        target: ``'train'``, ``'model'`` or ``'mammoth'``.
    """

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    target: str = "train"

    def to_dict(self) -> dict[str, Any]:
        if self.type == "categorical":
            return {"type": self.type, "choices": list(self.choices), "target": self.target}
        return {"type": self.type, "low": self.low, "high": self.high, "log": self.log, "target": self.target}

    def suggest(self, trial: Any) -> Any:
        """Draw the value for an Optuna ``trial``."""
        if self.type == "float":
            return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))


def _default_target(name: str) -> str:
    if name in _MAMMOTH_KEYS:
        return "mammoth"
    return "train" if name in _TRAIN_FIELDS else "model"


def _parse_param(name: str, raw: Any, where: str) -> ParamSpec:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: {name!r} must be a mapping like {{type: float, low: 1e-5, high: 1e-3}}, got "
                         f"{raw!r}")
    unknown = sorted(set(map(str, raw)) - {"type", "low", "high", "log", "choices", "target"})
    if unknown:
        raise ValueError(f"{where}: {name!r} has unknown keys {unknown}; allowed: type, low, high, log, choices, "
                         "target")
    kind = raw.get("type", "categorical" if "choices" in raw else "float")
    if kind not in _TYPES:
        raise ValueError(f"{where}: {name!r} has type {kind!r}; use one of {list(_TYPES)}")
    target = raw.get("target", _default_target(name))
    if target not in _TARGETS:
        raise ValueError(f"{where}: {name!r} has target {target!r}; use one of {list(_TARGETS)}")
    if target == "train" and (name not in _TRAIN_FIELDS or name in _NOT_TUNABLE):
        raise ValueError(f"{where}: {name!r} is not a tunable training setting; tunable ones include lr, "
                         "weight_decay, epochs, patience, feature_dropout, min_lr, warmup_epochs (or give "
                         "target: model for a model config key)")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise ValueError(f"{where}: {name!r}: log must be true or false, got {log!r}")
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, (list, tuple)) or not choices:
            raise ValueError(f"{where}: {name!r} is categorical: give a non-empty list, e.g. choices: [4, 8]")
        if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            raise ValueError(f"{where}: {name!r}: choices must be numbers, strings, booleans or null")
        return ParamSpec(name, kind, choices=tuple(choices), target=target)
    low, high = raw.get("low"), raw.get("high")
    for key, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where}: {name!r} needs a finite number {key}, got {value!r}")
    if kind == "int" and (int(low) != low or int(high) != high):
        raise ValueError(f"{where}: {name!r} is an int parameter: low and high must be integers")
    if low > high:
        raise ValueError(f"{where}: {name!r} has low {low} > high {high}")
    if log and low <= 0:
        raise ValueError(f"{where}: {name!r} is sampled on a log scale: low must be > 0, got {low}")
    return ParamSpec(name, kind, float(low) if kind == "float" else int(low),
                     float(high) if kind == "float" else int(high), log, target=target)


@dataclass(frozen=True)
class SearchSpace:
    """An ordered set of :class:`ParamSpec` (see the module docstring for the YAML form)."""

    params: tuple[ParamSpec, ...]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "search space") -> SearchSpace:
        """Parse ``{name: {type, low, high, log, choices, target}}``; entries that are ``None`` are left out.

        Raises:
            ValueError: a malformed entry (the message names it) or an empty space.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{where} must be a mapping of parameter name -> {{type, low, high, ...}}, got "
                             f"{type(data).__name__}")
        params = tuple(_parse_param(str(k), v, where) for k, v in data.items() if v is not None)
        if not params:
            raise ValueError(f"{where} holds no parameter to tune")
        return cls(params)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {p.name: p.to_dict() for p in self.params}

    def names(self) -> list[str]:
        return [p.name for p in self.params]


#: The default space (issue 25): learning rate, weight decay, epochs, patience, dropout, Mammoth's experts
#: and slots.
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
    "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
    "epochs": {"type": "int", "low": 10, "high": 40},
    "patience": {"type": "int", "low": 3, "high": 10},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5, "target": "model"},
    "num_experts": {"type": "categorical", "choices": [4, 8, 16, 30], "target": "mammoth"},
    "num_slots": {"type": "categorical", "choices": [2, 5, 10], "target": "mammoth"},
}


def load_space(source: str | Path | Mapping[str, Any] | SearchSpace | None = None, *,
               merge: bool = False) -> SearchSpace:
    """The search space from a YAML file, a mapping, or the default (``None``).

    Args:
        source: a YAML file path, a mapping as in the module docstring, a :class:`SearchSpace`, or ``None``
            for :data:`DEFAULT_SPACE`.
        merge: lay ``source`` over :data:`DEFAULT_SPACE` (change or drop single entries: ``lr: null``)
            instead of replacing it.

    Raises:
        ValueError: unreadable file, invalid YAML, or a malformed entry.
    """
    if isinstance(source, SearchSpace):
        return source
    if source is None:
        return SearchSpace.from_dict(DEFAULT_SPACE, "default search space")
    where = "{space}"
    if isinstance(source, (str, Path)):
        import yaml

        path = Path(source)
        where = f"{{space}} file {path}"
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as err:
            raise InputError(f"cannot read the {where}: {err.strerror or err}", space=SETTING) from err
        except yaml.YAMLError as err:
            raise InputError(f"{where} is not valid YAML: {str(err).splitlines()[0]}", space=SETTING) from err
        if data is None:
            data = {}
    else:
        data = source
    if not isinstance(data, Mapping):
        raise InputError(f"{where} must be a mapping of parameter name -> {{type, low, high, ...}}, got "
                         f"{type(data).__name__}", space=SETTING)
    if merge:
        data = {**DEFAULT_SPACE, **data}
    try:
        return SearchSpace.from_dict(data, where)
    except ValueError as err:  # name the setting: `space` in Python, `--space` on the command line
        raise InputError(str(err), space=SETTING) from err
