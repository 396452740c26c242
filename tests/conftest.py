import os

import pytest
import torch

# Deterministic, small-thread tests: CI machines have 2 cores.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
