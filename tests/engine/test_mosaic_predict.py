"""MOSAIC predictions on image files: the same scores as on the MedMNIST arrays, bad files named."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medmoe.cli.main import app
from medmoe.data import load_medmnist_split, write_fake_medmnist
from medmoe.engine.mosaic.predict import predict_images
from medmoe.engine.mosaic.training import build_mosaic_config, predict_split, save_mosaic_checkpoint
from medmoe.models.vit import MosaicModel, VisionTransformerConfig

FLAGS = ["pathmnist", "chestmnist", "organmnist3d"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("medmnist")
    write_fake_medmnist(root, FLAGS, 28, {"train": 4, "val": 4, "test": 6}, seed=2)
    torch.manual_seed(0)
    model = MosaicModel(build_mosaic_config(FLAGS, 28, vit=VisionTransformerConfig.tiny_test())).eval()
    ckpt = save_mosaic_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint", model)
    return root, model, ckpt


def test_png_files_score_as_the_npz_arrays(setup, tmp_path):
    root, model, _ = setup
    split = load_medmnist_split(root, "pathmnist", "test", 28)
    for i, img in enumerate(np.asarray(split.images)):
        Image.fromarray(img).save(tmp_path / f"img_{i}.png")
    rows = predict_images(model, "path", [tmp_path])
    expected = predict_split(model, split)
    got = np.array([[r[k] for k in r if k.startswith("score_")] for r in rows])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert [r["pred"] for r in rows] == expected.argmax(1).tolist()
    assert rows[0]["pred_name"] and rows[0]["file"].endswith("img_0.png")


def test_other_sizes_are_resized_and_multilabel_lists_labels(setup, tmp_path):
    _, model, _ = setup
    Image.fromarray(np.full((50, 40, 3), 120, np.uint8)).save(
        tmp_path / "big_rgb.jpg"
    )  # chest is grey, 28 px
    rows = predict_images(model, "chestmnist", [tmp_path / "big_rgb.jpg"])
    scores = [v for k, v in rows[0].items() if k.startswith("score_")]
    assert len(scores) == 14 and "pred_names" in rows[0] and "pred" not in rows[0]


def test_volumes_and_errors(setup, tmp_path):
    _, model, _ = setup
    np.save(tmp_path / "vol.npy", np.random.default_rng(0).integers(0, 255, (32, 30, 28)).astype(np.uint8))
    assert len(predict_images(model, "organmnist3d", [tmp_path / "vol.npy"])) == 1
    np.save(tmp_path / "flat.npy", np.zeros((28, 28)))
    with pytest.raises(ValueError, match="must be \\(D, H, W\\)"):
        predict_images(model, "organmnist3d", [tmp_path / "flat.npy"])
    with pytest.raises(ValueError, match="no head for 'bloodmnist'"):
        predict_images(model, "blood", [tmp_path])
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image .*bad.png"):
        predict_images(model, "pathmnist", [tmp_path / "bad.png"])
    with pytest.raises(ValueError, match="does not exist"):
        predict_images(model, "pathmnist", [tmp_path / "missing.png"])


def test_cli_writes_a_csv(setup, tmp_path):
    _, _, ckpt = setup
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "p.csv"
    result = CliRunner().invoke(
        app, ["mosaic", "predict", str(ckpt), str(tmp_path), "-d", "pathmnist", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 1 and rows[0]["pred_name"]
    result = CliRunner().invoke(app, ["mosaic", "predict", str(ckpt), str(tmp_path), "-d", "dermamnist"])
    assert result.exit_code == 2 and "no head" in result.output
