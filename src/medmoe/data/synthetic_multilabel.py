"""A small generated TRIDENT-style folder whose slides carry several yes/no labels, for tests, docs and demos.

Each label (say ``tumor``, ``necrosis``, ``inflammation``) is present in a slide independently, with its own
prevalence. A present label shifts a random share of the slide's patches on that label's own block of
feature dims, so a MIL model has to find, for every label separately, whether any patch shows it. Labels
overlap freely: a slide may have none, one or all of them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .feature_folder import write_trident_h5

__all__ = ["SyntheticMultilabelFolder", "make_synthetic_multilabel_folder"]


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
