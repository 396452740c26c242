"""MedMNIST metadata table, official file names, validated loading and schema-faithful fixtures."""

import numpy as np
import pytest

from medmoe.data import (
    MEDMNIST_2D,
    MEDMNIST_3D,
    MEDMNIST_FLAGS,
    MedMNISTFileError,
    load_medmnist_split,
    medmnist_filename,
    medmnist_info,
    resolve_medmnist_flags,
    write_fake_medmnist,
)


def test_metadata_matches_the_medmnist_package():
    medmnist = pytest.importorskip("medmnist")
    assert list(MEDMNIST_FLAGS) == list(medmnist.INFO)
    for flag, ref in medmnist.INFO.items():
        info = medmnist_info(flag)
        assert info.task == ref["task"] and info.n_channels == ref["n_channels"]
        assert info.n_samples == ref["n_samples"] and info.license == ref["license"]
        assert info.labels == tuple(ref["label"][str(i)] for i in range(len(ref["label"])))


def test_split_totals_and_kinds():
    assert len(MEDMNIST_2D) == 12 and len(MEDMNIST_3D) == 6
    assert sum(sum(medmnist_info(f).n_samples.values()) for f in MEDMNIST_2D) == 707_962
    assert sum(sum(medmnist_info(f).n_samples.values()) for f in MEDMNIST_3D) == 9_996
    chest = medmnist_info("ChestMNIST")
    assert chest.num_label_columns == 14 and chest.task == "multi-label, binary-class"
    assert medmnist_info("retina").task == "ordinal-regression"
    assert medmnist_info("organ3d").sizes == (28, 64) and medmnist_info("organ3d").spatial_dims == 3
    assert medmnist_info("dermamnist").license == "CC BY-NC 4.0"
    # label orders differ between the 2-D and 3-D organ datasets
    assert medmnist_info("organamnist").labels[0] == "bladder" and medmnist_info("organmnist3d").labels[0] == "liver"


def test_file_names_and_flag_resolution():
    assert medmnist_filename("pathmnist", 28) == "pathmnist.npz"
    assert medmnist_filename("path", 224) == "pathmnist_224.npz"
    assert medmnist_filename("organmnist3d", 64) == "organmnist3d_64.npz"
    with pytest.raises(ValueError, match="28 and 64 only"):
        medmnist_filename("organmnist3d", 128)
    with pytest.raises(ValueError, match="unknown MedMNIST dataset"):
        medmnist_info("mnist")
    assert resolve_medmnist_flags("3d") == list(MEDMNIST_3D)
    assert resolve_medmnist_flags("path,organ3d") == ["pathmnist", "organmnist3d"]
    with pytest.raises(ValueError, match="twice"):
        resolve_medmnist_flags(["path", "pathmnist"])


@pytest.mark.parametrize("flag, size, stored, batch", [
    ("pathmnist", 28, (28, 28, 3), (3, 3, 28, 28)),
    ("chestmnist", 64, (64, 64), (3, 1, 64, 64)),
    ("organmnist3d", 28, (28, 28, 28), (3, 1, 28, 28, 28)),
])
def test_fixtures_follow_the_official_layout(tmp_path, flag, size, stored, batch):
    (path,) = write_fake_medmnist(tmp_path, [flag], size, {"train": 12, "val": 5, "test": 6})
    assert path.name == medmnist_filename(flag, size)
    with np.load(path) as z:
        assert sorted(z.files) == sorted(f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels"))
        assert z["train_images"].dtype == np.uint8 and z["train_images"].shape == (12, *stored)
        assert z["val_labels"].shape == (5, medmnist_info(flag).num_label_columns)
    split = load_medmnist_split(tmp_path, flag, "train", size)
    x, y = split.batch([4, 0, 2])
    assert tuple(x.shape) == batch and 0 <= x.min() and x.max() <= 1 and x.dtype.is_floating_point
    assert y.shape == (3, medmnist_info(flag).num_label_columns)
    np.testing.assert_array_equal(y.numpy(), split.labels[[4, 0, 2]])
    if stored[-1] == 3:  # RGB stored NHWC, returned NCHW
        np.testing.assert_allclose(x[1].permute(1, 2, 0).numpy() * 255, split.images[0], atol=1e-3)


def test_missing_files_and_splits_give_instructions(tmp_path):
    with pytest.raises(MedMNISTFileError) as err:
        load_medmnist_split(tmp_path, "bloodmnist", "train", 64)
    msg = str(err.value)
    assert "bloodmnist_64.npz" in msg and "python -m medmnist download --size=64" in msg and "zenodo" in msg
    np.savez(tmp_path / "bloodmnist.npz", train_images=np.zeros((2, 28, 28, 3), np.uint8),
             train_labels=np.zeros((2, 1), np.uint8))
    with pytest.raises(MedMNISTFileError, match="no 'val' split"):
        load_medmnist_split(tmp_path, "bloodmnist", "val", 28)


def test_wrong_sizes_and_labels_are_rejected(tmp_path):
    np.savez(tmp_path / "pathmnist.npz", train_images=np.zeros((2, 64, 64, 3), np.uint8),
             train_labels=np.zeros((2, 1), np.uint8))
    with pytest.raises(ValueError, match=r"images of shape \(64, 64, 3\), expected \(28, 28, 3\)"):
        load_medmnist_split(tmp_path, "pathmnist", "train", 28)
    np.savez(tmp_path / "chestmnist.npz", train_images=np.zeros((2, 28, 28), np.uint8),
             train_labels=np.zeros((2, 1), np.uint8))
    with pytest.raises(ValueError, match=r"expected \(2, 14\)"):
        load_medmnist_split(tmp_path, "chestmnist", "train", 28)
    np.savez(tmp_path / "breastmnist.npz", train_images=np.zeros((2, 28, 28), np.uint8),
             train_labels=np.array([[0], [2]], np.uint8))
    with pytest.raises(ValueError, match="outside"):
        load_medmnist_split(tmp_path, "breastmnist", "train", 28)
