import os

import pytest
import torch

# Deterministic, small-thread tests: CI machines have 2 cores.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _medmoe_logging():
    """CLI tests configure medmoe's loggers (handler, levels); give every test the state it started with."""
    import logging

    loggers = [logging.getLogger(name) for name in ("medmoe", "medmoe.progress")]
    saved = [(lg, lg.level, list(lg.handlers)) for lg in loggers]
    yield
    for lg, level, handlers in saved:
        lg.setLevel(level)
        lg.handlers[:] = handlers
