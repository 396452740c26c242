"""One checkpoint format and one ``load_checkpoint`` for every model family (MIL, segmentation, MOSAIC),
including checkpoints written before ``config.json`` recorded the family."""

import json

import pytest
import torch

import medmoe
from medmoe.engine import load_mosaic_checkpoint, load_seg_checkpoint
from medmoe.engine.checkpoint import (
    CONFIG_NAME,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    CheckpointError,
    checkpoint_family,
    load_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
)
from medmoe.engine.mosaic.training import save_mosaic_checkpoint

pytest.importorskip("monai")

SEG_INFO = {
    "class_names": ["bg", "a", "b"],
    "transform_config": {"modality": "other", "roi_size": [16, 16, 16]},
}
FLAGS = ["pathmnist", "organmnist3d"]


def _mil():
    torch.manual_seed(0)
    return medmoe.create_model(
        "abmil.base_mammoth",
        num_classes=3,
        in_dim=12,
        embed_dim=16,
        attn_dim=8,
        patch_embed_args={"num_experts": 3, "num_slots": 2, "num_heads": 2, "slot_dim": 8},
    )


def _seg():
    torch.manual_seed(0)
    return medmoe.create_model("unet.small", num_classes=3)


def _vit():
    torch.manual_seed(0)
    model = medmoe.create_model("mosaic.tiny", datasets=FLAGS, size=28)
    with torch.no_grad():  # move every tensor off its initial value (some start at zero)
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


def _mil_out(model):
    return model(torch.randn(2, 7, 12, generator=torch.Generator().manual_seed(1))).logits


def _seg_out(model):
    return model(torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1)))


def _vit_out(model):
    g = torch.Generator().manual_seed(1)
    return torch.cat(
        [
            model(torch.rand(2, 3, 28, 28, generator=g), "pathmnist").logits.flatten(),
            model(torch.rand(2, 1, 28, 28, 28, generator=g), "organmnist3d").logits.flatten(),
        ]
    )


FAMILY_CASES = [
    ("mil", _mil, _mil_out, {"class_names": ["a", "b", "c"]}),
    ("seg", _seg, _seg_out, SEG_INFO),
    ("vit", _vit, _vit_out, {"datasets": FLAGS}),
]


def _write_version_1(folder):
    """Rewrite a checkpoint as medmoe wrote it before the family was recorded: no ``family`` key, format 1,
    in ``config.json`` and in the copy embedded in the weights."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    weights = folder / WEIGHTS_NAME
    with safe_open(str(weights), framework="pt") as fh:
        meta = fh.metadata()
    info = json.loads(meta["medmoe_config"])
    del info["family"]
    info["format_version"] = 1
    text = json.dumps(info, indent=2)
    save_file(load_file(str(weights)), str(weights), metadata={**meta, "medmoe_config": text})
    (folder / CONFIG_NAME).write_text(text + "\n")


@pytest.mark.parametrize("family, build, run, extra", FAMILY_CASES, ids=[c[0] for c in FAMILY_CASES])
def test_save_load_round_trip_of_every_family(tmp_path, family, build, run, extra):
    model = build().eval()
    save_checkpoint(tmp_path / "ck", model, extra)
    info = json.loads((tmp_path / "ck" / CONFIG_NAME).read_text())
    assert info["family"] == family and info["format_version"] == FORMAT_VERSION == 2
    loaded, settings = load_checkpoint(tmp_path / "ck")
    assert type(loaded) is type(model) and not loaded.training
    assert settings == info and settings["model_name"] == model.model_name
    with torch.no_grad():
        torch.testing.assert_close(run(loaded), run(model), rtol=0, atol=0)
    same, _ = load_checkpoint(tmp_path / "ck", family=family)  # the family a caller asks for
    assert type(same) is type(model)


@pytest.mark.parametrize("family, build, run, extra", FAMILY_CASES, ids=[c[0] for c in FAMILY_CASES])
def test_checkpoints_written_before_the_family_was_recorded_still_load(tmp_path, family, build, run, extra):
    model = build().eval()
    save_checkpoint(tmp_path / "old", model, extra)
    _write_version_1(tmp_path / "old")
    on_disk = read_checkpoint_info(tmp_path / "old")
    assert "family" not in on_disk and on_disk["format_version"] == 1
    assert checkpoint_family(on_disk, tmp_path / "old") == family  # inferred from what the folder holds
    loaded, info = load_checkpoint(tmp_path / "old", family=family)
    assert info["family"] == family and type(loaded) is type(model)
    with torch.no_grad():
        torch.testing.assert_close(run(loaded), run(model), rtol=0, atol=0)
    # saved again from what was loaded: the family is recorded now
    save_checkpoint(tmp_path / "new", loaded, {k: v for k, v in info.items() if k in extra or k == "family"})
    assert read_checkpoint_info(tmp_path / "new")["family"] == family


def test_an_old_mosaic_checkpoint_is_recognised_by_its_teacher_file(tmp_path):
    info = {"model_name": "renamed", "model_config": {}}
    (tmp_path / "teacher.safetensors").write_bytes(b"")
    assert checkpoint_family(info, tmp_path) == "vit"
    assert checkpoint_family(info) == "mil"


def test_mosaic_teacher_and_run_folder(tmp_path):
    student, teacher = _vit().eval(), _vit().eval()
    with torch.no_grad():
        for p in teacher.parameters():
            if p.requires_grad:
                p.add_(0.1)
    save_mosaic_checkpoint(tmp_path / "run" / "checkpoint", student, {"seed": 0}, teacher=teacher)
    loaded, info = load_checkpoint(tmp_path / "run")  # a run folder: its checkpoint/ is loaded
    assert info["family"] == "vit"
    loaded_teacher, _ = load_checkpoint(tmp_path / "run" / "checkpoint" / WEIGHTS_NAME, teacher=True)
    with torch.no_grad():
        torch.testing.assert_close(_vit_out(loaded), _vit_out(student), rtol=0, atol=0)
        torch.testing.assert_close(_vit_out(loaded_teacher), _vit_out(teacher), rtol=0, atol=0)
    with pytest.warns(DeprecationWarning, match="load_mosaic_checkpoint is deprecated"):
        alias, _ = load_mosaic_checkpoint(tmp_path / "run", teacher=True)
    with torch.no_grad():
        torch.testing.assert_close(_vit_out(alias), _vit_out(teacher), rtol=0, atol=0)


def test_a_caller_that_needs_one_family_refuses_the_others(tmp_path):
    save_checkpoint(tmp_path / "mil", _mil(), {"class_names": ["a", "b", "c"]})
    save_checkpoint(tmp_path / "seg", _seg(), SEG_INFO)
    save_checkpoint(tmp_path / "vit", _vit(), {})
    with pytest.raises(
        CheckpointError, match="not a segmentation checkpoint.*MIL model 'abmil.base_mammoth'.*mil eval"
    ):
        load_checkpoint(tmp_path / "mil", family="seg")
    with pytest.raises(
        CheckpointError, match=r"segmentation checkpoint \(unet.small\), not a MIL one.*seg infer"
    ):
        load_checkpoint(tmp_path / "seg", family="mil")
    with pytest.raises(CheckpointError, match="not a MOSAIC one"):
        load_checkpoint(tmp_path / "seg", family="vit")
    with pytest.raises(CheckpointError, match="MOSAIC checkpoint.*not a MIL one.*mosaic eval"):
        load_checkpoint(tmp_path / "vit", family="mil")
    with pytest.raises(ValueError, match="teacher=True applies to MOSAIC checkpoints"):
        load_checkpoint(tmp_path / "mil", teacher=True)
    with pytest.raises(ValueError, match="unknown model family 'cnn'"):
        load_checkpoint(tmp_path / "mil", family="cnn")
    with pytest.warns(DeprecationWarning, match="load_seg_checkpoint is deprecated"):
        model, info = load_seg_checkpoint(tmp_path / "seg")
    assert (
        model.family == "seg"
        and info["model_name"] == "unet.small"
        and info["class_names"] == ["bg", "a", "b"]
    )
    with (
        pytest.warns(DeprecationWarning),
        pytest.raises(CheckpointError, match="not a segmentation checkpoint"),
    ):
        load_seg_checkpoint(tmp_path / "mil")


def test_an_unknown_family_or_a_mismatching_one_is_an_error(tmp_path):
    save_checkpoint(tmp_path / "ck", _mil(), {})
    with pytest.raises(ValueError, match="extra_state key 'family' is reserved"):
        save_checkpoint(tmp_path / "ck2", _mil(), {"family": "seg"})
    info = read_checkpoint_info(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="family 'audio' is unknown.*mil, seg, vit.*newer medmoe"):
        checkpoint_family({**info, "family": "audio"})
