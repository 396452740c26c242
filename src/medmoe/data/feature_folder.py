"""Deprecated module path, kept through the 0.1 series and removed in 0.2.0: import from :mod:`medmoe.data`.

This module used to hold the feature files, the labels-CSV parsers, the bag dataset and the synthetic
folders at once. Each now has a module of its own:

* :mod:`~medmoe.data.feature_files` — :class:`~medmoe.data.feature_files.FeatureFileError`,
  :func:`~medmoe.data.feature_files.read_feature_file`, :func:`~medmoe.data.feature_files.feature_file_shape`,
  :func:`~medmoe.data.feature_files.write_trident_h5`, :func:`~medmoe.data.feature_files.feature_files`,
  :func:`~medmoe.data.feature_files.trident_features_dir`, ``FEATURE_SUFFIXES``, ``MAX_FEATURE_GB_ENV``, ...
* :mod:`~medmoe.data.label_table` — the one labels-CSV parser (classes, survival, multi-label).
* :mod:`~medmoe.data.feature_dataset` — :class:`~medmoe.data.feature_dataset.FeatureFolderBags`.
* :mod:`~medmoe.data.synthetic_bags` — :func:`~medmoe.data.synthetic_bags.make_synthetic_feature_folder` and
  the survival and multi-label generators.

The names this module exported still resolve here (each with a ``DeprecationWarning`` naming its new
module), so code written against it keeps running for one release.
"""

from __future__ import annotations

import warnings
from types import ModuleType
from typing import Any

from . import feature_dataset as _feature_dataset
from . import feature_files as _feature_files
from . import synthetic_bags as _synthetic_bags

#: The names this module exported (each now defined in one of :data:`_HOMES`).
_MOVED_NAMES = (
    "FEATURE_SUFFIXES",
    "MAX_FEATURE_GB_ENV",
    "WSI_EXTENSIONS",
    "FeatureFileError",
    "FeatureFolderBags",
    "SyntheticFeatureFolder",
    "feature_file_shape",
    "feature_files",
    "make_synthetic_feature_folder",
    "max_feature_bytes",
    "read_feature_file",
    "trident_features_dir",
    "write_trident_h5",
)
__all__ = list(_MOVED_NAMES)  # resolved by __getattr__

_HOMES: tuple[ModuleType, ...] = (_feature_files, _feature_dataset, _synthetic_bags)


def __getattr__(name: str) -> Any:
    if name in _MOVED_NAMES:
        for home in _HOMES:
            if hasattr(home, name):
                from .. import data

                also = " (or from medmoe.data)" if name in data.__all__ else ""
                warnings.warn(
                    f"medmoe.data.feature_folder is deprecated and goes in medmoe 0.2.0; import {name} from "
                    f"{home.__name__}{also}",
                    DeprecationWarning,
                    stacklevel=2,
                )
                return getattr(home, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(_MOVED_NAMES)
