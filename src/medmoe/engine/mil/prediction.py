"""Predictions of saved checkpoints on new bags: one checkpoint, or the ensemble of a cross-validation run.

:func:`predict` gives one checkpoint's class probabilities (or survival risk) per bag. A k-fold run leaves
``k x seeds`` checkpoints; the usual way to apply it to an external cohort is their ensemble
(:func:`predict_ensemble`): class probabilities are averaged (the prediction is the arg-max of the mean,
``agreement`` the share of models that predict it), survival risks are averaged (``risk_std`` is their
spread). :func:`run_checkpoints` lists a run folder's checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .inference import infer_logits, with_feature_stats
from .tasks import get_task
from .tasks.base import checkpoint_output_names

__all__ = ["check_feature_dim", "load_for_inference", "predict", "predict_ensemble", "run_checkpoints"]


def check_feature_dim(expected: int, got: int, source: str, checkpoint: str | Path | None = None) -> None:
    """The one message of eval, predict, embed and heatmap when features have another width than the model's.

    Args:
        expected: the model's ``in_dim``; ``got``: the features' ``d``.
        source: what holds the features (``'the slides in DIR'``, ``'the slide'``).
        checkpoint: named in the message when given.

    Raises:
        ValueError: ``got != expected``.
    """
    if int(got) == int(expected):
        return
    model = f"the checkpoint {checkpoint}" if checkpoint is not None else "the model"
    raise ValueError(
        f"{model} expects {expected}-d features, but those of {source} are {got}-d: use features from the encoder "
        "the model was trained with (the built-in extractor gives 128-d)"
    )


def load_for_inference(
    checkpoint_dir: str | Path, dataset: Any, device: str | torch.device = "cpu"
) -> tuple[Any, dict[str, Any]]:
    """``(model, info)`` of a checkpoint, after checking that ``dataset`` has the feature size it expects."""
    # medmoe folders as load_checkpoint loads them; MIL-Lab/FEATHER Hugging Face folders too
    from ...interop import load_any_checkpoint

    model, info = load_any_checkpoint(checkpoint_dir, map_location=device)
    in_dim = model.config.in_dim
    check_feature_dim(in_dim, getattr(dataset, "feature_dim", in_dim), _source(dataset), checkpoint_dir)
    return model, info


def _source(dataset: Any) -> str:
    """How the messages name a dataset's features: its feature folder, else ``'the dataset'``."""
    folder = getattr(dataset, "features_dir", None)
    return f"the slides in {folder}" if folder is not None else "the dataset"


def _outputs(
    checkpoint_dir: str | Path, dataset: Any, batch_size: int, device: str | torch.device
) -> tuple[dict[str, Any], Tensor]:
    """The checkpoint's info and its float32 logits ``(n, C)`` on ``dataset`` (standardised with the
    checkpoint's feature statistics)."""
    model, info = load_for_inference(checkpoint_dir, dataset, device)
    info = {**info, "num_outputs": model.config.num_classes}
    logits, _ = infer_logits(
        model,
        with_feature_stats(dataset, info.get("feature_stats")),
        batch_size=batch_size,
        device=torch.device(device),
    )
    return info, logits


def _frame(rows: list[dict[str, Any]], as_frame: bool) -> Any:
    if not as_frame:
        return rows
    try:
        import pandas as pd
    except ImportError as err:  # pragma: no cover
        raise ImportError("as_frame=True needs pandas: pip install 'medmoe[mil]'") from err
    return pd.DataFrame(rows)


def predict(
    checkpoint_dir: str | Path,
    dataset: Any,
    *,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    as_frame: bool = False,
) -> Any:
    """Per-bag class probabilities from a saved checkpoint.

    Features are standardised with the checkpoint's saved statistics when it has them.

    Returns:
        A list of dicts (or a pandas DataFrame with ``as_frame=True``), one per bag in dataset order:
        ``bag_id``, ``label`` (the dataset's label index, in the checkpoint's classes when the dataset was
        read with them; ``None`` when negative / unknown), ``label_name``, ``pred`` (class index),
        ``pred_name`` and ``prob_<class name>`` for every class. For a survival checkpoint:
        ``bag_id``, ``time`` and ``event`` (when the dataset has them, else ``None``), ``risk``
        (``-sum_k S_k``, higher = earlier event) and ``survival_<k>`` = ``S_k``, the probability of
        surviving past time bin ``k`` (bins end at the checkpoint's ``survival_bin_edges``). For a
        multi-label checkpoint: ``bag_id``, ``target_<label>`` (when the dataset has the targets),
        ``prob_<label>`` (sigmoid) and ``pred_labels`` (those with probability >= 0.5, ``;``-joined).
        Binary and multi-label decisions use the checkpoint's decision thresholds (chosen on validation
        data, :mod:`medmoe.engine.mil.thresholds`; 0.5 for checkpoints without them) instead of 0.5: ``pred``
        is class 1 when its probability is at least ``threshold`` (a column of two-class rows).
    """
    info, logits = _outputs(checkpoint_dir, dataset, batch_size, device)
    task = get_task(info.get("task", "classification"))
    rows = task.outcome_rows(dataset)
    task.add_predictions(rows, logits, info)
    return _frame(rows, as_frame)


def run_checkpoints(run_dir: str | Path) -> list[Path]:
    """The checkpoints of a cross-validation run folder (the folds its ``manifest.json`` lists; older runs
    without one: every ``seed*/fold*/checkpoint``), in seed and fold order; ``[run_dir]`` when ``run_dir``
    is itself a checkpoint."""
    root = Path(run_dir)
    if (root / "config.json").is_file():
        return [root]
    from ..runs import manifest_checkpoints

    listed = manifest_checkpoints(root)  # a run with a manifest: exactly its folds, never a stale one
    if listed is not None:
        return listed
    found = [p.parent for p in root.glob("seed*/fold*/checkpoint/config.json")]

    def order(p: Path) -> tuple[int, int]:
        seed, fold = p.parent.parent.name[4:], p.parent.name[4:]
        return (int(seed) if seed.isdigit() else 0, int(fold) if fold.isdigit() else 0)

    if not found:
        raise ValueError(
            f"{root} is neither a checkpoint (config.json + model.safetensors) nor a run folder with "
            "seed*/fold*/checkpoint/ inside"
            + (f" (a reference checkpoint file: convert it once with `medmoe mil convert {root} --model NAME "
               "--out DIR`)" if root.is_file() else "")
        )
    return sorted(found, key=order)


def predict_ensemble(
    checkpoint_dirs: Sequence[str | Path],
    dataset: Any,
    *,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    as_frame: bool = False,
) -> Any:
    """The mean prediction of several checkpoints of one task (e.g. every fold of a run).

    Returns:
        One row per bag (list of dicts, or a DataFrame with ``as_frame=True``): as :func:`predict`, with the
        probabilities averaged over the models, plus ``n_models`` and ``agreement`` (share of the models
        whose own decision is the ensemble's); for two classes the decision is ``mean(p) >= threshold``,
        the mean of the models' decision thresholds (the same as the mean margin of each model over its own
        threshold; multi-label: per label); for survival, ``risk`` (mean), ``risk_std`` (sample std over
        the models) and ``n_models`` (per-bin survival is left out: each fold cuts its own time bins); for
        multi-label, the mean ``prob_<label>``, ``pred_labels`` and ``n_models``.

    Raises:
        ValueError: no checkpoints, or checkpoints of different tasks / classes / feature sizes.
    """
    paths = [Path(p) for p in checkpoint_dirs]
    if not paths:
        raise ValueError("predict_ensemble needs at least one checkpoint")
    infos, outputs = [], []
    for path in paths:
        info, logits = _outputs(path, dataset, batch_size, device)
        if infos and (info.get("task"), checkpoint_output_names(info)) != (
                infos[0].get("task"), checkpoint_output_names(infos[0])):
            raise ValueError(
                f"{path} predicts {info.get('task', 'classification')} {checkpoint_output_names(info)} but "
                f"{paths[0]} predicts {infos[0].get('task', 'classification')} "
                f"{checkpoint_output_names(infos[0])}; ensemble checkpoints of one task"
            )
        infos.append(info)
        outputs.append(logits)
    task = get_task(infos[0].get("task", "classification"))
    rows = task.outcome_rows(dataset)
    task.add_ensemble_predictions(rows, outputs, infos)
    return _frame(rows, as_frame)
