"""MIL tasks as objects: classification, survival and multi-label behind one :class:`Task` protocol.

* :mod:`~medmoe.engine.mil.tasks.base` — the :class:`Task` protocol and the per-fold :class:`Objective`;
* :mod:`~medmoe.engine.mil.tasks.classification`, :mod:`~medmoe.engine.mil.tasks.survival`,
  :mod:`~medmoe.engine.mil.tasks.multilabel` — the built-in tasks;
* :mod:`~medmoe.engine.mil.tasks.patients` — metrics per patient (a patient's bags averaged);
* :mod:`~medmoe.engine.mil.tasks.registry` — :func:`register_task`, :func:`get_task`, :func:`task_names`.

A new task is one module with a :class:`Task` subclass and one ``register_task(MyTask())`` line.
"""

from .base import Objective, Task
from .classification import ClassificationTask
from .multilabel import MultilabelTask
from .registry import get_task, register_task, task_names, unregister_task
from .survival import SurvivalTask

__all__ = [
    "ClassificationTask",
    "MultilabelTask",
    "Objective",
    "SurvivalTask",
    "Task",
    "get_task",
    "register_task",
    "task_names",
    "unregister_task",
]

register_task(ClassificationTask())
register_task(SurvivalTask())
register_task(MultilabelTask())
