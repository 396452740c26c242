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
    # no --preset and no --demo: the authors' protocol (mosaic-paper, 224^2 images) is the default
    result = runner.invoke(app, ["mosaic", "train", "--data", str(tmp_path), "--datasets", "path", "--weights", "none"])
    assert result.exit_code == 2 and "pathmnist_224.npz" in result.output, result.output
    result = runner.invoke(app, ["mosaic", "train", "--data", str(tmp_path), "--datasets", "path", "--weights", "none",
                                 "--preset", "medmoe-cpu"])
    assert result.exit_code == 2 and "pathmnist.npz" in result.output, result.output
    result = runner.invoke(app, ["mosaic", "train", "--demo", "--vit", "tiny", "--datasets", "path", "--weights",
                                 str(tmp_path / "ViT-B_16.npz"), "--out", str(tmp_path / "r"), "--rounds", "1"])
    assert result.exit_code == 2 and "does not exist" in result.output and "ViT-B_16.npz" in result.output
    result = runner.invoke(app, ["mosaic", "train", "--demo", "--vit", "tiny", "--datasets", "path", "--weights",
                                 "none", "--out", str(tmp_path / "r"), "--sampler", "random"])
    assert result.exit_code == 2 and "sampler" in result.output
    result = runner.invoke(app, ["mosaic", "eval", str(tmp_path / "nothing"), "--data", str(tmp_path)])
    assert result.exit_code == 2 and "does not exist" in result.output


def _reference_file(tmp_path):
    """A small MOSAIC model saved as the reference's best_model.pth (student and teacher), its datasets' files."""
    import torch

    from medmoe.data import write_fake_medmnist
    from medmoe.engine.mosaic.training import build_mosaic_config
    from medmoe.interop.mosaic import mosaic_state_to_reference
    from medmoe.models.vit import MosaicModel, VisionTransformerConfig

    flags = ["pathmnist", "dermamnist", "organmnist3d"]
    vit = VisionTransformerConfig(img_size=64, patch_size=16, embed_dim=64, depth=1, num_heads=1, mlp_ratio=2.0,
                                  norm_eps=1e-5)
    torch.manual_seed(0)
    model = MosaicModel(build_mosaic_config(flags, 64, vit=vit, vol_size_3d=64, patch_size_3d=16,
                                            train_tokenizer_3d=False))
    state = mosaic_state_to_reference(model)
    path = tmp_path / "ref_run" / "best_model.pth"
    path.parent.mkdir()
    torch.save({"round": 2, "best_acc": 0.4, "student_state_dict": state, "teacher_state_dict": state}, path)
    data = tmp_path / "data"
    write_fake_medmnist(data, flags, 64, 8, seed=0)
    return path, data, flags


def test_eval_and_predict_take_a_reference_checkpoint_file(tmp_path):
    path, data, flags = _reference_file(tmp_path)
    # three heads with 9, 7, 11 classes: no reference list matches and no args.json: the user names them
    result = runner.invoke(app, ["mosaic", "eval", str(path), "--data", str(data), "--split", "val"])
    assert result.exit_code == 2 and "--reference-datasets" in result.output
    args = ["mosaic", "eval", str(path), "--data", str(data), "--split", "val", "--reference-datasets", ",".join(flags)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "heads 0..2 -> datasets ['pathmnist', 'dermamnist', 'organmnist3d'] (given)" in result.output
    assert "organmnist3d" in result.output.split("loaded")[-1]
    (path.parent / "args.json").write_text(json.dumps({"dataset_list": ["PathMNIST", "DermaMNIST"]}))
    result = runner.invoke(app, ["mosaic", "eval", str(path), "--data", str(data), "--teacher"])
    assert result.exit_code == 2 and "do not match the heads" in result.output
    (path.parent / "args.json").write_text(json.dumps({"dataset_list": ["PathMNIST", "DermaMNIST", "OrganMNIST3D"]}))
    npy = tmp_path / "images"
    npy.mkdir()
    import numpy as np
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(npy / "a.png")
    out = tmp_path / "pred.csv"
    result = runner.invoke(app, ["mosaic", "predict", str(path), str(npy), "--dataset", "dermamnist", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "mosaic-reference keys" in result.output and "args.json dataset_list" in result.output
    assert out.read_text().count("\n") == 2
    result = runner.invoke(app, ["mosaic", "predict", str(path.parent), str(npy), "--dataset", "dermamnist",
                                 "--reference-datasets", "pathmnist"])
    assert result.exit_code == 2 and "--reference-datasets" in result.output


def test_presets_set_the_protocol_and_flags_win(tmp_path):
    out = tmp_path / "paper"
    args = ["mosaic", "train", "--demo", "--preset", "mosaic-paper", "--size", "28", "--vit", "tiny", "--weights",
            "none", "--datasets", "retinamnist,pathmnist,nodulemnist3d", "--rounds", "1", "--n-per-split", "8",
            "--batch-size", "8", "--out", str(out), "--accelerator", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())["identity"]
    train, model = manifest["train_config"], manifest["model_config"]
    assert train["early_stopping"] == "reference" and train["augmentation"] == "reference"
    assert train["precision"] == "32-true" and train["rounds"] == 1 and train["selection_metric"] == "acc"
    assert [t["name"] for t in model["tasks"]] == ["pathmnist", "retinamnist", "nodulemnist3d"]  # reference order
    assert not model["train_tokenizer_3d"] and model["patch_norm_2d"] and model["vit"]["norm_eps"] == 1e-5
    out = tmp_path / "noadapter"
    result = runner.invoke(app, [*args[:-4], "--accelerator", "cpu", "--out", str(out), "--no-adapter", "--augmentation", "none",
                                 "--selection-metric", "acc_pm1", "--dataset-order", "given"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())["identity"]
    assert manifest["model_config"]["use_adapters"] is False and manifest["train_config"]["augment"] is False
    assert [t["name"] for t in manifest["model_config"]["tasks"]] == ["retinamnist", "pathmnist", "nodulemnist3d"]
    for flag, value in (("--preset", "paper"), ("--early-stopping", "keras"), ("--augmentation", "strong"),
                        ("--selection-metric", "auc"), ("--dataset-order", "alphabetical")):
        result = runner.invoke(app, [*args[:-4], "--accelerator", "cpu", "--out", str(tmp_path / "x"), flag, value])
        assert result.exit_code == 2 and flag in result.output, (flag, result.output)


def test_train_resume_continues_a_run_and_refuses_other_settings(tmp_path):
    """`mosaic train --resume` (the flag of `seg train` and `mil train`): without it a run folder is refused
    (pointing to --resume and --overwrite), other settings are refused naming the flag, a finished run is
    evaluated again (tests/engine/test_mosaic_training.py resumes an interrupted one)."""
    out = tmp_path / "run"
    args = ["mosaic", "train", "--demo", "--vit", "tiny", "--weights", "none", "--datasets", "pathmnist",
            "--n-per-split", "16", "--batch-size", "8", "--out", str(out), "--accelerator", "cpu"]
    result = runner.invoke(app, [*args, "--rounds", "1"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [*args, "--rounds", "1"])
    assert result.exit_code != 0 and "--resume" in result.output and "--overwrite" in result.output
    result = runner.invoke(app, [*args, "--rounds", "1", "--lr", "0.01", "--resume"])
    assert result.exit_code != 0 and "--lr" in result.output and "--resume" in result.output
    result = runner.invoke(app, [*args, "--rounds", "1", "--resume"])  # finished: evaluated again
    assert result.exit_code == 0, result.output
    assert "best round 1/1" in result.output
    assert len((out / "metrics.csv").read_text().splitlines()) == 2
