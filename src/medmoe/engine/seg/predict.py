"""``medmoe seg infer`` as a function: a segmentation checkpoint (medmoe's or the reference Mamba-HoME code's)
applied to NIfTI files, label maps written in each input's original voxel space."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ...data.seg_transforms import SegTransformConfig

__all__ = ["load_seg_model", "segment_files"]


def load_seg_model(
    checkpoint: str | Path,
    *,
    group_sizes: Sequence[int] | None = None,
    map_location: str = "cpu",
) -> tuple[nn.Module, SegTransformConfig, Any]:
    """The network of a segmentation checkpoint and the preprocessing to apply before it.

    Args:
        checkpoint: a medmoe checkpoint folder (or the run folder holding ``checkpoint/``), or a checkpoint file
            of the reference Mamba-HoME code (``.pth`` / ``.safetensors``, read through
            :func:`medmoe.interop.mamba_home.load_mamba_home_reference`).
        group_sizes: reference files only: the 4 token group sizes the model was trained with (default the
            paper's).
        map_location: the device the weights go to.

    Returns:
        ``(model, transform_config, report)``: the network in eval mode; the training preprocessing (the
        ``mamba-home-paper`` preset's for a reference file); the interop load report (``None`` for a medmoe
        checkpoint).

    Raises:
        ValueError: ``group_sizes`` with a medmoe checkpoint folder; a checkpoint that cannot be read.
    """
    from ..checkpoint import load_checkpoint
    from .presets import get_seg_preset
    from .training import transform_config_from_info

    checkpoint = Path(checkpoint)
    if checkpoint.is_file():  # a reference checkpoint: its keys, the paper's preprocessing and inference
        from ...interop.mamba_home import load_mamba_home_reference

        model, report = load_mamba_home_reference(
            checkpoint, group_sizes=group_sizes, map_location=map_location
        )
        paper = get_seg_preset("mamba-home-paper")
        return model, SegTransformConfig(**{**paper.transform, "extra": {"preset": paper.name}}), report
    if group_sizes is not None:
        from ...errors import SETTING, InputError

        raise InputError("{group_sizes} applies to reference checkpoint files only", group_sizes=SETTING)
    model, info = load_checkpoint(checkpoint, map_location=map_location, family="seg")
    return model, transform_config_from_info(info), None


def segment_files(
    checkpoint: str | Path,
    source: str | Path,
    out: str | Path = Path("predictions"),
    *,
    overlap: float | None = None,
    mode: str | None = None,
    sw_batch_size: int | None = None,
    roi: Sequence[int] | None = None,
    group_sizes: Sequence[int] | None = None,
    save_probabilities: bool = False,
    device: str = "auto",
    echo: Callable[[str], None] | None = None,
) -> list[Path]:
    """Sliding-window segmentation of every case in ``source`` with a checkpoint; writes
    ``out/<case>_seg.nii.gz`` (and ``<case>_prob.nii.gz`` with ``save_probabilities``) in each input's
    original voxel space.

    Args:
        checkpoint: see :func:`load_seg_model`.
        source: a NIfTI file, a folder of them, an MSD folder (``imagesTs``) or a pair list
            (:func:`medmoe.data.volumes.inference_cases`).
        out: output folder.
        overlap, mode, sw_batch_size, roi: sliding-window settings; each ``None`` takes the checkpoint's
            preset's (:func:`~medmoe.engine.seg.presets.inference_protocol`).
        group_sizes: reference checkpoint files only (see :func:`load_seg_model`).
        save_probabilities: also write the softmax probabilities (channels last).
        device: ``cpu``, ``cuda`` or ``auto`` (CUDA when available).
        echo: called with the load report of a reference checkpoint.

    Returns:
        The label-map files written, one per case.
    """
    import torch

    from ...data.volumes import inference_cases
    from .inference import predict_volumes
    from .presets import inference_protocol

    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    model, tcfg, report = load_seg_model(checkpoint, group_sizes=group_sizes, map_location=dev)
    if report is not None and echo is not None:
        echo(report.summary())
    protocol = inference_protocol(tcfg.extra)
    return predict_volumes(
        model,
        inference_cases(source),
        out,
        tcfg,
        roi or protocol["roi"],
        protocol["overlap"] if overlap is None else overlap,
        mode or protocol["mode"],
        sw_batch_size or protocol["sw_batch_size"],
        save_probabilities=save_probabilities,
    )
