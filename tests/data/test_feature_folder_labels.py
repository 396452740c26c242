"""FeatureFolderBags: labels read through a trained model's classes, stray label values, one file per
slide, declared sizes (issue 23)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from medmoe.data import FeatureFolderBags, write_trident_h5
from medmoe.data.feature_files import FeatureFileError, feature_file_shape, feature_files
from medmoe.data.file_checks import describe_path


def _folder(tmp_path, labels: dict[str, str], dim: int = 4):
    fdir = tmp_path / "features"
    fdir.mkdir(exist_ok=True)
    for sid in labels:
        write_trident_h5(fdir / f"{sid}.h5", np.ones((3, dim), np.float32))
    csv = tmp_path / "labels.csv"
    csv.write_text("slide_id,label\n" + "".join(f"{k},{v}\n" for k, v in labels.items()))
    return fdir, csv


def test_class_names_keep_the_models_numbering(tmp_path):
    fdir, csv = _folder(tmp_path, {"a": "tumor", "b": "tumor"})
    alone = FeatureFolderBags(fdir, csv)
    assert alone.class_names == ["tumor"] and alone.labels == [0, 0]  # the CSV alone: tumor would be class 0
    bags = FeatureFolderBags(fdir, csv, class_names=["normal", "tumor"])
    assert bags.class_names == ["normal", "tumor"] and bags.labels == [1, 1] and bags.num_classes == 2


def test_class_names_refuse_unknown_and_ambiguous_values(tmp_path):
    fdir, csv = _folder(tmp_path, {"a": "tumor", "b": "Tumor", "c": "normal"})
    with pytest.raises(ValueError, match=r"'Tumor' \(line 3: b\).*'normal', 'tumor'"):
        FeatureFolderBags(fdir, csv, class_names=["normal", "tumor"])
    fdir, csv = _folder(tmp_path, {"a": "0", "b": "1", "c": "1"})
    with pytest.raises(ValueError, match="numbers .* but the checkpoint's classes are named"):
        FeatureFolderBags(fdir, csv, class_names=["normal", "tumor"])
    bags = FeatureFolderBags(fdir, csv, class_names=["0", "1", "2"])  # numbered classes: unambiguous
    assert bags.labels == [0, 1, 1] and bags.num_classes == 3
    with pytest.raises(ValueError, match="class_names .* cannot be combined"):
        FeatureFolderBags(fdir, csv, class_names=["0", "1"], label_map={"0": 0, "1": 1})


def test_stray_values_are_named_with_their_lines(tmp_path):
    fdir, csv = _folder(tmp_path, {"a": "0", "b": "1", "c": "0", "d": "7"})
    with pytest.raises(ValueError, match=r"\[2, 3, 4, 5, 6\] never occur.*'7' \(line 5: d\)"):
        FeatureFolderBags(fdir, csv)
    fdir, csv = _folder(tmp_path, {"a": "0", "b": "1", "c": "0", "d": "banana"})
    with pytest.raises(ValueError, match=r"mixes class numbers and class names; the odd names 'banana' \(line 5: d\)"):
        FeatureFolderBags(fdir, csv)
    csv.write_text("slide_id,label\n")
    with pytest.raises(ValueError, match="header but no rows"):
        FeatureFolderBags(fdir, csv)


def test_one_feature_file_per_slide(tmp_path):
    import torch

    fdir, csv = _folder(tmp_path, {"a": "0", "b": "1"})
    assert sorted(feature_files(fdir)) == ["a", "b"]
    torch.save(torch.zeros(3, 4), fdir / "a.pt")
    with pytest.raises(ValueError, match="a.h5 and a.pt"):
        FeatureFolderBags(fdir, csv)


def test_paths_say_what_they_are(tmp_path):
    os.mkfifo(tmp_path / "pipe.h5")
    (tmp_path / "dir.h5").mkdir()
    (tmp_path / "loop.h5").symlink_to("loop.h5")
    assert describe_path(tmp_path / "pipe.h5") == "a FIFO (named pipe)"
    assert describe_path(tmp_path / "dir.h5") == "a folder"
    assert describe_path(tmp_path / "loop.h5").startswith("a symlink loop")
    assert describe_path(tmp_path / "nothing.h5") == "missing"
    for name, what in (("pipe.h5", "FIFO"), ("dir.h5", "a folder"), ("loop.h5", "symlink loop"),
                       ("nothing.h5", "does not exist")):
        with pytest.raises(FeatureFileError, match=what):
            feature_file_shape(tmp_path / name)


def test_declared_size_is_checked_before_reading(tmp_path, monkeypatch):
    import h5py

    path = tmp_path / "forged.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("features", shape=(200_000_000, 8), dtype="f4", chunks=(4096, 8), compression="gzip")
    assert path.stat().st_size < 10_000
    with pytest.raises(FeatureFileError, match="200000000 x 8 .* stores only"):
        feature_file_shape(path)
    half = tmp_path / "f16.h5"
    with h5py.File(half, "w") as f:  # genuine half-precision and integer features are not "forged"
        f.create_dataset("features", data=np.ones((5, 4), np.float16))
    assert feature_file_shape(half) == (5, 4)
    monkeypatch.setenv("MEDMOE_MAX_FEATURE_GB", "1e-8")  # 10 bytes
    with pytest.raises(FeatureFileError, match="MEDMOE_MAX_FEATURE_GB"):
        feature_file_shape(half)
