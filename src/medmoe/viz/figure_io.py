"""Writing matplotlib figures: one helper so every plot lands the same way (folders made, layout tightened,
figure closed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["save_figure"]


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 130) -> Path:
    """Save ``fig`` as ``path`` (parent folders created) after ``tight_layout``, close it, return the path."""
    import matplotlib.pyplot as plt

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
