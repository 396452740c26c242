"""`medmoe seg train --preset`, and `seg infer` on a checkpoint of the reference Mamba-HoME code."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from typer.testing import CliRunner

from medmoe.cli.main import app
from medmoe.data.volumes import make_synthetic_volumes

runner = CliRunner()
GOLDEN = Path(__file__).parents[1] / "parity" / "golden" / "mamba_home"


def test_train_with_the_paper_preset_records_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "msd"
    make_synthetic_volumes(root, n_cases=3, shape=(20, 18, 12), num_classes=3)
    run = tmp_path / "run"
    # no --preset: the authors' protocol is the default (issue 27), and the first line says so
    result = runner.invoke(app, ["seg", "train", "--data", str(root), "-m", "unet.small",
                                 "--roi", "16", "16", "16", "--epochs", "1", "--val-fraction", "0.34",
                                 "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert "preset mamba-home-paper: 1 epochs x 1 steps, batch 2 x 1 crop(s)" in result.output
    assert "the authors' protocol; --preset medmoe-cpu" in result.output
    assert "uses modality ct" in result.output
    info = json.loads((run / "checkpoint" / "config.json").read_text())
    t, r = info["transform_config"], info["train_config"]
    assert t["spacing"] == [0.8, 0.8, 3.0] and t["augmentation"] == "reference" and t["crop_foreground"]
    assert t["extra"]["preset"] == "mamba-home-paper" and t["roi_size"] == [16, 16, 16]
    assert (r["sw_mode"], r["sw_overlap"], r["dice_average"]) == ("constant", 0.25, "cases-over-classes")
    bad = runner.invoke(app, ["seg", "train", "--data", str(root), "--preset", "nnunet", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "--preset must be one of" in bad.output


def test_infer_takes_a_reference_checkpoint(tmp_path) -> None:  # type: ignore[no-untyped-def]
    image = np.random.default_rng(0).normal(0, 100, (24, 20, 8)).astype(np.float32)
    affine = np.diag([1.0, 1.0, 4.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "ct.nii.gz"))
    result = runner.invoke(app, ["seg", "infer", str(GOLDEN / "small_state.safetensors"), str(tmp_path / "ct.nii.gz"),
                                 "--group-sizes", "64", "32", "16", "8", "--roi", "32", "32", "32",
                                 "--out", str(tmp_path / "pred"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "mamba-home-reference keys" in result.output and "group sizes (64, 32, 16, 8) (given" in result.output
    pred = nib.load(str(tmp_path / "pred" / "ct_seg.nii.gz"))
    assert pred.shape == image.shape and np.allclose(pred.affine, affine)
    assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1, 2}
    bad = runner.invoke(app, ["seg", "infer", str(GOLDEN / "home_paper_stage0_state.safetensors"),
                              str(tmp_path / "ct.nii.gz"), "--out", str(tmp_path / "p2")])
    assert bad.exit_code == 2 and "not a Mamba-HoME reference checkpoint" in bad.output
    assert not (tmp_path / "p2").exists()
