"""Tiny inputs for the data and inference bad-input cases (imported by them; not a test module)."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from medmoe.data import write_trident_h5
from medmoe.engine.checkpoint import save_checkpoint
from medmoe.registry import create_model

DIM = 8


def constant_checkpoint(
    out: Path, class_names: Sequence[str] = ("normal", "tumor"), predict: int = 1, in_dim: int = DIM
) -> Path:
    """A MeanMIL checkpoint that gives every slide class ``predict`` (zero weights, a large bias), saved
    with ``class_names`` as `mil train` saves them."""
    torch.manual_seed(0)
    model = create_model("meanmil.base", in_dim=in_dim, num_classes=len(class_names), embed_dim=8)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        model.classifier.bias[predict] = 6.0
    return save_checkpoint(out, model, {"class_names": list(class_names), "task": "classification"})


def feature_folder(
    root: Path, labels: Mapping[str, str] | None, *, n_slides: int = 4, dim: int = DIM, n_patches: int = 6,
    seed: int = 0,
) -> tuple[Path, Path | None]:
    """``root/features/<slide>.h5`` (TRIDENT layout, coords on a 256-px grid) and, when ``labels`` is given,
    ``root/labels.csv`` (slide_id,label); slides are ``labels``' keys, else ``slide_000``...``"""
    rng = np.random.default_rng(seed)
    fdir = root / "features"
    fdir.mkdir(parents=True, exist_ok=True)
    ids = list(labels) if labels is not None else [f"slide_{i:03d}" for i in range(n_slides)]
    for sid in ids:
        write_trident_h5(fdir / f"{sid}.h5", rng.standard_normal((n_patches, dim)).astype(np.float32))
    if labels is None:
        return fdir, None
    csv_path = root / "labels.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["slide_id", "label"])
        writer.writerows(labels.items())
    return fdir, csv_path
