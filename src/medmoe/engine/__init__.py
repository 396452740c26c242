"""Training and evaluation of MIL models: Lightning Fabric loop, metrics, checkpoints, cross-validation.

* :class:`TrainingLoop`, :class:`LoopHooks`, :class:`LoopConfig` — the one Fabric training loop every pipeline
  trains through (seeding, resume with a settings check, early stopping, checkpoints, metrics CSV, loggers):
  :mod:`medmoe.engine.loop`.
* :class:`TrainConfig` — every training setting (AdamW, warm-up + cosine, clipping, early stopping, ...).
* :func:`train_one_fold`, :func:`evaluate` — :mod:`medmoe.engine.mil.trainer`.
* :func:`predict`, :func:`predict_ensemble` (every fold of a run) — :mod:`medmoe.engine.mil.prediction`.
* :func:`embed_slides`, :func:`save_slide_embeddings` — slide vectors of a trained model
  (:mod:`medmoe.engine.mil.slide_embedding`).
* :func:`run_cross_validation`, :func:`compare` — :mod:`medmoe.engine.mil.cross_validation`.
* :func:`collect_comparison` — the table of a (partly) finished compare folder, without training.
* :func:`paired_comparison` — per-fold paired differences of two patch embeddings, corrected t-test.
* :func:`compute_metrics`, :func:`summarize`, :func:`format_summary` — :mod:`medmoe.engine.mil.metrics`.
* :mod:`medmoe.engine.mil.tasks` — what a task decides (outputs, targets, loss, metrics, monitor, thresholds,
  prediction columns, plots): ``classification``, ``survival``, ``multilabel``; ``register_task`` adds one.
* :mod:`medmoe.engine.mil.survival` — discrete-time survival (``TrainConfig(task='survival')``): time bins,
  NLL loss, risks, Harrell's c-index.
* :mod:`medmoe.engine.mil.multilabel` — several yes/no labels per slide (``TrainConfig(task='multilabel')``):
  BCE loss, macro and per-label metrics.
* :func:`sliding_window_labels`, :func:`predict_volumes` — 3-D sliding-window inference
  (:mod:`medmoe.engine.seg.inference`).
* :func:`save_checkpoint`, :func:`load_checkpoint` (any model family: MIL, segmentation, MOSAIC) —
  :mod:`medmoe.engine.checkpoint`; ``load_seg_checkpoint`` and ``load_mosaic_checkpoint`` are its deprecated
  aliases (``family="seg"`` / ``"vit"``).

Needs the ``mil`` extra (``lightning-fabric``, ``torchmetrics``): ``pip install 'medmoe[mil]'``. The
trainer, cross-validation and metric modules are imported on first use, so ``import medmoe.engine`` and
the checkpoint functions work without them.
"""

from __future__ import annotations

import importlib
from typing import Any

from .checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_mosaic_checkpoint,
    load_seg_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
)
from .mil.config import TrainConfig

__all__ = [
    "ALL_METRIC_NAMES",
    "METRIC_NAMES",
    "CVResult",
    "CheckpointError",
    "ComparisonResult",
    "EvalResult",
    "FoldResult",
    "LoopConfig",
    "LoopHooks",
    "MosaicResult",
    "MosaicTrainConfig",
    "SegTrainConfig",
    "SlideEmbeddings",
    "TrainConfig",
    "TrainingLoop",
    "build_mosaic_config",
    "collect_comparison",
    "compare",
    "compute_metrics",
    "embed_slides",
    "evaluate",
    "evaluate_mosaic",
    "evaluate_scores",
    "evaluate_segmentation",
    "format_mean_std",
    "format_metrics_table",
    "format_summary",
    "load_checkpoint",
    "load_medmnist_data",
    "load_mosaic_checkpoint",
    "load_seg_checkpoint",
    "load_slide_embeddings",
    "make_fabric",
    "mean_accuracies",
    "medmnist_acc",
    "medmnist_auc",
    "paired_comparison",
    "parameter_report",
    "predict",
    "predict_ensemble",
    "predict_volumes",
    "read_checkpoint_info",
    "resolve_variant",
    "retina_tolerant_acc",
    "run_checkpoints",
    "run_cross_validation",
    "save_checkpoint",
    "save_mosaic_checkpoint",
    "save_slide_embeddings",
    "sliding_window_labels",
    "sliding_window_logits",
    "summarize",
    "train_mosaic",
    "train_one_fold",
    "train_segmentation",
]

_LAZY = {
    "TrainingLoop": "loop",
    "LoopHooks": "loop",
    "LoopConfig": "loop",
    "train_segmentation": "seg.training",
    "evaluate_segmentation": "seg.training",
    "SegTrainConfig": "seg.training",
    "predict_volumes": "seg.inference",
    "sliding_window_logits": "seg.inference",
    "sliding_window_labels": "seg.inference",
    "compute_metrics": "mil.metrics",
    "summarize": "mil.metrics",
    "format_summary": "mil.metrics",
    "format_mean_std": "mil.metrics",
    "METRIC_NAMES": "mil.metrics",
    "ALL_METRIC_NAMES": "mil.metrics",
    "train_one_fold": "mil.trainer",
    "evaluate": "mil.trainer",
    "predict": "mil.prediction",
    "predict_ensemble": "mil.prediction",
    "run_checkpoints": "mil.prediction",
    "SlideEmbeddings": "mil.slide_embedding",
    "embed_slides": "mil.slide_embedding",
    "save_slide_embeddings": "mil.slide_embedding",
    "load_slide_embeddings": "mil.slide_embedding",
    "make_fabric": "mil.trainer",
    "FoldResult": "mil.trainer",
    "EvalResult": "mil.trainer",
    "run_cross_validation": "mil.cross_validation",
    "compare": "mil.cross_validation",
    "collect_comparison": "mil.comparison_summary",
    "paired_comparison": "mil.paired_comparison",
    "resolve_variant": "mil.cross_validation",
    "CVResult": "mil.cross_validation",
    "ComparisonResult": "mil.cross_validation",
    "MosaicTrainConfig": "mosaic.training",
    "MosaicResult": "mosaic.training",
    "train_mosaic": "mosaic.training",
    "evaluate_mosaic": "mosaic.training",
    "build_mosaic_config": "mosaic.training",
    "save_mosaic_checkpoint": "mosaic.training",
    "load_medmnist_data": "mosaic.training",
    "medmnist_acc": "mosaic.metrics",
    "medmnist_auc": "mosaic.metrics",
    "retina_tolerant_acc": "mosaic.metrics",
    "evaluate_scores": "mosaic.metrics",
    "parameter_report": "mosaic.report",
    "format_metrics_table": "mosaic.report",
    "mean_accuracies": "mosaic.report",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
