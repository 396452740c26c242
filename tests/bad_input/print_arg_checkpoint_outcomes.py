"""Print what each case of the argument and checkpoint bad-input tables gives, whatever medmoe is importable.

Not a test: the before/after columns of ``docs/bad-input.md`` for ``test_bad_args.py`` and
``test_bad_checkpoints.py`` come from it. Run it with the current tree, or with an older one first on the path::

    .venv/bin/python tests/bad_input/print_arg_checkpoint_outcomes.py > now.tsv
    git archive 08f2e8f src | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src .venv/bin/python tests/bad_input/print_arg_checkpoint_outcomes.py > before.tsv

Output: one line per case, ``id <TAB> exit code <TAB> what was shown``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import test_bad_args as args_cases
import test_bad_checkpoints as ckpt_cases
from bad_input_harness import Outcome, run_cli


def shown(out: Outcome) -> str:
    """The error line(s), else the exception (a traceback), else the last line."""
    lines = [line.strip() for line in out.output.strip().splitlines() if line.strip()]
    if out.exception is not None and not isinstance(out.exception, SystemExit):
        return " ".join(f"TRACEBACK {type(out.exception).__name__}: {out.exception}".split())
    errors = [line for line in lines if line.lower().startswith("error:")]
    if errors:
        more = len(lines) - lines.index(errors[-1]) - 1
        return " | ".join(errors) + (f" (+{more} more lines)" if more > 0 else "")
    if any(line.startswith("╭") for line in lines):  # typer's framed usage error
        return "PANEL " + " ".join(line.strip("│ ") for line in lines if line.startswith("│"))
    return lines[-1] if lines else ""


def _fill(args: list[str], values: dict[str, str]) -> list[str]:
    out = []
    for a in args:
        for key, value in values.items():
            a = a.replace("{" + key + "}", value)
        out.append(a)
    return out


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="outcomes-"))
    arg_inputs = args_cases.inputs.__wrapped__(_Factory(root / "args"))  # type: ignore[attr-defined]
    for case in [*args_cases.SET_CASES, *args_cases.ARG_CASES, *args_cases.NAME_CASES]:
        tmp = Path(tempfile.mkdtemp(dir=root))
        out = run_cli(_fill(case.values[0], {"tmp": str(tmp), **arg_inputs}))
        print(f"{case.id}\t{out.exit_code}\t{shown(out)[:300]}", flush=True)
    for case in args_cases.CONFIG_CASES:
        args, config, _ = case.values
        tmp = Path(tempfile.mkdtemp(dir=root))
        cfg = tmp / "cfg.yaml"
        if isinstance(config, bytes):
            cfg.write_bytes(config)
        elif config is not None:
            cfg.write_text(config)
        out = run_cli(_fill(args, {"tmp": str(tmp), "cfg": str(cfg), **arg_inputs}))
        print(f"{case.id}\t{out.exit_code}\t{shown(out)[:300]}", flush=True)
    ckpt_inputs = ckpt_cases.inputs.__wrapped__(_Factory(root / "ckpt"))  # type: ignore[attr-defined]
    for case in ckpt_cases.CHECKPOINT_CASES:
        args, damage, _ = case.values
        tmp = Path(tempfile.mkdtemp(dir=root))
        ckpt = tmp / "ckpt"
        shutil.copytree(ckpt_inputs["ckpt"], ckpt)
        if damage is not None:
            damage(ckpt)
        values = {k: str(v) for k, v in {**ckpt_inputs, "ckpt": ckpt, "tmp": tmp}.items()}
        out = run_cli(_fill(args, values))
        print(f"{case.id}\t{out.exit_code}\t{shown(out)[:300]}", flush=True)


class _Factory:
    """Stands in for pytest's ``tmp_path_factory``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def mktemp(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path


if __name__ == "__main__":
    main()
