"""`medmoe mosaic info | train | eval` on synthetic fixtures, and the error messages users see."""

import json

from typer.testing import CliRunner

from medmoe.cli.main import app

runner = CliRunner()


def test_info_lists_all_18_datasets_and_file_status(tmp_path):
    result = runner.invoke(app, ["mosaic", "info", "--data", str(tmp_path), "--size", "64"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "mnist" in line]
    assert len(rows) == 18
    assert "organmnist3d_64.npz MISSING" in result.output and "C (r=192)" in result.output


def test_demo_train_then_eval(tmp_path):
    out = tmp_path / "run"
    args = ["mosaic", "train", "--demo", "--vit", "tiny", "--weights", "none", "--datasets",
            "pathmnist,retinamnist,nodulemnist3d", "--rounds", "1", "--n-per-split", "16", "--batch-size", "8",
            "--out", str(out), "--accelerator", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "SYNTHETIC" in result.output and "3-D mean" in result.output and "7,452,402" not in result.output
    ckpt = out / "checkpoint"
    data = out / "synthetic_data"
    assert (ckpt / "model.safetensors").is_file() and (data / "pathmnist.npz").is_file()
    result = runner.invoke(app, ["mosaic", "eval", str(ckpt), "--data", str(data), "--split", "val",
                                 "--json", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    assert "SYNTHETIC" in result.output and "retinamnist" in result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics) == {"pathmnist", "retinamnist", "nodulemnist3d", "means"}
    assert metrics["retinamnist"]["acc_pm1"] >= metrics["retinamnist"]["acc"]
    result = runner.invoke(app, ["mosaic", "eval", str(ckpt), "--data", str(data), "--teacher"])
    assert result.exit_code == 0, result.output


def test_missing_files_weights_and_bad_options(tmp_path):
    result = runner.invoke(app, ["mosaic", "train", "--data", str(tmp_path), "--datasets", "path,organ3d",
                                 "--weights", "none", "--size", "64"])
    assert result.exit_code == 2
    assert "pathmnist_64.npz" in result.output and "organmnist3d_64.npz" in result.output
    assert "python -m medmnist download --size=64" in result.output
    result = runner.invoke(app, ["mosaic", "train", "--data", str(tmp_path), "--datasets", "path"])
    assert result.exit_code != 0 and "--weights" in result.output
    result = runner.invoke(app, ["mosaic", "train", "--demo", "--vit", "tiny", "--datasets", "path", "--weights",
                                 str(tmp_path / "ViT-B_16.npz"), "--out", str(tmp_path / "r"), "--rounds", "1"])
    assert result.exit_code == 2 and "does not exist" in result.output and "ViT-B_16.npz" in result.output
    result = runner.invoke(app, ["mosaic", "train", "--demo", "--vit", "tiny", "--datasets", "path", "--weights",
                                 "none", "--out", str(tmp_path / "r"), "--sampler", "random"])
    assert result.exit_code == 2 and "sampler" in result.output
    result = runner.invoke(app, ["mosaic", "eval", str(tmp_path / "nothing"), "--data", str(tmp_path)])
    assert result.exit_code == 2 and "does not exist" in result.output
