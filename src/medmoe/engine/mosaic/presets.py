"""Named MOSAIC protocols: the reference's (``mosaic-paper``, the default), and medmoe's CPU-friendly one (``medmoe-cpu``).

A :class:`MosaicPreset` fixes what a run's outcome depends on besides the data and the ImageNet weights: the
model (:class:`~medmoe.models.vit.MosaicConfig` fields and the ViT's LayerNorm epsilon), the image sizes and
dataset order, and the training protocol (:class:`~medmoe.engine.mosaic.training.MosaicTrainConfig` fields).
``medmoe mosaic train --preset NAME`` starts from it; every flag given explicitly still wins.
``docs/mosaic-presets.md`` lists what each preset sets and costs.

* ``mosaic-paper`` — shixingm3-oss/mosaic-medical @ 912df1e as its README runs it (``main.py --adapter_mode
  v2_moe --freeze_backbone --num_rounds 100 --seed 42``): ViT-B/16, 2-D tokenizer LayerNorm, PyTorch's
  LayerNorm epsilon 1e-5, random **frozen** 3-D tokenizer, A/B/C specialists (64/96/192, scale 0.1); 224^2
  images and 64^3 volumes; the reference's dataset order (``config/datasets.py``); a full epoch of each
  dataset per round; the reference's 2-D augmentation (rotation after normalisation: nearest, mean-colour
  corners); AdamW lr 1e-4, weight decay 0.01, 5 warm-up rounds then cosine to 1e-6; batch 32; consistency
  0.1; EMA 0.9 / 0.95; clip 1.0; the reference's early-stopping rule (patience 5, min_delta 0.001); fp32
  everywhere. One deliberate medmoe choice stays: rounds are selected on the official MedMNIST ACC
  (``selection_metric="acc_pm1"`` gives the reference's mean with the +-1 RetinaMNIST accuracy).
* ``medmoe-cpu`` — what ``mosaic train`` did before presets (and what ``--demo`` uses), with the
  reference's 2-D tokenizer LayerNorm now part of the model: 28^2 images (2 x 2 tokens) and 28^3 volumes,
  MedMNIST's dataset order, trainable 3-D tokenizer, medmoe's 2-D augmentation (rotation before
  normalisation, bilinear, black corners), medmoe's early stopping (only gains > min_delta count), bf16 on
  CUDA (``precision="auto"``), LayerNorm epsilon 1e-6 (the JAX ViT's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["MOSAIC_PRESETS", "MosaicPreset", "get_mosaic_preset"]


@dataclass(frozen=True)
class MosaicPreset:
    """One named protocol.

    Attributes:
        name: what ``--preset`` takes.
        summary: one line for ``--help`` and listings.
        size: stored 2-D image side (3-D datasets use ``min(size, 64)``).
        dataset_order: :func:`medmoe.data.medmnist.order_medmnist_flags` order of the datasets (round-robin
            order, which dataset last updates the shared adapters in a round).
        norm_eps: LayerNorm epsilon of the ViT and the tokenizers.
        model: :class:`~medmoe.models.vit.MosaicConfig` fields.
        train: :class:`~medmoe.engine.mosaic.training.MosaicTrainConfig` fields.
    """

    name: str
    summary: str
    size: int
    dataset_order: str
    norm_eps: float
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


_COMMON_TRAIN: dict[str, Any] = {
    "rounds": 100, "lr": 1e-4, "weight_decay": 0.01, "warmup_rounds": 5, "warmup_start_factor": 0.01,
    "min_lr": 1e-6, "grad_clip": 1.0, "batch_size": 32, "consistency_weight": 0.1, "ema_2d": 0.9, "ema_3d": 0.95,
    "sampler": "round_robin", "patience": 5, "min_delta": 0.001, "augment": True, "seed": 42,
    "selection_metric": "acc",
}
_COMMON_MODEL: dict[str, Any] = {
    "routing": "mosaic", "adapter_scale": 0.1, "adapter_dropout": 0.0, "adapter_layer_norm": True,
    "normalize_2d": "imagenet", "image_size_2d": None, "freeze_backbone": True, "patch_norm_2d": True,
    "use_adapters": True,
}

MOSAIC_PRESETS: dict[str, MosaicPreset] = {
    p.name: p
    for p in (
        MosaicPreset(
            name="medmoe-cpu",
            summary="medmoe's CPU-friendly protocol: 28^2 / 28^3, trainable 3-D tokenizer, bf16 on CUDA",
            size=28, dataset_order="medmnist", norm_eps=1e-6,
            model={**_COMMON_MODEL, "train_tokenizer_3d": True},
            train={**_COMMON_TRAIN, "early_stopping": "medmoe", "augmentation": "medmoe", "precision": "auto"},
        ),
        MosaicPreset(
            name="mosaic-paper",
            summary="the reference's protocol: 224^2 / 64^3, frozen random 3-D tokenizer, its order, "
                    "augmentation and early stopping, fp32",
            size=224, dataset_order="reference", norm_eps=1e-5,
            model={**_COMMON_MODEL, "train_tokenizer_3d": False},
            train={**_COMMON_TRAIN, "early_stopping": "reference", "augmentation": "reference",
                   "precision": "32-true"},
        ),
    )
}


def get_mosaic_preset(name: str) -> MosaicPreset:
    """The preset called ``name`` (``ValueError`` listing the known names otherwise)."""
    if name not in MOSAIC_PRESETS:
        raise ValueError(f"unknown MOSAIC preset {name!r}; choose one of {sorted(MOSAIC_PRESETS)}")
    return MOSAIC_PRESETS[name]
