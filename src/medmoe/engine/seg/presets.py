"""Named segmentation protocols: the Mamba-HoME paper's (the default of ``seg train``), and medmoe's CPU-friendly one.

A :class:`SegPreset` fixes everything a run's outcome depends on besides the data: the network, the
preprocessing and augmentation (:class:`~medmoe.data.seg_transforms.SegTransformConfig` fields), the training
schedule and validation protocol (:class:`~medmoe.engine.seg.training.SegTrainConfig` fields) and the
inference protocol (sliding window). ``medmoe seg train --preset NAME`` starts from it; every flag given
explicitly still wins. ``docs/segmentation-presets.md`` lists what each preset sets and costs.

* ``mamba-home-paper`` — gmum/MambaHoME @ 8574abb as its authors ran it (``src/train.py``,
  ``src/data_loader.py``, ``src/inference.py``, README): the 170M-parameter paper model; CT window
  -175..250 HU to [0, 1] (applied to every modality, as the reference); resampling to 0.8 x 0.8 x 3 mm; RAS;
  foreground crop; 128^3 patches, positive:negative 3:1, 1 crop per volume, batch 2; RandZoom 1.3-1.5 (p 0.3),
  Rot90 (p 0.1), intensity shift (p 0.2), Gaussian smoothing (p 0.2), noise (p 0.2); DiceCE; AdamW lr 1e-4,
  weight decay 1e-4, eps 1e-4; cosine decay; fp32; 800 epochs, one epoch = one pass over the training cases;
  validation every epoch by sliding window with ROI = patch, overlap 0.25, constant blending, on
  foreground-cropped volumes, Dice averaged over classes then cases; inference ROI 192 x 192 x 48, overlap 0.5,
  constant blending, window batch 4.
* ``medmoe-cpu`` — what ``seg train`` did before presets existed (and what ``seg demo`` uses): the
  tiny model, per-modality intensity (CT window only for CT; MRI z-scored over the foreground), no
  resampling, 96^3 crops, 2 crops per volume 1:1, medmoe's augmentation (flips, rotations, intensity scale
  and shift, noise), 10 epochs x 50 steps, Gaussian-blended sliding window with overlap 0.5, Dice averaged
  over cases then classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SEG_PRESETS", "SegPreset", "get_seg_preset", "inference_protocol", "list_seg_presets", "resolve_seg_preset"]


@dataclass(frozen=True)
class SegPreset:
    """One named protocol.

    Attributes:
        name: what ``--preset`` takes.
        summary: one line for ``--help`` and listings.
        model: :func:`medmoe.create_model` (``family="seg"``) name.
        transform: :class:`SegTransformConfig` fields (``modality`` absent: read from the data).
        train: :class:`SegTrainConfig` fields.
        epochs_are_passes: ``steps_per_epoch`` = ``ceil(training cases / batch size)`` (an epoch is one pass
            over the training volumes, as a DataLoader epoch in the reference) instead of ``train["steps_per_epoch"]``.
        infer: sliding-window inference settings: ``roi`` (``None`` = the training ROI), ``overlap``,
            ``mode``, ``sw_batch_size``.
    """

    name: str
    summary: str
    model: str
    transform: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    epochs_are_passes: bool = False
    infer: dict[str, Any] = field(default_factory=dict)

    def steps_per_epoch(self, num_train_cases: int, batch_size: int | None = None, devices: int = 1) -> int:
        """Optimiser steps per epoch for this preset, a training set size and the number of devices (DDP: each
        device draws ``batch_size`` volumes per step, so one pass takes ``ceil(n / (batch * devices))`` steps)."""
        if self.epochs_are_passes:
            per_step = int(batch_size or self.train["batch_size"]) * max(1, int(devices))
            return max(1, math.ceil(num_train_cases / per_step))
        return int(self.train["steps_per_epoch"])


SEG_PRESETS: dict[str, SegPreset] = {
    p.name: p
    for p in (
        SegPreset(
            name="medmoe-cpu",
            summary="medmoe's CPU-friendly protocol: tiny model, 96^3, 10 x 50 steps, per-modality intensity",
            model="mamba_home.tiny",
            transform={"ct_window": (-175.0, 250.0), "spacing": None, "orientation": "RAS", "roi_size": (96, 96, 96),
                       "pos": 1.0, "neg": 1.0, "num_samples": 2, "mri_stats": "foreground",
                       "augmentation": "medmoe", "crop_foreground": False},
            train={"epochs": 10, "steps_per_epoch": 50, "batch_size": 1, "lr": 1e-4, "weight_decay": 1e-4,
                   "eps": 1e-4, "warmup_steps": 0, "precision": "32-true", "val_every": 1, "sw_overlap": 0.5,
                   "sw_mode": "gaussian", "sw_batch_size": 1, "dice_average": "classes-over-cases"},
            infer={"roi": None, "overlap": 0.5, "mode": "gaussian", "sw_batch_size": 2},
        ),
        SegPreset(
            name="mamba-home-paper",
            summary="gmum/MambaHoME as released: paper model, CT window, 0.8x0.8x3 mm, 128^3, 800 epochs",
            model="mamba_home.paper",
            transform={"modality": "ct", "ct_window": (-175.0, 250.0), "spacing": (0.8, 0.8, 3.0),
                       "orientation": "RAS", "roi_size": (128, 128, 128), "pos": 3.0, "neg": 1.0, "num_samples": 1,
                       "augmentation": "reference", "crop_foreground": True},
            train={"epochs": 800, "batch_size": 2, "lr": 1e-4, "weight_decay": 1e-4, "eps": 1e-4,
                   "warmup_steps": 0, "precision": "32-true", "val_every": 1, "sw_overlap": 0.25,
                   "sw_mode": "constant", "sw_batch_size": 1, "dice_average": "cases-over-classes"},
            epochs_are_passes=True,
            infer={"roi": (192, 192, 48), "overlap": 0.5, "mode": "constant", "sw_batch_size": 4},
        ),
    )
}


def list_seg_presets() -> list[str]:
    """Names ``--preset`` accepts."""
    return list(SEG_PRESETS)


def get_seg_preset(name: str) -> SegPreset:
    """The preset called ``name``; ``ValueError`` naming the choices otherwise."""
    key = str(name).lower().replace("_", "-")
    if key not in SEG_PRESETS:
        raise ValueError(f"unknown segmentation preset {name!r}; choose from {list_seg_presets()}")
    return SEG_PRESETS[key]


def resolve_seg_preset(
    name: str,
    num_train_cases: int,
    data_modality: str,
    transform_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
) -> tuple[SegPreset, Any, Any]:
    """The preset's configs with the user's explicit settings on top.

    Args:
        name: preset name.
        num_train_cases: training volumes (for presets whose epoch is one pass over them).
        data_modality: the modality read from the data (``dataset.json``), used when neither the preset nor
            ``transform_overrides`` sets one.
        transform_overrides, train_overrides: explicitly given :class:`SegTransformConfig` /
            :class:`SegTrainConfig` fields (``None`` values are ignored).

    Returns:
        ``(preset, SegTransformConfig, SegTrainConfig)``; the transform config's ``extra["preset"]`` records the
        preset so that inference can use its protocol.
    """
    from ...data.seg_transforms import SegTransformConfig
    from .training import SegTrainConfig

    preset = get_seg_preset(name)
    t_over = {k: v for k, v in (transform_overrides or {}).items() if v is not None}
    r_over = {k: v for k, v in (train_overrides or {}).items() if v is not None}
    tkw: dict[str, Any] = {"modality": data_modality, **preset.transform, **t_over}
    tkw["extra"] = {**tkw.get("extra", {}), "preset": preset.name}
    rkw: dict[str, Any] = {**preset.train, **r_over}
    if "steps_per_epoch" not in r_over:
        processes = int(rkw.get("devices", 1)) * int(rkw.get("num_nodes", 1))
        rkw["steps_per_epoch"] = preset.steps_per_epoch(num_train_cases, rkw.get("batch_size"), processes)
    return preset, SegTransformConfig(**tkw), SegTrainConfig(**rkw)


def inference_protocol(transform_extra: dict[str, Any] | None) -> dict[str, Any]:
    """The inference settings (``roi``, ``overlap``, ``mode``, ``sw_batch_size``) of the preset a checkpoint
    was trained with (recorded in its transform config's ``extra``), else ``medmoe-cpu``'s."""
    name = (transform_extra or {}).get("preset", "medmoe-cpu")
    return dict(SEG_PRESETS.get(name, SEG_PRESETS["medmoe-cpu"]).infer)
