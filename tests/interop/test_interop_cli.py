"""``medmoe mil convert`` and the inference commands on reference checkpoints (tensors from the golden
fixtures written by the reference code)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import medmoe
from medmoe.cli.main import app
from medmoe.engine.checkpoint import load_checkpoint, read_checkpoint_info

GOLDEN = Path(__file__).parents[1] / "parity" / "golden" / "millab"
runner = CliRunner()


def _run(*args: object) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _fixture(fid: str) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    meta = json.loads((GOLDEN / f"{fid}.json").read_text())
    return meta, load_file(str(GOLDEN / f"{fid}.safetensors")), load_file(str(GOLDEN / f"{fid}.io.safetensors"))


def _hf_folder(root: Path, fid: str, drop_head: bool = False) -> Path:
    meta, state, _ = _fixture(fid)
    if drop_head:
        state = {k: v for k, v in state.items() if not k.startswith("model.classifier.")}
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(meta["reference_config"]))
    save_file(state, str(root / "model.safetensors"))
    return root


def test_convert_millab_file_then_everything_takes_the_checkpoint(tmp_path: Path) -> None:
    _, _, io = _fixture("millab_wikg_base_mammoth")
    out = _run("mil", "convert", GOLDEN / "millab_wikg_base_mammoth.safetensors", "--model", "wikg.base_mammoth",
               "--in-dim", "64", "--set", "embed_dim=64", "--set", "patch_embed_args={num_experts: 8, num_slots: 4, "
               "slot_dim: 32}", "--class-names", "luad,lusc", "--out", tmp_path / "ck")
    assert "mil-lab keys" in out and "gate_U" in out and "checkpoint:" in out
    info = read_checkpoint_info(tmp_path / "ck")
    assert info["class_names"] == ["luad", "lusc"] and info["converted_from"].endswith(".safetensors")
    assert "gate_U" in info["conversion_report"]
    model, _ = load_checkpoint(tmp_path / "ck")
    with torch.no_grad():
        torch.testing.assert_close(model(io["x"]).logits, io["logits"], rtol=1e-5, atol=1e-6)
    again = medmoe.create_model("wikg.base_mammoth", in_dim=64, embed_dim=64, checkpoint_path=str(tmp_path / "ck"),
                                patch_embed_args={"num_experts": 8, "num_slots": 4, "slot_dim": 32})
    assert again.load_report.key_format == "medmoe"


def test_convert_feather_folder_without_model_name(tmp_path: Path) -> None:
    folder = _hf_folder(tmp_path / "feather", "millab_abmil_base", drop_head=True)
    with pytest.warns(UserWarning, match="no classification head"):
        out = _run("mil", "convert", folder, "--num-classes", "3", "--out", tmp_path / "ck")
    assert "freshly initialised" in out and "abmil.base" in out
    model, info = load_checkpoint(tmp_path / "ck")
    assert model.config.num_classes == 3 and info["class_names"] == ["0", "1", "2"]


def test_convert_tutorial_mammoth_layer(tmp_path: Path) -> None:
    _, state, _ = _fixture("millab_clam_base_mammoth")
    layer = {"mlp.router.mammoth." + k[len("model.patch_embed."):]: v for k, v in state.items()
             if k.startswith("model.patch_embed.")}
    torch.save({"model": layer}, tmp_path / "tutorial.pth")
    out = _run("mil", "convert", tmp_path / "tutorial.pth", "--model", "clam.base_mammoth", "--in-dim", "64",
               "--set", "embed_dim=64", "--set", "patch_embed_args={num_experts: 8, num_slots: 4, slot_dim: 32}",
               "--out", tmp_path / "ck")
    assert "mlp.router.mammoth." in out and "freshly initialised" in out


def test_predict_and_eval_take_a_hugging_face_folder(tmp_path: Path) -> None:
    folder = _hf_folder(tmp_path / "hf", "millab_transformer_base")
    _, _, io = _fixture("millab_transformer_base")
    feats = tmp_path / "feats"
    feats.mkdir()
    gen = torch.Generator().manual_seed(0)
    torch.save({"features": io["x"][0]}, feats / "s0.pt")
    torch.save({"features": torch.randn(30, 64, generator=gen)}, feats / "s1.pt")
    out = _run("mil", "predict", folder, feats, "--out", tmp_path / "pred.csv")
    assert "wrote 2 predictions" in out
    import pandas as pd

    frame = pd.read_csv(tmp_path / "pred.csv").set_index("bag_id")
    expected = io["logits"].softmax(-1)[0]
    assert frame.loc["s0", "prob_1"] == pytest.approx(expected[1].item(), rel=1e-5)
    labels = tmp_path / "labels.csv"
    labels.write_text("slide_id,label\ns0,1\ns1,0\n")
    out = _run("mil", "eval", folder, "--features", feats, "--labels", labels)
    assert "auroc" in out or "accuracy" in out


def test_heatmap_takes_a_mammoth_fork_hugging_face_folder(tmp_path: Path) -> None:
    """The fork's ABMIL+Mammoth, saved as a Hugging Face folder, draws attention and expert maps as is."""
    import h5py

    folder = _hf_folder(tmp_path / "hf", "millab_abmil_base_mammoth")
    _, _, io = _fixture("millab_abmil_base_mammoth")
    coords = torch.stack(torch.meshgrid(torch.arange(8), torch.arange(6), indexing="ij"), -1).reshape(-1, 2) * 256
    with h5py.File(tmp_path / "slide.h5", "w") as fh:
        fh["features"] = io["x"][0].numpy()
        fh["coords"] = coords.numpy()
        fh["coords"].attrs["patch_size_level0"] = 256
    _run("mil", "heatmap", folder, "--features", tmp_path / "slide.h5", "--out", tmp_path / "maps",
         "--max-size", "128", "--experts", "2")
    summary = json.loads((tmp_path / "maps" / "heatmaps.json").read_text())
    assert (tmp_path / "maps" / "attention.png").is_file() and summary["slide"] is None
