"""Bad-input cases: segmentation (``seg train``, ``seg infer``) and MOSAIC (``mosaic train``) inputs and run folders.

Tiny generated NIfTI folders and MedMNIST-layout ``.npz`` files; every case asserts one clear error line that
names the file or the flag, and that nothing already on disk changed.
"""

from __future__ import annotations

import gzip
import logging
import shutil

import nibabel as nib
import numpy as np
import pytest
from bad_input_harness import assert_clear_error, run_cli

from medmoe.data.medmnist import write_fake_medmnist
from medmoe.data.volumes import make_synthetic_volumes, validate_cases, write_nifti
from medmoe.engine.runs import MANIFEST_NAME, RunManifest

SEG_TRAIN = ["seg", "train", "--preset", "medmoe-cpu", "-m", "unet.small", "--roi", "16", "16", "16", "--epochs", "1", "--steps-per-epoch", "2",
             "--val-fraction", "0"]


@pytest.fixture(scope="module")
def msd(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_seg") / "msd"
    make_synthetic_volumes(root, n_cases=2, shape=(20, 18, 16), num_classes=3)
    return root


@pytest.fixture(scope="module")
def seg_run(msd, tmp_path_factory):
    """A finished tiny segmentation run (its checkpoint is used by the ``seg infer`` cases)."""
    out = tmp_path_factory.mktemp("bad_seg_run") / "run"
    result = run_cli([*SEG_TRAIN, "--data", str(msd), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _copy_msd(msd, tmp_path):
    dst = tmp_path / "msd"
    shutil.copytree(msd, dst)
    return dst


def _break(kind, root):
    """Make one of the cases of the MSD folder ``root`` bad in the way ``kind`` names; returns the file."""
    image = root / "imagesTr" / "case001.nii.gz"
    label = root / "labelsTr" / "case001.nii.gz"
    img = nib.load(str(image))
    if kind == "nan":
        arr = np.asarray(img.dataobj, dtype=np.float32).copy()
        arr[2:4, 3, 5] = np.nan
        arr[0, 0, 0] = np.inf
        write_nifti(image, arr, img.affine)
        return image
    if kind == "truncated":
        raw = gzip.decompress(image.read_bytes())
        image.write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) // 2])
        return image
    lab = nib.load(str(label))
    arr = np.asarray(lab.dataobj).astype(np.int16)
    arr[0, 0, 0] = -1 if kind == "minus-one" else 5
    write_nifti(label, arr, lab.affine)
    return label


@pytest.mark.parametrize(
    ("kind", "contains"),
    [
        pytest.param("nan", ["case001.nii.gz", "3 non-finite", "nan"], id="seg-train-nan-voxels"),
        pytest.param("truncated", ["case001.nii.gz", "truncated"], id="seg-train-truncated-nii-gz"),
        pytest.param("minus-one", ["case001.nii.gz", "negative", "[-1]", "remap"], id="seg-train-label-minus-one"),
        pytest.param("five", ["case001.nii.gz", "--num-classes", "(6)"], id="seg-train-label-above-num-classes"),
    ],
)
def test_seg_train_bad_volumes(kind, contains, msd, tmp_path):
    root = _copy_msd(msd, tmp_path)
    _break(kind, root)
    out = tmp_path / "run"
    outcome = assert_clear_error([*SEG_TRAIN, "--data", str(root), "--out", str(out)], contains, watch=[tmp_path])
    if kind == "minus-one":  # the old advice was "set num_classes to max label + 1 (3)": the current value
        assert "max label + 1" not in outcome.error_lines[0]
    assert not out.exists(), "a refused run created its folder"


def _seg_folder(kind, tmp_path, seg_run):
    target = tmp_path / "target"
    if kind == "file":
        target.write_text("a file\n")
    elif kind == "notes":
        target.mkdir()
        (target / "notes.txt").write_text("mine\n")
    elif kind == "legacy":
        shutil.copytree(seg_run, target)
        (target / MANIFEST_NAME).unlink()
    else:
        shutil.copytree(seg_run, target)
    return target


@pytest.mark.parametrize(
    ("kind", "extra", "contains"),
    [
        pytest.param("run", [], ["already holds a seg run", "--resume", "--overwrite"], id="seg-train-into-existing-run"),
        pytest.param("run", ["--resume", "--lr", "0.5"], ["--resume", "--lr:", "0.5 now"], id="seg-resume-other-lr"),
        pytest.param("run", ["--resume", "--roi", "16", "16", "24"], ["--resume", "--roi"],
                     id="seg-resume-other-roi"),
        pytest.param("legacy", ["--resume"], ["older medmoe", "--overwrite"], id="seg-resume-run-without-manifest"),
        pytest.param("file", [], ["--out", "is a file"], id="seg-out-is-a-file"),
        pytest.param("notes", ["--overwrite"], ["not a medmoe run"], id="seg-overwrite-a-folder-of-other-files"),
    ],
)
def test_seg_run_folder(kind, extra, contains, msd, seg_run, tmp_path):
    target = _seg_folder(kind, tmp_path, seg_run)
    args = [*SEG_TRAIN, "--data", str(msd), "--out", str(target), *extra]
    if "--roi" in extra:  # the later --roi wins: drop the first one
        i = args.index("--roi")
        del args[i:i + 4]
    assert_clear_error(args, contains, watch=[tmp_path])


def test_seg_divergence_is_an_error_and_nothing_is_saved(msd, tmp_path):
    out = tmp_path / "run"
    outcome = assert_clear_error([*SEG_TRAIN, "--data", str(msd), "--out", str(out), "--lr", "1e30"],
                                 ["diverged", "--lr", "step"])
    assert "epoch 1" in outcome.error_lines[0]
    assert not (out / "checkpoint" / "model.safetensors").exists(), "a non-finite model was saved"


def _infer_input(kind, tmp_path, msd):
    src = msd / "imagesTr" / "case000.nii.gz"
    img = nib.load(str(src))
    if kind == "2d":
        return write_nifti(tmp_path / "in" / "slice.nii.gz", np.asarray(img.dataobj)[:, :, 0], img.affine)
    if kind == "png":
        path = tmp_path / "in" / "photo.png"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
        return path
    if kind == "nan":
        arr = np.asarray(img.dataobj, dtype=np.float32).copy()
        arr[1, 1, 1] = np.nan
        return write_nifti(tmp_path / "in" / "nan.nii.gz", arr, img.affine)
    path = tmp_path / "in" / "cut.nii.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return path


@pytest.mark.parametrize(
    ("kind", "contains"),
    [
        pytest.param("2d", ["slice.nii.gz", "3-d"], id="seg-infer-2d-image"),
        pytest.param("png", ["photo.png", "not a nifti"], id="seg-infer-not-nifti"),
        pytest.param("nan", ["nan.nii.gz", "non-finite"], id="seg-infer-nan-voxels"),
        pytest.param("truncated", ["cut.nii.gz", "truncated"], id="seg-infer-truncated-nii-gz"),
    ],
)
def test_seg_infer_bad_inputs(kind, contains, msd, seg_run, tmp_path):
    path = _infer_input(kind, tmp_path, msd)
    out = tmp_path / "pred"
    assert_clear_error(["seg", "infer", str(seg_run), str(path), "--out", str(out)], contains, watch=[tmp_path])
    assert not out.exists(), "a refused inference created its output folder"


def test_volumes_smaller_than_the_roi_are_reported(msd, caplog):
    from medmoe.data.volumes import load_volume_cases

    cases = load_volume_cases(msd).cases
    with caplog.at_level(logging.WARNING, logger="medmoe"):
        reports = validate_cases(cases, roi_size=(32, 16, 16))
    assert all(r.padded_axes == (0,) for r in reports)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned and "zero-padded" in warned[0] and "case000" in warned[0] and "(32, 16, 16)" in warned[0]


# ------------------------------------------------------------------------------------------------
# MOSAIC


MOSAIC_TRAIN = ["mosaic", "train", "--preset", "medmoe-cpu", "--vit", "tiny", "--datasets", "pathmnist", "--weights", "none", "--rounds", "1",
                "--batch-size", "8", "--max-steps", "2"]


@pytest.fixture(scope="module")
def medmnist(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_mosaic") / "data"
    write_fake_medmnist(root, ["pathmnist"], 28, 16, seed=0)
    return root


def _object_npz(root):
    path = root / "pathmnist.npz"
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["train_images"] = np.array([object()] * 3, dtype=object)
    np.savez(path, **arrays)


def _truncated_npz(root):
    path = root / "pathmnist.npz"
    path.write_bytes(path.read_bytes()[:2000])


@pytest.mark.parametrize(
    ("breaker", "contains"),
    [
        pytest.param(_object_npz, ["pathmnist.npz", "python objects"], id="mosaic-object-array-npz"),
        pytest.param(_truncated_npz, ["pathmnist.npz"], id="mosaic-truncated-npz"),
    ],
)
def test_mosaic_bad_npz(breaker, contains, medmnist, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(medmnist, data)
    breaker(data)
    assert_clear_error([*MOSAIC_TRAIN, "--data", str(data), "--out", str(tmp_path / "run")], contains,
                       watch=[tmp_path])
    assert not (tmp_path / "run").exists()


def _mosaic_run_folder(tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    (target / MANIFEST_NAME).write_text(RunManifest("mosaic", {"rounds": 1}).to_json())
    (target / "report.md").write_text("# an earlier run\n")
    return target


@pytest.mark.parametrize(
    ("demo", "contains"),
    [
        pytest.param(False, ["already holds a mosaic run", "--overwrite"], id="mosaic-train-into-existing-run"),
        pytest.param(True, ["already holds a mosaic run", "--overwrite"], id="mosaic-demo-into-existing-run"),
    ],
)
def test_mosaic_existing_run(demo, contains, medmnist, tmp_path):
    target = _mosaic_run_folder(tmp_path)
    source = ["--demo", "--n-per-split", "8"] if demo else ["--data", str(medmnist)]
    assert_clear_error([*MOSAIC_TRAIN, *source, "--out", str(target)], contains, watch=[tmp_path])
    assert not (target / "synthetic_data").exists(), "the refused demo wrote its data"


def test_mosaic_out_is_a_file(medmnist, tmp_path):
    target = tmp_path / "run"
    target.write_text("a file\n")
    assert_clear_error([*MOSAIC_TRAIN, "--data", str(medmnist), "--out", str(target)], ["--out", "is a file"],
                       watch=[tmp_path])


def test_mosaic_overwrite_replaces_the_run(medmnist, tmp_path):
    target = _mosaic_run_folder(tmp_path)
    result = run_cli([*MOSAIC_TRAIN, "--data", str(medmnist), "--out", str(target), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert "an earlier run" not in (target / "report.md").read_text()
    assert '"kind": "mosaic"' in (target / MANIFEST_NAME).read_text()


def test_mosaic_divergence_is_an_error(medmnist, tmp_path):
    out = tmp_path / "run"
    assert_clear_error([*MOSAIC_TRAIN, "--data", str(medmnist), "--out", str(out), "--lr", "1e30"],
                       ["diverged", "--lr", "round 1"])
    assert not (out / "checkpoint" / "model.safetensors").exists(), "a non-finite model was saved"


def test_seg_full_disk_keeps_the_last_good_checkpoint(msd, tmp_path, monkeypatch):
    import errno

    from medmoe.engine import loop as segmentation  # the training loop writes the trainer state

    real, calls = segmentation.save_trainer_state, {"n": 0}

    def full_after_one_epoch(path, state):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, state)

    monkeypatch.setattr(segmentation, "save_trainer_state", full_after_one_epoch)
    out = tmp_path / "run"
    args = [*SEG_TRAIN, "--data", str(msd), "--out", str(out)]
    args[args.index("--epochs") + 1] = "3"
    assert_clear_error(args, ["disk is full", "the best checkpoint (epoch", "intact", "--resume"])
    assert (out / "checkpoint" / "model.safetensors").is_file()
    monkeypatch.setattr(segmentation, "save_trainer_state", real)
    result = run_cli([*args, "--resume"])  # space freed: the run continues from its last state
    assert result.exit_code == 0, result.output
