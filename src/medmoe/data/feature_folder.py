"""Slide-level bags from a TRIDENT/CLAM feature folder plus a labels CSV.

Folder layout (as written by TRIDENT or CLAM):

* one ``<slide_id>.h5`` per slide with a ``features`` dataset of shape ``(n, d)`` or ``(1, n, d)``
  and a ``coords`` dataset ``(n, 2)`` (level-0 pixel x/y; attributes such as ``patch_size_level0``),
* or one ``<slide_id>.pt`` per slide holding a tensor ``(n, d)`` / ``(1, n, d)`` or a dict with
  ``features`` (and optionally ``coords``).

Labels CSV: columns ``slide_id`` and ``label`` are required, ``case_id`` (patient) and ``split``
(``train``/``val``/``test``) are optional. ``slide_id`` may carry the slide's file extension
(``TCGA-XX.svs``); it is matched to the feature file's stem. String labels are mapped to ints in sorted
order (``class_names`` keeps the strings); integer labels are used as they are (``num_classes =
max + 1``; they must run 0..C-1 without gaps), unless ``label_map`` is given. A column mixing numbers and
names is refused, naming the odd values and their lines. Given a trained model's ``class_names``
(evaluation, prediction), labels are mapped through those instead.

One feature file per slide: a folder holding both ``slide.h5`` and ``slide.pt`` is refused (the two may
come from different encoders; neither is chosen silently). Before an ``.h5`` is read, the declared size of
its ``features`` is checked against what the file stores and against a quarter of the machine's memory
(raise that limit with the environment variable ``MEDMOE_MAX_FEATURE_GB``).

Survival CSVs (``time_col`` given): a follow-up time column and an event column (``event``: 1 = event
observed, 0 = censored), or CLAM/PORPOISE's ``censorship`` column (1 = censored) when there is no event
column; no ``label`` column is needed. The bags' labels are then the event indicators (classes
``censored`` / ``event``, so folds are stratified by event) and the targets are in
``survival_times`` / ``survival_events``.

Multi-label CSVs (``label_cols`` given, e.g. ``["tumor", "necrosis", "inflammation"]``): one 0/1 column per
label, no ``label`` column needed. The targets are in ``multilabel_targets`` ``(N, L)``; the bags' class
labels are the label combinations (``"tumor+necrosis"``, ``"(none)"``), so folds are stratified by them.

Bags are read lazily in ``__getitem__``: a 1,000-slide cohort is never fully loaded. At construction
only the labels CSV and the folder listing are read, plus, with ``check_shapes=True`` (default), the
shape metadata of each file (the ``features`` dataset header for ``.h5``, a memory-mapped load for
``.pt``), which is what lets empty bags be skipped and mixed feature dims be reported up front.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from .bags import Bag, BagDataset
from .splits import Split, split_from_column

__all__ = [
    "MAX_FEATURE_GB_ENV",
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
]

logger = logging.getLogger(__name__)

FEATURE_SUFFIXES = (".h5", ".pt", ".pth")
WSI_EXTENSIONS = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".vms",
    ".vmu",
    ".bif",
    ".czi",
    ".dcm",
    ".svslide",
    ".qptiff",
    ".isyntax",
    ".h5",
    ".pt",
)


class FeatureFileError(ValueError):
    """A feature file is missing, unreadable or malformed (the message names the file)."""


def _fmt_ids(ids: Sequence[str], limit: int = 10) -> str:
    ids = list(ids)
    shown = ", ".join(ids[:limit])
    more = f" (+{len(ids) - limit} more)" if len(ids) > limit else ""
    return f"{len(ids)}: {shown}{more}"


def _require_h5py() -> Any:
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading .h5 feature files needs h5py: pip install 'medmoe[mil]'") from e
    return h5py


# ------------------------------------------------------------------------------------------------
# single files
# ------------------------------------------------------------------------------------------------
def _squeeze_features(arr_shape: tuple[int, ...], path: Path) -> tuple[int, int]:
    if len(arr_shape) == 3 and arr_shape[0] == 1:
        return int(arr_shape[1]), int(arr_shape[2])
    if len(arr_shape) == 2:
        return int(arr_shape[0]), int(arr_shape[1])
    raise FeatureFileError(f"{path}: 'features' has shape {tuple(arr_shape)}; expected (n, d) or (1, n, d)")


def _h5_missing_key(path: Path, keys: Sequence[str]) -> FeatureFileError:
    return FeatureFileError(
        f"{path} has no 'features' dataset (it holds {sorted(keys)}); re-extract it with TRIDENT/CLAM"
    )


#: Environment variable that raises (or lowers) the largest feature array medmoe reads, in GB (1e9 bytes).
MAX_FEATURE_GB_ENV = "MEDMOE_MAX_FEATURE_GB"


def max_feature_bytes() -> int:
    """The largest feature array (float32 bytes) one file may declare: ``$MEDMOE_MAX_FEATURE_GB`` GB when
    set, else a quarter of the machine's physical memory (16 GB where that cannot be read)."""
    from ..model_size import gb_limit_from_env, physical_memory_bytes

    limit = gb_limit_from_env(MAX_FEATURE_GB_ENV)
    return physical_memory_bytes(64 * 10**9) // 4 if limit is None else limit


def _check_declared_size(
    path: Path, shape: tuple[int, ...], stored: int | None, compressed: bool, itemsize: int = 4
) -> None:
    """Refuse a feature array that is too large to read, or a (forged or truncated) HDF5 dataset whose
    declared size its stored bytes cannot back, before anything is read.

    Args:
        shape: the declared shape; ``stored``: bytes the file really holds for it (``None``: unknown);
        ``compressed``: the dataset is filtered (then ``stored`` may legitimately be smaller);
        ``itemsize``: bytes per stored value.
    """
    count = 1
    for s in shape:
        count *= int(s)
    need = count * 4  # read as float32
    if stored is not None and count > 0:
        # Uncompressed data must be stored in full; real patch features never compress 100-fold.
        declared = count * int(itemsize)
        backed = stored >= declared if not compressed else stored * 100 >= declared
        if stored == 0 or not backed:
            raise FeatureFileError(
                f"{path}: 'features' declares {' x '.join(map(str, shape))} values ({need / 1e9:.3g} GB) but the "
                f"file stores only {stored} bytes of them (truncated, unwritten or forged); re-extract it"
            )
    limit = max_feature_bytes()
    if need > limit:
        raise FeatureFileError(
            f"{path}: 'features' declares {' x '.join(map(str, shape))} values ({need / 1e9:.1f} GB as float32), "
            f"more than the {limit / 1e9:.1f} GB limit (a quarter of this machine's memory); if the file is "
            f"genuine, raise the limit with the environment variable {MAX_FEATURE_GB_ENV}=GB"
        )


def _h5_features(path: Path, f: Any) -> Any:
    """The ``features`` dataset of an open HDF5 file, checked (a dataset, a sane declared size)."""
    h5py = _require_h5py()
    if "features" not in f:
        raise _h5_missing_key(path, list(f.keys()))
    ds = f["features"]
    if not isinstance(ds, h5py.Dataset):
        raise FeatureFileError(
            f"{path}: 'features' is an HDF5 {type(ds).__name__.lower()} (holding {sorted(ds.keys())[:10]}), not a "
            "dataset of shape (n, d); re-extract it with TRIDENT/CLAM"
        )
    shape = tuple(int(s) for s in ds.shape or ())
    _squeeze_features(shape, path)
    if ds.dtype.kind not in "fiu":
        raise FeatureFileError(f"{path}: 'features' holds {ds.dtype} values, not numbers")
    try:
        stored: int | None = int(ds.id.get_storage_size())
    except (RuntimeError, ValueError, OSError):  # pragma: no cover - exotic storage (external / virtual)
        stored = None
    if ds.is_virtual or ds.external:
        stored = None
    compressed = ds.compression is not None or bool(getattr(ds, "_filters", {}))
    _check_declared_size(path, shape, stored, compressed, ds.dtype.itemsize)
    return ds


def _h5_coords(path: Path, f: Any, feats_shape: tuple[int, ...]) -> np.ndarray:
    """The ``coords`` array, after checking (before reading) that it is a dataset of one x/y per patch."""
    h5py = _require_h5py()
    ds = f["coords"]
    n = feats_shape[-2] if len(feats_shape) >= 2 else 0
    shape = tuple(int(s) for s in getattr(ds, "shape", None) or ())
    if not isinstance(ds, h5py.Dataset) or shape not in ((n, 2), (1, n, 2)):
        what = f"shape {shape}" if isinstance(ds, h5py.Dataset) else f"an HDF5 {type(ds).__name__.lower()}"
        raise FeatureFileError(f"{path}: 'coords' is {what}, expected ({n}, 2): one level-0 x/y per patch")
    return ds[()]


def _require_feature_file(path: Path) -> None:
    """``FeatureFileError`` naming what ``path`` is unless it is a regular file."""
    from .file_checks import require_file

    try:
        require_file(path, "feature file")
    except ValueError as err:
        raise FeatureFileError(str(err)) from None


def _load_pt(path: Path, mmap: bool) -> Any:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except RuntimeError:
        if mmap:  # legacy (non-zip) torch files cannot be memory-mapped
            return torch.load(str(path), map_location="cpu", weights_only=True)
        raise


def _pt_features(obj: Any, path: Path) -> tuple[Tensor, Tensor | None]:
    if isinstance(obj, Tensor):
        return obj, None
    if isinstance(obj, Mapping) and isinstance(obj.get("features"), Tensor):
        coords = obj.get("coords")
        return obj["features"], coords if isinstance(coords, Tensor) else None
    kind = sorted(obj) if isinstance(obj, Mapping) else type(obj).__name__
    raise FeatureFileError(
        f"{path} holds {kind}; expected a tensor (n, d) or a dict with a 'features' tensor"
    )


def feature_file_shape(path: str | os.PathLike) -> tuple[int, int]:
    """``(n, d)`` of a feature file from its metadata, without reading the features.

    Raises:
        FeatureFileError: missing, unreadable or malformed file.
    """
    path = Path(path)
    _require_feature_file(path)
    try:
        if path.suffix == ".h5":
            h5py = _require_h5py()
            with h5py.File(path, "r") as f:
                return _squeeze_features(tuple(_h5_features(path, f).shape), path)
        feats, _ = _pt_features(_load_pt(path, mmap=True), path)
        shape = _squeeze_features(tuple(feats.shape), path)
        _check_declared_size(path, tuple(feats.shape), None, False)
        return shape
    except FeatureFileError:
        raise
    except Exception as e:
        raise FeatureFileError(f"cannot read feature file {path}: {type(e).__name__}: {e}") from e


def read_feature_file(
    path: str | os.PathLike, with_attrs: bool = False
) -> tuple[Tensor, Tensor | None] | tuple[Tensor, Tensor | None, dict[str, Any]]:
    """Read one TRIDENT/CLAM feature file (``.h5`` or ``.pt``).

    Returns:
        ``features (n, d)`` float32, ``coords (n, 2)`` (int64 when stored as integers) or None, and
        with ``with_attrs=True`` a dict of the file's and the ``coords`` dataset's attributes
        (``patch_size_level0``, ...).

    Raises:
        FeatureFileError: missing, unreadable or malformed file.
    """
    path = Path(path)
    _require_feature_file(path)
    attrs: dict[str, Any] = {}
    try:
        if path.suffix == ".h5":
            h5py = _require_h5py()
            with h5py.File(path, "r") as f:
                feats_np = _h5_array(path, _h5_features(path, f))
                coords_np = _h5_coords(path, f, feats_np.shape) if "coords" in f else None
                if with_attrs:
                    attrs.update({k: _attr(v) for k, v in f.attrs.items()})
                    if "coords" in f:
                        attrs.update({k: _attr(v) for k, v in f["coords"].attrs.items()})
            feats = torch.from_numpy(_native(feats_np))
            coords = None if coords_np is None else torch.from_numpy(_native(coords_np))
        else:
            feats, coords = _pt_features(_load_pt(path, mmap=True), path)  # mapped, copy-on-write
            _check_declared_size(path, tuple(feats.shape), None, False)
    except FeatureFileError:
        raise
    except Exception as e:
        raise FeatureFileError(f"cannot read feature file {path}: {type(e).__name__}: {e}") from e
    n, d = _squeeze_features(tuple(feats.shape), path)
    feats = feats.reshape(n, d).to(torch.float32)
    if coords is not None:
        if coords.dim() == 3 and coords.shape[0] == 1:
            coords = coords[0]
        if tuple(coords.shape) != (n, 2):
            raise FeatureFileError(f"{path}: coords have shape {tuple(coords.shape)}, expected ({n}, 2)")
        coords = coords.to(torch.int64) if not coords.is_floating_point() else coords.to(torch.float32)
    if with_attrs:
        return feats, coords, attrs
    return feats, coords


def _h5_array(path: Path, ds: Any) -> np.ndarray:
    """The array of an HDF5 dataset: memory-mapped when it is stored plainly, else read by h5py.

    TRIDENT/CLAM feature files store ``features`` contiguously and uncompressed; mapping that byte range
    (copy-on-write, so the tensor stays writable and the file is never changed) skips HDF5's copy into a fresh
    buffer, which makes reading a slide several times faster (measured on the MIL throughput benchmark's
    files: docs/performance.md).
    Chunked, compressed, filtered or big-endian datasets are read with h5py.
    """
    offset = ds.id.get_offset()
    plain = (
        offset is not None
        and ds.chunks is None
        and ds.compression is None
        and ds.dtype.kind == "f"
        and ds.dtype.byteorder in ("=", "<", "|")
        and ds.size > 0
    )
    if plain:
        try:
            return np.memmap(path, dtype=ds.dtype, mode="c", offset=offset, shape=ds.shape)
        except (OSError, ValueError):
            pass
    return ds[()]


def _native(a: np.ndarray) -> np.ndarray:
    """A C-contiguous array in the machine's byte order (torch cannot wrap big-endian arrays)."""
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return np.ascontiguousarray(a)


def _attr(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def write_trident_h5(
    path: str | os.PathLike,
    features: Tensor | np.ndarray,
    coords: Tensor | np.ndarray | None = None,
    patch_size_level0: int = 256,
    **attrs: Any,
) -> Path:
    """Write a TRIDENT-style ``.h5``: ``features (n, d)`` float32 and ``coords (n, 2)`` int64 whose
    attributes hold ``patch_size_level0`` (and ``patch_size``, plus any extra ``attrs``). Atomic.

    Args:
        path: output file.
        features: ``(n, d)`` features.
        coords: ``(n, 2)`` level-0 x/y; default: a row-major grid with step ``patch_size_level0``.
        patch_size_level0: patch side in level-0 pixels.
    """
    h5py = _require_h5py()
    path = Path(path)
    feats = np.asarray(
        features.detach().cpu() if isinstance(features, Tensor) else features, dtype=np.float32
    )
    if feats.ndim != 2:
        raise ValueError(f"features must be (n, d), got shape {feats.shape}")
    n = feats.shape[0]
    if coords is None:
        side = max(1, int(np.ceil(np.sqrt(max(n, 1)))))
        idx = np.arange(n)
        crd = np.stack([idx % side, idx // side], axis=1).astype(np.int64) * int(patch_size_level0)
    else:
        crd = np.asarray(coords.detach().cpu() if isinstance(coords, Tensor) else coords)
        if crd.shape != (n, 2):
            raise ValueError(f"coords must be ({n}, 2) to match features, got {crd.shape}")
        if not np.issubdtype(crd.dtype, np.floating):
            crd = crd.astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".h5.tmp", dir=str(path.parent))
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=feats)
            dset = f.create_dataset("coords", data=crd)
            dset.attrs["patch_size_level0"] = int(patch_size_level0)
            dset.attrs["patch_size"] = int(patch_size_level0)
            for k, v in attrs.items():
                dset.attrs[k] = v
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def feature_files(folder: str | os.PathLike) -> dict[str, Path]:
    """``{slide id (file stem): path}`` of the feature files (``.h5``, ``.pt``, ``.pth``) in ``folder``.

    Raises:
        ValueError: two files for one slide (``slide.h5`` and ``slide.pt``): they may come from different
            encoders or extraction runs, so neither is chosen silently; the message names them.
    """
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for p in sorted(Path(folder).iterdir()):
        if p.suffix in FEATURE_SUFFIXES and not p.name.startswith("."):
            by_stem[p.stem].append(p)
    twice = {stem: paths for stem, paths in by_stem.items() if len(paths) > 1}
    if twice:
        listed = "; ".join(" and ".join(q.name for q in paths) for paths in list(twice.values())[:5])
        more = f" (+{len(twice) - 5} more slides)" if len(twice) > 5 else ""
        raise ValueError(
            f"{folder}: {len(twice)} slide(s) have two feature files ({listed}{more}); they may come from "
            "different encoders, so medmoe does not choose: move or delete one of each pair"
        )
    return {stem: paths[0] for stem, paths in by_stem.items()}


def trident_features_dir(folder: str | os.PathLike) -> Path:
    """The folder of feature files under ``folder``: ``folder`` itself when it holds ``.h5``/``.pt`` files,
    else the one TRIDENT output folder below it (``<mag>x_<ps>px_<ov>px_overlap/features_<encoder>/``, or
    ``features_<encoder>/``), so a TRIDENT job directory can be given as it is.

    Raises:
        ValueError: several candidates (several encoders or magnifications: the message lists them) or none.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    if any(p.suffix in FEATURE_SUFFIXES and not p.name.startswith(".") for p in root.iterdir()):
        return root
    candidates = sorted(
        p for p in [*root.glob("features_*"), *root.glob("*/features_*")]
        if p.is_dir() and any(q.suffix in FEATURE_SUFFIXES for q in p.iterdir())
    )
    if len(candidates) == 1:
        logger.info("reading the features in %s", candidates[0])
        return candidates[0]
    if candidates:
        listed = ", ".join(str(c.relative_to(root)) for c in candidates)
        raise ValueError(f"{root} holds several TRIDENT feature folders ({listed}); pass the one you want")
    raise ValueError(
        f"no feature files (.h5, .pt) in {root} nor in a TRIDENT features_<encoder>/ folder below it"
    )


# ------------------------------------------------------------------------------------------------
# the dataset
# ------------------------------------------------------------------------------------------------
@dataclass
class _Entry:
    bag_id: str
    slide_ids: list[str]
    paths: list[Path]
    label: int
    group: str
    split: str | None


def _as_int(s: str) -> int | None:
    """``'3'``, ``'3.0'`` -> 3; anything else (``'tumor'``, ``'2.5'``) -> None."""
    try:
        f = float(s)
    except ValueError:
        return None
    return int(f) if f.is_integer() else None


def _where(values: Sequence[str], raw: Sequence[str], slide_ids: Sequence[str] | None) -> str:
    """``'7' (line 5: slide_004), 'banana' (line 9: slide_008)``: each odd value with its first rows
    (CSV line numbers, the header being line 1)."""
    parts = []
    for v in list(values)[:10]:
        rows = [i for i, r in enumerate(raw) if r == v]
        shown = ", ".join(f"line {i + 2}" + (f": {slide_ids[i]}" if slide_ids else "") for i in rows[:3])
        more = f" +{len(rows) - 3} more" if len(rows) > 3 else ""
        parts.append(f"{v!r} ({shown}{more})")
    extra = f" and {len(values) - 10} more" if len(values) > 10 else ""
    return ", ".join(parts) + extra


def _map_to_classes(
    raw: list[str], class_names: Sequence[str], csv: Path, slide_ids: Sequence[str] | None
) -> tuple[list[int], list[str]]:
    """Labels mapped through a trained model's ``class_names``: by name, or a number to the class whose name
    is the same number (``'1.0'`` -> ``'1'``). Numbers against named classes (or names against numbered ones)
    are ambiguous and raise, as does any value the model does not know."""
    names = [str(c) for c in class_names]
    index = {n: i for i, n in enumerate(names)}
    numeric = {_as_int(n): i for i, n in enumerate(names) if _as_int(n) is not None}
    out: list[int] = []
    unknown: list[str] = []
    for r in raw:
        if r in index:
            out.append(index[r])
        elif _as_int(r) is not None and _as_int(r) in numeric:
            out.append(numeric[_as_int(r)])  # type: ignore[index]
        else:
            out.append(-1)
            if r not in unknown:
                unknown.append(r)
    if not unknown:
        return out, names
    shown = ", ".join(map(repr, names))
    if all(_as_int(u) is not None for u in unknown) and not numeric:
        raise ValueError(
            f"{csv}: labels are numbers ({_where(unknown, raw, slide_ids)}) but the checkpoint's classes are named "
            f"({shown}); a number could mean any of them, so write the class names in the label column"
        )
    if all(_as_int(u) is None for u in unknown) and len(numeric) == len(names):
        raise ValueError(
            f"{csv}: labels are names ({_where(unknown, raw, slide_ids)}) but the checkpoint was trained on numbered "
            f"classes ({shown}); write the class numbers in the label column"
        )
    raise ValueError(
        f"{csv}: label values the checkpoint does not know: {_where(unknown, raw, slide_ids)}; its classes are "
        f"{shown}; fix or drop those rows"
    )


def _parse_labels(
    raw: list[str],
    label_map: Mapping[str, int] | None,
    csv: Path,
    slide_ids: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[list[int], list[str]]:
    """Labels as ints plus class names (see the module docstring); with ``class_names`` (a trained model's
    classes) the labels are mapped through them (:func:`_map_to_classes`)."""
    if not raw:
        raise ValueError(f"labels CSV {csv} has a header but no rows; add one row per slide")
    if class_names is not None:
        return _map_to_classes(raw, class_names, csv, slide_ids)
    if label_map is not None:
        lm = {str(k).strip(): int(v) for k, v in label_map.items()}
        unknown = sorted({r for r in raw if r not in lm})
        if unknown:
            raise ValueError(
                f"{csv}: labels not in label_map: {_where(unknown, raw, slide_ids)}; add them to label_map"
            )
        num = max(lm.values()) + 1
        names = [str(c) for c in range(num)]
        for k, v in sorted(lm.items(), key=lambda kv: kv[0], reverse=True):
            names[v] = k
        return [lm[r] for r in raw], names

    ints = [_as_int(r) for r in raw]
    numbers = sorted({r for r, i in zip(raw, ints) if i is not None})
    words = sorted({r for r, i in zip(raw, ints) if i is None})
    if numbers and words:  # a stray value: the minority kind is the odd one out
        count_numbers = sum(i is not None for i in ints)
        odd, kind, other = ((numbers, "numbers", words) if count_numbers <= len(raw) - count_numbers
                            else (words, "names", numbers))
        raise ValueError(
            f"{csv}: the label column mixes class numbers and class names; the odd {kind} "
            f"{_where(odd, raw, slide_ids)} stand among {', '.join(map(repr, other[:10]))}: fix or drop those rows"
        )
    if words:
        names = sorted(set(raw))
        index = {n: i for i, n in enumerate(names)}
        return [index[r] for r in raw], names
    vals = [int(i) for i in ints]  # type: ignore[arg-type]
    negative = sorted({r for r, v in zip(raw, vals) if v < 0})
    if negative:
        raise ValueError(
            f"{csv}: class numbers must be >= 0 (0, 1, ...); negative labels {_where(negative, raw, slide_ids)}"
        )
    num = max(vals) + 1
    present = sorted(set(vals))
    unused = sorted(set(range(num)) - set(vals))
    if unused:
        # classes 0..m are used contiguously; values above the first gap are the stray ones
        first_gap = unused[0]
        stray = sorted({r for r, v in zip(raw, vals) if v > first_gap}, key=lambda r: _as_int(r) or 0)
        raise ValueError(
            f"{csv}: class numbers must run 0..C-1 without gaps, but {unused[:10]} never occur; the labels above "
            f"the gap are {_where(stray, raw, slide_ids)} (present: {present[:10]}): fix those rows, or "
            "number the classes 0..C-1 (Python: pass label_map)"
        )
    return vals, [str(c) for c in range(num)]


class FeatureFolderBags(BagDataset):
    """Bags from a TRIDENT/CLAM feature folder and a labels CSV (see the module docstring).

    Args:
        features_dir: folder holding ``<slide_id>.h5`` / ``<slide_id>.pt`` files.
        labels_csv: CSV with ``slide_id``, ``label`` and optionally ``case_id``, ``split``.
        patient_mode: ``'separate'`` = one bag per slide (group = ``case_id`` when given);
            ``'concat'`` = one bag per ``case_id``, concatenating the patches of all its slides
            (early fusion; needs ``case_id``; all slides of a case must share label and split).
        cache_in_memory: keep bags in memory after their first read (per process: every DataLoader
            worker holds its own cache).
        nonfinite: ``'error'`` raises a ValueError naming the slide when its features hold NaN/inf;
            ``'zero'`` replaces them by 0 with a warning.
        label_map: optional ``{raw label: int}`` (e.g. to share one numbering between cohorts).
        check_shapes: read every file's shape metadata at construction, to skip empty bags (with a
            warning) and raise on mixed feature dims before training starts. With False nothing is
            opened until ``__getitem__`` and those problems surface there.
        slide_col, label_col, case_col, split_col: CSV column names.
        time_col: follow-up time column: makes a survival dataset (see the module docstring).
        event_col: event column of a survival CSV (1 = observed, 0 = censored); when the CSV lacks it
            but has ``censorship``, events are ``1 - censorship``.
        label_cols: several 0/1 columns: makes a multi-label dataset (see the module docstring).
        class_names: the classes of a trained model (its checkpoint's ``class_names``): labels are mapped
            through them, so an external cohort holding only some classes keeps the model's numbering. A
            value the model does not know, or numbers against named classes (or the reverse), raise.

    Warns:
        UserWarning: CSV slides without a feature file, feature files without a CSV row, empty bags
            (all skipped, listing up to 10 ids and the count).

    Raises:
        ValueError / FeatureFileError: bad CSV, unreadable file (named), mixed feature dims, no bags.
    """

    def __init__(
        self,
        features_dir: str | os.PathLike,
        labels_csv: str | os.PathLike,
        patient_mode: Literal["separate", "concat"] = "separate",
        cache_in_memory: bool = False,
        nonfinite: Literal["error", "zero"] = "error",
        label_map: Mapping[str, int] | None = None,
        check_shapes: bool = True,
        slide_col: str = "slide_id",
        label_col: str = "label",
        case_col: str = "case_id",
        split_col: str = "split",
        time_col: str | None = None,
        event_col: str = "event",
        label_cols: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if class_names is not None and (label_map is not None or time_col is not None or label_cols is not None):
            raise ValueError("class_names (a trained model's classes) cannot be combined with label_map, time_col "
                             "or label_cols")
        if label_cols is not None:
            label_cols = [str(c).strip() for c in ([label_cols] if isinstance(label_cols, str) else label_cols)]
            if not label_cols or len(set(label_cols)) != len(label_cols):
                raise ValueError(f"label_cols must name one or more distinct 0/1 columns, got {label_cols}")
            if time_col is not None or label_map is not None:
                raise ValueError("label_cols (multi-label) cannot be combined with time_col or label_map")
        if patient_mode not in ("separate", "concat"):
            raise ValueError(f"patient_mode must be 'separate' or 'concat', got {patient_mode!r}")
        if nonfinite not in ("error", "zero"):
            raise ValueError(f"nonfinite must be 'error' or 'zero', got {nonfinite!r}")
        if time_col is not None and label_map is not None:
            raise ValueError("label_map numbers class labels; a survival CSV (time_col) has events, not classes")
        self.features_dir = Path(features_dir)
        self.labels_csv = Path(labels_csv)
        self.time_col = time_col
        self.patient_mode = patient_mode
        self.cache_in_memory = cache_in_memory
        self.nonfinite = nonfinite
        self._cache: dict[str, tuple[Tensor, Tensor | None]] = {}
        self._dim: int | None = None
        self._shapes: dict[str, tuple[int, int]] = {}

        from .file_checks import require_folder

        require_folder(self.features_dir, "feature folder")
        self.features_dir = trident_features_dir(self.features_dir)
        self._multilabel_rows: dict[str, tuple[int, ...]] = {}
        slide_ids, raw_labels, cases, splits_col, times = self._read_csv(
            slide_col, label_col, case_col, split_col, time_col, event_col, label_cols
        )
        if time_col is None:
            labels, self._class_names = _parse_labels(raw_labels, label_map, self.labels_csv, slide_ids, class_names)
        else:  # survival: the labels are the event indicators (0 censored, 1 event)
            labels, self._class_names = [int(r) for r in raw_labels], ["censored", "event"]

        files = self._scan_folder()
        matched: dict[str, Path] = {}
        missing: list[str] = []
        for sid in slide_ids:
            path = files.get(sid)
            if path is None:
                stem, ext = os.path.splitext(sid)
                if ext.lower() in WSI_EXTENSIONS:
                    path = files.get(stem)
            if path is None:
                missing.append(sid)
            else:
                matched[sid] = path
        used_stems = {p.stem for p in matched.values()}
        extra = sorted(s for s in files if s not in used_stems)
        if missing:
            warnings.warn(
                f"{self.labels_csv}: slides without a feature file in {self.features_dir} (skipped) "
                f"{_fmt_ids(missing)}",
                UserWarning,
                stacklevel=2,
            )
        if extra:
            warnings.warn(
                f"{self.features_dir}: feature files without a row in {self.labels_csv} (ignored) "
                f"{_fmt_ids(extra)}",
                UserWarning,
                stacklevel=2,
            )

        keep = [i for i, s in enumerate(slide_ids) if s in matched]
        if check_shapes:
            empty: list[str] = []
            dims: dict[int, list[str]] = defaultdict(list)
            for i in keep:
                n, d = feature_file_shape(matched[slide_ids[i]])
                self._shapes[slide_ids[i]] = (n, d)
                if n == 0:
                    empty.append(slide_ids[i])
                else:
                    dims[d].append(slide_ids[i])
            if empty:
                warnings.warn(
                    f"{self.features_dir}: slides with 0 patches (skipped) {_fmt_ids(empty)}",
                    UserWarning,
                    stacklevel=2,
                )
                empty_set = set(empty)
                keep = [i for i in keep if slide_ids[i] not in empty_set]
            if len(dims) > 1:
                detail = "; ".join(f"dim {d}: {_fmt_ids(ids, 5)}" for d, ids in sorted(dims.items()))
                raise ValueError(
                    f"{self.features_dir}: slides have different feature dims ({detail}); all slides must "
                    "come from one feature extractor: re-extract or remove the odd ones"
                )
            if dims:
                self._dim = next(iter(dims))

        entries: list[_Entry] = []
        if patient_mode == "separate":
            for i in keep:
                sid = slide_ids[i]
                entries.append(
                    _Entry(sid, [sid], [matched[sid]], labels[i], cases[i] or sid, splits_col[i] or None)
                )
        else:
            if not any(cases):
                raise ValueError(
                    f"patient_mode='concat' needs a {case_col!r} column in {self.labels_csv}; add it or use "
                    "patient_mode='separate'"
                )
            by_case: dict[str, list[int]] = {}
            for i in keep:
                case = cases[i] or slide_ids[i]
                by_case.setdefault(case, []).append(i)
            conflicts: list[str] = []
            for case, idx in by_case.items():
                labs = {(labels[i], times[i]) for i in idx}
                spl = {splits_col[i] for i in idx}
                if len(labs) > 1 or len(spl) > 1:
                    conflicts.append(case)
                    continue
                entries.append(
                    _Entry(
                        case,
                        [slide_ids[i] for i in idx],
                        [matched[slide_ids[i]] for i in idx],
                        labels[idx[0]],
                        case,
                        splits_col[idx[0]] or None,
                    )
                )
            if conflicts:
                raise InputError(
                    f"{{patient_mode}}: cases whose slides have different labels, survival times or splits "
                    f"{_fmt_ids(conflicts)}; fix {self.labels_csv} or use {{patient_mode__other}}",
                    patient_mode="concat", patient_mode__other="separate",
                )
        if not entries:
            raise ValueError(
                f"no usable bags: none of the {len(slide_ids)} slides in {self.labels_csv} has a non-empty "
                f"feature file in {self.features_dir}"
            )
        self._entries = entries
        if label_cols is not None:
            self._multilabel = {e.bag_id: self._multilabel_rows[e.slide_ids[0]] for e in entries}
            self._label_names = tuple(label_cols)
        if time_col is not None:
            time_of = dict(zip(slide_ids, times))
            self._survival = {
                e.bag_id: (float(time_of[e.slide_ids[0]]), int(e.label)) for e in entries  # type: ignore[arg-type]
            }

    # --- construction helpers ------------------------------------------------------------------
    def _read_csv(
        self,
        slide_col: str,
        label_col: str,
        case_col: str,
        split_col: str,
        time_col: str | None = None,
        event_col: str = "event",
        label_cols: Sequence[str] | None = None,
    ) -> tuple[list[str], list[str], list[str], list[str], list[float | None]]:
        """Slide ids, raw labels (event indicators ``'0'/'1'`` for survival, label combinations for
        multi-label), cases, splits and the survival times (``None`` each without ``time_col``)."""
        try:
            import pandas as pd
        except ImportError as e:  # pragma: no cover
            raise ImportError("reading the labels CSV needs pandas: pip install 'medmoe[mil]'") from e
        from .file_checks import require_file

        require_file(self.labels_csv, "labels CSV")
        try:
            df = pd.read_csv(self.labels_csv, dtype=str, keep_default_na=False)
        except pd.errors.EmptyDataError:
            raise ValueError(f"labels CSV {self.labels_csv} is empty; it needs a header (slide_id,label) and one "
                             "row per slide") from None
        except Exception as e:
            raise ValueError(f"cannot read labels CSV {self.labels_csv}: {e}") from e
        df.columns = [str(c).strip() for c in df.columns]
        if time_col is not None:
            if event_col not in df.columns and "censorship" in df.columns:
                label_col = "censorship"
            else:
                label_col = event_col
        if label_cols is not None:
            label_col = self._combine_label_columns(df, slide_col, list(label_cols))
        need = [c for c in (slide_col, label_col, time_col) if c is not None and c not in df.columns]
        if need:
            required = (slide_col, label_col) if time_col is None else (slide_col, time_col, event_col)
            alt = "" if time_col is None else " (or 'censorship' instead of the event column)"
            raise ValueError(
                f"labels CSV {self.labels_csv} lacks column(s) {need}; it has {list(df.columns)}. "
                f"Required: {', '.join(map(repr, required))}{alt}; optional: {case_col!r}, {split_col!r}"
            )
        if len(df) == 0:
            raise ValueError(f"labels CSV {self.labels_csv} has a header but no rows; add one row per slide")
        slide_ids = [s.strip() for s in df[slide_col].tolist()]
        raw = [s.strip() for s in df[label_col].tolist()]
        empty_id = [i for i, s in enumerate(slide_ids) if not s]
        if empty_id:
            raise ValueError(f"{self.labels_csv}: rows {empty_id[:10]} have an empty {slide_col!r}")
        no_label = [slide_ids[i] for i, r in enumerate(raw) if r == "" or r.lower() in ("nan", "na", "none")]
        if no_label:
            raise ValueError(
                f"{self.labels_csv}: slides without a label (column {label_col!r}) {_fmt_ids(no_label)}; fill them in "
                "or drop the rows"
            )
        seen: set[str] = set()
        dup = sorted({s for s in slide_ids if s in seen or seen.add(s)})  # type: ignore[func-returns-value]
        if dup:
            raise ValueError(f"{self.labels_csv}: duplicated {slide_col!r} values {_fmt_ids(dup)}")
        cases = [s.strip() for s in df[case_col].tolist()] if case_col in df.columns else [""] * len(df)
        splits = [s.strip() for s in df[split_col].tolist()] if split_col in df.columns else [""] * len(df)
        times: list[float | None] = [None] * len(df)
        if time_col is not None:
            times = self._parse_survival(slide_ids, [s.strip() for s in df[time_col].tolist()], raw, label_col)
            if label_col == "censorship":
                raw = ["0" if r == "1" else "1" for r in raw]
        return slide_ids, raw, cases, splits, times

    def _combine_label_columns(self, df: Any, slide_col: str, label_cols: list[str]) -> str:
        """Check the 0/1 ``label_cols``, keep each slide's targets in ``self._multilabel_rows`` and add a
        column with the label combination (``"a+b"``, ``"(none)"``); returns that column's name."""
        missing = [c for c in [slide_col, *label_cols] if c not in df.columns]
        if missing:
            raise ValueError(
                f"labels CSV {self.labels_csv} lacks column(s) {missing}; it has {list(df.columns)}. "
                f"A multi-label CSV needs {slide_col!r} and one 0/1 column per label"
            )
        values: dict[str, list[int]] = {}
        bad: list[str] = []
        for col in label_cols:
            parsed = []
            for sid, raw in zip(df[slide_col].tolist(), df[col].tolist()):
                try:
                    v = float(str(raw).strip())
                except ValueError:
                    v = float("nan")
                if v not in (0.0, 1.0):
                    bad.append(f"{str(sid).strip()}:{col}={raw!r}")
                parsed.append(int(v) if v in (0.0, 1.0) else 0)
            values[col] = parsed
        if bad:
            raise ValueError(f"{self.labels_csv}: multi-label columns must hold 0 or 1; bad cells {_fmt_ids(bad)}")
        combos = []
        for i, sid in enumerate(df[slide_col].tolist()):
            row = tuple(values[c][i] for c in label_cols)
            self._multilabel_rows[str(sid).strip()] = row
            combos.append("+".join(c for c, v in zip(label_cols, row) if v) or "(none)")
        name = "__label_combination__"
        df[name] = combos
        return name

    def _parse_survival(
        self, slide_ids: list[str], raw_times: list[str], raw_events: list[str], event_col: str
    ) -> list[float | None]:
        """Times as floats; checks times (finite, >= 0) and events (0/1), naming the bad slides.
        Normalises ``raw_events`` in place to ``'0'`` / ``'1'``."""
        times: list[float | None] = []
        bad_time: list[str] = []
        for sid, r in zip(slide_ids, raw_times):
            try:
                t = float(r)
            except ValueError:
                t = float("nan")
            if not (t >= 0 and t != float("inf")):
                bad_time.append(f"{sid}={r!r}")
            times.append(t)
        if bad_time:
            raise ValueError(
                f"{self.labels_csv}: survival times must be finite numbers >= 0; bad rows {_fmt_ids(bad_time)}"
            )
        bad_event: list[str] = []
        for i, (sid, r) in enumerate(zip(slide_ids, raw_events)):
            try:
                v = float(r)
            except ValueError:
                v = float("nan")
            if v not in (0.0, 1.0):
                bad_event.append(f"{sid}={r!r}")
            else:
                raw_events[i] = str(int(v))
        if bad_event:
            raise ValueError(
                f"{self.labels_csv}: column {event_col!r} must hold 0 or 1; bad rows {_fmt_ids(bad_event)}"
            )
        return times

    def _scan_folder(self) -> dict[str, Path]:
        return feature_files(self.features_dir)

    # --- dataset protocol ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def _select(self, indices: list[int]) -> None:
        self._entries = [self._entries[i] for i in indices]

    def _read(self, entry: _Entry) -> tuple[Tensor, Tensor | None]:
        cached = self._cache.get(entry.bag_id)
        if cached is not None:
            return cached
        feats: list[Tensor] = []
        coords: list[Tensor | None] = []
        for sid, path in zip(entry.slide_ids, entry.paths):
            f, c = read_feature_file(path)  # type: ignore[misc]
            if f.shape[0] == 0:
                raise ValueError(
                    f"slide {sid!r} ({path}) has 0 patches; construct the dataset with check_shapes=True to "
                    "skip empty slides"
                )
            if self._dim is None:
                self._dim = int(f.shape[1])
            elif f.shape[1] != self._dim:
                raise ValueError(
                    f"slide {sid!r} ({path}) has feature dim {f.shape[1]} but the dataset has {self._dim}; all "
                    "slides must come from one feature extractor"
                )
            # One reduction instead of an element-wise isfinite pass (far cheaper: docs/performance.md): a
            # NaN/inf anywhere makes the sum non-finite; only then (or on float overflow) look closer.
            bad = None if bool(torch.isfinite(f.sum())) else ~torch.isfinite(f)
            if bad is not None and bad.any():
                if self.nonfinite == "error":
                    raise InputError(
                        f"slide {sid!r} ({path}) has {int(bad.sum())} NaN/inf feature values in "
                        f"{int(bad.any(1).sum())} patch(es); re-extract it, drop it from the labels CSV, or "
                        "pass {nonfinite}", nonfinite="zero"
                    )
                warnings.warn(
                    f"slide {sid!r}: replaced {int(bad.sum())} NaN/inf feature values by 0",
                    UserWarning,
                    stacklevel=4,
                )
                f = torch.where(bad, torch.zeros((), dtype=f.dtype), f)
            feats.append(f)
            coords.append(c)
        x = feats[0] if len(feats) == 1 else torch.cat(feats, 0)
        crd: Tensor | None
        if all(c is not None for c in coords):
            crd = coords[0] if len(coords) == 1 else torch.cat(coords, 0)  # type: ignore[arg-type]
        else:
            crd = None
        if self.cache_in_memory:
            self._cache[entry.bag_id] = (x, crd)
        return x, crd

    def _get(self, index: int) -> Bag:
        entry = self._entries[index]
        x, crd = self._read(entry)
        return Bag(features=x, label=entry.label, bag_id=entry.bag_id, coords=crd, group=entry.group)

    # --- properties ----------------------------------------------------------------------------
    @property
    def labels(self) -> list[int]:
        return [e.label for e in self._entries]

    @property
    def bag_ids(self) -> list[str]:
        return [e.bag_id for e in self._entries]

    @property
    def groups(self) -> list[str]:
        return [e.group for e in self._entries]

    @property
    def num_classes(self) -> int:
        return len(self._class_names)

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    @property
    def feature_dim(self) -> int:
        """Feature dim ``d`` (read from the first file's metadata when not known yet)."""
        if self._dim is None:
            self._dim = feature_file_shape(self._entries[0].paths[0])[1]
        return self._dim

    @property
    def split_values(self) -> list[str | None]:
        """The CSV's ``split`` value per bag (None when absent)."""
        return [e.split for e in self._entries]

    def predefined_split(self) -> Split | None:
        """The :class:`~medmoe.data.splits.Split` given by the CSV's ``split`` column (None without one)."""
        values = self.split_values
        if all(v is None for v in values):
            return None
        return split_from_column(values, bag_ids=self.bag_ids)

    def slide_ids(self, index: int) -> list[str]:
        """Slide ids making up bag ``index`` (one in ``'separate'`` mode)."""
        return list(self._entries[index].slide_ids)

    def slide_paths(self, index: int) -> list[Path]:
        """Feature files making up bag ``index``."""
        return list(self._entries[index].paths)

    @property
    def num_instances(self) -> list[int]:
        """Patches per bag, from the files' shape metadata (read on first use when
        ``check_shapes=False``; no feature data is loaded)."""
        for e in self._entries:
            for sid, path in zip(e.slide_ids, e.paths):
                if sid not in self._shapes:
                    self._shapes[sid] = feature_file_shape(path)
        return [sum(self._shapes[s][0] for s in e.slide_ids) for e in self._entries]


# ------------------------------------------------------------------------------------------------
# synthetic folders for tests and demos
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
