import json
import logging
import os

import pytest
import torch

import medmoe
from medmoe.engine import checkpoint as ck
from medmoe.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_trainer_state,
    read_checkpoint_info,
    save_checkpoint,
    save_trainer_state,
)

MODELS = [
    ("abmil.base", {"embed_dim": 16, "attn_dim": 8}),
    (
        "abmil.base_mammoth",
        {
            "embed_dim": 16,
            "attn_dim": 8,
            "patch_embed_args": {"num_experts": 3, "num_slots": 2, "num_heads": 2, "slot_dim": 8},
        },
    ),
    ("clam.base", {"embed_dim": 16, "attention_dim": 8, "k_sample": 2}),
]


def _model(name, overrides, seed=0):
    torch.manual_seed(seed)
    return medmoe.create_model(name, num_classes=3, in_dim=12, **overrides).eval()


@pytest.mark.parametrize("name, overrides", MODELS)
def test_round_trip(tmp_path, name, overrides):
    model = _model(name, overrides)
    extra = {
        "seed": 7,
        "split_hash": "abc",
        "class_names": ["a", "b", "c"],
        "epoch": 3,
        "feature_stats": {"mean": torch.zeros(12), "std": torch.ones(12)},
        "metrics": {"val": {"auroc": 0.9, "kappa": float("nan")}},
    }
    save_checkpoint(tmp_path / "ck", model, extra)
    loaded, info = load_checkpoint(tmp_path / "ck")
    assert type(loaded) is type(model)
    assert loaded.config == model.config  # every config field round-trips
    assert loaded.model_name == model.model_name == info["model_name"]
    assert info["medmoe_version"] == medmoe.__version__
    assert info["seed"] == 7 and info["split_hash"] == "abc" and info["epoch"] == 3
    assert info["feature_stats"]["std"] == [1.0] * 12
    assert info["metrics"]["val"]["kappa"] is None  # NaN is stored as null
    on_disk = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert on_disk == info
    x = torch.randn(2, 9, 12)
    torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_crash_while_writing_weights_keeps_old_checkpoint(tmp_path, monkeypatch):
    old = _model("abmil.base", MODELS[0][1], seed=0)
    save_checkpoint(tmp_path, old, {"epoch": 1})
    new = _model("abmil.base", MODELS[0][1], seed=1)

    def crash(fd):
        raise OSError("simulated power loss during the write")

    monkeypatch.setattr(ck.os, "fsync", crash)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(tmp_path, new, {"epoch": 2})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]  # no temp files
    loaded, info = load_checkpoint(tmp_path)
    assert info["epoch"] == 1
    for k, v in _state(old).items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_crash_between_weights_and_config(tmp_path, monkeypatch, caplog):
    save_checkpoint(tmp_path, _model("abmil.base", MODELS[0][1], seed=0), {"epoch": 1})
    new = _model("abmil.base", MODELS[0][1], seed=1)

    def crash(path, text):
        raise KeyboardInterrupt("killed after the weights were committed")

    monkeypatch.setattr(ck, "atomic_write_text", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, new, {"epoch": 2})
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING):
        loaded, info = load_checkpoint(tmp_path)
    assert "interrupted save" in caplog.text
    assert info["epoch"] == 2  # the weights' embedded config wins, consistent with the weights
    for k, v in _state(new).items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_missing_and_corrupt(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        load_checkpoint(tmp_path / "empty")
    save_checkpoint(tmp_path / "ck", _model("abmil.base", MODELS[0][1]))
    weights = tmp_path / "ck" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "ck")
    with pytest.raises(CheckpointError):
        read_checkpoint_info(tmp_path / "ck")


def test_save_rejects_reserved_keys_and_non_medmoe_models(tmp_path):
    model = _model("abmil.base", MODELS[0][1])
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path, model, {"model_name": "x"})
    with pytest.raises(ValueError, match="dataclass `config`"):
        save_checkpoint(tmp_path, torch.nn.Linear(2, 2))
    assert not any(tmp_path.iterdir())  # nothing written


def test_trainer_state_round_trip_and_corruption(tmp_path):
    state = {
        "epoch": 3,
        "rng": torch.get_rng_state(),
        "history": [{"a": 1.0, "best": True}],
        "python": (3, tuple(range(5)), None),
    }
    path = tmp_path / "trainer_state.pt"
    save_trainer_state(path, state)
    loaded = load_trainer_state(path)
    assert loaded["epoch"] == 3 and torch.equal(loaded["rng"], state["rng"])
    assert loaded["python"] == state["python"]
    assert [p.name for p in tmp_path.iterdir()] == ["trainer_state.pt"]
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_trainer_state(path)
    with pytest.raises(CheckpointError, match="no trainer state"):
        load_trainer_state(tmp_path / "missing.pt")
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    assert os.path.exists(path)
