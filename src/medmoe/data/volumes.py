"""3-D volumes with labels: dataset discovery and validation for segmentation.

Three ways to describe a segmentation data set, all giving a list of :class:`VolumeCase`:

* an **MSD / nnU-Net folder** (:func:`discover_msd_folder`)::

      ROOT/imagesTr/<case>.nii.gz            MSD: one (possibly 4-D) file per case
      ROOT/imagesTr/<case>_0000.nii.gz       nnU-Net: one file per channel (_0000, _0001, ...)
      ROOT/labelsTr/<case>.nii.gz            integer label map
      ROOT/imagesTs/...                      optional, unlabelled test images
      ROOT/dataset.json                      optional: "training" list, "labels", "modality"/"channel_names"

* a **CSV** with columns ``image`` and ``label`` (optional ``case_id``; extra channels in ``image_1``,
  ``image_2``, ...), paths relative to the CSV's folder;
* a **JSON** list of ``{"image": ..., "label": ...}`` objects (``image`` may be a list of channel files),
  or a dict with a ``"training"`` list (the MSD ``dataset.json`` form).

:func:`load_volume_cases` picks the right reader from the path. :func:`validate_case` reads only the
NIfTI headers (plus the label voxels when ``num_classes`` is given) and raises :class:`VolumeError`, a
``ValueError``, with a message naming the file and the fix when image and label shapes or affines
differ, when channel files disagree, or when label values fall outside ``[0, num_classes)``; with
``check_values`` it also reads the image voxels and refuses NaN/inf values (file name and count) and
truncated files. A volume smaller than the training ROI is **not** an error: the transforms pad it
(``SpatialPadd``, zeros for the image after normalisation and background for the label);
:func:`validate_case` reports it in ``CaseReport.padded_axes`` and :func:`validate_cases` logs a warning
naming the cases.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "NIFTI_SUFFIXES",
    "CaseReport",
    "SegDatasetInfo",
    "VolumeCase",
    "VolumeError",
    "check_finite_volume",
    "count_label_classes",
    "crop_case",
    "discover_msd_folder",
    "inference_cases",
    "load_volume_cases",
    "make_synthetic_volumes",
    "nifti_files",
    "read_pair_list",
    "validate_case",
    "validate_cases",
    "write_nifti",
]

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


class VolumeError(ValueError):
    """A segmentation case is unreadable or inconsistent (shapes, affines, label values, layout)."""


@dataclass(frozen=True)
class VolumeCase:
    """One case: image channel files (1 or more) and an optional label map.

    Attributes:
        case_id: name of the case (file name without ``.nii.gz`` and channel suffix).
        images: one path per channel file (an MSD 4-D image is one file holding every channel).
        label: integer label map with the image's spatial shape and affine, or ``None`` (inference).
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        """MONAI dictionary form: ``{"image": [paths], "label": path, "case_id": str}``."""
        d: dict[str, Any] = {"image": [str(p) for p in self.images], "case_id": self.case_id}
        if self.label is not None:
            d["label"] = str(self.label)
        return d


@dataclass
class SegDatasetInfo:
    """What a data set folder or list says about itself.

    Attributes:
        cases: labelled cases (training pool).
        test_cases: unlabelled cases (``imagesTs``), may be empty.
        label_names: ``{value: name}`` from ``dataset.json`` (empty when unknown).
        modality: ``{channel index: name}`` (``"CT"``, ``"T1"``, ...) from ``dataset.json``.
        source: the folder or list file read.
    """

    cases: list[VolumeCase]
    test_cases: list[VolumeCase] = field(default_factory=list)
    label_names: dict[int, str] = field(default_factory=dict)
    modality: dict[int, str] = field(default_factory=dict)
    source: Path | None = None

    @property
    def num_classes(self) -> int | None:
        """``max label value + 1`` from ``dataset.json``'s labels, ``None`` if not declared."""
        return max(self.label_names) + 1 if self.label_names else None

    @property
    def in_channels(self) -> int | None:
        return len(self.modality) if self.modality else None


@dataclass(frozen=True)
class CaseReport:
    """Result of :func:`validate_case` for one case (all sizes in voxels)."""

    case_id: str
    shape: tuple[int, int, int]
    channels: int
    spacing: tuple[float, float, float]
    label_values: tuple[int, ...] = ()
    padded_axes: tuple[int, ...] = ()


def _strip_nifti(name: str) -> str | None:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def nifti_files(folder: str | Path) -> dict[str, Path]:
    """``{case stem: path}`` of the ``.nii``/``.nii.gz`` files directly in ``folder``, sorted by name (hidden
    files and macOS ``._`` companions skipped)."""
    folder = Path(folder)
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        stem = _strip_nifti(p.name)
        if stem is not None and not p.name.startswith((".", "._")) and p.is_file():
            out[stem] = p
    return out


def _group_images(images: dict[str, Path], label_stems: set[str]) -> dict[str, tuple[Path, ...]]:
    """Group image files into cases: ``case_0000``-style channel files (nnU-Net) or one file per case."""
    cases: dict[str, list[tuple[int, Path]]] = {}
    for stem, path in images.items():
        m = _CHANNEL_RE.match(stem)
        if stem in label_stems or m is None:
            cases.setdefault(stem, []).append((0, path))
        else:
            cases.setdefault(m.group("case"), []).append((int(m.group("channel")), path))
    out = {}
    for case, items in cases.items():
        items.sort()
        channels = [c for c, _ in items]
        if len(items) > 1 and channels != list(range(len(items))):
            raise VolumeError(
                f"case {case!r}: channel files {[p.name for _, p in items]} are not numbered _0000, _0001, ... "
                "without gaps"
            )
        out[case] = tuple(p for _, p in items)
    return out


def _resolve(base: Path, value: str | Path) -> Path:
    p = Path(value).expanduser()
    if not p.is_absolute():
        # MSD dataset.json uses "./imagesTr/x.nii.gz"
        p = base / p
    return p


def discover_msd_folder(root: str | Path) -> SegDatasetInfo:
    """Read an MSD or nnU-Net raw data folder (``imagesTr``, ``labelsTr``, optional ``imagesTs`` and
    ``dataset.json``). Every image must have a label with the same case name and vice versa.

    Raises:
        VolumeError: missing folders, images without labels (or the reverse), listed files missing.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise VolumeError(f"data folder {str(root)!r} does not exist")
    meta: dict[str, Any] = {}
    meta_path = root / "dataset.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise VolumeError(f"{meta_path} is not valid JSON: {e}") from e
    label_names = _label_names(meta.get("labels", {}))
    modality = {int(k): str(v) for k, v in (meta.get("modality") or meta.get("channel_names") or {}).items()}

    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise VolumeError(
            f"{str(root)!r} is not an MSD/nnU-Net folder: it needs imagesTr/ and labelsTr/ "
            f"(found: {sorted(p.name for p in root.iterdir())}). A CSV or JSON list of image/label pairs "
            "works too"
        )
    # MSD dataset.json lists the training pairs explicitly; nnU-Net v2 does not (it has file_ending).
    training = meta.get("training")
    if isinstance(training, list) and training and isinstance(training[0], dict) and "image" in training[0]:
        cases = _cases_from_records(training, root, str(meta_path))
    else:
        labels = nifti_files(labels_dir)
        grouped = _group_images(nifti_files(images_dir), set(labels))
        missing_labels = sorted(set(grouped) - set(labels))
        missing_images = sorted(set(labels) - set(grouped))
        if missing_labels or missing_images:
            raise VolumeError(
                f"{root}: images without a label: {missing_labels[:5]}; labels without an image: "
                f"{missing_images[:5]}. Each imagesTr/<case>[_0000].nii.gz needs labelsTr/<case>.nii.gz"
            )
        cases = [VolumeCase(c, grouped[c], labels[c]) for c in sorted(grouped)]
    if not cases:
        raise VolumeError(f"no NIfTI cases found in {images_dir}")
    test_cases: list[VolumeCase] = []
    if (root / "imagesTs").is_dir():
        grouped = _group_images(nifti_files(root / "imagesTs"), set())
        test_cases = [VolumeCase(c, grouped[c], None) for c in sorted(grouped)]
    return SegDatasetInfo(cases, test_cases, label_names, modality, root)


def _label_names(labels: dict[str, Any]) -> dict[int, str]:
    """MSD: ``{"0": "background", ...}``; nnU-Net v2: ``{"background": 0, ...}`` (regions ignored)."""
    out: dict[int, str] = {}
    for k, v in labels.items():
        if str(k).lstrip("-").isdigit():
            out[int(k)] = str(v)
        elif isinstance(v, int):
            out[v] = str(k)
    return out


def _cases_from_records(records: Sequence[Any], base: Path, source: str) -> list[VolumeCase]:
    cases = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or "image" not in rec:
            raise VolumeError(f"{source}: entry {i} must be an object with 'image' (and 'label'), got {rec!r}")
        raw = rec["image"] if isinstance(rec["image"], list) else [rec["image"]]
        images = tuple(_resolve(base, p) for p in raw)
        label = _resolve(base, rec["label"]) if rec.get("label") else None
        case_id = str(rec.get("case_id") or _strip_nifti(images[0].name) or images[0].stem)
        for p in (*images, *([label] if label else [])):
            if not p.is_file():
                raise VolumeError(f"{source}: entry {i} ({case_id}) lists {p}, which does not exist")
        cases.append(VolumeCase(case_id, images, label))
    ids = [c.case_id for c in cases]
    dupes = sorted({x for x in ids if ids.count(x) > 1})
    if dupes:
        raise VolumeError(f"{source}: duplicate case ids {dupes[:5]}; add a unique 'case_id' column/field")
    return cases


def read_pair_list(path: str | Path) -> SegDatasetInfo:
    """Read a CSV (columns ``image``, ``label``, optional ``case_id``, ``image_1``...) or JSON list of
    image/label pairs. Relative paths are relative to the list file's folder."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise VolumeError(f"pair list {str(path)!r} does not exist")
    base = path.parent
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            if "image" not in cols:
                raise VolumeError(f"{path}: the CSV needs an 'image' column (and 'label'); found columns {cols}")
            extra = sorted((c for c in cols if re.fullmatch(r"image_\d+", c)), key=lambda c: int(c[6:]))
            records = []
            for row in reader:
                images = [row["image"], *[row[c] for c in extra if row.get(c)]]
                records.append({"image": images, "label": row.get("label") or None, "case_id": row.get("case_id")})
        return SegDatasetInfo(_cases_from_records(records, base, str(path)), source=path)
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise VolumeError(f"{path} is not valid JSON: {e}") from e
        if isinstance(data, dict):
            records = data.get("training")
            if records is None:
                raise VolumeError(f"{path}: expected a list of pairs or an object with a 'training' list")
            label_names = _label_names(data.get("labels", {}))
        else:
            records, label_names = data, {}
        return SegDatasetInfo(_cases_from_records(records, base, str(path)), label_names=label_names, source=path)
    raise VolumeError(f"{path}: pair lists must be .csv or .json")


def load_volume_cases(source: str | Path) -> SegDatasetInfo:
    """Dispatch: a folder -> :func:`discover_msd_folder`, a ``.csv``/``.json`` -> :func:`read_pair_list`."""
    source = Path(source).expanduser()
    if not source.exists():
        raise VolumeError(f"data path {str(source)!r} does not exist")
    if source.is_dir():
        return discover_msd_folder(source)
    if source.suffix.lower() in (".csv", ".json"):
        return read_pair_list(source)
    raise VolumeError(
        f"{str(source)!r} is neither a data folder (imagesTr/labelsTr) nor a .csv/.json list of pairs"
    )


def inference_cases(source: str | Path) -> list[VolumeCase | Path]:
    """The cases to segment in ``source``: an MSD folder (its ``imagesTs``, else ``imagesTr``), a folder of
    NIfTI files (nnU-Net ``_0000`` channel files grouped into one case), a single NIfTI file, or a ``.csv`` /
    ``.json`` list of pairs (the labels are not needed).

    Returns:
        The cases (labels unset for folders); a single file comes back as its path, which
        :func:`medmoe.engine.seg.inference.predict_volumes` reads as a one-channel case.

    Raises:
        ValueError: ``source`` does not exist, or the folder holds no ``.nii``/``.nii.gz`` image.
    """
    source = Path(source)
    if source.is_file() and source.suffix.lower() in (".csv", ".json"):
        return list(load_volume_cases(source).cases)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise ValueError(f"{source} does not exist")
    for sub in ("imagesTs", "imagesTr"):
        if (source / sub).is_dir():
            source = source / sub
            break
    grouped = _group_images(nifti_files(source), set())
    if not grouped:
        raise ValueError(f"no .nii/.nii.gz images in {source}")
    return [VolumeCase(c, grouped[c]) for c in sorted(grouped)]


def count_label_classes(cases: Sequence[VolumeCase]) -> int:
    """The number of classes the label maps of ``cases`` imply: their largest label value + 1 (background 0
    included); reads every label file."""
    import nibabel as nib

    return max(int(np.asarray(nib.load(str(c.label)).dataobj).max()) for c in cases) + 1


def _header(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises several types for broken files
        raise VolumeError(f"cannot read {path} as NIfTI: {e}") from e
    return tuple(int(s) for s in img.shape), np.asarray(img.affine, dtype=np.float64)


def check_finite_volume(path: str | Path) -> None:
    """Read the voxels of ``path`` and raise :class:`VolumeError` naming the file when they cannot be read
    (a truncated ``.nii.gz``) or hold NaN/inf values (with their count)."""
    import nibabel as nib

    path = Path(path)
    try:
        data = np.asarray(nib.load(str(path)).dataobj)
    except Exception as e:  # nibabel, gzip and zlib raise several types for a cut-off file
        raise VolumeError(f"cannot read the voxels of {path} (truncated or corrupt file?): {e}") from e
    if not np.issubdtype(data.dtype, np.floating):
        return  # integer voxels cannot be NaN
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise VolumeError(
            f"{path} holds {bad} non-finite voxel value(s) (NaN/inf) of {data.size}; training on it gives a NaN "
            "model: replace them (e.g. by 0 or the background intensity) before training or inference"
        )


def validate_case(
    case: VolumeCase,
    num_classes: int | None = None,
    roi_size: Sequence[int] | None = None,
    affine_atol: float = 1e-3,
    check_values: bool = False,
) -> CaseReport:
    """Check one case and describe it.

    Checks: every file is readable NIfTI; channel files share one 3-D grid; the label has the image's
    spatial shape and affine (within ``affine_atol``, in mm); with ``num_classes``, every label value is
    an integer in ``[0, num_classes)``; with ``check_values``, every image voxel is finite and readable
    (:func:`check_finite_volume`). Volumes smaller than ``roi_size`` are reported in ``padded_axes`` (they
    are padded by the transforms, not rejected).

    Raises:
        VolumeError: with the case id, both shapes/affines or the offending label values, and the fix.
    """
    shapes, affines = [], []
    for p in case.images:
        s, a = _header(p)
        if len(s) not in (3, 4):
            raise VolumeError(f"case {case.case_id}: {p.name} has shape {s}; expected a 3-D (or 4-D) volume")
        shapes.append(s)
        affines.append(a)
    spatial = shapes[0][:3]
    for p, s, a in zip(case.images[1:], shapes[1:], affines[1:]):
        if s[:3] != spatial or not np.allclose(a, affines[0], atol=affine_atol):
            raise VolumeError(
                f"case {case.case_id}: channel file {p.name} (shape {s}) is not on the grid of "
                f"{case.images[0].name} (shape {shapes[0]}); resample every channel to one grid"
            )
    channels = sum(s[3] if len(s) == 4 else 1 for s in shapes)
    if check_values:
        for p in case.images:
            check_finite_volume(p)
    values: tuple[int, ...] = ()
    if case.label is not None:
        ls, la = _header(case.label)
        ls3 = ls[:3] if len(ls) == 4 and ls[3] == 1 else ls
        if tuple(ls3) != spatial:
            raise VolumeError(
                f"case {case.case_id}: label {case.label.name} has shape {ls} but image "
                f"{case.images[0].name} has spatial shape {spatial}; they must be on the same voxel grid "
                "(resample the label with nearest-neighbour interpolation, e.g. `medmoe seg resample`)"
            )
        if not np.allclose(la, affines[0], atol=affine_atol):
            diff = float(np.abs(la - affines[0]).max())
            raise VolumeError(
                f"case {case.case_id}: label and image affines differ by up to {diff:.4g} mm "
                f"(tolerance {affine_atol}).\nimage affine:\n{np.round(affines[0], 4)}\nlabel affine:\n"
                f"{np.round(la, 4)}\nThe label is not aligned with the image; fix its header or resample it"
            )
        if num_classes is not None:
            import nibabel as nib

            try:
                data = np.asarray(nib.load(str(case.label)).dataobj)
            except Exception as e:  # a truncated .nii.gz fails only when the voxels are read
                raise VolumeError(f"cannot read the voxels of {case.label} (truncated or corrupt file?): {e}") from e
            uniq = np.unique(data)
            if not np.all(np.isfinite(uniq)) or not np.all(uniq == np.round(uniq)):
                raise VolumeError(f"case {case.case_id}: label {case.label.name} holds non-integer values")
            bad = uniq[(uniq < 0) | (uniq >= num_classes)]
            if bad.size:
                advice = []
                if (bad < 0).any():  # no num_classes fixes a negative value
                    advice.append("negative values are not classes: remap them (e.g. an ignore label -1 to 0, "
                                  "background)")
                if (bad >= num_classes).any():
                    advice.append(f"set --num-classes to max label + 1 ({int(uniq.max()) + 1}) or remap the labels")
                raise VolumeError(
                    f"case {case.case_id}: label {case.label.name} has values {bad[:10].astype(int).tolist()} "
                    f"outside [0, {num_classes}) (num_classes={num_classes}); " + "; ".join(advice)
                )
            values = tuple(int(v) for v in uniq)
    zooms = np.sqrt((affines[0][:3, :3] ** 2).sum(axis=0))
    padded: tuple[int, ...] = ()
    if roi_size is not None:
        padded = tuple(i for i, (s, r) in enumerate(zip(spatial, roi_size)) if s < int(r))
    return CaseReport(case.case_id, tuple(spatial), channels, tuple(float(z) for z in zooms), values, padded)  # type: ignore[arg-type]


def validate_cases(
    cases: Sequence[VolumeCase],
    num_classes: int | None = None,
    roi_size: Sequence[int] | None = None,
    in_channels: int | None = None,
    check_values: bool = False,
) -> list[CaseReport]:
    """:func:`validate_case` for every case, plus: all cases have the same channel count (and it equals
    ``in_channels`` when given). Volumes smaller than the ROI are reported with a warning naming them (they
    will be padded)."""
    reports = [validate_case(c, num_classes, roi_size, check_values=check_values) for c in cases]
    channels = {r.channels for r in reports}
    if len(channels) > 1:
        raise VolumeError(f"cases have different channel counts {sorted(channels)}; every case needs the same")
    if in_channels is not None and reports and reports[0].channels != in_channels:
        raise VolumeError(
            f"the images have {reports[0].channels} channel(s) but the model expects in_channels={in_channels}"
        )
    small = [r for r in reports if r.padded_axes]
    if small:
        named = ", ".join(f"{r.case_id} {r.shape}" for r in small[:5]) + (" ..." if len(small) > 5 else "")
        logger.warning(
            "%d case(s) are smaller than the ROI %s along some axis and will be zero-padded to it: %s",
            len(small), tuple(int(r) for r in roi_size or ()), named,
        )
    return reports


def write_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write ``array`` (x, y, z[, c]) as NIfTI with ``affine`` (identity by default); integer arrays keep
    their dtype (labels as uint8/int16), others are stored as float32."""
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(array)
    if not np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.float32)
    img = nib.Nifti1Image(arr, np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    nib.save(img, str(path))
    return path


def crop_case(
    case: VolumeCase, box: Sequence[tuple[int, int]], out_root: str | Path, case_id: str | None = None
) -> VolumeCase:
    """Cut the voxel box ``[(x0, x1), (y0, y1), (z0, z1)]`` out of a case and write it as an MSD case under
    ``out_root`` (``imagesTr/<id>.nii.gz``, ``labelsTr/<id>.nii.gz``). The affine is shifted so the crop
    stays at its physical position (used to hold out a spatial region of a volume for testing)."""
    import nibabel as nib

    if len(box) != 3:
        raise ValueError(f"box needs three (start, stop) pairs, got {box!r}")
    out_root = Path(out_root)
    case_id = case_id or case.case_id
    slices = tuple(slice(int(a), int(b)) for a, b in box)

    def cut(path: Path, target: Path) -> Path:
        img = nib.load(str(path))
        arr = np.asarray(img.dataobj)[slices]
        if min(arr.shape[:3]) < 1:
            raise ValueError(f"box {box} is empty for {path.name} with shape {img.shape}")
        affine = np.array(img.affine, dtype=np.float64)
        affine[:3, 3] = affine[:3, :3] @ np.array([s.start or 0 for s in slices], dtype=np.float64) + affine[:3, 3]
        return write_nifti(target, arr, affine)

    images = tuple(
        cut(p, out_root / "imagesTr" / (f"{case_id}_{i:04d}.nii.gz" if len(case.images) > 1 else f"{case_id}.nii.gz"))
        for i, p in enumerate(case.images)
    )
    label = cut(case.label, out_root / "labelsTr" / f"{case_id}.nii.gz") if case.label is not None else None
    return VolumeCase(case_id, images, label)


def make_synthetic_volumes(
    root: str | Path,
    n_cases: int = 3,
    shape: Sequence[int] = (32, 32, 24),
    num_classes: int = 3,
    channels: int = 1,
    spacing: Sequence[float] = (1.0, 1.0, 1.5),
    seed: int = 0,
    nnunet_naming: bool = False,
    dataset_json: bool = True,
) -> SegDatasetInfo:
    """Write a small MSD folder of noisy boxes for tests and smoke runs and return it read back.

    Every case holds one axis-aligned box per foreground class (random position) in an image equal to
    ``label / (num_classes - 1)`` plus Gaussian noise (std 0.1), so a network can learn it in a few
    steps. ``nnunet_naming`` writes one ``<case>_000c.nii.gz`` file per channel instead of 4-D images.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    affine = np.diag([*[float(s) for s in spacing], 1.0])
    affine[:3, 3] = [-10.0, 4.0, 2.0]
    for i in range(n_cases):
        label = np.zeros(shape, dtype=np.uint8)
        for k in range(1, num_classes):
            size = [max(2, s // 3) for s in shape]
            start = [int(rng.integers(0, s - z + 1)) for s, z in zip(shape, size)]
            label[tuple(slice(a, a + z) for a, z in zip(start, size))] = k
        base = label.astype(np.float32) / max(1, num_classes - 1)
        chans = [base + rng.normal(0.0, 0.1, shape).astype(np.float32) * (c + 1) for c in range(channels)]
        name = f"case{i:03d}"
        if nnunet_naming:
            for c, arr in enumerate(chans):
                write_nifti(root / "imagesTr" / f"{name}_{c:04d}.nii.gz", arr, affine)
        else:
            arr = chans[0] if channels == 1 else np.stack(chans, axis=-1)
            write_nifti(root / "imagesTr" / f"{name}.nii.gz", arr, affine)
        write_nifti(root / "labelsTr" / f"{name}.nii.gz", label, affine)
    if dataset_json:
        meta = {
            "name": "synthetic boxes",
            "modality": {str(c): "MRI" for c in range(channels)},
            "labels": {str(k): ("background" if k == 0 else f"box{k}") for k in range(num_classes)},
        }
        (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return discover_msd_folder(root)
