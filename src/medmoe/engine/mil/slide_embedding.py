"""Slide embeddings from a trained MIL model: the bag vector its classifier reads, one row per slide.

A trained aggregator (ABMIL, TransMIL, ... with a linear or Mammoth patch embedding) turns a bag of patch
features ``(n, in_dim)`` into one slide vector ``(d,)``. :func:`embed_slides` computes it for every bag of a
dataset (features standardised with the checkpoint's statistics, exactly as in training), so the vectors
can be reused for retrieval, clustering or a linear probe on another task. :func:`save_slide_embeddings`
writes them as ``.h5`` (``features (N, d)`` + ``slide_ids``), ``.csv``, ``.npz`` or ``.pt``.

Only one checkpoint at a time: the folds of a cross-validation run learn different vector spaces, so
averaging their embeddings would be meaningless.
"""

from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .inference import bag_loader, with_feature_stats
from .prediction import load_for_inference
from .tasks import get_task

__all__ = [
    "SLIDE_EMBEDDING_FORMATS",
    "SlideEmbeddings",
    "check_embedding_path",
    "embed_slides",
    "load_slide_embeddings",
    "save_slide_embeddings",
]

#: File suffixes :func:`save_slide_embeddings` writes.
SLIDE_EMBEDDING_FORMATS = (".h5", ".csv", ".npz", ".pt")


@dataclass
class SlideEmbeddings:
    """Slide vectors of one checkpoint.

    Attributes:
        bag_ids: ``N`` slide (bag) ids in dataset order.
        features: ``(N, d)`` float32 slide embeddings (the models' ``slide_features``).
        labels: the dataset's label index per bag (``-1`` = unknown), or ``None`` when it has none.
        class_names: names of the label indices.
        meta: checkpoint facts kept with the file: ``model``, ``patch_embed``, ``task``, ``checkpoint``.
    """

    bag_ids: list[str]
    features: Tensor
    labels: list[int] | None = None
    class_names: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.features.ndim != 2 or self.features.shape[0] != len(self.bag_ids):
            raise ValueError(
                f"features must be (N, d) with N = {len(self.bag_ids)} bag ids, got {tuple(self.features.shape)}"
            )
        if self.labels is not None and len(self.labels) != len(self.bag_ids):
            raise ValueError(f"{len(self.labels)} labels for {len(self.bag_ids)} bags")

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])


@torch.no_grad()
def embed_slides(
    checkpoint_dir: str | Path,
    dataset: Any,
    *,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
) -> SlideEmbeddings:
    """The slide embedding of every bag of ``dataset`` under one saved checkpoint.

    Args:
        checkpoint_dir: a checkpoint folder (``config.json`` + ``model.safetensors``).
        dataset: a medmoe bag dataset (``InMemoryBags``, a feature folder, a benchmark).
        batch_size: bags per forward pass (padding never changes a bag's vector).
        device: where the model runs.

    Returns:
        :class:`SlideEmbeddings` with ``features (N, d)``; ``d`` is the model's slide width (``embed_dim``
        for most models, ``C * embed_dim`` for DSMIL and CLAM-MB).

    Raises:
        ValueError: the feature size differs from the checkpoint's, or the model has no slide vector.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model, info = load_for_inference(checkpoint_dir, dataset, device)
    data = with_feature_stats(dataset, info.get("feature_stats"))
    model.eval()
    parts: list[Tensor] = []
    for batch in bag_loader(data, range(len(data)), batch_size, 0, seed=0):
        batch = batch.to(torch.device(device))
        out = model(batch.x, batch.mask)
        if out.slide_features is None:
            raise ValueError(f"{type(model).__name__} returns no slide vector to embed")
        parts.append(out.slide_features.float().cpu())
    features = torch.cat(parts, 0) if parts else torch.zeros(0, 0)
    labels = getattr(dataset, "labels", None)
    return SlideEmbeddings(
        bag_ids=[str(b) for b in dataset.bag_ids],
        features=features,
        labels=None if labels is None else [int(y) for y in labels],
        # a multi-label checkpoint's class names are its label columns; the bags' labels are label combinations
        class_names=list(
            (None if get_task(info.get("task", "classification")).uses_label_columns else info.get("class_names"))
            or getattr(dataset, "class_names", None)
            or []
        ),
        meta={
            "model": str(info.get("model_name", type(model).__name__)),
            "patch_embed": str(model.config.patch_embed),
            "task": str(info.get("task", "classification")),
            "checkpoint": str(Path(checkpoint_dir)),
        },
    )


def check_embedding_path(path: str | Path) -> str:
    """The lower-case suffix of ``path`` when it is one of :data:`SLIDE_EMBEDDING_FORMATS` (else ``ValueError``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SLIDE_EMBEDDING_FORMATS:
        raise ValueError(
            f"unknown slide-embedding format {path.name!r}; end the file name with one of "
            f"{', '.join(SLIDE_EMBEDDING_FORMATS)} (--out)"
        )
    return suffix


def save_slide_embeddings(embeddings: SlideEmbeddings, path: str | Path) -> Path:
    """Write ``embeddings`` atomically; the format follows the suffix.

    * ``.h5``: datasets ``features (N, d)``, ``slide_ids`` (strings), ``labels`` (when known) and
      ``class_names``; the ``meta`` entries as file attributes.
    * ``.csv``: ``slide_id``, ``label`` (when known), ``f0 ... f{d-1}``.
    * ``.npz``: arrays ``features``, ``slide_ids``, ``labels``, ``class_names``.
    * ``.pt``: a dict of the dataclass's fields.
    """
    path = Path(path)
    suffix = check_embedding_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    feats = embeddings.features.numpy().astype(np.float32)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if suffix == ".h5":
            import h5py

            with h5py.File(tmp, "w") as f:
                f.create_dataset("features", data=feats)
                f.create_dataset(
                    "slide_ids", data=np.array(embeddings.bag_ids, dtype=object), dtype=h5py.string_dtype()
                )
                if embeddings.labels is not None:
                    f.create_dataset("labels", data=np.asarray(embeddings.labels, dtype=np.int64))
                f.create_dataset(
                    "class_names",
                    data=np.array(embeddings.class_names, dtype=object),
                    dtype=h5py.string_dtype(),
                )
                f.attrs.update(embeddings.meta)
        elif suffix == ".csv":
            head = ["slide_id"] + (["label"] if embeddings.labels is not None else [])
            head += [f"f{j}" for j in range(embeddings.dim)]
            with tmp.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(head)
                for i, bag in enumerate(embeddings.bag_ids):
                    cells = [bag] + ([str(embeddings.labels[i])] if embeddings.labels is not None else [])
                    writer.writerow(cells + [repr(float(v)) for v in feats[i]])
        elif suffix == ".npz":
            with tmp.open("wb") as f:
                np.savez(
                    f,
                    features=feats,
                    slide_ids=np.array(embeddings.bag_ids),
                    labels=np.asarray(
                        embeddings.labels if embeddings.labels is not None else [], dtype=np.int64
                    ),
                    class_names=np.array(embeddings.class_names),
                )
        else:
            torch.save(
                {
                    "bag_ids": embeddings.bag_ids,
                    "features": embeddings.features,
                    "labels": embeddings.labels,
                    "class_names": embeddings.class_names,
                    "meta": embeddings.meta,
                },
                tmp,
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_slide_embeddings(path: str | Path) -> SlideEmbeddings:
    """Read a ``.h5``, ``.npz`` or ``.pt`` file written by :func:`save_slide_embeddings`
    (``.csv`` is meant for spreadsheets and pandas)."""
    path = Path(path)
    suffix = check_embedding_path(path)
    if not path.is_file():
        raise ValueError(f"no slide-embedding file at {path}")
    if suffix == ".h5":
        import h5py

        with h5py.File(path, "r") as f:
            labels = [int(v) for v in f["labels"][()]] if "labels" in f else None
            return SlideEmbeddings(
                bag_ids=[s.decode() if isinstance(s, bytes) else str(s) for s in f["slide_ids"][()]],
                features=torch.from_numpy(np.asarray(f["features"][()], dtype=np.float32)),
                labels=labels,
                class_names=[s.decode() if isinstance(s, bytes) else str(s) for s in f["class_names"][()]],
                meta={k: str(v) for k, v in f.attrs.items()},
            )
    if suffix == ".npz":
        with np.load(path) as z:
            ids = [str(s) for s in z["slide_ids"]]
            labels_arr = z["labels"]
            return SlideEmbeddings(
                bag_ids=ids,
                features=torch.from_numpy(z["features"].astype(np.float32)),
                labels=[int(v) for v in labels_arr] if len(labels_arr) == len(ids) and len(ids) else None,
                class_names=[str(s) for s in z["class_names"]],
            )
    if suffix == ".pt":
        return SlideEmbeddings(**torch.load(path, map_location="cpu", weights_only=True))
    raise ValueError("load_slide_embeddings reads .h5, .npz or .pt; read a .csv with pandas.read_csv")
