"""MONAI transform pipelines for 3-D segmentation, configurable per modality.

One :class:`SegTransformConfig` drives the training, validation, inference and resampling pipelines, so
they always agree on orientation, spacing and intensity normalisation:

* **orientation**: ``Orientationd(axcodes)`` (``"RAS"`` by default, for training *and* resampling;
  the reference used LPS in one script and RAS in the other). ``None`` keeps the file's orientation.
* **spacing**: ``Spacingd(pixdim)`` when ``spacing`` is given (bilinear for images, nearest for labels).
* **intensity** (by ``modality``; the CT window is never applied to other modalities):

  - ``"ct"``: ``ScaleIntensityRanged(ct_window -> [0, 1], clip)`` (default window -175..250 HU);
  - ``"mri"``: clip each channel to its ``percentiles`` then z-score it. With ``mri_stats="foreground"``
    (default, nnU-Net's rule) percentiles, mean and std are computed over the foreground (voxels non-zero
    in any channel) and the background is set to 0, so a crop with more background gets the same values
    for the same tissue (:mod:`medmoe.data.foreground_intensity`); ``mri_stats="dataset"`` uses one set of
    foreground statistics fitted on the training volumes (:func:`with_dataset_stats`, stored in
    ``intensity_stats`` and so in checkpoints), which also survives a change of tissue mix (a slab of mostly
    cortex) but assumes one scanner and protocol; ``mri_stats="volume"`` uses the whole volume, background
    included (medmoe before issue 27: wrong as soon as fields of view differ);
  - ``"other"`` (microscopy, ultrasound, ...): percentile scaling of each channel to ``[0, 1]``.

* **foreground crop** (``crop_foreground=True``, training and validation, not inference):
  ``CropForegroundd`` to the bounding box of the non-zero image voxels (after the intensity step), as the
  reference does.
* **training crops**: ``SpatialPadd`` to ``roi_size`` (a volume smaller than the ROI is zero-padded,
  the label padded with background), then ``RandCropByPosNegLabeld`` (``pos``:``neg`` ratio,
  ``num_samples`` crops per volume), then augmentation, by ``augmentation``:

  - ``"medmoe"``: flips (p 0.2 per axis), 90° rotations (p 0.1, when the two in-plane ROI sides are
    equal), intensity scale and shift (0.1, p 0.2), Gaussian noise (std 0.01, p 0.2);
  - ``"reference"`` (gmum/MambaHoME ``src/data_loader.py``): ``RandZoomd`` (1.3-1.5, area/nearest, p 0.3)
    *before* the crop, then 90° rotations (p 0.1, max_k 3), intensity shift (0.1, p 0.2),
    ``RandGaussianSmoothd`` (sigma 0.5-1.15, p 0.2), Gaussian noise (std 0.01, p 0.2); negative crop
    centres only on voxels with intensity > 0 (``image_threshold=0``);
  - ``"none"``: no augmentation (same as ``augment=False``).

Every builder returns a :class:`monai.transforms.Compose`. Data dicts have keys ``image`` (a path or a
list of channel paths) and ``label``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "AUGMENTATIONS",
    "MODALITIES",
    "MRI_STATS",
    "SegTransformConfig",
    "build_inference_transforms",
    "build_train_transforms",
    "build_val_transforms",
    "modality_from_names",
    "resample_dataset",
    "resample_volume",
    "with_dataset_stats",
]

MODALITIES = ("ct", "mri", "other")
MRI_STATS = ("foreground", "dataset", "volume")
AUGMENTATIONS = ("medmoe", "reference", "none")


@dataclass
class SegTransformConfig:
    """Preprocessing and augmentation settings.

    Attributes:
        modality: ``"ct"``, ``"mri"`` or ``"other"`` (see the module docstring).
        ct_window: ``(a_min, a_max)`` in HU mapped to ``[0, 1]`` for CT.
        percentiles: lower/upper percentiles for MRI clipping and ``other`` scaling.
        spacing: target voxel size ``(x, y, z)`` in the file's units, or ``None`` to keep it.
        orientation: axis codes (``"RAS"``) or ``None`` to keep the file's orientation.
        roi_size: training crop / sliding-window size ``(x, y, z)`` in voxels.
        pos, neg: foreground:background ratio of crop centres.
        num_samples: crops drawn per loaded volume.
        augment: random flips/rotations/intensity augmentation during training.
        mri_stats: ``"foreground"`` (each volume's statistics over its non-zero voxels, background -> 0;
            default), ``"dataset"`` (foreground statistics of the training set, ``intensity_stats``) or
            ``"volume"`` (statistics over the whole volume) for MRI.
        intensity_stats: ``[(low, high, mean, std)]`` per channel for ``mri_stats="dataset"``
            (:func:`with_dataset_stats` fills it).
        augmentation: ``"medmoe"`` (default), ``"reference"`` (Mamba-HoME's) or ``"none"``.
        crop_foreground: crop training and validation volumes to the non-zero image box (reference: True).
    """

    modality: str = "mri"
    ct_window: tuple[float, float] = (-175.0, 250.0)
    percentiles: tuple[float, float] = (0.5, 99.5)
    spacing: tuple[float, float, float] | None = None
    orientation: str | None = "RAS"
    roi_size: tuple[int, int, int] = (96, 96, 96)
    pos: float = 1.0
    neg: float = 1.0
    num_samples: int = 2
    augment: bool = True
    mri_stats: str = "foreground"
    intensity_stats: list[list[float]] | None = None
    augmentation: str = "medmoe"
    crop_foreground: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.modality = str(self.modality).lower()
        if self.modality in ("mr", "t1", "t2", "flair"):
            self.modality = "mri"
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        self.roi_size = tuple(int(r) for r in self.roi_size)  # type: ignore[assignment]
        if len(self.roi_size) != 3 or min(self.roi_size) < 1:
            raise ValueError(f"roi_size must be three positive ints, got {self.roi_size}")
        if self.spacing is not None:
            self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
            if len(self.spacing) != 3 or min(self.spacing) <= 0:
                raise ValueError(f"spacing must be three positive numbers, got {self.spacing}")
        lo, hi = self.ct_window
        if not lo < hi:
            raise ValueError(f"ct_window must be (low, high) with low < high, got {self.ct_window}")
        plo, phi = self.percentiles
        if not 0 <= plo < phi <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")
        if self.mri_stats not in MRI_STATS:
            raise ValueError(f"mri_stats must be one of {MRI_STATS}, got {self.mri_stats!r}")
        if self.intensity_stats is not None:
            self.intensity_stats = [[float(v) for v in ch] for ch in self.intensity_stats]
            if any(len(ch) != 4 for ch in self.intensity_stats):
                raise ValueError("intensity_stats needs (low, high, mean, std) per channel")
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {self.augmentation!r}")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.pos < 0 or self.neg < 0 or self.pos + self.neg == 0:
            raise ValueError(f"pos and neg must be >= 0 and not both 0, got {self.pos}, {self.neg}")


def modality_from_names(names: Mapping[int, str] | Sequence[str] | None, default: str = "mri") -> str:
    """Map ``dataset.json`` channel names to a modality: all CT -> ``"ct"``; any MR-like name (MR, MRI,
    T1, T2, FLAIR, ADC, DWI, PD) -> ``"mri"``; other names -> ``"other"``; nothing -> ``default``."""
    if not names:
        return default
    values = [str(v).lower() for v in (names.values() if isinstance(names, Mapping) else names)]
    if all(v in ("ct", "ct scan", "computed tomography") for v in values):
        return "ct"
    mr = ("mr", "t1", "t2", "flair", "adc", "dwi", "pd", "dce", "bold")
    if any(any(v.startswith(m) or m in v.split() for m in mr) for v in values):
        return "mri"
    return "other"


def _load_and_space(cfg: SegTransformConfig, keys: tuple[str, ...]) -> list[Any]:
    import torch
    from monai import transforms as T

    ops: list[Any] = [
        T.LoadImaged(keys=keys, image_only=True),
        T.EnsureChannelFirstd(keys=keys),
    ]
    if "label" in keys:
        ops.append(T.EnsureTyped(keys="label", dtype=torch.float32))
    if cfg.orientation:
        ops.append(T.Orientationd(keys=keys, axcodes=cfg.orientation, labels=None))
    if cfg.spacing is not None:
        modes = tuple("nearest" if k == "label" else "bilinear" for k in keys)
        ops.append(T.Spacingd(keys=keys, pixdim=cfg.spacing, mode=modes))
    return ops


def _intensity(cfg: SegTransformConfig) -> list[Any]:
    from monai import transforms as T

    lo, hi = cfg.percentiles
    if cfg.modality == "ct":
        a_min, a_max = cfg.ct_window
        return [T.ScaleIntensityRanged(keys="image", a_min=a_min, a_max=a_max, b_min=0.0, b_max=1.0, clip=True)]
    if cfg.modality == "mri" and cfg.mri_stats in ("foreground", "dataset"):
        from .foreground_intensity import ForegroundNormalized

        if cfg.mri_stats == "dataset" and cfg.intensity_stats is None:
            raise ValueError("mri_stats='dataset' needs intensity_stats fitted on the training volumes: "
                             "use with_dataset_stats(config, training cases)")
        stats = cfg.intensity_stats if cfg.mri_stats == "dataset" else None
        return [ForegroundNormalized(keys="image", percentiles=(lo, hi), stats=stats)]
    if cfg.modality == "mri":
        return [
            T.ScaleIntensityRangePercentilesd(
                keys="image", lower=lo, upper=hi, b_min=0.0, b_max=1.0, clip=True, channel_wise=True
            ),
            # z-score is invariant to the affine map above, so this is "clip to percentiles, z-score"
            T.NormalizeIntensityd(keys="image", nonzero=False, channel_wise=True),
        ]
    return [
        T.ScaleIntensityRangePercentilesd(
            keys="image", lower=lo, upper=hi, b_min=0.0, b_max=1.0, clip=True, channel_wise=True
        )
    ]


def _nonzero(x: Any) -> Any:
    """Foreground of ``CropForegroundd``: non-zero voxels (the reference's ``x > 0`` on CT-windowed [0, 1]
    images; also right for foreground-normalised MRI, whose tissue can be negative)."""
    return x != 0


def _crop_foreground(cfg: SegTransformConfig, keys: tuple[str, ...]) -> list[Any]:
    from monai import transforms as T

    if not cfg.crop_foreground:
        return []
    return [T.CropForegroundd(keys=keys, source_key="image", select_fn=_nonzero, allow_smaller=True)]


def with_dataset_stats(cfg: SegTransformConfig, cases: Sequence[Any]) -> SegTransformConfig:
    """``cfg`` with ``intensity_stats`` fitted on the foreground of ``cases`` (after orientation and spacing)
    when it asks for them (MRI, ``mri_stats="dataset"``, none yet); otherwise ``cfg`` unchanged."""
    import dataclasses

    from monai import transforms as T

    from .foreground_intensity import fit_foreground_stats

    if cfg.modality != "mri" or cfg.mri_stats != "dataset" or cfg.intensity_stats is not None:
        return cfg
    if not cases:
        raise ValueError("mri_stats='dataset' needs at least one training case to fit the statistics on")
    load = T.Compose(_load_and_space(cfg, ("image",)))
    images = [load({"image": c.as_dict()["image"] if hasattr(c, "as_dict") else c["image"]})["image"] for c in cases]
    stats = fit_foreground_stats([im.as_tensor() if hasattr(im, "as_tensor") else im for im in images],
                                 cfg.percentiles)
    return dataclasses.replace(cfg, intensity_stats=[list(s) for s in stats])


def build_train_transforms(cfg: SegTransformConfig) -> Any:
    """Load -> channel-first -> orientation -> spacing -> intensity -> [foreground crop] -> pad to ROI ->
    [reference: zoom] -> pos/neg crops -> augmentation. Each input dict yields ``cfg.num_samples`` crops of
    ``cfg.roi_size``."""
    from monai import transforms as T

    keys = ("image", "label")
    aug = cfg.augmentation if cfg.augment else "none"
    ops = _load_and_space(cfg, keys) + _intensity(cfg) + _crop_foreground(cfg, keys)
    ops.append(T.SpatialPadd(keys=keys, spatial_size=cfg.roi_size, mode="constant"))
    if aug == "reference":
        ops.append(T.RandZoomd(keys=keys, min_zoom=1.3, max_zoom=1.5, mode=("area", "nearest"), prob=0.3))
    ops.append(
        T.RandCropByPosNegLabeld(
            keys=keys, label_key="label", spatial_size=cfg.roi_size, pos=cfg.pos, neg=cfg.neg,
            num_samples=cfg.num_samples, allow_smaller=False,
            **({"image_key": "image", "image_threshold": 0.0} if aug == "reference" else {}),
        )
    )
    if aug == "medmoe":
        ops += [T.RandFlipd(keys=keys, prob=0.2, spatial_axis=axis) for axis in range(3)]
        if cfg.roi_size[0] == cfg.roi_size[1]:
            ops.append(T.RandRotate90d(keys=keys, prob=0.1, max_k=3, spatial_axes=(0, 1)))
        ops += [
            T.RandScaleIntensityd(keys="image", factors=0.1, prob=0.2),
            T.RandShiftIntensityd(keys="image", offsets=0.1, prob=0.2),
            T.RandGaussianNoised(keys="image", std=0.01, prob=0.2),
        ]
    elif aug == "reference":
        if cfg.roi_size[0] == cfg.roi_size[1]:  # the reference's 128^3 patches are cubes
            ops.append(T.RandRotate90d(keys=keys, prob=0.1, max_k=3))
        sigma = (0.5, 1.15)
        ops += [
            T.RandShiftIntensityd(keys="image", offsets=0.10, prob=0.20),
            T.RandGaussianSmoothd(keys="image", prob=0.2, sigma_x=sigma, sigma_y=sigma, sigma_z=sigma),
            T.RandGaussianNoised(keys="image", prob=0.2, mean=0.0, std=0.01),
        ]
    ops.append(T.EnsureTyped(keys=keys, track_meta=False))
    return T.Compose(ops)


def build_val_transforms(cfg: SegTransformConfig) -> Any:
    """Load -> channel-first -> orientation -> spacing -> intensity -> [foreground crop] (whole volumes, for
    sliding-window validation; labels kept as float label maps on the same grid)."""
    from monai import transforms as T

    keys = ("image", "label")
    return T.Compose(_load_and_space(cfg, keys) + _intensity(cfg) + _crop_foreground(cfg, keys))


def build_inference_transforms(cfg: SegTransformConfig) -> Any:
    """Image-only version of :func:`build_val_transforms`; invertible with :class:`monai.transforms.Invertd`
    (the image keeps its MetaTensor history) so predictions go back to the original voxel grid."""
    from monai import transforms as T

    return T.Compose(_load_and_space(cfg, ("image",)) + _intensity(cfg))


def resample_volume(
    source: str | Path,
    target: str | Path,
    spacing: Sequence[float],
    is_label: bool = False,
    orientation: str | None = "RAS",
) -> Path:
    """Resample one NIfTI file to ``spacing`` (bilinear for images, nearest for labels, label dtype
    kept) and write it to ``target`` (``.nii.gz``). Orientation ``RAS`` by default, like training."""
    import nibabel as nib
    import numpy as np
    from monai import transforms as T

    cfg = SegTransformConfig(spacing=tuple(spacing), orientation=orientation)  # validates the spacing
    key = "label" if is_label else "image"
    ops = _load_and_space(cfg, (key,))
    out = T.Compose(ops)({key: str(source)})[key]
    arr = out.detach().cpu().numpy()[0]
    affine = np.asarray(out.affine, dtype=np.float64)
    if is_label:
        src_dtype = nib.load(str(source)).get_data_dtype()
        arr = np.rint(arr).astype(src_dtype if np.issubdtype(src_dtype, np.integer) else np.int16)
    from .volumes import write_nifti

    return write_nifti(target, arr, affine)


def resample_dataset(
    spacing: Sequence[float],
    out: str | Path,
    *,
    source: str | Path | None = None,
    images: str | Path | None = None,
    labels: str | Path | None = None,
    orientation: str | None = "RAS",
    echo: Callable[[str], None] | None = None,
) -> list[Path]:
    """Resample a whole data set to ``spacing`` with :func:`resample_volume` (images bilinear, labels nearest).

    Give either ``source``, an MSD folder whose ``imagesTr/``, ``labelsTr/`` and ``imagesTs/`` go to the same
    sub-folders of ``out`` (its ``dataset.json`` is copied), or plain folders ``images`` and/or ``labels``,
    written to ``out/images`` and ``out/labels``.

    Args:
        spacing: target voxel size ``(x, y, z)``.
        out: output folder.
        source, images, labels: where the NIfTI files are (see above).
        orientation: axis codes of the output (``"RAS"``, like training); ``None`` keeps each file's.
        echo: called with one progress line per file (``[i/n] image case.nii.gz -> OUT/...``).

    Returns:
        The written files, in order.

    Raises:
        ValueError: both or neither of ``source`` and ``images``/``labels``; ``source`` without
            ``imagesTr/`` or ``imagesTs/``; no NIfTI file found.
    """
    from ..errors import SETTING, InputError
    from .volumes import nifti_files

    out = Path(out)
    if source is not None and (images or labels):
        raise ValueError("give source or images/labels, not both")
    if source is not None:
        source = Path(source)
        pairs = [(source / d, out / d, d == "labelsTr") for d in ("imagesTr", "labelsTr", "imagesTs")]
        if not (source / "imagesTr").is_dir() and not (source / "imagesTs").is_dir():
            raise InputError(f"{source} has no imagesTr/ or imagesTs/; use {{images}}/{{labels}} for plain folders",
                             images=SETTING, labels=SETTING)
    else:
        if images is None and labels is None:
            raise ValueError("give source or images and/or labels")
        pairs = [(Path(d), out / name, name == "labels") for d, name in ((images, "images"), (labels, "labels")) if d]
    jobs: list[tuple[Path, Path, bool]] = []
    for src_dir, dst_dir, is_label in pairs:
        if src_dir.is_dir():
            jobs += [(p, dst_dir / p.name, is_label) for p in nifti_files(src_dir).values()]
    if not jobs:
        raise ValueError("no NIfTI files found to resample")
    written = []
    for i, (src, dst, is_label) in enumerate(jobs, 1):
        written.append(resample_volume(src, dst, spacing, is_label=is_label, orientation=orientation))
        if echo is not None:
            echo(f"[{i}/{len(jobs)}] {'label' if is_label else 'image'} {src.name} -> {dst}")
    if source is not None and (source / "dataset.json").is_file():
        (out / "dataset.json").write_text((source / "dataset.json").read_text())
    return written
