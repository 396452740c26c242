"""``python -m medmoe.cli``: the ``medmoe`` command (also ``torchrun ... -m medmoe.cli``).

Grid workers (:mod:`medmoe.engine.mil.grid`) start their units this way with ``MEDMOE_EXIT_WITH_PARENT``
set to their process id: the unit then ends as soon as its worker is gone (killed, even with ``SIGKILL``),
so that a unit queued again never runs beside an orphan of itself.
"""

from __future__ import annotations

import os
import threading
import time


def _exit_with_parent(parent: int) -> None:
    """End this process (exit status 143, as for SIGTERM) once ``parent`` is no longer its parent."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(143)

    threading.Thread(target=watch, name="medmoe-exit-with-parent", daemon=True).start()


if __name__ == "__main__":
    _parent = os.environ.pop("MEDMOE_EXIT_WITH_PARENT", "")
    if _parent.isdigit():
        _exit_with_parent(int(_parent))
    from medmoe.cli.main import app

    app(prog_name="medmoe")
