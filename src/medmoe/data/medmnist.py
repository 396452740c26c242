"""MedMNIST v2 / MedMNIST+ ``.npz`` files from a user's folder: metadata, validated loading, fixtures.

The official files (Zenodo record 10519652, written by ``python -m medmnist download --size=S``) are
named ``<flag>.npz`` for 28-pixel data and ``<flag>_<size>.npz`` for 64/128/224 (3-D: 28 and 64 only)
and hold ``{train,val,test}_images`` (uint8; ``(N, H, W)`` grayscale or ``(N, H, W, 3)`` RGB 2-D images,
``(N, D, H, W)`` 3-D volumes) and ``{train,val,test}_labels`` (``(N, L)``; ``L = 14`` for ChestMNIST,
else 1). medmoe never downloads them (licences differ: CC BY 4.0, DermaMNIST CC BY-NC 4.0); a missing
file gives a :class:`MedMNISTFileError` that lists the exact file names and how to get them.

* :func:`medmnist_info` / :data:`MEDMNIST_FLAGS` — metadata of all 18 datasets (own table, generated
  once from ``medmnist.INFO``; ``medmnist`` is not imported).
* :class:`MedMNISTSplit` — one split of one dataset, validated (image size, channels, label shape and
  range), with a fast vectorised :meth:`MedMNISTSplit.batch`.
* :func:`write_fake_medmnist` — schema-faithful synthetic files for tests and demos (**not** real data).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .medmnist_info import MEDMNIST_INFO

__all__ = [
    "MEDMNIST_2D",
    "MEDMNIST_3D",
    "MEDMNIST_FLAGS",
    "MOSAIC_REFERENCE_INTERLEAVED",
    "MOSAIC_REFERENCE_ORDER",
    "SPLITS",
    "ZENODO_RECORD",
    "MedMNISTFileError",
    "MedMNISTInfo",
    "MedMNISTSplit",
    "load_medmnist_split",
    "medmnist_download_hint",
    "medmnist_filename",
    "medmnist_info",
    "medmnist_status",
    "order_medmnist_flags",
    "resolve_medmnist_flags",
    "write_fake_medmnist",
]

ZENODO_RECORD = "https://zenodo.org/records/10519652"
SPLITS = ("train", "val", "test")

#: All 18 flags in the official order (12 2-D, then 6 3-D).
MEDMNIST_FLAGS: tuple[str, ...] = tuple(MEDMNIST_INFO)
MEDMNIST_2D: tuple[str, ...] = tuple(f for f in MEDMNIST_FLAGS if not f.endswith("3d"))
MEDMNIST_3D: tuple[str, ...] = tuple(f for f in MEDMNIST_FLAGS if f.endswith("3d"))


class MedMNISTFileError(FileNotFoundError):
    """A MedMNIST ``.npz`` file is missing or does not follow the official layout."""


@dataclass(frozen=True)
class MedMNISTInfo:
    """Metadata of one MedMNIST dataset.

    Attributes:
        flag: e.g. ``"pathmnist"``.
        python_class: e.g. ``"PathMNIST"``.
        task: ``"multi-class"``, ``"binary-class"``, ``"multi-label, binary-class"`` or ``"ordinal-regression"``.
        labels: class (or label) names, in index order.
        n_channels: 1 or 3.
        n_samples: ``{"train": .., "val": .., "test": ..}`` (official split sizes).
        license: ``"CC BY 4.0"`` (DermaMNIST: ``"CC BY-NC 4.0"``).
        sizes: the image sizes published for it (2-D: 28/64/128/224, 3-D: 28/64).
    """

    flag: str
    python_class: str
    task: str
    labels: tuple[str, ...]
    n_channels: int
    n_samples: Mapping[str, int]
    license: str
    sizes: tuple[int, ...]

    @property
    def spatial_dims(self) -> int:
        return 3 if self.flag.endswith("3d") else 2

    @property
    def num_classes(self) -> int:
        """Classes (labels for the multi-label ChestMNIST)."""
        return len(self.labels)

    @property
    def num_label_columns(self) -> int:
        return self.num_classes if self.task == "multi-label, binary-class" else 1

    def image_shape(self, size: int) -> tuple[int, ...]:
        """Shape of one stored image: ``(s, s)``, ``(s, s, 3)`` or ``(s, s, s)``."""
        if self.spatial_dims == 3:
            return (size, size, size)
        return (size, size, 3) if self.n_channels == 3 else (size, size)

    def task_spec_dict(self, size: int | None = None) -> dict:
        """Fields for :class:`medmoe.models.vit.TaskSpec`."""
        return {
            "name": self.flag,
            "task": self.task,
            "num_classes": self.num_classes,
            "spatial_dims": self.spatial_dims,
            "channels": self.n_channels,
            "image_size": size,
        }


def _aliases() -> dict[str, str]:
    out: dict[str, str] = {}
    for flag, info in MEDMNIST_INFO.items():
        short = flag.replace("mnist", "")  # path, organ3d, ...
        for alias in (flag, short, info["python_class"].lower()):
            out[alias] = flag
    return out


_ALIASES = _aliases()


def medmnist_info(flag: str) -> MedMNISTInfo:
    """Metadata of a dataset; accepts ``"pathmnist"``, ``"PathMNIST"``, ``"path"``, ``"organ3d"``, ..."""
    key = _ALIASES.get(str(flag).strip().lower())
    if key is None:
        raise ValueError(f"unknown MedMNIST dataset {flag!r}; known: {', '.join(MEDMNIST_FLAGS)}")
    e = MEDMNIST_INFO[key]
    labels = tuple(e["label"][str(i)] for i in range(len(e["label"])))
    return MedMNISTInfo(
        flag=key,
        python_class=e["python_class"],
        task=e["task"],
        labels=labels,
        n_channels=int(e["n_channels"]),
        n_samples=dict(e["n_samples"]),
        license=e["license"],
        sizes=tuple(int(s) for s in e["md5"]),
    )


def resolve_medmnist_flags(flags: str | Iterable[str]) -> list[str]:
    """Flags from ``"all"``, ``"2d"``, ``"3d"``, a comma-separated string or a list (aliases allowed)."""
    if isinstance(flags, str):
        low = flags.strip().lower()
        if low == "all":
            return list(MEDMNIST_FLAGS)
        if low == "2d":
            return list(MEDMNIST_2D)
        if low == "3d":
            return list(MEDMNIST_3D)
        flags = [f for f in low.split(",") if f.strip()]
    out = [medmnist_info(f).flag for f in flags]
    if not out:
        raise ValueError("no MedMNIST dataset given")
    if len(set(out)) != len(out):
        raise ValueError(f"a dataset is listed twice: {out}")
    return out


#: The MOSAIC reference's dataset order (``config/datasets.py``, ``ALL_DATASETS``: its round-robin order and
#: head numbering): Path, Derma, OCT, Pneumonia, Chest, Breast, Blood, Tissue, Retina, OrganA/C/S, then the 3-D six.
MOSAIC_REFERENCE_ORDER: tuple[str, ...] = (
    "pathmnist", "dermamnist", "octmnist", "pneumoniamnist", "chestmnist", "breastmnist", "bloodmnist",
    "tissuemnist", "retinamnist", "organamnist", "organcmnist", "organsmnist",
    "organmnist3d", "nodulemnist3d", "adrenalmnist3d", "vesselmnist3d", "fracturemnist3d", "synapsemnist3d",
)
#: The reference's ``INTERLEAVED_DATASETS`` (``main.py --use_interleaved``): 2-D and 3-D datasets alternate,
#: one whole dataset epoch each.
MOSAIC_REFERENCE_INTERLEAVED: tuple[str, ...] = (
    "pathmnist", "organmnist3d", "dermamnist", "nodulemnist3d", "octmnist", "adrenalmnist3d",
    "pneumoniamnist", "vesselmnist3d", "chestmnist", "fracturemnist3d", "breastmnist", "synapsemnist3d",
    "bloodmnist", "tissuemnist", "retinamnist", "organamnist", "organcmnist", "organsmnist",
)
_ORDERS = {"reference": MOSAIC_REFERENCE_ORDER, "reference-interleaved": MOSAIC_REFERENCE_INTERLEAVED}


def order_medmnist_flags(flags: Sequence[str], order: str) -> list[str]:
    """``flags`` in a named order: ``"medmnist"`` (MedMNIST's INFO order, medmoe's default), ``"given"`` (as
    listed), ``"reference"`` (the MOSAIC reference's ``ALL_DATASETS``) or ``"reference-interleaved"``."""
    if order in ("medmnist", "given"):
        if order == "given":
            return list(flags)
        return sorted(flags, key=MEDMNIST_FLAGS.index)
    if order not in _ORDERS:
        raise ValueError(f"unknown dataset order {order!r}; choose medmnist, given, reference or reference-interleaved")
    return sorted(flags, key=_ORDERS[order].index)


def medmnist_filename(flag: str, size: int = 28) -> str:
    """Official file name: ``<flag>.npz`` (size 28) or ``<flag>_<size>.npz``."""
    info = medmnist_info(flag)
    if size not in info.sizes:
        raise ValueError(
            f"{info.flag} is published at sizes {info.sizes}, not {size}"
            + (" (3-D datasets come at 28 and 64 only)" if info.spatial_dims == 3 else "")
        )
    return f"{info.flag}.npz" if size == 28 else f"{info.flag}_{size}.npz"


def medmnist_download_hint(flags: Sequence[str], size: int, root: Path) -> str:
    """Where ``flags``' files at ``size`` are expected under ``root`` and how to get them (the official tool,
    Zenodo, or synthetic fixtures): the tail of every missing-file message."""
    names = [medmnist_filename(f, size) for f in flags]
    flag_args = " ".join(f"--flag={medmnist_info(f).flag}" for f in flags[:1])
    return (
        f"expected in {str(root)!r}: {', '.join(names)}. medmoe does not download MedMNIST. Get the files with "
        f"the official tool (pip install medmnist; python -m medmnist download --size={size} [{flag_args}] "
        f"--root={root}) or from {ZENODO_RECORD} (files: "
        + ", ".join(f"{ZENODO_RECORD}/files/{n}" for n in names[:3])
        + (", ..." if len(names) > 3 else "")
        + "). To try medmoe without real data, write synthetic fixtures with "
        "medmoe.data.write_fake_medmnist(folder, flags, size) or 'medmoe mosaic train --demo'."
    )


def medmnist_status(root: str | Path, flags: Iterable[str], size: int) -> dict[str, bool]:
    """``flag -> whether <root>/<official name> exists``."""
    root = Path(root)
    return {medmnist_info(f).flag: (root / medmnist_filename(f, size)).is_file() for f in flags}


@dataclass
class MedMNISTSplit:
    """One split of one MedMNIST dataset, validated.

    Attributes:
        info: the dataset's :class:`MedMNISTInfo`.
        split: ``"train"``, ``"val"`` or ``"test"``.
        size: image side.
        images: uint8 array in the official layout (possibly memory-mapped).
        labels: ``(N, L)`` integer array.
    """

    info: MedMNISTInfo
    split: str
    size: int
    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def flag(self) -> str:
        return self.info.flag

    def batch(self, indices: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor]:
        """``(images, labels)`` for ``indices``: float32 in ``[0, 1]``, channels first
        (``(b, c, s, s)`` or ``(b, 1, s, s, s)``), and int64 labels ``(b, L)``."""
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx, kind="stable")  # sorted reads are faster on memory maps
        raw = np.asarray(self.images[idx[order]])
        raw = raw[np.argsort(order, kind="stable")]
        x = torch.from_numpy(raw).float().div_(255.0)
        if self.info.spatial_dims == 3 or self.info.n_channels == 1:
            x = x.unsqueeze(1)
        else:
            x = x.permute(0, 3, 1, 2).contiguous()
        y = torch.from_numpy(np.asarray(self.labels[idx]).astype(np.int64))
        return x, y

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, y = self.batch([index])
        return x[0], y[0]


def load_medmnist_split(
    root: str | Path, flag: str, split: str, size: int = 28, *, mmap: bool = False
) -> MedMNISTSplit:
    """Read and validate one split of ``<root>/<flag>[_<size>].npz``.

    Args:
        root: folder holding the official files.
        flag: dataset (aliases allowed).
        split: ``"train"``, ``"val"`` or ``"test"``.
        size: 28, 64, 128 or 224 (3-D: 28 or 64).
        mmap: memory-map the images instead of reading them (only for uncompressed files; the official
            files are uncompressed ``np.savez``).

    Raises:
        MedMNISTFileError: the file is missing, or lacks the split's arrays.
        ValueError: images of the wrong size / channels / dtype, labels of the wrong shape or range.
    """
    info = medmnist_info(flag)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    path = root / medmnist_filename(info.flag, size)
    if not path.is_file():
        raise MedMNISTFileError(f"{info.python_class} ({size}px) not found: {medmnist_download_hint([info.flag], size, root)}")
    try:
        data = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as err:
        raise MedMNISTFileError(f"cannot read {path}: {err}") from err
    keys = set(data.files)
    wanted = (f"{split}_images", f"{split}_labels")
    missing = [k for k in wanted if k not in keys]
    if missing:
        raise MedMNISTFileError(
            f"{path} has no {split!r} split: arrays {missing} are missing (found {sorted(keys)}); the official "
            "files hold train_images, train_labels, val_images, val_labels, test_images, test_labels"
        )
    try:
        images, labels = data[wanted[0]], data[wanted[1]]
    except ValueError as err:  # numpy refuses object (pickled) arrays with allow_pickle=False
        raise MedMNISTFileError(
            f"{path} {split} arrays hold Python objects (pickled), which medmoe does not load for safety; the "
            "official MedMNIST files hold plain uint8 images and integer labels: re-download or re-save it"
        ) from err
    except Exception as err:  # a truncated or corrupt member of the archive
        raise MedMNISTFileError(f"cannot read {split} arrays of {path} (truncated or corrupt?): {err}") from err
    expected = info.image_shape(size)
    if tuple(images.shape[1:]) != expected:
        raise ValueError(
            f"{path} {split}_images has images of shape {tuple(images.shape[1:])}, expected {expected} for "
            f"{info.python_class} at size {size} (is it the file for another size or dataset?)"
        )
    if images.dtype != np.uint8:
        raise ValueError(f"{path} {split}_images must be uint8 (official layout), got {images.dtype}")
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.ndim != 2 or labels.shape != (images.shape[0], info.num_label_columns):
        raise ValueError(
            f"{path} {split}_labels has shape {tuple(labels.shape)}, expected ({images.shape[0]}, "
            f"{info.num_label_columns}) for the {info.task} task of {info.python_class}"
        )
    labels = np.asarray(labels)
    if labels.size:
        hi = 1 if info.num_label_columns > 1 else info.num_classes - 1
        if labels.min() < 0 or labels.max() > hi:
            raise ValueError(
                f"{path} {split}_labels range [{labels.min()}, {labels.max()}] is outside [0, {hi}] for {info.python_class}"
            )
    return MedMNISTSplit(info=info, split=split, size=size, images=images, labels=labels)


def _fake_split(info: MedMNISTInfo, size: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic images whose intensity / a bright block encode the label, so a model can learn them."""
    shape = info.image_shape(size)
    images = rng.integers(0, 90, size=(n, *shape), dtype=np.int64)
    if info.num_label_columns > 1:  # multi-label: one horizontal band per positive label
        labels = (rng.random((n, info.num_classes)) < 0.3).astype(np.uint8)
        band = max(1, size // info.num_classes)
        for j in range(info.num_classes):
            rows = slice(j * band, (j + 1) * band)
            images[labels[:, j] == 1, rows] += 120
    else:
        labels = rng.integers(0, info.num_classes, size=(n, 1)).astype(np.uint8)
        if n >= info.num_classes:  # every class present in every split
            labels[: info.num_classes, 0] = np.arange(info.num_classes)
        offset = (140 * labels[:, 0] / max(1, info.num_classes - 1)).astype(np.int64)
        images += offset.reshape(n, *([1] * len(shape)))
    return np.clip(images, 0, 255).astype(np.uint8), labels


def write_fake_medmnist(
    folder: str | Path,
    flags: str | Iterable[str],
    size: int = 28,
    n_per_split: int | Mapping[str, int] = 16,
    *,
    seed: int = 0,
) -> list[Path]:
    """Write schema-faithful **synthetic** MedMNIST files (official names, keys, dtypes and shapes).

    Images are uint8 noise whose mean intensity (or, for ChestMNIST, bright bands) encodes the label,
    so a small model can learn them. They are not medical images: use them for tests and demos only.

    Args:
        folder: output folder (created).
        flags: datasets (``"all"``, ``"2d"``, ``"3d"``, comma-separated, or a list).
        size: image side (28/64/128/224; 3-D: 28/64).
        n_per_split: samples per split (an int, or ``{"train": .., "val": .., "test": ..}``).
        seed: random seed.

    Returns:
        The written paths.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    counts = {s: n_per_split for s in SPLITS} if isinstance(n_per_split, int) else dict(n_per_split)
    if set(counts) != set(SPLITS) or any(int(v) < 1 for v in counts.values()):
        raise ValueError(f"n_per_split must be a positive int or a dict with positive {SPLITS}, got {n_per_split!r}")
    paths = []
    for k, flag in enumerate(resolve_medmnist_flags(flags)):
        info = medmnist_info(flag)
        path = folder / medmnist_filename(flag, size)
        rng = np.random.default_rng([seed, k])
        arrays = {}
        for split in SPLITS:
            images, labels = _fake_split(info, size, int(counts[split]), rng)
            arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=folder)
        os.close(fd)
        try:
            np.savez(tmp, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        paths.append(path)
    return paths
