import logging

from typer.testing import CliRunner

from medmoe import __version__
from medmoe.cli.main import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_doctor_lists_devices_extras_and_install_commands():
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "torch" in result.output and "CUDA" in result.output
    for extra in ("mil", "seg", "wsi", "parity", "dev"):
        assert extra in result.output
    assert "mamba_ssm" in result.output
    assert "native CPU kernels:" in result.output


def test_doctor_lists_model_plugins(monkeypatch):
    monkeypatch.setenv("MEDMOE_PLUGINS", "my_lab.mil_models")
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0 and "my_lab.mil_models ($MEDMOE_PLUGINS)" in result.output
    monkeypatch.delenv("MEDMOE_PLUGINS")
    assert "model plugins: none" in runner.invoke(app, ["doctor"]).output


def test_doctor_reports_native_kernels_switched_off(monkeypatch):
    monkeypatch.setenv("MEDMOE_NATIVE_KERNELS", "0")
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "native CPU kernels: off (MEDMOE_NATIVE_KERNELS=0)" in result.output


def test_bench_mammoth_prints_a_ratio_table(capsys):
    from medmoe.bench.mammoth_layers import main

    main(["--sizes", "200", "--reps", "1"])
    out = capsys.readouterr().out
    header, _, row = out.strip().splitlines()[-3:]
    assert "medmoe/reference time" in header
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "200"
    assert float(cells[2]) > 0 and float(cells[3]) > 0  # medmoe and linear timed
    assert float(cells[5]) > 0  # medmoe/linear ratio computed


def test_configure_logging_levels(capsys):  # the logging state is restored by conftest
    from medmoe.cli.main import configure_logging

    progress, engine = logging.getLogger("medmoe.progress"), logging.getLogger("medmoe.engine.mil.trainer")
    configure_logging()
    configure_logging()  # a second call replaces the handler instead of printing twice
    progress.info("[1/2] run done")
    engine.info("epoch 1/20")
    engine.warning("careful")
    err = capsys.readouterr().err
    assert err.count("[1/2] run done") == 1 and "careful" in err and "epoch 1/20" not in err
    configure_logging(verbose=1)
    engine.info("epoch 2/20")
    assert "epoch 2/20" in capsys.readouterr().err
    configure_logging(quiet=True)
    progress.info("[2/2] run done")
    engine.warning("hidden")
    assert capsys.readouterr().err == ""


def test_bench_mammoth_refuses_cuda_without_a_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(app, ["bench", "mammoth", "--device", "cuda", "-n", "1000"])
    assert result.exit_code == 2 and "CUDA is not available" in result.output
