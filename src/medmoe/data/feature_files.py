"""TRIDENT/CLAM feature files: read one (``.h5``/``.pt``), check its header first, write one, list a folder.

Layout (as written by TRIDENT or CLAM):

* one ``<slide_id>.h5`` per slide with a ``features`` dataset of shape ``(n, d)`` or ``(1, n, d)``
  and a ``coords`` dataset ``(n, 2)`` (level-0 pixel x/y; attributes such as ``patch_size_level0``),
* or one ``<slide_id>.pt`` per slide holding a tensor ``(n, d)`` / ``(1, n, d)`` or a dict with
  ``features`` (and optionally ``coords``).

One feature file per slide: a folder holding both ``slide.h5`` and ``slide.pt`` is refused (the two may
come from different encoders; neither is chosen silently). Before an ``.h5`` is read, the declared size of
its ``features`` is checked against what the file stores and against a quarter of the machine's memory
(raise that limit with the environment variable ``MEDMOE_MAX_FEATURE_GB``). A labels CSV's ``slide_id``
may carry the slide's file extension (``TCGA-XX.svs``); :func:`match_feature_files` matches it to the
feature file's stem.

* :func:`read_feature_file` — ``features (n, d)`` float32, ``coords (n, 2)`` and optionally the attributes.
* :func:`feature_file_shape` — ``(n, d)`` from the header only.
* :func:`write_trident_h5` — a TRIDENT-style ``.h5``, written atomically.
* :func:`feature_files`, :func:`trident_features_dir`, :func:`match_feature_files` — the files of a folder
  (or of a TRIDENT job directory) and which slide each belongs to.

``h5py`` is imported only when an ``.h5`` is read or written.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "FEATURE_SUFFIXES",
    "MAX_FEATURE_GB_ENV",
    "WSI_EXTENSIONS",
    "FeatureFileError",
    "feature_file_shape",
    "feature_files",
    "match_feature_files",
    "max_feature_bytes",
    "read_feature_file",
    "trident_features_dir",
    "write_trident_h5",
]

logger = logging.getLogger(__name__)

#: Suffixes of feature files (TRIDENT/CLAM ``.h5``, torch ``.pt``/``.pth``).
FEATURE_SUFFIXES = (".h5", ".pt", ".pth")
#: Extensions a labels CSV's ``slide_id`` may carry (whole-slide images, feature files); see
#: :func:`match_feature_files`.
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


# ------------------------------------------------------------------------------------------------
# folders
# ------------------------------------------------------------------------------------------------
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
        p
        for p in [*root.glob("features_*"), *root.glob("*/features_*")]
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


def match_feature_files(
    slide_ids: Sequence[str], files: Mapping[str, Path]
) -> tuple[dict[str, Path], list[str]]:
    """Each slide id's feature file: by the id itself, else by the id without a whole-slide-image (or
    feature file) extension (``TCGA-XX.svs`` -> ``TCGA-XX``).

    Args:
        slide_ids: slide ids (a labels CSV's ``slide_id`` column), in order.
        files: ``{stem: path}`` as returned by :func:`feature_files`.

    Returns:
        ``{slide id: path}`` of the matched slides, and the slide ids without a file (in order).
    """
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
    return matched, missing
