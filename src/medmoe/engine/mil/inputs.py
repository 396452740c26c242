"""What the MIL commands read: the task from its settings, the bags of a benchmark or of a feature folder with
its labels CSV, and the bags a checkpoint scores (``medmoe mil train / compare / tune / eval / predict / embed``).

Refusals are :class:`~medmoe.errors.InputError` naming the settings (``label_cols``, ``features``, ...), which
the command line spells as its flags (``--label-cols``, ``--features``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...errors import SETTING, InputError

__all__ = ["check_benchmark_classes", "inference_dataset", "load_dataset", "resolve_task"]


def resolve_task(task: str, label_cols: str | Sequence[str] | None) -> tuple[str, list[str] | None]:
    """``(task, label columns)`` from a task name and label columns (a list, or comma-separated text such as
    ``"tumor,necrosis"``); label columns alone turn the default ``classification`` into ``multilabel``.

    Raises:
        ValueError: an unknown task, a multi-label task without label columns, or label columns for a task
            that does not read them.
    """
    from .tasks import get_task, task_names

    if isinstance(label_cols, str):
        cols = [c.strip() for c in label_cols.split(",") if c.strip()] or None
        if label_cols and not cols:
            raise InputError(f"{{label_cols}} needs comma-separated column names, got {label_cols!r}",
                             label_cols=SETTING)
    else:
        cols = [str(c) for c in label_cols] if label_cols else None
    if cols and task == "classification":  # the default: label columns alone mean multilabel
        task = "multilabel"
    if task not in task_names():
        raise InputError(f"{{task}} must be one of {', '.join(repr(t) for t in task_names())}, got {task!r}",
                         task=SETTING)
    if get_task(task).uses_label_columns and not cols:
        raise InputError("{task} needs {label_cols} naming the 0/1 label columns of the CSV", task=task,
                         label_cols=SETTING)
    if cols and not get_task(task).uses_label_columns:
        raise InputError(f"{{label_cols}} is for {{task}}, not {task!r}", label_cols=SETTING, task="multilabel")
    return task, cols


def load_dataset(dataset: str | None, features: str | Path | None, labels: str | Path | None,
                 patient_mode: str = "separate", *, task: str = "classification", time_col: str | None = None,
                 event_col: str = "event", label_cols: list[str] | None = None,
                 class_names: list[str] | None = None) -> tuple[str, Any]:
    """``(name, bag dataset)`` from a benchmark name (``musk1``, fetched on first use) or a TRIDENT feature
    folder and its labels CSV, read with the columns of ``task`` (survival: time and event columns;
    multilabel: the 0/1 ``label_cols``; see :meth:`~medmoe.engine.mil.tasks.Task.read_bags` and
    :class:`~medmoe.data.FeatureFolderBags`).

    Args:
        dataset: a benchmark name, or ``None`` with ``features``.
        features, labels: a feature folder and its labels CSV, or ``None`` with ``dataset``.
        patient_mode: several slides of a case as ``separate`` bags or ``concat``.
        task, time_col, event_col, label_cols, class_names: how the labels CSV is read.

    Raises:
        ValueError: both or neither of ``dataset`` and ``features``; ``features`` without ``labels``; a benchmark
            for a task that needs other labels.
    """
    from .tasks import get_task

    if (dataset is None) == (features is None):
        raise InputError("give either {dataset} NAME or {features} DIR (with {labels} CSV)", dataset=SETTING,
                         features=SETTING, labels=SETTING)
    the_task = get_task(task)
    if dataset is not None:
        if not the_task.uses_class_labels or label_cols:
            raise InputError(f"the benchmark {dataset!r} has one class label per bag; use {{features}} and "
                             "{labels} with time and event columns (survival) or 0/1 label columns (multilabel)",
                             features=SETTING, labels=SETTING)
        from ...data import load_mil_benchmark

        return dataset, load_mil_benchmark(dataset)
    if labels is None:
        raise InputError("{features} needs {labels} CSV (columns slide_id, label[, case_id, split])",
                         features=SETTING, labels=SETTING)
    return Path(features).name, the_task.read_bags(features, labels, patient_mode=patient_mode,  # type: ignore[arg-type]
                                                   time_col=time_col, event_col=event_col, label_cols=label_cols,
                                                   class_names=class_names)


def check_benchmark_classes(ds: Any, info: dict[str, Any], name: str) -> None:
    """A benchmark scored by a checkpoint must be read as the checkpoint was trained: a classification
    checkpoint with the benchmark's classes.

    Raises:
        ValueError: the checkpoint is not a classification model, or predicts other classes.
    """
    from .tasks import get_task
    from .tasks.classification import checkpoint_classes

    if not get_task(info.get("task", "classification")).uses_class_labels:
        raise InputError(f"the benchmark {name!r} has one class label per bag, but the checkpoint is a "
                         f"{info.get('task')} model; give {{features}} and {{labels}} with its columns",
                         features=SETTING, labels=SETTING)
    ours, theirs = checkpoint_classes(info), [str(c) for c in ds.class_names]
    if info.get("class_names") and ours != theirs:
        raise InputError(f"the benchmark {name!r} has classes {theirs} but the checkpoint predicts {ours}; it was "
                         "trained on other data: give {features} and {labels} of a cohort with its classes",
                         features=SETTING, labels=SETTING)


def inference_dataset(features: str | Path, labels: str | Path | None, info: dict[str, Any], *,
                      time_col: str | None = None, event_col: str = "event") -> tuple[Any, bool]:
    """``(bags, labelled)``: the bags of a feature folder for a checkpoint (its ``info``) to score: with a
    labels CSV as in training (survival columns for a survival checkpoint, 0/1 columns for a multi-label one;
    a classification CSV's labels mapped through the checkpoint's classes, so a cohort holding only some of
    them keeps the model's numbering), without one every feature file as one bag of unknown outcome
    (placeholder label: the checkpoint's first class). A benchmark name (``musk1``) instead of a folder gives
    that benchmark with its labels (its classes must be the checkpoint's).

    Raises:
        ValueError: the folder does not exist (and is no benchmark name) or holds no feature file; the labels CSV
            is missing.
    """
    import csv
    import tempfile

    from ...data import FeatureFolderBags, list_mil_benchmarks, load_mil_benchmark
    from ...data.feature_files import feature_files, trident_features_dir
    from ...data.file_checks import describe_path, require_file, require_folder
    from .tasks import get_task

    task = get_task(info.get("task", "classification"))
    columns = task.checkpoint_columns(info)  # the checkpoint's classes, label columns, ...
    folder = Path(features)
    if labels is None and describe_path(folder) == "missing" and str(features).lower() in list_mil_benchmarks():
        ds = load_mil_benchmark(str(features).lower())
        check_benchmark_classes(ds, info, str(features).lower())
        return ds, True
    if describe_path(folder) == "missing":
        raise ValueError(f"feature folder {features} does not exist (nor is it a benchmark: "
                         f"{', '.join(list_mil_benchmarks())})")
    require_folder(folder, "feature folder")
    if labels is not None:
        require_file(labels, "--labels")
        return task.read_bags(folder, labels, time_col=time_col, event_col=event_col, **columns), True
    stems = sorted(feature_files(trident_features_dir(folder)))  # refuses slide.h5 + slide.pt
    if not stems:
        raise ValueError(f"no .h5 or .pt feature files in {features}")
    with tempfile.TemporaryDirectory(prefix="medmoe-labels-") as tmp:
        placeholder = Path(tmp) / "labels.csv"
        classes = columns.get("class_names")
        with placeholder.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["slide_id", "label"])
            writer.writerows([s, classes[0] if classes else "0"] for s in stems)
        return FeatureFolderBags(folder, placeholder, class_names=classes), False
