"""MOSAIC checkpoints for evaluation and prediction (``medmoe mosaic eval`` / ``predict``): a medmoe checkpoint
folder or a checkpoint file of the reference MOSAIC code, and its official metrics on MedMNIST files."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ...models.vit import MosaicModel
from .metrics import TaskMetrics

__all__ = ["evaluate_mosaic_files", "is_mosaic_reference_file", "load_mosaic_model", "metrics_json"]


def is_mosaic_reference_file(checkpoint: str | Path) -> bool:
    """Whether ``checkpoint`` is a file of the reference MOSAIC code (``best_model.pth``), i.e. a file that is
    not part of a medmoe checkpoint folder (``model.safetensors`` / ``config.json`` beside each other)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        return False
    medmoe_file = checkpoint.name in ("model.safetensors", "config.json", "teacher.safetensors")
    return not (medmoe_file and (checkpoint.parent / "config.json").is_file())


def load_mosaic_model(
    checkpoint: str | Path,
    *,
    teacher: bool = False,
    datasets: Sequence[str] | None = None,
    echo: Callable[[str], None] | None = None,
) -> tuple[MosaicModel, dict[str, Any]]:
    """The model of a MOSAIC checkpoint and its info.

    Args:
        checkpoint: a checkpoint folder written by :func:`~medmoe.engine.mosaic.training.train_mosaic`, or a
            checkpoint file of the reference code (read without running pickle code, through
            :func:`medmoe.interop.mosaic.load_mosaic_reference`).
        teacher: the EMA teacher instead of the student.
        datasets: reference files only: their MedMNIST datasets in head order (default: ``args.json`` beside
            the file, else the reference's list whose class counts match the heads).
        echo: called with the load report of a reference file.

    Returns:
        ``(model, info)``: the model in eval mode; the checkpoint's ``config.json`` content (for a reference
        file only ``data_note``).

    Raises:
        ValueError: ``datasets`` with a medmoe checkpoint folder (its config names them); a checkpoint that
            cannot be read.
    """
    from ..checkpoint import load_checkpoint

    if is_mosaic_reference_file(checkpoint):
        from ...interop.mosaic import load_mosaic_reference

        model, report = load_mosaic_reference(
            Path(checkpoint), list(datasets) if datasets else None, teacher=teacher
        )
        if echo is not None:
            echo(report.summary())
        return model, {"data_note": "a checkpoint of the reference MOSAIC code"}
    if datasets:
        from ...errors import SETTING, InputError

        raise InputError(
            "{reference_datasets} applies to reference checkpoint files only, not to a medmoe checkpoint folder "
            "(its config names the datasets)",
            reference_datasets=SETTING,
        )
    return load_checkpoint(checkpoint, teacher=teacher, family="vit")


def evaluate_mosaic_files(
    model: MosaicModel, data: str | Path, split: str = "test", *, batch_size: int = 64
) -> dict[str, TaskMetrics]:
    """Official MedMNIST metrics of ``model`` on every dataset it has a head for, read from the ``.npz`` files
    in ``data`` at the model's image size (the largest 2-D size of its heads).

    Returns:
        ``flag -> TaskMetrics``.

    Raises:
        medmoe.data.MedMNISTFileError: a file is missing (all missing files are listed).
    """
    from .training import evaluate_mosaic, load_medmnist_data

    tasks = model.config.tasks
    sizes = {t.image_size for t in tasks if t.spatial_dims == 2} or {t.image_size for t in tasks}
    size = max(s or 28 for s in sizes)
    splits = load_medmnist_data(data, [t.name for t in tasks], size, splits=(split,))[split]
    return evaluate_mosaic(model, splits, batch_size=batch_size)


def metrics_json(metrics: Mapping[str, TaskMetrics], spatial_dims: Mapping[str, int]) -> str:
    """The metrics as JSON text: ``flag -> metrics`` plus ``means`` (see
    :func:`~medmoe.engine.mosaic.report.mean_accuracies`); NaN written as ``null``."""
    import json

    from .report import mean_accuracies

    payload: dict[str, Any] = {k: m.to_dict() for k, m in metrics.items()}
    payload["means"] = mean_accuracies(metrics, spatial_dims)
    return json.dumps(payload, indent=2).replace("NaN", "null")
