"""medmoe's Mamba-HoME against golden fixtures written by the reference code (gmum/MambaHoME @ 8574abb).

The fixtures come from ``tests/parity/golden/make_mamba_home_fixtures.py`` (reference network built from a
local checkout, mamba_ssm replaced by mambapy's pure-PyTorch MambaBlock, the release's construction bug
patched). They are loaded here through :func:`medmoe.interop.mamba_home.load_mamba_home_reference`, the
path a user's reference checkpoint takes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medmoe.interop.mamba_home import infer_mamba_home_config, load_mamba_home_reference
from medmoe.interop.report import CheckpointMismatchError
from medmoe.nn import HoME

GOLDEN = Path(__file__).parent / "golden" / "mamba_home"
TOL = {"atol": 2e-4, "rtol": 1e-4}


def _load(name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(GOLDEN / name))


@pytest.fixture(scope="module")
def small():  # type: ignore[no-untyped-def]
    cfg = json.loads((GOLDEN / "small_config.json").read_text())["reference_kwargs"]
    model, report = load_mamba_home_reference(GOLDEN / "small_state.safetensors", group_sizes=cfg["group_list"],
                                              mamba_backend="torch")
    return model, report, cfg


def test_config_read_from_shapes(small) -> None:  # type: ignore[no-untyped-def]
    model, report, ref = small
    c = model.config
    assert c.feature_size == tuple(ref["feat_size"]) and c.depths == tuple(ref["depths"])
    assert c.hidden_size == ref["hidden_size"] and c.num_classes == ref["out_chans"]
    assert c.num_experts == tuple(ref["experts_list"]) and c.num_experts_second == tuple(ref["experts_list_second"])
    assert c.slots_per_expert == ref["num_slots_per_expert_first"] and c.expert_mult == ref["expert_mult"]
    assert c.geglu and c.res_block and (c.d_state, c.d_conv, c.expand) == (16, 4, 2)
    state = _load("small_state.safetensors")
    assert report.loaded == len(state) and report.key_format == "mamba-home-reference"
    assert report.renamed["mamba_encoder.gscs.3.proj.weight"] == "encoder.stages.3.gsc.proj.weight"
    assert "group sizes (64, 32, 16, 8) (given" in report.summary()


def test_logits_match_reference(small) -> None:  # type: ignore[no-untyped-def]
    model, _, _ = small
    io = _load("small_io.safetensors")
    model.train()  # the reference logits were computed in train mode (no dropout, instance norm: same as eval)
    with torch.no_grad():
        logits = model(io["x"])
    torch.testing.assert_close(logits, io["logits"], **TOL)


def test_one_training_step_matches_reference() -> None:
    """DiceCE loss, one AdamW step with the reference's settings, loss again: both losses match."""
    from monai.losses import DiceCELoss

    cfg = json.loads((GOLDEN / "small_config.json").read_text())
    model, _ = load_mamba_home_reference(GOLDEN / "small_state.safetensors",
                                         group_sizes=cfg["reference_kwargs"]["group_list"], mamba_backend="torch")
    io = _load("small_io.safetensors")
    label = io["label"].float()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.AdamW(model.parameters(), **cfg["adamw"])
    model.train()
    loss0 = loss_fn(model(io["x"]), label)
    opt.zero_grad()
    loss0.backward()
    opt.step()
    with torch.no_grad():
        loss1 = loss_fn(model(io["x"]), label)
    torch.testing.assert_close(loss0.reshape(1), io["loss0"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss1.reshape(1), io["loss1"], atol=1e-5, rtol=1e-5)
    assert float(io["loss1"]) < float(io["loss0"])


def test_home_layer_at_paper_stage0_sizes() -> None:
    ref = json.loads((GOLDEN / "home_paper_stage0_config.json").read_text())["reference_kwargs"]
    layer = HoME(ref["dim"], ref["num_experts_first"], ref["num_experts_second"], ref["group_size"],
                 slots_per_expert=ref["num_slots_per_expert_first"], mult=ref["expert_mult"], geglu=ref["geglu"],
                 dropout=ref["dropout"])
    layer.load_state_dict(_load("home_paper_stage0_state.safetensors"), strict=True)
    io = _load("home_paper_stage0_io.safetensors")
    with torch.no_grad():
        out = layer(io["x"])
    torch.testing.assert_close(out, io["out"], **TOL)


def test_wrong_or_foreign_checkpoints_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    state = _load("small_state.safetensors")
    extra = dict(state, **{"mamba_encoder.extra_head.weight": torch.zeros(2)})
    with pytest.raises(CheckpointMismatchError, match="extra_head"):
        load_mamba_home_reference(extra, group_sizes=(64, 32, 16, 8))
    missing = {k: v for k, v in state.items() if k != "decoder3.conv_block.conv1.conv.weight"}
    with pytest.raises(CheckpointMismatchError, match="decoder3"):
        load_mamba_home_reference(missing, group_sizes=(64, 32, 16, 8))
    with pytest.raises(CheckpointMismatchError, match="not a Mamba-HoME reference"):
        load_mamba_home_reference({"layer.weight": torch.zeros(1)})
    assert infer_mamba_home_config({"_forward_module." + k: v for k, v in state.items()}).feature_size == (4, 8, 16, 32)


def test_reference_pth_checkpoint_loads_without_pickle_code(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The reference's train.py layout {step, model, optimizer, scheduler} in a torch file."""
    state = _load("small_state.safetensors")
    path = tmp_path / "MambaHoME_800.pth"
    torch.save({"step": 10, "model": state, "optimizer": {"state": {}, "param_groups": []},
                "scheduler": {"last_epoch": 1}}, path)
    model, report = load_mamba_home_reference(path, group_sizes=(64, 32, 16, 8))
    assert report.file_format == "torch" and any("'model'" in n for n in report.notes)
    torch.testing.assert_close(model.encoder.downsample[0].weight, state["mamba_encoder.downsample_layers.0.0.weight"])
