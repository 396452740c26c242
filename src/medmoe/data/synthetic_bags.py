"""Small generated TRIDENT-style feature folders (``features/<slide>.h5`` + ``labels.csv``) for tests, docs
and demos, one generator per kind of labels CSV (:mod:`~medmoe.data.label_table`).

* :func:`make_synthetic_feature_folder` — classes: in a slide of class ``c`` a share of the patches is
  shifted on a class-specific block of feature dims.
* :func:`make_synthetic_survival_folder` — censored survival times: each slide has a hidden risk ``rho`` in
  ``[0, 1]``, that share of its patches carries a shifted block of features (the "aggressive"
  morphology). Event times are exponential with hazard ``exp(log_hazard_ratio * rho)`` and censoring
  times uniform, so a MIL model that finds the shifted patches and counts them ranks the patients; the
  achievable concordance is far from 1 because the times themselves are random.
* :func:`make_synthetic_multilabel_folder` — several yes/no labels (say ``tumor``, ``necrosis``,
  ``inflammation``), each present in a slide independently with its own prevalence. A present label shifts
  a random share of the slide's patches on that label's own block of feature dims, so a MIL model has to
  find, for every label separately, whether any patch shows it. Labels overlap freely: a slide may have
  none, one or all of them.

The same arguments (seed included) give the same files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .feature_files import write_trident_h5

__all__ = [
    "SyntheticFeatureFolder",
    "SyntheticMultilabelFolder",
    "SyntheticSurvivalFolder",
    "make_synthetic_feature_folder",
    "make_synthetic_multilabel_folder",
    "make_synthetic_survival_folder",
]


# ------------------------------------------------------------------------------------------------
# classes
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticFeatureFolder:
    """Paths of a folder written by :func:`make_synthetic_feature_folder`."""

    features_dir: Path
    labels_csv: Path
    class_names: list[str]


def make_synthetic_feature_folder(
    root: str | os.PathLike,
    n_slides: int = 16,
    n_patches: int | tuple[int, int] = (16, 48),
    dim: int = 32,
    num_classes: int = 2,
    seed: int = 0,
    *,
    slides_per_case: int = 1,
    fmt: Literal["h5", "pt"] = "h5",
    signal: float = 2.0,
    signal_fraction: float = 0.25,
    string_labels: bool = False,
    with_split: bool = False,
) -> SyntheticFeatureFolder:
    """Write a small TRIDENT-style folder ``root/features/<slide>.h5`` and ``root/labels.csv``.

    The signal is learnable by any MIL model: in a slide of class ``c``, a random ``signal_fraction`` of
    the patches has its features shifted by ``+signal`` on a class-specific block of ``dim //
    num_classes`` (at most 8) feature dims; all other values are standard normal noise.

    Args:
        root: output folder (created).
        n_slides: number of slides; labels are balanced (case ``j`` has label ``j % num_classes``).
        n_patches: patches per slide, an int or an inclusive ``(min, max)`` range.
        dim: feature dim.
        num_classes: number of classes (>= 2).
        seed: RNG seed; the same arguments give the same files.
        slides_per_case: slides per patient (``case_id`` column); slides of a case share its label.
        fmt: ``'h5'`` (TRIDENT) or ``'pt'`` (a dict with ``features`` and ``coords``).
        signal, signal_fraction: strength and share of the class-dependent patches.
        string_labels: write labels as ``class_0``, ``class_1``, ... instead of ints.
        with_split: add a ``split`` column (train/val/test by case, about 60/20/20).
    """
    if num_classes < 2 or dim < num_classes:
        raise ValueError(f"need num_classes >= 2 and dim >= num_classes, got {num_classes=} {dim=}")
    if fmt not in ("h5", "pt"):
        raise ValueError(f"fmt must be 'h5' or 'pt', got {fmt!r}")
    root = Path(root)
    fdir = root / "features"
    fdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lo, hi = (n_patches, n_patches) if isinstance(n_patches, int) else n_patches
    block = max(1, min(8, dim // num_classes))
    names = [f"class_{c}" for c in range(num_classes)]
    rows = []
    for s in range(n_slides):
        case = s // slides_per_case
        label = case % num_classes
        n = int(rng.integers(lo, hi + 1))
        x = rng.standard_normal((n, dim)).astype(np.float32)
        k = max(1, round(signal_fraction * n))
        hit = rng.choice(n, size=min(k, n), replace=False)
        x[np.ix_(hit, np.arange(label * block, (label + 1) * block))] += signal
        sid = f"slide_{s:03d}"
        if fmt == "h5":
            write_trident_h5(fdir / f"{sid}.h5", x, patch_size_level0=256)
        else:
            side = max(1, int(np.ceil(np.sqrt(n))))
            idx = np.arange(n)
            crd = np.stack([idx % side, idx // side], 1).astype(np.int64) * 256
            torch.save({"features": torch.from_numpy(x), "coords": torch.from_numpy(crd)}, fdir / f"{sid}.pt")
        split = ("train", "train", "train", "val", "test")[case % 5]
        rows.append((sid, f"case_{case:03d}", names[label] if string_labels else str(label), split))
    header = "slide_id,case_id,label" + (",split" if with_split else "")
    lines = [header] + [",".join(r if with_split else r[:3]) for r in rows]
    csv = root / "labels.csv"
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return SyntheticFeatureFolder(features_dir=fdir, labels_csv=csv, class_names=names)


# ------------------------------------------------------------------------------------------------
# survival
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticSurvivalFolder:
    """Paths and truth of a folder written by :func:`make_synthetic_survival_folder`."""

    features_dir: Path
    labels_csv: Path
    #: hidden risk ``rho`` per slide (the share of shifted patches), in CSV order.
    risks: tuple[float, ...]


def make_synthetic_survival_folder(
    root: str | os.PathLike,
    n_slides: int = 60,
    n_patches: int | tuple[int, int] = (24, 64),
    dim: int = 32,
    seed: int = 0,
    *,
    log_hazard_ratio: float = 3.0,
    censoring_rate: float = 0.3,
    signal: float = 2.0,
    censorship_column: bool = False,
) -> SyntheticSurvivalFolder:
    """Write ``root/features/<slide>.h5`` and ``root/labels.csv`` (``slide_id, case_id, time, event``).

    Args:
        root: output folder (created).
        n_slides: slides (one per case).
        n_patches: patches per slide, an int or an inclusive ``(min, max)`` range.
        dim: feature dim (>= 8: the first 8 dims carry the signal).
        seed: RNG seed; the same arguments give the same files.
        log_hazard_ratio: log hazard ratio between the riskiest (``rho = 1``) and the safest slide.
        censoring_rate: about this share of the patients is censored (uniform censoring times are
            scaled to it).
        signal: shift of the aggressive patches' signal dims.
        censorship_column: write CLAM/PORPOISE's ``survival_months`` and ``censorship`` (``1 - event``)
            instead of ``time`` and ``event``.
    """
    if n_slides < 2:
        raise ValueError(f"n_slides must be >= 2, got {n_slides}")
    if dim < 8:
        raise ValueError(f"dim must be >= 8, got {dim}")
    if not 0.0 <= censoring_rate < 1.0:
        raise ValueError(f"censoring_rate must be in [0, 1), got {censoring_rate}")
    root = Path(root)
    fdir = root / "features"
    fdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lo, hi = (n_patches, n_patches) if isinstance(n_patches, int) else n_patches
    rho = rng.uniform(0.0, 1.0, n_slides)
    event_times = rng.exponential(1.0, n_slides) / np.exp(log_hazard_ratio * rho) * 24.0
    # uniform censoring on [0, c_max]; c_max set so that about censoring_rate of the patients is censored
    u = rng.uniform(0.0, 1.0, n_slides)
    if censoring_rate > 0:
        c_max = float(np.quantile(event_times, 1.0 - censoring_rate)) * 2.0
        censor_times = u * c_max
    else:
        censor_times = np.full(n_slides, np.inf)
    times = np.minimum(event_times, censor_times)
    events = (event_times <= censor_times).astype(int)
    rows = []
    for s in range(n_slides):
        n = int(rng.integers(lo, hi + 1))
        x = rng.standard_normal((n, dim)).astype(np.float32)
        k = round(float(rho[s]) * n)
        hit = rng.choice(n, size=k, replace=False)
        x[np.ix_(hit, np.arange(8))] += signal
        sid = f"slide_{s:03d}"
        write_trident_h5(fdir / f"{sid}.h5", x, patch_size_level0=256)
        e = int(events[s])
        rows.append(f"{sid},case_{s:03d},{times[s]:.4f},{1 - e if censorship_column else e}")
    header = "slide_id,case_id," + ("survival_months,censorship" if censorship_column else "time,event")
    csv = root / "labels.csv"
    csv.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return SyntheticSurvivalFolder(features_dir=fdir, labels_csv=csv, risks=tuple(float(r) for r in rho))


# ------------------------------------------------------------------------------------------------
# multi-label
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticMultilabelFolder:
    """Paths and truth of a folder written by :func:`make_synthetic_multilabel_folder`."""

    features_dir: Path
    labels_csv: Path
    label_names: tuple[str, ...]
    #: ``(n_slides, L)`` 0/1 targets in CSV order.
    targets: np.ndarray


def make_synthetic_multilabel_folder(
    root: str | os.PathLike,
    n_slides: int = 60,
    n_patches: int | tuple[int, int] = (24, 64),
    dim: int = 32,
    seed: int = 0,
    *,
    label_names: Sequence[str] = ("tumor", "necrosis", "inflammation"),
    prevalence: float | Sequence[float] = 0.4,
    signal: float = 2.0,
    signal_fraction: float = 0.25,
) -> SyntheticMultilabelFolder:
    """Write ``root/features/<slide>.h5`` and ``root/labels.csv`` (``slide_id, case_id, <label>...``).

    Args:
        root: output folder (created).
        n_slides: slides (one per case).
        n_patches: patches per slide, an int or an inclusive ``(min, max)`` range.
        dim: feature dim; label ``j`` shifts dims ``[4j, 4j + 4)``, so ``dim >= 4 L``.
        seed: RNG seed; the same arguments give the same files.
        label_names: the ``L`` labels (CSV columns).
        prevalence: probability that a slide has a label (one value, or one per label).
        signal: shift of a present label's patches on its dims.
        signal_fraction: share of a slide's patches showing a present label.
    """
    names = [str(n) for n in label_names]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"label_names must be one or more distinct names, got {names}")
    if n_slides < 2:
        raise ValueError(f"n_slides must be >= 2, got {n_slides}")
    if dim < 4 * len(names):
        raise ValueError(f"dim must be >= 4 x {len(names)} labels = {4 * len(names)}, got {dim}")
    prev = np.broadcast_to(np.asarray(prevalence, dtype=np.float64), (len(names),))
    if not ((prev > 0) & (prev < 1)).all():
        raise ValueError(f"prevalence must be in (0, 1), got {list(prev)}")
    if not 0.0 < signal_fraction <= 1.0:
        raise ValueError(f"signal_fraction must be in (0, 1], got {signal_fraction}")
    root = Path(root)
    fdir = root / "features"
    fdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lo, hi = (n_patches, n_patches) if isinstance(n_patches, int) else n_patches
    targets = (rng.uniform(size=(n_slides, len(names))) < prev).astype(np.int64)
    for j in range(len(names)):  # every label needs both outcomes to be learnable and scorable
        if targets[:, j].min() == targets[:, j].max():
            targets[j % n_slides, j] = 1 - targets[j % n_slides, j]
    rows = []
    for s in range(n_slides):
        n = int(rng.integers(lo, hi + 1))
        x = rng.standard_normal((n, dim)).astype(np.float32)
        for j in np.flatnonzero(targets[s]):
            hit = rng.choice(n, size=max(1, round(signal_fraction * n)), replace=False)
            x[np.ix_(hit, np.arange(4 * j, 4 * j + 4))] += signal
        sid = f"slide_{s:03d}"
        write_trident_h5(fdir / f"{sid}.h5", x, patch_size_level0=256)
        rows.append(",".join([sid, f"case_{s:03d}", *map(str, targets[s])]))
    csv = root / "labels.csv"
    csv.write_text("\n".join([",".join(["slide_id", "case_id", *names]), *rows]) + "\n", encoding="utf-8")
    return SyntheticMultilabelFolder(
        features_dir=fdir, labels_csv=csv, label_names=tuple(names), targets=targets
    )
