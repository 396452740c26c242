"""A small generated TRIDENT-style folder with censored survival times, for tests, docs and demos.

Each slide has a hidden risk ``rho`` in ``[0, 1]``: that share of its patches carries a shifted block of
features (the "aggressive" morphology). Event times are exponential with hazard ``exp(log_hazard_ratio *
rho)`` and censoring times uniform, so a MIL model that finds the shifted patches and counts them
ranks the patients; the achievable concordance is far from 1 because the times themselves are random.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .feature_folder import write_trident_h5

__all__ = ["SyntheticSurvivalFolder", "make_synthetic_survival_folder"]


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
