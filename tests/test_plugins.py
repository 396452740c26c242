"""Models of your own without forking medmoe: a plugin module registers them, every command then knows them."""

import csv
import os
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from medmoe import registry
from medmoe.cli.main import app
from medmoe.data import make_synthetic_feature_folder

PLUGIN = textwrap.dedent(
    """
    import torch
    from torch import nn

    from medmoe import register_model
    from medmoe.models.mil.base import MILConfig, MILModel, MILOutput


    @register_model("{name}", configs={{"base": {{"embed_dim": 8, "dropout": 0.0}}}}, description="plugin test")
    class SumMIL(MILModel):
        def __init__(self, config: MILConfig) -> None:
            super().__init__(config)
            self.classifier = nn.Linear(config.embed_dim, config.num_classes)

        def forward(self, x, mask=None, *, label=None, return_attention=False, return_routing=False):
            x, mask = self.check_input(x, mask)
            emb = self.embed(x, mask)
            h = torch.relu(emb.tokens)
            if emb.mask is not None:
                h = h * emb.mask.unsqueeze(-1)
            slide = h.sum(1) / h.shape[1]
            return MILOutput(logits=self.classifier(slide), slide_features=slide)
    """
)


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch):
    """Plugin models registered here must not leak into the tests that walk every registered model."""
    registry.list_models()  # the built-in models are discovered once, before the snapshot
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_PLUGINS_LOADED", set(registry._PLUGINS_LOADED))
    monkeypatch.setattr(registry, "_DISCOVERED", True)


def _write_plugin(folder, name):
    path = folder / f"{name}_plugin.py"
    path.write_text(PLUGIN.format(name=name))
    return path


def test_load_plugin_from_a_file_and_errors(tmp_path):
    path = _write_plugin(tmp_path, "plugfile")
    registry.load_plugin(str(path))
    registry.load_plugin(str(path))  # loaded once: no "already registered" error
    assert "plugfile.base" in registry.list_models("plug*")
    model = registry.create_model("plugfile", num_classes=3, in_dim=6)
    assert model(__import__("torch").randn(2, 5, 6)).logits.shape == (2, 3)
    with pytest.raises(ValueError, match="cannot load the medmoe plugin 'no_such_module_xyz'"):
        registry.load_plugin("no_such_module_xyz")
    with pytest.raises(ValueError, match="no such file"):
        registry.load_plugin(str(tmp_path / "missing.py"))
    with pytest.raises(ValueError, match="MEDMOE_PLUGINS"):
        registry.create_model("not_a_model_anywhere")


def test_entry_points_are_discovered_and_broken_ones_skipped(tmp_path, monkeypatch):
    _write_plugin(tmp_path, "plugentry")
    monkeypatch.syspath_prepend(str(tmp_path))

    class EntryPoint:
        def __init__(self, name, value):
            self.name, self.value = name, value

        def load(self):
            return __import__(self.value)

    found = [EntryPoint("good", "plugentry_plugin"), EntryPoint("bad", "broken_module_xyz")]
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: found if group == registry.PLUGIN_GROUP else [])
    monkeypatch.setattr(registry, "_DISCOVERED", False)
    with pytest.warns(UserWarning, match="skipped the medmoe plugin 'bad'"):
        names = registry.list_models("plugentry*")
    assert names == ["plugentry.base"]


def test_cli_trains_and_evaluates_a_plugin_model_in_worker_processes(tmp_path, monkeypatch):
    monkeypatch.delenv(registry.PLUGIN_ENV, raising=False)
    path = _write_plugin(tmp_path, "plugcli")
    data = make_synthetic_feature_folder(tmp_path / "data", n_slides=12, n_patches=(4, 8), dim=6, seed=0)
    out = tmp_path / "run"
    runner = CliRunner()
    args = ["--plugin", str(path), "mil", "train", "-m", "plugcli", "--features", str(data.features_dir),
            "--labels", str(data.labels_csv), "--k", "3", "--epochs", "2", "--out", str(out), "--jobs", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert str(path) in os.environ[registry.PLUGIN_ENV]  # what the spawned workers import
    assert len(list(out.glob("seed0/fold*/checkpoint/model.safetensors"))) == 3
    rows = list(csv.DictReader((out / "test_predictions.csv").open()))
    assert len(rows) == 12
    result = runner.invoke(app, ["--plugin", "no_such_module_xyz", "mil", "models"])
    assert result.exit_code == 2 and "cannot load the medmoe plugin" in result.output

    # a fresh process finds the model through the environment alone (eval of its checkpoint)
    env = {**os.environ, registry.PLUGIN_ENV: str(path)}
    proc = subprocess.run(
        [sys.executable, "-m", "medmoe.cli.main", "mil", "eval", str(out / "seed0" / "fold0" / "checkpoint"),
         "--features", str(data.features_dir), "--labels", str(data.labels_csv)],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0 and '"auroc"' in proc.stdout, proc.stdout + proc.stderr
