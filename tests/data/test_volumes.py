"""Segmentation data: MSD/nnU-Net discovery, pair lists, validation errors, per-modality transforms."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from medmoe.data.seg_transforms import (
    SegTransformConfig,
    build_inference_transforms,
    build_train_transforms,
    build_val_transforms,
    modality_from_names,
    resample_volume,
)
from medmoe.data.volumes import (
    VolumeCase,
    VolumeError,
    crop_case,
    discover_msd_folder,
    load_volume_cases,
    make_synthetic_volumes,
    read_pair_list,
    validate_case,
    validate_cases,
    write_nifti,
)

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


@pytest.fixture(scope="module")
def msd(tmp_path_factory):
    return make_synthetic_volumes(tmp_path_factory.mktemp("msd"), n_cases=2, shape=(20, 18, 12), channels=2)


def test_msd_folder_with_dataset_json(msd):
    assert [c.case_id for c in msd.cases] == ["case000", "case001"]
    assert msd.num_classes == 3 and msd.in_channels == 2 and msd.label_names[1] == "box1"
    reports = validate_cases(msd.cases, num_classes=3)
    assert reports[0].shape == (20, 18, 12) and reports[0].channels == 2
    assert reports[0].spacing == pytest.approx((1.0, 1.0, 1.5)) and reports[0].label_values == (0, 1, 2)


def test_nnunet_channel_files_and_imagests(tmp_path):
    info = make_synthetic_volumes(tmp_path, n_cases=2, shape=(8, 8, 8), channels=3, nnunet_naming=True,
                                  dataset_json=False)
    assert len(info.cases) == 2 and [p.name for p in info.cases[0].images] == [
        "case000_0000.nii.gz", "case000_0001.nii.gz", "case000_0002.nii.gz"]
    assert validate_case(info.cases[0], num_classes=3).channels == 3
    write_nifti(tmp_path / "imagesTs" / "new_0000.nii.gz", np.zeros((8, 8, 8), np.float32))
    assert [c.case_id for c in discover_msd_folder(tmp_path).test_cases] == ["new"]
    (tmp_path / "labelsTr" / "case001.nii.gz").unlink()
    with pytest.raises(VolumeError, match="images without a label: \\['case001'\\]"):
        discover_msd_folder(tmp_path)


def test_msd_training_list_in_dataset_json(tmp_path):
    info = make_synthetic_volumes(tmp_path, n_cases=2, shape=(8, 8, 8))
    meta = json.loads((tmp_path / "dataset.json").read_text())
    meta["training"] = [{"image": "./imagesTr/case001.nii.gz", "label": "./labelsTr/case001.nii.gz"}]
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    assert [c.case_id for c in discover_msd_folder(tmp_path).cases] == ["case001"]
    assert info.cases[0].label is not None


def test_csv_and_json_pair_lists(msd, tmp_path):
    rows = ["case_id,image,label"] + [f"{c.case_id},{c.images[0]},{c.label}" for c in msd.cases]
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    info = load_volume_cases(tmp_path / "pairs.csv")
    assert [c.case_id for c in info.cases] == ["case000", "case001"] and info.cases[1].label == msd.cases[1].label
    rel = [{"image": str(c.images[0].relative_to(msd.source)), "label": str(c.label.relative_to(msd.source))}
           for c in msd.cases]
    (msd.source / "pairs.json").write_text(json.dumps(rel))
    info = read_pair_list(msd.source / "pairs.json")
    assert info.cases[0].images[0] == msd.cases[0].images[0]
    (tmp_path / "bad.csv").write_text("img,seg\na,b\n")
    with pytest.raises(VolumeError, match="needs an 'image' column"):
        read_pair_list(tmp_path / "bad.csv")
    (tmp_path / "missing.json").write_text(json.dumps([{"image": "nope.nii.gz", "label": "nope2.nii.gz"}]))
    with pytest.raises(VolumeError, match="does not exist"):
        read_pair_list(tmp_path / "missing.json")
    with pytest.raises(VolumeError, match="neither a data folder"):
        (tmp_path / "pairs.txt").write_text("x")
        load_volume_cases(tmp_path / "pairs.txt")


def _pair(tmp_path, image_shape=(10, 10, 6), label_shape=(10, 10, 6), label_affine=AFFINE, values=(0, 1)):
    img = write_nifti(tmp_path / "img.nii.gz", np.random.rand(*image_shape).astype(np.float32), AFFINE)
    lab = np.zeros(label_shape, np.int16)
    lab.flat[: len(values)] = values
    lab_path = write_nifti(tmp_path / "lab.nii.gz", lab, label_affine)
    return VolumeCase("x", (img,), lab_path)


def test_shape_mismatch_is_a_clear_error(tmp_path):
    case = _pair(tmp_path, label_shape=(10, 9, 6))
    with pytest.raises(VolumeError, match=r"label lab.nii.gz has shape \(10, 9, 6\) but image img.nii.gz has "
                                          r"spatial shape \(10, 10, 6\)"):
        validate_case(case)


def test_affine_mismatch_is_a_clear_error(tmp_path):
    shifted = AFFINE.copy()
    shifted[0, 3] = 5.0
    with pytest.raises(VolumeError, match="affines differ by up to 5 mm"):
        validate_case(_pair(tmp_path, label_affine=shifted))
    tiny = AFFINE.copy()
    tiny[0, 3] = 1e-5  # header rounding noise is tolerated
    assert validate_case(_pair(tmp_path, label_affine=tiny)).shape == (10, 10, 6)


def test_labels_outside_class_range(tmp_path):
    case = _pair(tmp_path, values=(0, 1, 4, -1))
    with pytest.raises(VolumeError, match=r"values \[-1, 4\] outside \[0, 3\)"):
        validate_case(case, num_classes=3)
    assert validate_case(case).label_values == ()  # not checked without num_classes


def test_small_volume_is_padded_to_the_roi(tmp_path):
    case = _pair(tmp_path, image_shape=(10, 10, 6), label_shape=(10, 10, 6), values=(0, 1, 1, 1))
    assert validate_case(case, roi_size=(16, 8, 8)).padded_axes == (0, 2)
    cfg = SegTransformConfig(modality="other", roi_size=(16, 16, 16), num_samples=3, augment=False)
    crops = build_train_transforms(cfg)(case.as_dict())
    assert len(crops) == 3
    for crop in crops:
        assert tuple(crop["image"].shape) == (1, 16, 16, 16) and tuple(crop["label"].shape) == (1, 16, 16, 16)
        assert set(torch.unique(crop["label"]).tolist()) <= {0.0, 1.0}


def test_ct_window_only_for_ct(tmp_path):
    hu = np.linspace(-1000, 1000, 8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8)
    path = write_nifti(tmp_path / "ct.nii.gz", hu, AFFINE)
    ct = build_inference_transforms(SegTransformConfig(modality="ct", ct_window=(-100, 300)))({"image": str(path)})
    x = ct["image"][0].numpy()
    assert x.min() == 0.0 and x.max() == 1.0
    inside = (hu > -100) & (hu < 300)
    np.testing.assert_allclose(x[inside], (hu[inside] + 100) / 400, atol=1e-5)
    mri = build_inference_transforms(SegTransformConfig(modality="mri"))({"image": str(path)})["image"][0]
    assert abs(float(mri.mean())) < 1e-4 and abs(float(mri.std()) - 1.0) < 1e-2  # z-score, no window
    other = build_inference_transforms(SegTransformConfig(modality="other", percentiles=(0, 100)))({"image": str(path)})
    np.testing.assert_allclose(other["image"][0].numpy(), (hu + 1000) / 2000, atol=1e-5)
    assert modality_from_names({0: "CT"}) == "ct" and modality_from_names({0: "T2", 1: "ADC"}) == "mri"
    assert modality_from_names(["ultrasound"]) == "other" and modality_from_names(None) == "mri"


def test_config_validation():
    with pytest.raises(ValueError, match="modality must be one of"):
        SegTransformConfig(modality="pet")
    with pytest.raises(ValueError, match="roi_size must be three"):
        SegTransformConfig(roi_size=(32, 32))
    with pytest.raises(ValueError, match="ct_window"):
        SegTransformConfig(ct_window=(100, -100))


def test_spacing_orientation_and_4d_channels(msd):
    cfg = SegTransformConfig(spacing=(2.0, 2.0, 3.0), roi_size=(8, 8, 8))
    d = build_val_transforms(cfg)(msd.cases[0].as_dict())
    assert tuple(d["image"].shape) == (2, 10, 10, 6) and tuple(d["label"].shape) == (1, 10, 10, 6)
    assert set(torch.unique(d["label"]).tolist()) <= {0.0, 1.0, 2.0}  # nearest: no new label values


def test_resample_labels_nearest_and_folders(msd, tmp_path):
    out = resample_volume(msd.cases[0].label, tmp_path / "lab.nii.gz", (2.0, 2.0, 3.0), is_label=True)
    img = nib.load(str(out))
    assert img.shape == (10, 10, 6) and img.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(img.dataobj)).tolist()) <= {0, 1, 2}
    np.testing.assert_allclose(np.diag(img.affine)[:3], (2.0, 2.0, 3.0))


def test_crop_case_keeps_physical_position(msd, tmp_path):
    case = crop_case(msd.cases[0], [(5, 15), (0, 18), (2, 12)], tmp_path, "part")
    src, part = nib.load(str(msd.cases[0].label)), nib.load(str(case.label))
    assert part.shape == (10, 18, 10)
    np.testing.assert_array_equal(np.asarray(part.dataobj), np.asarray(src.dataobj)[5:15, :, 2:12])
    np.testing.assert_allclose(part.affine[:3, 3], src.affine[:3, :3] @ [5, 0, 2] + src.affine[:3, 3])
    validate_case(case, num_classes=3)
