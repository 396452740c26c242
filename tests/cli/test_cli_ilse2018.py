"""``medmoe mil train --config ilse2018``: the packaged run configuration of Ilse et al. (2018)."""

import json
import shutil
from importlib import resources
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from medmoe.cli.main import app
from medmoe.cli.run_configs import list_run_configs, resolve_run_config

runner = CliRunner()


def packaged() -> Path:
    return Path(str(resources.files("medmoe") / "configs" / "runs" / "ilse2018.yaml"))


def test_packaged_and_listed():
    assert packaged().is_file()
    assert "ilse2018" in list_run_configs()


def test_resolves_by_name_and_by_file(tmp_path):
    assert resolve_run_config(Path("ilse2018")) == packaged()
    mine = tmp_path / "ilse2018"  # a user's file of the same name wins over the packaged one
    mine.write_text("epochs: 3\n")
    assert resolve_run_config(mine) == mine
    assert resolve_run_config(tmp_path / "x.yaml") == tmp_path / "x.yaml"  # missing file: reported by the reader
    with pytest.raises(typer.BadParameter, match="ilse2018"):
        resolve_run_config(Path("nosuch_protocol"))


def test_the_protocol_it_states():
    """The values the docs list (docs/reproducing-ilse2018.md): gated network, 5 x 10-fold, Adam 5e-4
    with L2 weight decay 5e-3 and a constant learning rate, 100 epochs, early stopping on validation loss."""
    cfg = yaml.safe_load(packaged().read_text())
    assert cfg["model"] == "ilse.base" and cfg["k"] == 10 and cfg["seed"] == [0, 1, 2, 3, 4]
    assert cfg["optimizer"] == "adam" and cfg["lr"] == cfg["min-lr"] == 0.0005 and cfg["weight-decay"] == 0.005
    assert cfg["epochs"] == 100 and cfg["early-stopping"] == "loss" and cfg["grad-clip"] == 0


def run_train(args):
    result = runner.invoke(app, ["mil", "train", *args])
    assert result.exit_code == 0, result.output
    return result


def test_tiny_run_by_name(tmp_path):
    """A real dataset (MUSK1), the packaged settings with a few epochs: the run records them."""
    out = tmp_path / "by_name"
    result = run_train(["--config", "ilse2018", "-d", "musk1", "--k", "3", "--seed", "0", "--epochs", "2",
                        "--out", str(out)])
    assert "accuracy" in (out / "summary.md").read_text() and "accuracy" in result.output
    saved = json.loads((out / "results.json").read_text())
    assert saved["model_name"] == "ilse.base"
    tc = saved["train_config"]
    assert (tc["optimizer"], tc["lr"], tc["min_lr"], tc["weight_decay"]) == ("adam", 0.0005, 0.0005, 0.005)
    assert (tc["early_stopping"], tc["patience"], tc["epochs"], tc["grad_clip"]) == ("loss", 20, 2, 0)
    assert len(saved["runs"]) == 3


@pytest.mark.slow
def test_tiny_run_by_file_with_model_switch(tmp_path):
    """The same settings from a copy of the file; ``-m`` switches to the plain-attention network."""
    copy = tmp_path / "protocol.yaml"
    shutil.copy(packaged(), copy)
    out2 = tmp_path / "by_file"
    run_train(["--config", str(copy), "-d", "musk1", "--k", "3", "--seed", "0", "--epochs", "1",
               "-m", "ilse.attention", "--out", str(out2)])
    saved2 = json.loads((out2 / "results.json").read_text())
    assert saved2["model_name"] == "ilse.attention" and saved2["train_config"]["optimizer"] == "adam"
