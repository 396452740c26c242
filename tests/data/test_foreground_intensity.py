"""MRI normalisation over the foreground: the same tissue keeps its value when the field of view changes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from medmoe.data.foreground_intensity import foreground_mask, foreground_normalize
from medmoe.data.seg_transforms import SegTransformConfig, build_val_transforms


def _head(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 48^3 'head': zero background, a ball of 'white matter' (~100) inside a shell of 'grey matter' (~60),
    with noise. Returns (image (x, y, z), label: 0 background, 1 GM, 2 WM)."""
    g = np.stack(np.meshgrid(*[np.arange(48)] * 3, indexing="ij"), 0).astype(np.float32)
    r = np.sqrt(((g - 23.5) ** 2).sum(0))
    label = np.zeros((48, 48, 48), np.int16)
    label[r < 20] = 1
    label[r < 13] = 2
    image = np.where(label == 2, 100.0, np.where(label == 1, 60.0, 0.0)).astype(np.float32)
    image += (label > 0) * rng.normal(0, 3, image.shape).astype(np.float32)
    return image, label


def _embed(image: np.ndarray, label: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The same head in a much larger field of view (zero background around it)."""
    big_i = np.zeros((size, size, size), np.float32)
    big_l = np.zeros((size, size, size), np.int16)
    big_i[:48, :48, :48] = image
    big_l[:48, :48, :48] = label
    return big_i, big_l


def test_same_tissue_same_value_when_background_grows() -> None:
    image, label = _head(np.random.default_rng(0))
    big_i, big_l = _embed(image, label, 128)  # ~95 % background
    assert (big_l == 0).mean() > 0.9
    small = foreground_normalize(torch.from_numpy(image)[None]).numpy()[0]
    large = foreground_normalize(torch.from_numpy(big_i)[None]).numpy()[0]
    np.testing.assert_allclose(large[:48, :48, :48], small, atol=1e-5)
    for cls in (1, 2):
        assert abs(small[label == cls].mean() - large[big_l == cls].mean()) < 1e-5
    # grey matter below the foreground mean, white matter above it, background exactly 0
    assert small[label == 1].mean() < 0 < small[label == 2].mean()
    assert np.all(large[big_l == 0] == 0)


def test_whole_volume_stats_move_with_background() -> None:
    """The old rule ('volume') is kept as an option; it shows the bug the default avoids."""
    image, label = _head(np.random.default_rng(0))
    big_i, big_l = _embed(image, label, 128)

    def z(arr: np.ndarray) -> np.ndarray:
        return (arr - arr.mean()) / arr.std()

    assert abs(z(image)[label == 1].mean() - z(big_i)[big_l == 1].mean()) > 1.0


@pytest.mark.parametrize("stats", ["foreground", "volume"])
def test_pipeline_on_nifti_crop_vs_volume(tmp_path, stats: str) -> None:  # type: ignore[no-untyped-def]
    """Through the MONAI pipeline: a volume and a crop of a larger canvas, both written as NIfTI."""
    image, label = _head(np.random.default_rng(1))
    big_i, big_l = _embed(image, label, 112)
    paths = {}
    for name, (img, lab) in {"small": (image, label), "large": (big_i, big_l)}.items():
        paths[name] = (tmp_path / f"{name}.nii.gz", tmp_path / f"{name}_seg.nii.gz")
        nib.save(nib.Nifti1Image(img, np.eye(4)), str(paths[name][0]))
        nib.save(nib.Nifti1Image(lab, np.eye(4)), str(paths[name][1]))
    cfg = SegTransformConfig(modality="mri", mri_stats=stats, orientation=None)
    tf = build_val_transforms(cfg)
    gm = {}
    for name, (ip, lp) in paths.items():
        d = tf({"image": str(ip), "label": str(lp)})
        img = np.asarray(d["image"])[0]
        lab = np.asarray(d["label"])[0]
        gm[name] = img[lab == 1].mean()
    if stats == "foreground":
        assert abs(gm["small"] - gm["large"]) < 1e-4
    else:
        assert abs(gm["small"] - gm["large"]) > 0.5


def test_mask_and_fallback() -> None:
    x = torch.zeros(2, 4, 4, 4)
    x[1, 0, 0, 0] = 5.0
    assert foreground_mask(x).sum() == 1  # non-zero in any channel
    out = foreground_normalize(torch.zeros(1, 3, 3, 3))  # no foreground: whole-volume stats, finite
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="spatial shape"):
        foreground_normalize(torch.ones(1, 3, 3, 3), mask=torch.ones(2, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="mri_stats"):
        SegTransformConfig(mri_stats="whole")


def test_dataset_stats_survive_a_change_of_tissue_mix(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A slab holding mostly one tissue: per-volume statistics move it, training-set statistics do not."""
    from medmoe.data.foreground_intensity import fit_foreground_stats
    from medmoe.data.seg_transforms import with_dataset_stats
    from medmoe.data.volumes import VolumeCase

    image, label = _head(np.random.default_rng(2))
    slab_i, slab_l = image[:, :, :10], label[:, :, :10]  # the top of the ball: mostly 'grey matter'
    assert (slab_l == 1).sum() > 3 * (slab_l == 2).sum()
    full_t = torch.from_numpy(image)[None]
    per_volume = foreground_normalize(torch.from_numpy(slab_i)[None]).numpy()[0]
    reference = foreground_normalize(full_t).numpy()[0][:, :, :10]
    assert abs(per_volume[slab_l == 1].mean() - reference[slab_l == 1].mean()) > 0.2
    stats = fit_foreground_stats([full_t])
    fixed = foreground_normalize(torch.from_numpy(slab_i)[None], stats=stats).numpy()[0]
    np.testing.assert_allclose(fixed, reference, atol=1e-5)

    ip, lp = tmp_path / "full.nii.gz", tmp_path / "full_seg.nii.gz"
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(ip))
    nib.save(nib.Nifti1Image(label, np.eye(4)), str(lp))
    cfg = with_dataset_stats(SegTransformConfig(mri_stats="dataset", orientation=None), [VolumeCase("full", [ip], lp)])
    np.testing.assert_allclose(np.asarray(cfg.intensity_stats), np.asarray(stats), rtol=1e-5)
    assert with_dataset_stats(SegTransformConfig(), []).intensity_stats is None  # per-volume: nothing to fit
    with pytest.raises(ValueError, match="with_dataset_stats"):
        build_val_transforms(SegTransformConfig(mri_stats="dataset", orientation=None))
