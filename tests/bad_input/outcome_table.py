"""Record what every bad-input case shows the user, for the table in ``docs/bad-input.md``.

Not a test module: a pytest plugin plus a renderer. Run the suite with it, then render the Markdown rows::

    PYTHONPATH=tests/bad_input MEDMOE_OUTCOMES=/tmp/outcomes.tsv \\
        .venv/bin/python -m pytest -q -p outcome_table tests/bad_input
    .venv/bin/python tests/bad_input/outcome_table.py /tmp/outcomes.tsv > /tmp/rows.md

Every ``medmoe`` command a case runs through the harness is recorded: the case id, the exit code and the
``error:`` line (or the last line printed); paths under temporary folders are shortened to their last parts.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

_current: dict[str, str] = {"id": ""}


def pytest_configure(config) -> None:  # type: ignore[no-untyped-def]
    """Wrap the harness's ``run_cli`` before any case module imports it."""
    import bad_input_harness as harness

    target = os.environ.get("MEDMOE_OUTCOMES")
    if not target:
        return
    original = harness.run_cli

    def recording_run_cli(args):  # type: ignore[no-untyped-def]
        out = original(args)
        lines = [line.strip() for line in out.output.strip().splitlines() if line.strip()]
        errors = [line for line in lines if line.lower().startswith("error:")]
        shown = errors[-1] if errors else (lines[-1] if lines else "")
        with open(target, "a") as fh:
            fh.write(f"{_current['id']}\t{out.exit_code}\t{' '.join(shown.split())}\n")
        return out

    harness.run_cli = recording_run_cli


def pytest_runtest_setup(item) -> None:  # type: ignore[no-untyped-def]
    _current["id"] = item.nodeid


_TMP = re.compile(r"(/tmp|/private/var|/var/folders)/[^\s'\",;)]*")


def _short(text: str) -> str:
    """``/tmp/pytest-of-x/pytest-3/test_case0/cohort/labels.csv`` -> ``cohort/labels.csv``."""

    def repl(match: re.Match[str]) -> str:
        parts = [p for p in match.group(0).split("/") if p]
        keep = [p for p in parts if not p.startswith(("pytest-", "test_", "tmp", "outcomes-", "bad_")) and p != "tmp"]
        return "/".join(keep[-2:]) or parts[-1]

    return _TMP.sub(repl, text)


def render(tsv: Path) -> str:
    """Markdown rows ``| case | exit | what the user gets |``, grouped by test file (last run of a case wins
    when a case runs several commands: its last command is the one it checks)."""
    rows: dict[str, tuple[str, str]] = {}
    for line in tsv.read_text().splitlines():
        node, code, shown = (line.split("\t") + ["", ""])[:3]
        rows[node] = (code, shown)
    out: list[str] = []
    current = None
    for node, (code, shown) in rows.items():
        file, _, case = node.partition("::")
        if file != current:
            current = file
            out.append(f"\n### `{Path(file).name}`\n\n| case | exit | what the user gets |\n|---|---|---|")
        case_id = case[case.index("[") + 1 : -1] if "[" in case else case
        text = _short(shown).replace("|", "\\|")
        out.append(f"| {case_id} | {code} | {text[:400]} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render(Path(sys.argv[1])))
