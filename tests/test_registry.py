import subprocess
import sys
import zipfile
from dataclasses import dataclass

import pytest
import torch

import medmoe
from medmoe.models.mil.base import MILConfig, MILModel, MILOutput
from medmoe.registry import ENCODER_DIMS, get_config, parse_model_name


def test_encoder_table_has_all_fourteen_mil_lab_encoders():
    assert len(ENCODER_DIMS) == 14
    assert ENCODER_DIMS["uni"] == 1024 and ENCODER_DIMS["uni_v2"] == 1536 and ENCODER_DIMS["conch_v15"] == 768
    assert ENCODER_DIMS["virchow2"] == 2560 and ENCODER_DIMS["conch_v1"] == 512


def test_name_grammar_pads_defaults():
    assert str(parse_model_name("abmil")) == "abmil.base.uni.none"
    a = medmoe.create_model("abmil")
    b = medmoe.create_model("abmil.base.uni")
    assert a.config == b.config and a.config.in_dim == 1024 and a.config.num_classes == 2


def test_encoder_sets_in_dim_and_in_dim_override_wins():
    assert get_config("abmil.base.conch_v15").in_dim == 768
    assert get_config("abmil.base.uni", in_dim=708).in_dim == 708
    assert get_config("abmil.base.conch").in_dim == 512  # pre-PR-17 name kept as an alias


def test_mammoth_config_builds_mammoth_patch_embed():
    model = medmoe.create_model("abmil.base_mammoth.uni", num_classes=3)
    from medmoe.nn import Mammoth

    assert isinstance(model.patch_embed, Mammoth)
    assert model.patch_embed.lora_rank == 17
    out = model(torch.randn(1, 50, 1024), return_attention=True)
    assert out.logits.shape == (1, 3) and out.attention.shape == (1, 1, 50)


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("nosuchmodel", {}, "unknown model"),
        ("abmil.nosuchconfig", {}, "has no config"),
        ("abmil.base.nosuchencoder", {}, "unknown encoder"),
        ("abmil..uni", {}, "must look like"),
        ("abmil.base.uni.pc108-24k", {}, "checkpoint_path"),
        ("abmil", {"not_a_field": 1}, "valid settings"),
        ("", {}, "non-empty"),
    ],
)
def test_bad_names_and_overrides_raise_value_error(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        medmoe.create_model(name, **kwargs)


def test_overrides_and_patch_embed_args_merge():
    cfg = get_config("abmil.base_mammoth", dropout=0.1, patch_embed_args={"num_experts": 8})
    assert cfg.dropout == 0.1
    assert cfg.patch_embed_args["num_experts"] == 8 and cfg.patch_embed_args["num_slots"] == 10


def test_every_model_has_base_and_base_mammoth():
    names = set(medmoe.list_models())
    models = {n.split(".")[0] for n in names}
    assert {"abmil", "clam", "dsmil", "transmil", "transformer", "ilra", "rrt", "wikg", "dtfd", "meanmil",
            "maxmil", "linmil"} <= models
    for m in models:
        assert f"{m}.base" in names and f"{m}.base_mammoth" in names, m


def test_register_a_model_from_outside_the_package():
    @dataclass
    class FirstConfig(MILConfig):
        pass

    @medmoe.register_model("firstinstance_test", configs={"base": {"embed_dim": 8, "dropout": 0.0}})
    class FirstInstance(MILModel):
        config_class = FirstConfig

        def __init__(self, config):
            super().__init__(config)
            self.head = torch.nn.Linear(config.embed_dim, config.num_classes)

        def forward(self, x, mask=None, *, label=None, return_attention=False, return_routing=False):
            x, mask = self.check_input(x, mask)
            return MILOutput(logits=self.head(self.embed(x, mask).tokens[:, 0]))

    model = medmoe.create_model("firstinstance_test.base", num_classes=4, in_dim=5)
    assert model(torch.randn(2, 3, 5)).logits.shape == (2, 4)
    assert "firstinstance_test.base" in medmoe.list_models("firstinstance*")


def test_checkpoint_path_round_trip(tmp_path):
    from safetensors.torch import save_file

    model = medmoe.create_model("abmil", in_dim=12)
    path = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(path))
    loaded = medmoe.create_model("abmil", in_dim=12, checkpoint_path=str(path))
    x = torch.randn(1, 7, 12)
    model.eval(), loaded.eval()
    torch.testing.assert_close(model(x).logits, loaded(x).logits)
    with pytest.raises(ValueError, match="does not exist"):
        medmoe.create_model("abmil", checkpoint_path=str(tmp_path / "missing.pt"))


def test_wheel_ships_the_yaml_configs(tmp_path):
    """A non-editable install must find the configs (MIL-Lab PR #19) and the native kernel sources."""
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(root)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"could not build a wheel here: {proc.stderr.strip()[-200:]}")
    wheel = next(tmp_path.glob("medmoe-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    yamls = {n for n in names if n.endswith(".yaml")}
    for model in ("abmil", "clam", "transmil", "linmil"):
        assert f"medmoe/configs/mil/{model}/base.yaml" in yamls
        assert f"medmoe/configs/mil/{model}/base_mammoth.yaml" in yamls
    assert "medmoe/nn/kernels/slot_dispatch.cpp" in names
