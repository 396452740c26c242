"""The CLI's error layer: which errors are expected, and how settings are spelled as flags."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import pytest
import typer
from typer.main import get_command

from medmoe.cli.error_report import cli_setting_renderer, is_expected
from medmoe.engine.mil.inputs import resolve_task
from medmoe.errors import SETTING, InputError, did_you_mean


def _command():
    app = typer.Typer()

    @app.command()
    def train(
        out: str = typer.Option("runs"),
        resume: bool = typer.Option(False),
        standardize: bool = typer.Option(True),
        seeds: list[int] = typer.Option([0], "--seed"),
        precision: str = typer.Option("auto"),
        set_: list[str] = typer.Option(None, "--set"),
    ) -> None:
        pass

    @app.command()
    def other() -> None:
        pass

    return get_command(app).commands["train"]


@pytest.mark.parametrize(
    ("keyword", "value", "flag"),
    [
        ("precision", "32-true", "--precision 32-true"),
        ("lr", SETTING, "lr (a Python API setting; the command has no flag for it)"),
        ("out_dir", SETTING, "--out"),
        ("out_dir", "my run", "--out 'my run'"),
        ("resume", True, "--resume"),
        ("resume", False, "--no-resume"),
        ("standardize_features", True, "--standardize"),
        ("seeds", [0, 1], "--seed 0 --seed 1"),
        ("model_overrides", SETTING, "--set"),
    ],
)
def test_settings_are_spelled_as_the_commands_flags(keyword, value, flag):
    assert cli_setting_renderer(_command())(keyword, value) == flag


def test_an_input_error_renders_for_both_audiences():
    err = InputError("use another {out_dir} or {resume}", out_dir=SETTING, resume=True)
    assert str(err) == "use another out_dir or resume=True"
    assert err.render(cli_setting_renderer(_command())) == "use another --out or --resume"
    assert InputError("a {dict} stays {as_is}").args[0] == "a {dict} stays {as_is}"


def _builtin_failure() -> None:
    min([])


def test_errors_from_worker_processes_keep_their_kind():
    with ProcessPoolExecutor(1) as pool:
        with pytest.raises(ValueError) as ours:
            pool.submit(resolve_task, "regression", None).result()
        with pytest.raises(ValueError) as builtin:
            pool.submit(_builtin_failure).result()
    assert is_expected(ours.value)  # medmoe's own raise, re-raised from the worker
    assert not is_expected(builtin.value)  # min([]) in a worker: still a bug


def test_did_you_mean():
    assert did_you_mean("abmill", ["abmil", "clam"]) == "did you mean 'abmil'?"
    assert did_you_mean("zzz", ["abmil", "clam"]) == ""


def test_an_input_error_keeps_its_settings_across_processes():
    """A worker's error is pickled to the parent: the command line must still spell its flags."""
    import pickle

    from medmoe.engine.checkpoint import CheckpointError

    err = pickle.loads(pickle.dumps(InputError("lower {lr}; {resume}", lr=SETTING, resume=False)))
    assert err.render(cli_setting_renderer(_command())).startswith("lower lr (a Python API") is True
    assert err.render(cli_setting_renderer(_command())).endswith("; --no-resume")
    assert type(pickle.loads(pickle.dumps(CheckpointError("bad")))) is CheckpointError


def test_typer_exit_caught_by_a_command_passes_through():
    """``typer.Exit`` is a RuntimeError: a command's ``except RuntimeError: fail(err)`` must not turn it into an error."""
    from medmoe.cli.common import fail

    with pytest.raises(typer.Exit) as info:
        try:
            raise typer.Exit(code=0)
        except RuntimeError as err:
            fail(err)
    assert info.value.exit_code == 0


def test_a_positional_argument_is_named_as_the_usage_line_shows_it() -> None:
    """A setting that is a command's positional argument reads ``FEATURES``, not a Python keyword."""
    import click

    from medmoe.cli.error_report import cli_setting_renderer
    from medmoe.errors import SETTING

    command = click.Command("predict", params=[click.Argument(["features"]), click.Option(["--labels"])])
    render = cli_setting_renderer(command)
    assert render("features", SETTING) == "FEATURES"
    assert render("labels", SETTING) == "--labels"
    assert render("features", "my folder") == "FEATURES 'my folder'"
    assert "Python API setting" in render("nonfinite", "zero")
