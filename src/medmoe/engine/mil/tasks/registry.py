"""The task registry: ``TrainConfig.task`` (and a checkpoint's ``task``) names a registered :class:`Task`.

:func:`get_task` is how the trainer, evaluation, cross-validation, tuning, prediction, heatmaps and the CLI
pick the task, once; :func:`register_task` adds one (the built-in ``classification``, ``survival`` and
``multilabel`` are registered by :mod:`medmoe.engine.mil.tasks`).
"""

from __future__ import annotations

from .base import Task

__all__ = ["get_task", "register_task", "task_names", "unregister_task"]

_TASKS: dict[str, Task] = {}


def register_task(task: Task | type[Task], *, replace: bool = False) -> Task:
    """Register ``task`` (an instance, or a class built without arguments) under its ``name``.

    Returns:
        The registered instance (so ``register_task`` works as a class decorator's helper too).

    Raises:
        ValueError: not a :class:`Task`, no ``name``, or the name is taken (without ``replace``).
    """
    instance = task() if isinstance(task, type) else task
    if not isinstance(instance, Task):
        raise ValueError(f"register_task needs a medmoe.engine.mil.tasks.Task, got {type(instance).__name__}")
    name = getattr(instance, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{type(instance).__name__} needs a non-empty class attribute `name`")
    if name in _TASKS and not replace:
        raise ValueError(f"a task named {name!r} is already registered ({type(_TASKS[name]).__name__}); "
                         "pass replace=True to replace it")
    _TASKS[name] = instance
    return instance


def unregister_task(name: str) -> None:
    """Remove a registered task (tests that register their own use it to clean up)."""
    _TASKS.pop(name, None)


def get_task(name: str | Task) -> Task:
    """The registered task called ``name`` (a :class:`Task` is returned as it is).

    Raises:
        ValueError: no task of that name; the message lists the registered ones.
    """
    if isinstance(name, Task):
        return name
    try:
        return _TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; choose from {task_names()}") from None


def task_names() -> list[str]:
    """The registered task names, sorted."""
    return sorted(_TASKS)
