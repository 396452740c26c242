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

from .survival import risk_scores, survival_curves
from .thresholds import apply_thresholds, checkpoint_thresholds, decide_classes, ensemble_thresholds
from .trainer import _infer, _with_stats

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
    logits, _ = _infer(
        model,
        _with_stats(dataset, info.get("feature_stats")),
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


def _base_rows(dataset: Any, task: str) -> list[dict[str, Any]]:
    """``bag_id`` plus the known outcome of the checkpoint's ``task``: ``label`` (None when negative /
    unknown), ``time``/``event`` (survival), or ``target_<label>`` (multi-label datasets)."""
    if task == "multilabel":
        if not getattr(dataset, "is_multilabel", False):
            return [{"bag_id": b} for b in dataset.bag_ids]
        targets = dataset.multilabel_targets.long().tolist()
        names = dataset.label_names
        return [{"bag_id": b, **{f"target_{n}": v for n, v in zip(names, t)}} for b, t in zip(dataset.bag_ids, targets)]
    if task == "survival":
        known = getattr(dataset, "is_survival", False)
        times = dataset.survival_times if known else [None] * len(dataset)
        events = dataset.survival_events if known else [None] * len(dataset)
        return [{"bag_id": b, "time": t, "event": e} for b, t, e in zip(dataset.bag_ids, times, events)]
    labels = list(getattr(dataset, "labels", [None] * len(dataset)))
    names = list(getattr(dataset, "class_names", None) or [])
    rows = []
    for b, y in zip(dataset.bag_ids, labels):
        known = y is not None and int(y) >= 0
        name = names[int(y)] if known and int(y) < len(names) else (str(int(y)) if known else None)
        rows.append({"bag_id": b, "label": int(y) if known else None, "label_name": name})
    return rows


def _class_names(info: dict[str, Any]) -> list[str]:
    return list(info.get("class_names") or [str(c) for c in range(info["num_outputs"])])


def _add_label_probabilities(
    rows: list[dict[str, Any]], probs: Tensor, names: list[str], thresholds: Any = None
) -> None:
    """Multi-label rows: ``prob_<label>`` and ``pred_labels`` (the labels with probability at least their
    decision threshold, 0.5 without one; ``;``-joined)."""
    present = apply_thresholds(probs, thresholds if thresholds is not None else [0.5] * len(names))
    for i, row in enumerate(rows):
        row.update({f"prob_{n}": float(probs[i, j]) for j, n in enumerate(names)})
        row["pred_labels"] = ";".join(n for j, n in enumerate(names) if present[i, j])


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
    task = info.get("task", "classification")
    rows = _base_rows(dataset, task)
    if task == "multilabel":
        _add_label_probabilities(rows, torch.sigmoid(logits), _class_names(info), checkpoint_thresholds(info))
    elif task == "survival":
        curves, risk = survival_curves(logits), risk_scores(logits)
        for i, row in enumerate(rows):
            row["risk"] = float(risk[i])
            row.update({f"survival_{k}": float(curves[i, k]) for k in range(curves.shape[1])})
    else:
        names = _class_names(info)
        probs = torch.softmax(logits, dim=-1)
        thresholds = checkpoint_thresholds(info)  # two classes: the decision threshold chosen in training
        preds = decide_classes(probs, thresholds)
        for i, row in enumerate(rows):
            pred = int(preds[i])
            row.update({"pred": pred, "pred_name": names[pred] if pred < len(names) else str(pred)})
            row.update({f"prob_{name}": float(probs[i, c]) for c, name in enumerate(names)})
            if thresholds is not None:
                row["threshold"] = thresholds.values[0]
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
        if infos and (info.get("task"), _class_names(info)) != (infos[0].get("task"), _class_names(infos[0])):
            raise ValueError(
                f"{path} predicts {info.get('task', 'classification')} {_class_names(info)} but {paths[0]} predicts "
                f"{infos[0].get('task', 'classification')} {_class_names(infos[0])}; ensemble checkpoints of one task"
            )
        infos.append(info)
        outputs.append(logits)
    task = infos[0].get("task", "classification")
    rows = _base_rows(dataset, task)
    n = len(paths)
    if task == "multilabel":
        _add_label_probabilities(rows, torch.stack([torch.sigmoid(z) for z in outputs]).mean(0), _class_names(infos[0]),
                                 ensemble_thresholds([checkpoint_thresholds(i) for i in infos]))
        for row in rows:
            row["n_models"] = n
        return _frame(rows, as_frame)
    if task == "survival":
        risks = torch.stack([risk_scores(z) for z in outputs])  # (m, bags)
        mean = risks.mean(0)
        std = risks.std(0) if n > 1 else torch.zeros_like(mean)
        for i, row in enumerate(rows):
            row.update({"risk": float(mean[i]), "risk_std": float(std[i]), "n_models": n})
        return _frame(rows, as_frame)
    names = _class_names(infos[0])
    probs = torch.stack([torch.softmax(z, dim=-1) for z in outputs])  # (m, bags, C)
    mean = probs.mean(0)
    members = [checkpoint_thresholds(i) for i in infos]  # two classes: each fold's own threshold
    thresholds = ensemble_thresholds(members) if members[0] is not None else None
    preds = decide_classes(mean, thresholds)  # mean(p) >= mean(t): the mean margin over own thresholds
    votes = torch.stack([decide_classes(p, t) for p, t in zip(probs, members)])  # (m, bags)
    for i, row in enumerate(rows):
        pred = int(preds[i])
        row.update({"pred": pred, "pred_name": names[pred] if pred < len(names) else str(pred)})
        row.update({f"prob_{name}": float(mean[i, c]) for c, name in enumerate(names)})
        if thresholds is not None:
            row["threshold"] = thresholds[0]
        row.update({"n_models": n, "agreement": float((votes[:, i] == pred).double().mean())})
    return _frame(rows, as_frame)
