"""Model sizes checked on the meta device before anything is allocated (medmoe.model_size)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import medmoe
from medmoe.errors import SizeLimitError
from medmoe.model_size import (
    MAX_MODEL_GB_ENV,
    build_within_limit,
    check_model_size,
    format_bytes,
    max_model_bytes,
    meta_model_bytes,
)


@pytest.mark.parametrize("name", ["abmil.base", "transmil.base_mammoth", "linmil.base", "dtfd.base"])
def test_meta_estimate_equals_the_real_weights(name):
    model = medmoe.create_model(name, in_dim=32)
    real = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    entry = medmoe.registry.get_entry(name.split(".")[0])
    config = model.config
    assert meta_model_bytes(lambda: entry.model_cls(config)) == real


def test_a_hostile_config_is_refused_without_allocating(monkeypatch):
    monkeypatch.delenv(MAX_MODEL_GB_ENV, raising=False)
    calls = []

    def build():
        calls.append(torch.empty(0).device.type)  # where the factory functions allocate during this build
        return torch.nn.Linear(10**6, 10**6)  # 4 TB in float32

    with pytest.raises(SizeLimitError, match=r"4\.0 TB of weights.*memory available"):
        build_within_limit(build, "test model")
    assert calls == ["meta"]  # built once, on the meta device only


def test_the_limit_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(MAX_MODEL_GB_ENV, "0.000001")  # 1 kB
    assert max_model_bytes() == 1000
    with pytest.raises(SizeLimitError, match=f"limit set by {MAX_MODEL_GB_ENV}"):
        check_model_size(lambda: torch.nn.Linear(100, 100), "test model")
    assert check_model_size(lambda: torch.nn.Linear(10, 10), "test model") == 440
    for bad in ("0", "-1", "lots"):
        monkeypatch.setenv(MAX_MODEL_GB_ENV, bad)
        with pytest.raises(SizeLimitError, match="positive number of GB"):
            max_model_bytes()


def test_create_model_and_checkpoint_configs_are_checked(monkeypatch):
    monkeypatch.delenv(MAX_MODEL_GB_ENV, raising=False)
    with pytest.raises(SizeLimitError, match="model abmil.base"):
        medmoe.create_model("abmil.base", in_dim=10**6, embed_dim=10**6)
    with pytest.raises(ValueError, match="TB of weights"):
        medmoe.registry.check_model_fits("transmil.base", in_dim=10**6, embed_dim=10**6)
    from medmoe.engine.checkpoint import build_model_from_info

    model = medmoe.create_model("meanmil.base", in_dim=8, embed_dim=8)
    info = {"model_name": "meanmil.base", "model_config": {**dataclasses.asdict(model.config), "in_dim": 10**6,
                                                           "embed_dim": 10**6}}
    with pytest.raises(SizeLimitError, match="checkpoint's model meanmil.base"):
        build_model_from_info(info)


def test_segmentation_configs_are_checked(monkeypatch):
    from medmoe.models.seg import create_seg_model, seg_model_from_config

    config = dataclasses.asdict(create_seg_model("unet.small", in_channels=1, num_classes=2).config)
    real = sum(p.numel() * 4 for p in seg_model_from_config("unet.small", config).parameters())
    assert meta_model_bytes(lambda: seg_model_from_config("unet.small", config)) >= real
    monkeypatch.setenv(MAX_MODEL_GB_ENV, str(real / 2 / 1e9))
    with pytest.raises(SizeLimitError, match="unet.small"):
        check_model_size(lambda: seg_model_from_config("unet.small", config), "the checkpoint's model unet.small")


def test_format_bytes():
    assert format_bytes(360) == "0.4 kB"
    assert format_bytes(1_900_000) == "1.9 MB"
    assert format_bytes(4 * 10**12) == "4.0 TB"
