"""Sliding-window inference for 3-D segmentation, with predictions written in the original image space.

:func:`sliding_window_logits` runs a network over a whole volume in ROI-sized windows that overlap by
``overlap`` (fraction of the ROI) and blends the window outputs with a Gaussian weight map
(``mode="gaussian"``, centre voxels count most; ``"constant"`` averages). Volumes smaller than the ROI
are zero-padded by MONAI and the padding is cropped from the output.

:func:`predict_volumes` runs the full pipeline for image files: the inference transforms of the
checkpoint (orientation, spacing, intensity; :func:`medmoe.data.seg_transforms.build_inference_transforms`),
sliding window, argmax, then :class:`monai.transforms.Invertd` undoes spacing and orientation (nearest
neighbour), so each ``<case>_seg.nii.gz`` has the **original image's shape and affine** and overlays the
input in any viewer.

:func:`sliding_window_labels` gives the same label map (bit for bit: same windows, weights and summation
order as MONAI) without ever holding the whole ``(K, D, H, W)`` logit volume: windows come in slabs along
the first axis, and every slab that no later window touches is divided by its weights, reduced to its
arg-max and dropped. Peak memory is ``K x roi_D x H x W`` floats instead of ``K x D x H x W``: a
104-class CT of 512 x 512 x 400 voxels at ROI depth 96 needs 10 GB instead of 44 GB.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ...data.seg_transforms import SegTransformConfig, build_inference_transforms
from ...data.volumes import VolumeCase, write_nifti

__all__ = ["SLIDING_WINDOW_MODES", "check_roi", "predict_volumes", "sliding_window_labels", "sliding_window_logits"]

logger = logging.getLogger(__name__)

SLIDING_WINDOW_MODES = ("gaussian", "constant")


def check_roi(model: nn.Module, roi_size: Sequence[int]) -> tuple[int, int, int]:
    """``roi_size`` as ints; ``ValueError`` unless every side is a multiple of ``model.divisor`` and at least
    ``model.min_size`` (e.g. Mamba-HoME: 16 and 32)."""
    roi = tuple(int(r) for r in roi_size)
    if len(roi) != 3 or min(roi) < 1:
        raise ValueError(f"roi_size must be three positive ints, got {roi_size!r}")
    divisor = int(getattr(model, "divisor", 1))
    min_size = int(getattr(model, "min_size", divisor))
    name = getattr(model, "model_name", type(model).__name__)
    if any(r % divisor or r < min_size for r in roi):
        good = tuple(max(min_size, r // divisor * divisor) for r in roi)
        raise ValueError(
            f"roi_size {roi} must be divisible by {divisor} (and >= {min_size}) for {name}; e.g. {good}"
        )
    return roi  # type: ignore[return-value]


def plain_tensor(x: Tensor) -> Tensor:
    """``x`` as a plain :class:`torch.Tensor`: MONAI's ``MetaTensor`` sends every operation through Python
    (slow on a GPU) and breaks calls such as ``new_empty(*sizes)``; its metadata is not needed by a network."""
    as_tensor = getattr(x, "as_tensor", None)
    return as_tensor() if callable(as_tensor) else x


@torch.no_grad()
def sliding_window_logits(
    model: nn.Module,
    image: Tensor,
    roi_size: Sequence[int],
    overlap: float = 0.5,
    mode: str = "gaussian",
    sw_batch_size: int = 1,
    sigma_scale: float = 0.125,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Tensor:
    """Blended logits of ``model`` over a whole volume.

    Args:
        model: ``(b, C_in, *roi) -> (b, K, *roi)``.
        image: ``(1, C_in, D, H, W)`` (any size; padded if smaller than the ROI).
        roi_size: window size (must be divisible by ``model.divisor``).
        overlap: fraction of the ROI shared by neighbouring windows, in ``[0, 1)``.
        mode: ``"gaussian"`` (weight map ``exp(-d^2 / 2 (sigma_scale * roi)^2)``) or ``"constant"``.
        sw_batch_size: windows per forward pass.
        device: where the network runs; the output stitching stays on the image's device.

    Returns:
        ``(1, K, D, H, W)`` float32 logits on the image's device.
    """
    from monai.inferers import sliding_window_inference

    image = plain_tensor(image)
    roi = _check_window_args(model, image, roi_size, overlap, mode)
    out = sliding_window_inference(
        image, roi, sw_batch_size, model, overlap=overlap, mode=mode, sigma_scale=sigma_scale,
        sw_device=device, device=image.device, progress=progress,
    )
    return torch.as_tensor(out).float()


def _check_window_args(
    model: nn.Module, image: Tensor, roi_size: Sequence[int], overlap: float, mode: str
) -> tuple[int, int, int]:
    roi = check_roi(model, roi_size)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if mode not in SLIDING_WINDOW_MODES:
        raise ValueError(f"mode must be one of {SLIDING_WINDOW_MODES}, got {mode!r}")
    if image.ndim != 5 or image.shape[0] != 1:
        raise ValueError(f"image must be (1, C, D, H, W), got {tuple(image.shape)}")
    return roi


@torch.no_grad()
def sliding_window_labels(
    model: nn.Module,
    image: Tensor,
    roi_size: Sequence[int],
    overlap: float = 0.5,
    mode: str = "gaussian",
    sw_batch_size: int = 1,
    sigma_scale: float = 0.125,
    device: torch.device | str | None = None,
) -> Tensor:
    """Arg-max labels ``(D, H, W)`` int64 of the blended sliding-window logits, in bounded memory.

    Equal to ``sliding_window_logits(...).argmax(1)[0]`` (same arguments; see the module docstring for
    how it avoids the full logit volume). The network runs on ``device`` (default: the image's device);
    stitching happens on the image's device.
    """
    from monai.data.utils import compute_importance_map, dense_patch_slices

    image = plain_tensor(image)
    roi = _check_window_args(model, image, roi_size, overlap, mode)
    if sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
    out_device = image.device
    sw_device = torch.device(device) if device is not None else image.device
    shape = tuple(int(v) for v in image.shape[2:])
    # pad to at least the ROI the way MONAI does (centred, zeros), crop the labels at the end
    pads = [(max(r - n, 0) // 2, max(r - n, 0) - max(r - n, 0) // 2) for r, n in zip(roi, shape)]
    flat_pad = [p for pair in reversed(pads) for p in pair]
    x = torch.nn.functional.pad(image, flat_pad) if any(flat_pad) else image
    size = tuple(int(v) for v in x.shape[2:])
    interval = [r if r == n else max(1, int(r * (1 - overlap))) for r, n in zip(roi, size)]
    windows = dense_patch_slices(size, roi, interval)  # first axis outermost, as MONAI
    weight = compute_importance_map(roi, mode=mode, sigma_scale=sigma_scale, device=sw_device, dtype=x.dtype)
    weight = weight.to(x.dtype)[None, None]  # (1, 1, *roi)
    weight_out = weight.to(out_device)

    labels = torch.empty(size, dtype=torch.long, device=out_device)
    # the slab of depths [base, base + roi_D), a ring over depth: blended logits and summed weights, depth
    # first so that every depth is one contiguous (K, H, W) block (fast arg-max over K, cheap clearing)
    acc: Tensor | None = None  # (roi_D, K, H, W)
    count = torch.zeros((roi[0], 1, *size[1:]), dtype=x.dtype, device=out_device)
    weight_out = weight_out[0].transpose(0, 1)  # (roi_D, 1, roi_H, roi_W)
    base = 0

    def finalize(stop: int) -> None:
        """Labels of depths [base, stop); their ring slots are cleared for the depths to come."""
        nonlocal base
        if acc is None:
            return
        for z in range(base, stop):  # one depth at a time, in place: no slab-sized temporaries
            slot = z % roi[0]
            labels[z] = _argmax_over_classes(acc[slot].div_(count[slot]))
            acc[slot].zero_()
            count[slot].zero_()
        base = max(base, stop)

    for first in range(0, len(windows), sw_batch_size):
        batch = windows[first : first + sw_batch_size]
        crops = [x[(slice(None), slice(None), *w)] for w in batch]
        win = (crops[0] if len(crops) == 1 else torch.cat(crops)).to(sw_device)
        pred = torch.as_tensor(model(win)).to(x.dtype)
        if pred.shape[2:] != win.shape[2:]:
            raise ValueError(f"the model must keep the window size; got {tuple(pred.shape)} for {tuple(win.shape)}")
        pred = pred.mul_(weight).to(out_device)
        if acc is None:
            acc = torch.zeros((roi[0], pred.shape[1], *size[1:]), dtype=x.dtype, device=out_device)
        for w, p in zip(batch, pred):
            start = w[0].start
            if start > base:  # windows come slab by slab: nothing before ``start`` changes any more
                finalize(start)
            # the slab is a ring over depth (slot = depth % roi_D): the window's depths [start, start + roi_D)
            # fill every slot once, wrapping at slot roi_D
            cut = roi[0] - start % roi[0]
            p = p.transpose(0, 1)  # (roi_D, K, roi_H, roi_W)
            for slots, depths in ((slice(start % roi[0], roi[0]), slice(0, cut)), (slice(0, start % roi[0]), slice(cut, roi[0]))):
                if slots.start == slots.stop:
                    continue
                acc[(slots, slice(None), *w[1:])] += p[depths]
                count[(slots, slice(None), *w[1:])] += weight_out[depths]
    finalize(size[0])
    crop = tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, shape))
    return labels[crop]


def _argmax_over_classes(scores: Tensor) -> Tensor:
    """``scores.argmax(0)`` for ``(K, H, W)`` (the first maximum wins, as argmax) by a running maximum over
    the classes: faster on CPU than PyTorch's reduction over the outer dimension (docs/performance-notes.md)."""
    best = scores[0].clone()
    index = torch.zeros(scores.shape[1:], dtype=torch.long, device=scores.device)
    better = torch.empty(scores.shape[1:], dtype=torch.bool, device=scores.device)
    for k in range(1, scores.shape[0]):
        torch.gt(scores[k], best, out=better)
        index.masked_fill_(better, k)
        torch.maximum(best, scores[k], out=best)
    return index


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def predict_volumes(
    model: nn.Module,
    cases: Sequence[VolumeCase | str | Path | Sequence[str | Path]],
    out_dir: str | Path,
    transform_config: SegTransformConfig,
    roi_size: Sequence[int] | None = None,
    overlap: float = 0.5,
    mode: str = "gaussian",
    sw_batch_size: int = 1,
    suffix: str = "_seg",
    save_probabilities: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Segment image files and write ``out_dir/<case><suffix>.nii.gz`` in the original image space.

    Args:
        model: trained network (eval mode is set here).
        cases: :class:`VolumeCase` objects, image paths, or lists of channel paths (one per case).
        out_dir: output folder (created).
        transform_config: the preprocessing used in training (stored in the checkpoint).
        roi_size: sliding-window size; defaults to ``transform_config.roi_size``.
        overlap, mode, sw_batch_size: see :func:`sliding_window_logits`.
        save_probabilities: also write ``<case>_prob.nii.gz`` (float32, one channel per class, last axis).
            This needs the whole logit volume; without it the labels are stitched slab by slab
            (:func:`sliding_window_labels`, same labels, memory bounded by the ROI depth).

    Returns:
        The written label-map paths, in input order.

    Raises:
        VolumeError: an input is not a readable 3-D NIfTI volume, has the wrong number of channels, or holds
            NaN/inf voxels (checked for every input before anything is written, naming the file).
    """
    import nibabel as nib
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    roi = check_roi(model, roi_size or transform_config.roi_size)
    items = [_as_case(c) for c in cases]
    _check_inputs(items, getattr(model, "in_channels", None))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pre = build_inference_transforms(transform_config)
    inverter = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=True, to_tensor=True)
    inverter_prob = Invertd(keys="prob", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True)
    device = _model_device(model)
    model.eval()
    written: list[Path] = []
    bar = _progress_bar(progress, len(items))
    for case in items:
        data = pre({"image": [str(p) for p in case.images]})
        image = data["image"]
        if save_probabilities:
            logits = sliding_window_logits(model, image[None].to(device), roi, overlap, mode, sw_batch_size).cpu()
            pred = logits.argmax(1)[0][None].float()  # (1, D, H, W)
            num_classes = logits.shape[1]
        else:
            pred = sliding_window_labels(model, image[None].to(device), roi, overlap, mode, sw_batch_size)
            pred = pred.cpu()[None].float()
            num_classes = int(pred.max()) + 1
        data["pred"] = MetaTensor(pred, meta=image.meta, applied_operations=image.applied_operations)
        inverted = inverter(data)["pred"]
        label = np.rint(np.asarray(inverted.detach().cpu())[0]).astype(np.uint8 if num_classes <= 256 else np.int16)
        ref = nib.load(str(case.images[0]))
        if label.shape != tuple(ref.shape[:3]):  # pragma: no cover - guards MONAI behaviour changes
            raise RuntimeError(
                f"{case.case_id}: inverted prediction has shape {label.shape}, image {ref.shape[:3]}; "
                "report this with the transform config"
            )
        path = write_nifti(out_dir / f"{case.case_id}{suffix}.nii.gz", label, ref.affine)
        written.append(path)
        if save_probabilities:
            probs = torch.softmax(logits, 1)[0]
            data["prob"] = MetaTensor(probs, meta=image.meta, applied_operations=image.applied_operations)
            inv = np.asarray(inverter_prob(data)["prob"].detach().cpu())
            write_nifti(out_dir / f"{case.case_id}_prob.nii.gz", np.moveaxis(inv, 0, -1), ref.affine)
        if bar is not None:
            bar.advance(bar.task_ids[0])
    if bar is not None:
        bar.stop()
    return written


def _check_inputs(cases: Sequence[VolumeCase], in_channels: int | None) -> None:
    """Every input is a readable 3-D (or 4-D multi-channel) NIfTI volume with finite voxels and the model's
    channel count; the error names the file."""
    from ...data.volumes import VolumeError, validate_case

    for case in cases:
        for p in case.images:
            if not p.name.lower().endswith((".nii", ".nii.gz")):
                raise VolumeError(f"{p} is not a NIfTI file (.nii or .nii.gz); seg infer segments 3-D NIfTI volumes "
                                  "(convert it first, e.g. with nibabel or SimpleITK)")
        report = validate_case(case, check_values=True)
        if in_channels is not None and report.channels != int(in_channels):
            raise VolumeError(f"{case.images[0]} has {report.channels} channel(s) but the model takes "
                              f"{int(in_channels)}; give one file per case with the training channels")


def _as_case(item: Any) -> VolumeCase:
    if isinstance(item, VolumeCase):
        return item
    paths = (item,) if isinstance(item, (str, Path)) else tuple(item)
    paths = tuple(Path(p) for p in paths)
    for p in paths:
        if not p.is_file():
            raise ValueError(f"image {p} does not exist")
    name = paths[0].name
    for suffix in (".nii.gz", ".nii"):
        name = name.removesuffix(suffix)
    if len(paths) > 1 and name.endswith("_0000"):
        name = name[:-5]
    return VolumeCase(name, paths, None)


def _progress_bar(enabled: bool, total: int) -> Any:
    import sys

    if not enabled or not sys.stderr.isatty():
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("segmenting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
    bar.add_task("seg", total=total)
    bar.start()
    return bar
