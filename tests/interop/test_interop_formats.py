"""medmoe.interop: every kind of file users have loads with one call, with a report, and nothing is dropped
silently. The tensors come from the golden fixtures written by the reference code
(tests/parity/golden/millab); the files are re-packed here into the formats users have."""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import medmoe
from medmoe.engine.checkpoint import save_checkpoint
from medmoe.interop import CheckpointMismatchError, load_model, load_weights, read_source

GOLDEN = Path(__file__).parents[1] / "parity" / "golden" / "millab"


def _fixture(fid: str) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    meta = json.loads((GOLDEN / f"{fid}.json").read_text())
    return meta, load_file(str(GOLDEN / f"{fid}.safetensors")), load_file(str(GOLDEN / f"{fid}.io.safetensors"))


def _build(meta: dict, **kw) -> torch.nn.Module:
    return medmoe.create_model(meta["medmoe_name"], num_classes=meta["num_classes"], **meta["medmoe_overrides"], **kw)


def _logits(model: torch.nn.Module, io: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(io["x"], label=io["label"]).logits


def _hf_folder(root: Path, meta: dict, state: dict[str, torch.Tensor], weights: str = "model.safetensors") -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(meta["reference_config"]))
    if weights.endswith(".safetensors"):
        save_file(state, str(root / weights))
    else:
        torch.save(state, root / weights)
    return root


@pytest.mark.parametrize("fid", sorted(p.stem for p in GOLDEN.glob("millab_*.json")))
def test_hugging_face_folder_builds_the_model_from_config_json(tmp_path: Path, fid: str) -> None:
    """A MIL-Lab / MAMMOTH-fork model saved with save_pretrained loads with no name and no settings."""
    meta, state, io = _fixture(fid)
    folder = _hf_folder(tmp_path / "hf", meta, state, "pytorch_model.bin" if "abmil" in fid else "model.safetensors")
    extra = {"eval_split": "ordered"} if "dftd" in fid else {}  # DTFD shuffles in the reference: see the generator
    model, info, report = load_model(folder, **extra)
    assert info["model_name"] == meta["medmoe_name"]
    assert report.key_format == "mil-lab" and report.file_format == "huggingface-folder"
    torch.testing.assert_close(_logits(model, io), io["logits"], rtol=1e-5, atol=1e-6)


def test_feather_without_classifier_gets_a_fresh_head_and_says_so(tmp_path: Path) -> None:
    meta, state, io = _fixture("millab_abmil_base")
    feather = {k: v for k, v in state.items() if not k.startswith("model.classifier.")}
    folder = _hf_folder(tmp_path / "feather", meta, feather, "pytorch_model.bin")
    with pytest.warns(UserWarning, match="no classification head"):
        model = medmoe.create_model("abmil.base.uni.pc108-24k", num_classes=5, checkpoint_path=str(folder),
                                    **meta["medmoe_overrides"])
    report = model.load_report
    assert report.fresh == ["classifier.bias", "classifier.weight"]
    assert report.loaded == len(feather)
    assert any("freshly initialised" in n for n in report.notes)
    with torch.no_grad():  # every other tensor is the reference's: same attention as the reference
        out = model.eval()(io["x"], return_attention=True)
    torch.testing.assert_close(out.attention, io["attention"].reshape(out.attention.shape), rtol=1e-5, atol=1e-6)
    assert out.logits.shape == (1, 5)


def test_torch_file_nested_and_ddp_prefix(tmp_path: Path) -> None:
    meta, state, io = _fixture("millab_dsmil_base_mammoth")
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "model": {f"module._orig_mod.{k}": v for k, v in state.items()}}, path)
    model = _build(meta, checkpoint_path=str(path))
    notes = " ".join(model.load_report.notes)
    assert "'model' entry" in notes and "module." in notes and "_orig_mod." in notes and "'model.' prefix" in notes
    assert "model.b_classifier.fcc.weight" in model.load_report.ignored  # unused by MIL-Lab, said
    torch.testing.assert_close(_logits(model, io), io["logits"], rtol=1e-5, atol=1e-6)


def test_dtfd_and_rrt_renames_are_reported() -> None:
    meta, _, _ = _fixture("millab_dftd_base")
    report = _build(meta, checkpoint_path=str(GOLDEN / "millab_dftd_base.safetensors")).load_report
    assert report.renamed["model.attCls.classifier.fc.weight"] == "tier2_classifier.weight"
    assert report.renamed["model.patch_embed.resBlocks.0.block.0.weight"] == "residuals.0.block.0.weight"
    meta, _, _ = _fixture("millab_rrt_base")
    report = _build(meta, checkpoint_path=str(GOLDEN / "millab_rrt_base.safetensors")).load_report
    assert report.renamed["model.encoder.layer1.norm.weight"] == "layers.0.norm.weight"
    assert report.renamed["model.encoder.layers.0.norm.weight"] == "layers.1.norm.weight"
    assert sorted(k for k in report.ignored if "pos_embedding" in k) == [
        f"model.encoder.pos_embedding.{m}.{p}" for m in ("proj", "proj1", "proj2") for p in ("bias", "weight")]
    assert "pos_embedding" in report.summary()


@pytest.mark.parametrize("prefix", ["mlp.router.mammoth.", "attention_net.0.mammoth.", ""])
def test_bare_mammoth_layer_under_any_prefix(tmp_path: Path, prefix: str) -> None:
    """The MAMMOTH tutorial's layer file goes into patch_embed; the rest of the model stays fresh (listed)."""
    meta, state, io = _fixture("millab_abmil_base_mammoth")
    layer = {prefix + k[len("model.patch_embed."):]: v for k, v in state.items() if k.startswith("model.patch_embed.")}
    torch.save({"model": layer}, tmp_path / "layer.pt")
    model = _build(meta, checkpoint_path=str(tmp_path / "layer.pt"))
    assert model.load_report.key_format == "mammoth-layer"
    assert model.load_report.loaded == len(layer)
    assert "classifier.weight" in model.load_report.fresh
    full = _build(meta, checkpoint_path=str(GOLDEN / "millab_abmil_base_mammoth.safetensors")).eval()
    with torch.no_grad():
        torch.testing.assert_close(model.eval().patch_embed(io["x"]), full.patch_embed(io["x"]))


def test_foreign_checkpoint_with_a_mammoth_layer_needs_patch_embed_only(tmp_path: Path) -> None:
    meta, state, _ = _fixture("millab_abmil_base_mammoth")
    layer = {"mlp.router.mammoth." + k[len("model.patch_embed."):]: v for k, v in state.items()
             if k.startswith("model.patch_embed.")}
    other = {"mlp.head.weight": torch.zeros(3, 4), "mlp.head.bias": torch.zeros(3)}
    save_file({**layer, **other}, str(tmp_path / "authors.safetensors"))
    with pytest.raises(CheckpointMismatchError, match=r"mlp\.head\.weight.*--patch-embed-only"):
        _build(meta, checkpoint_path=str(tmp_path / "authors.safetensors"))
    model = _build(meta)
    report = load_weights(model, tmp_path / "authors.safetensors", patch_embed_only=True)
    assert set(report.ignored) == set(other) and report.loaded == len(layer)


def test_clam_repository_module_infix_and_loss_buffer(tmp_path: Path) -> None:
    meta, state, io = _fixture("clam_mb")
    legacy = {k.replace("attention_net.3.", "attention_net.3.module."): v for k, v in state.items()}
    legacy["instance_loss_fn.labels"] = torch.arange(2)
    torch.save(legacy, tmp_path / "s_0_checkpoint.pt")
    model = _build(meta, checkpoint_path=str(tmp_path / "s_0_checkpoint.pt"))
    assert model.load_report.key_format == "clam-repository"
    assert "instance_loss_fn.labels" in model.load_report.ignored
    torch.testing.assert_close(_logits(model, io), io["logits"], rtol=1e-5, atol=1e-6)


def test_medmoe_checkpoint_round_trip(tmp_path: Path) -> None:
    meta, _state, io = _fixture("millab_transmil_base")
    model = _build(meta, checkpoint_path=str(GOLDEN / "millab_transmil_base.safetensors"))
    save_checkpoint(tmp_path / "ck", model, {"class_names": ["neg", "pos"]})
    again = _build(meta, checkpoint_path=str(tmp_path / "ck"))
    assert again.load_report.file_format == "medmoe" and again.load_report.key_format == "medmoe"
    rebuilt, info, _ = load_model(tmp_path / "ck")
    assert info["class_names"] == ["neg", "pos"]
    torch.testing.assert_close(_logits(rebuilt, io), io["logits"], rtol=1e-5, atol=1e-6)


def test_wrong_model_lists_the_tensors() -> None:
    meta, _, _ = _fixture("millab_abmil_base_mammoth")
    overrides = {k: v for k, v in meta["medmoe_overrides"].items() if k != "patch_embed_args"}
    with pytest.raises(CheckpointMismatchError) as err:
        medmoe.create_model("abmil.base", checkpoint_path=str(GOLDEN / "millab_abmil_base_mammoth.safetensors"),
                            **overrides)
    assert "patch_embed.slot_embeds" in str(err.value) and "patch_embed.0.weight" in str(err.value)


def test_other_class_count_hint_and_reinit_head() -> None:
    meta, _state, _ = _fixture("millab_abmil_base")
    path = str(GOLDEN / "millab_abmil_base.safetensors")
    with pytest.raises(CheckpointMismatchError, match="num_classes"):
        medmoe.create_model("abmil.base", num_classes=4, checkpoint_path=path, **meta["medmoe_overrides"])
    model = medmoe.create_model("abmil.base", num_classes=4, checkpoint_path=path, reinit_head=True,
                                **meta["medmoe_overrides"])
    assert set(model.load_report.ignored) == {"model.classifier.weight", "model.classifier.bias"}
    assert model.load_report.fresh == ["classifier.bias", "classifier.weight"]
    _, _, report = load_model(path, "abmil.base", **meta["medmoe_overrides"])
    assert any("num_classes = 2 (from the file's head)" in n for n in report.notes)


class _Evil:
    def __reduce__(self):  # runs os.system on unpickling with weights_only=False
        return (os.system, ("touch /tmp/medmoe_interop_pwned",))


def test_pickle_code_is_not_executed(tmp_path: Path) -> None:
    marker = Path("/tmp/medmoe_interop_pwned")
    marker.unlink(missing_ok=True)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"model": {"w": _Evil()}}, fh, protocol=2)
    with pytest.raises(ValueError, match="holds Python objects that medmoe does not load") as info:
        read_source(path)
    assert "weights_only=False" not in str(info.value)  # PyTorch's advice to run the file's code is not passed on
    assert not marker.exists()


def test_folder_without_weights_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="folder without weights"):
        read_source(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="does not exist"):
            read_source(tmp_path / "nope.bin")


def test_clam_repository_widths_are_read_from_the_file() -> None:
    """The CLAM repository's 512/256 CLAM-MB loads by name alone: widths and branches come off the shapes."""
    _, _, io = _fixture("clam_mb")
    model, _, report = load_model(GOLDEN / "clam_mb.safetensors", "clam.base_ce")
    assert model.config.attention_dim == 256 and model.config.in_dim == 64 and model.config.multi_branch
    assert any("settings from the file's shapes" in n for n in report.notes)
    torch.testing.assert_close(_logits(model, io), io["logits"], rtol=1e-5, atol=1e-6)
