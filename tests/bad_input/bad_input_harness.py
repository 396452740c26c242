"""The bad-input suite's harness: run a ``medmoe`` command as a user would and check what they get.

Each case asserts three things (see ``assert_clear_error``):

1. the exit code (2 = the user's input is wrong, as every command exits on bad input);
2. one ``error:`` line that says what to change (case-insensitive substrings), and no traceback;
3. nothing already on disk changed: every file under the watched folders hashes the same before and after.

Cases live in ``tests/bad_input/test_bad_*.py`` as tables (``pytest.mark.parametrize`` with readable ids).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from medmoe.cli.main import app

runner = CliRunner()


@dataclass
class Outcome:
    """What a user saw: exit code, everything printed (stdout and stderr), and the exception if any."""

    exit_code: int
    output: str
    exception: BaseException | None

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.output.splitlines() if line.lower().startswith("error:")]


def tree_digest(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every regular file under ``root`` (a file: itself; missing: empty)."""
    root = Path(root)
    if root.is_file():
        return {root.name: hashlib.sha256(root.read_bytes()).hexdigest()}
    if not root.is_dir():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def run_cli(args: Sequence[str]) -> Outcome:
    """Run ``medmoe ARGS`` in-process, as the installed command would."""
    result = runner.invoke(app, [str(a) for a in args])
    return Outcome(result.exit_code, result.output, result.exception)


def assert_clear_error(
    args: Sequence[str],
    contains: Iterable[str],
    *,
    watch: Iterable[Path] = (),
    code: int = 2,
) -> Outcome:
    """Run ``medmoe ARGS`` and assert a clear, harmless refusal.

    Args:
        args: the command line after ``medmoe``.
        contains: substrings (case-insensitive) the one ``error:`` line must hold: what is wrong and
            what to change (a flag, a file name, a value).
        watch: files or folders that must be byte-identical afterwards (hash before and after).
        code: the expected exit code.
    """
    watch = [Path(w) for w in watch]
    before = {str(w): tree_digest(w) for w in watch}
    out = run_cli(args)
    assert "Traceback" not in out.output, out.output
    assert out.exit_code == code, f"exit code {out.exit_code}, wanted {code}:\n{out.output}"
    errors = out.error_lines
    assert len(errors) == 1, f"wanted exactly one 'error:' line, got {len(errors)}:\n{out.output}"
    line = errors[0].lower()
    for needle in contains:
        assert needle.lower() in line, f"{needle!r} not in the error line: {errors[0]!r}"
    after = {str(w): tree_digest(w) for w in watch}
    assert after == before, f"files changed on disk: {sorted(set(after) ^ set(before)) or 'contents'}"
    return out
