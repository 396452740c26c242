"""Training and evaluation of MIL models: Lightning Fabric loop, metrics, checkpoints, cross-validation.

* :class:`TrainConfig` — every training setting (AdamW, warm-up + cosine, clipping, early stopping, ...).
* :func:`train_one_fold`, :func:`evaluate` — :mod:`medmoe.engine.trainer`.
* :func:`predict`, :func:`predict_ensemble` (every fold of a run) — :mod:`medmoe.engine.prediction`.
* :func:`embed_slides`, :func:`save_slide_embeddings` — slide vectors of a trained model
  (:mod:`medmoe.engine.slide_embedding`).
* :func:`run_cross_validation`, :func:`compare` — :mod:`medmoe.engine.cross_validation`.
* :func:`collect_comparison` — the table of a (partly) finished compare folder, without training.
* :func:`paired_comparison` — per-fold paired differences of two patch embeddings, corrected t-test.
* :func:`compute_metrics`, :func:`summarize`, :func:`format_summary` — :mod:`medmoe.engine.metrics`.
* :mod:`medmoe.engine.survival` — discrete-time survival (``TrainConfig(task='survival')``): time bins,
  NLL loss, risks, Harrell's c-index.
* :mod:`medmoe.engine.multilabel` — several yes/no labels per slide (``TrainConfig(task='multilabel')``):
  BCE loss, macro and per-label metrics.
* :func:`sliding_window_labels`, :func:`predict_volumes` — 3-D sliding-window inference
  (:mod:`medmoe.engine.seg_inference`).
* :func:`save_checkpoint`, :func:`load_checkpoint` — :mod:`medmoe.engine.checkpoint`.

Needs the ``mil`` extra (``lightning-fabric``, ``torchmetrics``): ``pip install 'medmoe[mil]'``. The
trainer, cross-validation and metric modules are imported on first use, so ``import medmoe.engine`` and
the checkpoint functions work without them.
"""

from __future__ import annotations

import importlib
from typing import Any

from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint_info, save_checkpoint
from .config import TrainConfig

__all__ = [
    "ALL_METRIC_NAMES",
    "METRIC_NAMES",
    "CVResult",
    "CheckpointError",
    "ComparisonResult",
    "EvalResult",
    "FoldResult",
    "MosaicResult",
    "MosaicTrainConfig",
    "SegTrainConfig",
    "SlideEmbeddings",
    "TrainConfig",
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
    "train_segmentation": "segmentation",
    "evaluate_segmentation": "segmentation",
    "load_seg_checkpoint": "segmentation",
    "SegTrainConfig": "segmentation",
    "predict_volumes": "seg_inference",
    "sliding_window_logits": "seg_inference",
    "sliding_window_labels": "seg_inference",
    "compute_metrics": "metrics",
    "summarize": "metrics",
    "format_summary": "metrics",
    "format_mean_std": "metrics",
    "METRIC_NAMES": "metrics",
    "ALL_METRIC_NAMES": "metrics",
    "train_one_fold": "trainer",
    "evaluate": "trainer",
    "predict": "prediction",
    "predict_ensemble": "prediction",
    "run_checkpoints": "prediction",
    "SlideEmbeddings": "slide_embedding",
    "embed_slides": "slide_embedding",
    "save_slide_embeddings": "slide_embedding",
    "load_slide_embeddings": "slide_embedding",
    "make_fabric": "trainer",
    "FoldResult": "trainer",
    "EvalResult": "trainer",
    "run_cross_validation": "cross_validation",
    "compare": "cross_validation",
    "collect_comparison": "comparison_summary",
    "paired_comparison": "paired_comparison",
    "resolve_variant": "cross_validation",
    "CVResult": "cross_validation",
    "ComparisonResult": "cross_validation",
    "MosaicTrainConfig": "mosaic_training",
    "MosaicResult": "mosaic_training",
    "train_mosaic": "mosaic_training",
    "evaluate_mosaic": "mosaic_training",
    "build_mosaic_config": "mosaic_training",
    "load_mosaic_checkpoint": "mosaic_training",
    "save_mosaic_checkpoint": "mosaic_training",
    "load_medmnist_data": "mosaic_training",
    "medmnist_acc": "medmnist_metrics",
    "medmnist_auc": "medmnist_metrics",
    "retina_tolerant_acc": "medmnist_metrics",
    "evaluate_scores": "medmnist_metrics",
    "parameter_report": "mosaic_report",
    "format_metrics_table": "mosaic_report",
    "mean_accuracies": "mosaic_report",
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
