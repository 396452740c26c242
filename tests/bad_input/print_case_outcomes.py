"""Print what each case of the data and inference bad-input tables gives, whatever medmoe is importable.

Not a test: the before/after table of ``docs/bad-input.md`` (data and inference cases) comes from it. Run it with the current
tree, or with an older one first on the path to see what a case gave before::

    .venv/bin/python tests/bad_input/print_case_outcomes.py [CASE_ID ...] > now.tsv
    git archive 08f2e8f src | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src .venv/bin/python tests/bad_input/print_case_outcomes.py CASE_ID ... > before.tsv

Careful with an old tree: ``h5-declares-200m-x-8-in-2kb`` and ``h5-declared-never-written`` make it read
gigabytes of fill values (skip them). Output: one line per case, ``id <TAB> exit code <TAB> what was shown``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import test_bad_data as data_cases
import test_bad_inference as inference_cases
from bad_input_harness import Outcome, run_cli


def shown(out: Outcome) -> str:
    """The error line, else the last 'wrote ...' line, else the exception (a traceback) or the last line."""
    lines = [line for line in out.output.strip().splitlines() if line.strip()]
    if out.exception is not None and not isinstance(out.exception, SystemExit):
        return f"TRACEBACK {type(out.exception).__name__}: {out.exception}"
    errors = [line for line in lines if line.lower().startswith("error:")]
    done = [line for line in lines if line.startswith(("wrote", "results:", "heatmaps of"))]
    text = errors[-1] if errors else done[-1] if done else lines[-1] if lines else ""
    return "metrics printed" if text.strip() == "}" else text


def main(only: set[str]) -> None:
    for module in (inference_cases, data_cases):
        for case in module.CASES:
            if only and case.id not in only:
                continue
            setup, args, _ = case.values
            tmp = Path(tempfile.mkdtemp(prefix="case-"))
            w = module.world(tmp)
            if module is data_cases and "{ckpt}" in " ".join(args):
                data_cases.with_checkpoint(w)
            setup(w)
            out = run_cli([a.format(**{k: str(v) for k, v in w.items()}) for a in args])
            print(f"{case.id}\t{out.exit_code}\t{shown(out)[:300]}", flush=True)


if __name__ == "__main__":
    main(set(sys.argv[1:]))
