"""MOSAIC predictions on a user's own image files (``medmoe mosaic predict``).

A trained MOSAIC checkpoint has one head per MedMNIST dataset; :func:`predict_images` runs the head of one
dataset on image files prepared the way the MedMNIST arrays are: 2-D images (PNG, JPEG, TIFF, BMP) are
converted to the dataset's channels (grey or RGB) and resized with bicubic interpolation to its image
size, 3-D volumes (``.npy``, ``(D, H, W)``) are resized trilinearly; intensities are scaled to ``[0, 1]``
(uint8 / 255, or float volumes taken as they are). A file stored at the dataset's size and format gives
exactly what the model sees on the official ``.npz`` arrays (tested).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "IMAGE_SUFFIXES",
    "VOLUME_SUFFIXES",
    "image_files",
    "load_image_batch",
    "predict_images",
    "write_predictions_csv",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
VOLUME_SUFFIXES = (".npy",)


def image_files(inputs: Sequence[str | os.PathLike], spatial_dims: int) -> list[Path]:
    """The files named in ``inputs``, folders expanded to their image (2-D) or ``.npy`` (3-D) files,
    sorted by name; ``ValueError`` when nothing is found or a file does not exist."""
    suffixes = VOLUME_SUFFIXES if spatial_dims == 3 else IMAGE_SUFFIXES
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"{path} does not exist")
    if not files:
        kind = "volumes (.npy)" if spatial_dims == 3 else f"images ({', '.join(IMAGE_SUFFIXES)})"
        raise ValueError(f"no {kind} in {[str(i) for i in inputs]}")
    return files


def _load_2d(path: Path, channels: int, size: int | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB" if channels == 3 else "L")
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BICUBIC)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def _load_3d(path: Path, size: int | None) -> Tensor:
    try:
        vol = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read volume {path}: {err}") from err
    if vol.ndim != 3:
        raise ValueError(f"{path}: a 3-D volume must be (D, H, W), got shape {vol.shape}")
    x = torch.from_numpy(np.ascontiguousarray(vol))
    x = x.float().div_(255.0) if vol.dtype == np.uint8 else x.float()
    if size is not None and tuple(x.shape) != (size, size, size):
        x = torch.nn.functional.interpolate(
            x[None, None], size=(size,) * 3, mode="trilinear", align_corners=False
        )[0, 0]
    return x


def load_image_batch(paths: Sequence[Path], spatial_dims: int, channels: int, size: int | None) -> Tensor:
    """Files as one float batch in ``[0, 1]``, channels first: ``(b, c, s, s)`` or ``(b, 1, s, s, s)``."""
    if spatial_dims == 3:
        return torch.stack([_load_3d(p, size) for p in paths]).unsqueeze(1)
    arrays = [_load_2d(p, channels, size) for p in paths]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(
            f"images of different sizes {sorted(shapes)}; the dataset has no fixed size to resize to"
        )
    x = torch.from_numpy(np.stack(arrays)).float().div_(255.0)
    return x.unsqueeze(1) if channels == 1 else x.permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def predict_images(
    model: Any,
    dataset: str,
    inputs: Sequence[str | os.PathLike],
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """One row per file: ``file``, ``pred`` and ``pred_name`` (multi-label: ``pred_names``, the labels
    scoring at least ``threshold``, joined by ``;``) and ``score_<label>`` for every class / label.

    Args:
        model: a :class:`~medmoe.models.vit.MosaicModel` (e.g. from ``medmoe.engine.load_checkpoint``).
        dataset: the MedMNIST dataset whose head to use (aliases allowed); the model must have it.
        inputs: image / volume files or folders of them.
    """
    from ...data.medmnist import medmnist_info
    from ...models.vit.mosaic import task_scores

    flag = medmnist_info(dataset).flag
    names = [t.name for t in model.config.tasks]
    if flag not in names:
        raise ValueError(f"this checkpoint has no head for {flag!r}; it was trained on {names}")
    task = model.task(flag)
    labels = list(medmnist_info(flag).labels)
    files = image_files(inputs, task.spatial_dims)
    model = model.to(device).eval()
    rows: list[dict[str, Any]] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        x = load_image_batch(chunk, task.spatial_dims, task.channels, task.image_size)
        scores = task_scores(model(x.to(device), flag).logits, task).cpu()
        for path, s in zip(chunk, scores):
            row: dict[str, Any] = {"file": str(path)}
            if task.task == "multi-label, binary-class":
                row["pred_names"] = ";".join(n for n, v in zip(labels, s.tolist()) if v >= threshold)
            else:
                pred = int(s.argmax())
                row.update({"pred": pred, "pred_name": labels[pred] if pred < len(labels) else str(pred)})
            row.update({f"score_{n}": float(v) for n, v in zip(labels, s.tolist())})
            rows.append(row)
    return rows


def write_predictions_csv(rows: Sequence[dict[str, Any]], out: str | os.PathLike) -> Path:
    """Write :func:`predict_images`' rows to the CSV file ``out`` (folders created; the columns of the first
    row) and return its path."""
    import csv

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out
