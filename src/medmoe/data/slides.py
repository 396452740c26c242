"""Open a whole-slide image (or a plain image) and read thumbnails and regions from it.

:func:`open_slide` returns a :class:`Slide` backed by ``openslide-python`` (with the ``openslide-bin``
wheel, no system package needed) when it is importable and can read the file, else by ``tifffile``
(+ ``imagecodecs`` for JPEG/JPEG-2000 tiles: Aperio ``.svs``, generic pyramidal ``.tif``), else by
Pillow for ordinary ``.png``/``.jpg`` images. :class:`ArraySlide` wraps an image already in memory
(a thumbnail, a test image). Every backend speaks the same small interface:

* ``dimensions`` ``(width, height)`` of level 0, ``level_count``, ``level_dimensions``,
  ``level_downsamples``;
* ``magnification`` (objective power of level 0, e.g. 20.0, or ``None``) and ``mpp`` (microns per
  pixel at level 0, or ``None``);
* ``read_region((x, y), level, (w, h)) -> (h, w, 3) uint8 RGB``: ``(x, y)`` in **level-0 pixels**,
  ``(w, h)`` in pixels of ``level``; parts outside the slide are white;
* ``thumbnail(max_size) -> ((h, w, 3) uint8, downsample)``: the whole slide, its longer side at most
  ``max_size``; ``downsample`` = level-0 pixels per thumbnail pixel.

Unreadable, missing or unsupported files raise :class:`SlideError` (a ``ValueError``) naming the file.
"""

from __future__ import annotations

import logging
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ArraySlide", "OpenSlideSlide", "Slide", "SlideError", "TiffSlide", "open_slide"]

logger = logging.getLogger(__name__)

_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
BACKENDS = ("auto", "openslide", "tifffile", "pillow")


class SlideError(ValueError):
    """A slide is missing, unreadable or does not support the requested operation."""


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an ``(h, w, 3)`` uint8 image to ``size = (w, h)`` with Pillow (area-like filtering)."""
    from PIL import Image

    w, h = int(size[0]), int(size[1])
    if image.shape[1] == w and image.shape[0] == h:
        return image
    resample = Image.Resampling.BOX if w < image.shape[1] else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image).resize((max(1, w), max(1, h)), resample))


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """Any ``(h, w)``, ``(h, w, 1|3|4)`` image -> ``(h, w, 3)`` uint8 (RGBA composited on white)."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            scale = 255.0 if arr.size and float(np.nanmax(arr)) <= 1.0 else 1.0
            arr = np.clip(np.nan_to_num(arr) * scale, 0, 255).astype(np.uint8)
        else:
            info = np.iinfo(arr.dtype)
            arr = (arr.astype(np.float64) * 255.0 / info.max).astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise SlideError(f"expected an image (h, w[, c]), got shape {arr.shape}")
    c = arr.shape[-1]
    if c == 1:
        return np.repeat(arr, 3, axis=-1)
    if c == 4:
        alpha = arr[..., 3:4].astype(np.float32) / 255.0
        rgb = arr[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
    if c >= 3:
        return np.ascontiguousarray(arr[..., :3])
    raise SlideError(f"cannot convert an image with {c} channels to RGB")


class Slide(ABC):
    """A readable slide (see the module docstring for the interface). Use as a context manager."""

    path: Path | None = None

    @property
    @abstractmethod
    def level_dimensions(self) -> list[tuple[int, int]]:
        """``(width, height)`` of every level, level 0 first."""

    @property
    @abstractmethod
    def level_downsamples(self) -> list[float]:
        """Level-0 pixels per pixel of every level (``1.0`` first)."""

    @abstractmethod
    def _read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Backend read of an in-bounds or partly out-of-bounds region (white outside)."""

    magnification: float | None = None
    mpp: float | None = None

    @property
    def dimensions(self) -> tuple[int, int]:
        """``(width, height)`` of level 0."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def name(self) -> str:
        return self.path.stem if self.path is not None else "slide"

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed ``downsample`` (level 0 at least)."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * (1 + 1e-6):
                best = i
        return best

    def read_region(self, location: Sequence[int], level: int, size: Sequence[int]) -> np.ndarray:
        """Read ``size = (w, h)`` pixels of ``level`` starting at level-0 pixel ``location = (x, y)``.

        Returns:
            ``(h, w, 3)`` uint8 RGB. Parts outside the slide are white (as OpenSlide does).
        """
        if not 0 <= int(level) < self.level_count:
            raise SlideError(f"{self.name}: level {level} does not exist (the slide has {self.level_count})")
        w, h = int(size[0]), int(size[1])
        if w < 1 or h < 1:
            raise SlideError(f"region size must be positive, got {tuple(size)}")
        return self._read((int(location[0]), int(location[1])), int(level), (w, h))

    def read_level0(self, location: Sequence[int], size_level0: int, out_size: int) -> np.ndarray:
        """A square patch of ``size_level0`` level-0 pixels at ``location``, resized to ``out_size``.

        Reads from the coarsest level that still has at least ``out_size`` pixels across the patch.
        """
        downsample = size_level0 / float(out_size)
        level = self.best_level_for_downsample(downsample)
        ds = self.level_downsamples[level]
        side = max(1, round(size_level0 / ds))
        region = self.read_region(location, level, (side, side))
        return _resize(region, (out_size, out_size))

    def thumbnail(self, max_size: int = 2048) -> tuple[np.ndarray, float]:
        """The whole slide with its longer side at most ``max_size`` pixels.

        Returns:
            ``(image (h, w, 3) uint8, downsample)`` where ``downsample`` = level-0 pixels per thumbnail
            pixel (the same along x and y up to rounding).
        """
        if max_size < 1:
            raise ValueError(f"max_size must be positive, got {max_size}")
        w0, h0 = self.dimensions
        downsample = max(1.0, max(w0, h0) / float(max_size))
        tw, th = max(1, round(w0 / downsample)), max(1, round(h0 / downsample))
        level = self.best_level_for_downsample(downsample)
        lw, lh = self.level_dimensions[level]
        image = self._read((0, 0), level, (lw, lh))
        return _resize(image, (tw, th)), max(w0 / tw, h0 / th)

    def close(self) -> None:
        """Release file handles."""

    def __enter__(self) -> Slide:  # noqa: PYI034 (Slide is final in practice; typing.Self needs 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        mag = f", {self.magnification:g}x" if self.magnification else ""
        return f"{type(self).__name__}({self.name!r}, {w}x{h}, {self.level_count} level(s){mag})"


# --------------------------------------------------------------------------------------------------
class ArraySlide(Slide):
    """A slide held in memory as one ``(h, w[, c])`` image (level 0 only).

    Args:
        image: the level-0 image (any dtype; converted to RGB uint8).
        magnification: objective power of the image, if known.
        mpp: microns per pixel, if known.
        path: where it came from (for messages), optional.
    """

    def __init__(
        self, image: np.ndarray, magnification: float | None = None, mpp: float | None = None,
        path: str | os.PathLike | None = None,
    ) -> None:
        self.image = _to_rgb(image)
        self.magnification = magnification
        self.mpp = mpp
        self.path = Path(path) if path is not None else None

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return [(int(self.image.shape[1]), int(self.image.shape[0]))]

    @property
    def level_downsamples(self) -> list[float]:
        return [1.0]

    def _read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        return _crop_padded(self.image, location[0], location[1], size[0], size[1])


def _crop_padded(image: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
    """``image[y:y+h, x:x+w]`` with white where the window leaves the image."""
    out = np.full((h, w, 3), 255, dtype=np.uint8)
    H, W = image.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if x1 > x0 and y1 > y0:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = image[y0:y1, x0:x1, :3]
    return out


# --------------------------------------------------------------------------------------------------
class OpenSlideSlide(Slide):
    """A slide read with ``openslide-python`` (install ``openslide-python openslide-bin``)."""

    def __init__(self, path: str | os.PathLike) -> None:
        import openslide

        self.path = Path(path)
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except Exception as e:  # OpenSlideUnsupportedFormatError, OpenSlideError, OSError
            raise SlideError(f"openslide cannot read {self.path}: {type(e).__name__}: {e}") from e
        props = self._slide.properties
        self.magnification = _float_or_none(props.get("openslide.objective-power"))
        self.mpp = _float_or_none(props.get("openslide.mpp-x"))

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return [tuple(map(int, d)) for d in self._slide.level_dimensions]  # type: ignore[misc]

    @property
    def level_downsamples(self) -> list[float]:
        return [float(d) for d in self._slide.level_downsamples]

    def _read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        try:
            region = self._slide.read_region(location, level, size)
        except Exception as e:
            raise SlideError(f"openslide failed to read {size} px at {location} (level {level}) of "
                             f"{self.path}: {e}") from e
        return _to_rgb(np.asarray(region))

    def close(self) -> None:
        self._slide.close()


# --------------------------------------------------------------------------------------------------
class TiffSlide(Slide):
    """A (pyramidal) TIFF / Aperio SVS read with ``tifffile``; tiled pages are decoded tile by tile, so a
    small region of a large slide never loads the whole level. JPEG tiles need ``imagecodecs``."""

    def __init__(self, path: str | os.PathLike, max_cached_pixels: int = 64_000_000) -> None:
        import tifffile

        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(str(self.path))
            series = self._tif.series[0]
            levels = list(getattr(series, "levels", None) or [series])
            pages = [lvl.keyframe for lvl in levels]
        except Exception as e:
            raise SlideError(f"tifffile cannot read {self.path}: {type(e).__name__}: {e}") from e
        self._pages = []
        for page in pages:
            shape = page.shape
            if page.samplesperpixel not in (1, 3, 4) or len(shape) not in (2, 3):
                continue
            self._pages.append(page)
        if not self._pages:
            raise SlideError(f"{self.path} has no RGB or greyscale image level that tifffile can read")
        self._dims = [(int(p.imagewidth), int(p.imagelength)) for p in self._pages]
        w0 = self._dims[0][0]
        self._downsamples = [w0 / float(d[0]) for d in self._dims]
        self._cache: dict[int, np.ndarray] = {}
        self._max_cached = max_cached_pixels
        desc = self._pages[0].description or ""
        self.magnification = _float_or_none(_search(r"AppMag\s*=\s*([\d.]+)", desc))
        self.mpp = _float_or_none(_search(r"MPP\s*=\s*([\d.]+)", desc))

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return list(self._dims)

    @property
    def level_downsamples(self) -> list[float]:
        return list(self._downsamples)

    def _whole_level(self, level: int) -> np.ndarray:
        if level not in self._cache:
            w, h = self._dims[level]
            if w * h > self._max_cached:
                raise SlideError(
                    f"{self.path}: level {level} ({w}x{h}) is not tiled and too large to load; install "
                    "openslide-python and openslide-bin to read it"
                )
            try:
                self._cache[level] = _to_rgb(self._pages[level].asarray())
            except Exception as e:
                raise SlideError(f"tifffile failed to decode level {level} of {self.path}: {e}") from e
        return self._cache[level]

    def _read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        ds = self._downsamples[level]
        x = int(np.floor(location[0] / ds))
        y = int(np.floor(location[1] / ds))
        w, h = size
        page = self._pages[level]
        if not page.is_tiled:
            return _crop_padded(self._whole_level(level), x, y, w, h)
        return self._read_tiles(page, level, x, y, w, h)

    def _read_tiles(self, page: Any, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        W, H = self._dims[level]
        tw, th = int(page.tilewidth), int(page.tilelength)
        per_row = -(-W // tw)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if x1 <= x0 or y1 <= y0:
            return out
        fh = self._tif.filehandle
        for ty in range(y0 // th, (y1 - 1) // th + 1):
            for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                index = ty * per_row + tx
                offset, count = page.dataoffsets[index], page.databytecounts[index]
                if count == 0:
                    continue
                try:
                    with self._tif.filehandle.lock:
                        fh.seek(offset)
                        data = fh.read(count)
                    tile = page.decode(data, index, jpegtables=page.jpegtables)[0]
                except Exception as e:
                    raise SlideError(f"cannot decode tile {index} of level {level} of {self.path}: {e} "
                                     "(JPEG tiles need imagecodecs: pip install imagecodecs)") from e
                tile = _to_rgb(np.asarray(tile).reshape(tile.shape[-3:]))
                gx0, gy0 = tx * tw, ty * th
                sx0, sy0 = max(x0, gx0), max(y0, gy0)
                sx1, sy1 = min(x1, gx0 + tw, W), min(y1, gy0 + th, H)
                out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = tile[sy0 - gy0 : sy1 - gy0, sx0 - gx0 : sx1 - gx0]
        return out

    def close(self) -> None:
        self._tif.close()
        self._cache.clear()


# --------------------------------------------------------------------------------------------------
def _search(pattern: str, text: str) -> str | None:
    m = re.search(pattern, text)
    return m.group(1) if m else None


def _float_or_none(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if out > 0 else None


def _openslide_available() -> bool:
    try:
        import openslide  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or OSError when the shared library is missing
        return False
    return True


def open_slide(path: str | os.PathLike | Slide, backend: str = "auto") -> Slide:
    """Open a slide.

    Args:
        path: a ``.svs``/``.tif``/``.ndpi``/... whole-slide image, a ``.png``/``.jpg`` image, or an
            already open :class:`Slide` (returned as it is).
        backend: ``auto`` (openslide if importable and able to read the file, else tifffile, else
            Pillow), or one of ``openslide``, ``tifffile``, ``pillow``.

    Raises:
        SlideError: the file does not exist or no backend can read it (the message lists why each failed).
    """
    if isinstance(path, Slide):
        return path
    if backend not in BACKENDS:
        raise ValueError(f"unknown slide backend {backend!r}; choose one of {BACKENDS}")
    p = Path(path).expanduser()
    if not p.is_file():
        from .file_checks import describe_path

        kind = describe_path(p)
        raise SlideError(f"slide {p} does not exist" if kind == "missing" else f"slide {p} is {kind}, not a file")
    order = [backend] if backend != "auto" else (
        ["pillow", "openslide", "tifffile"] if p.suffix.lower() in _PIL_SUFFIXES
        else ["openslide", "tifffile", "pillow"]
    )
    errors: list[str] = []
    for name in order:
        try:
            if name == "openslide":
                if not _openslide_available():
                    errors.append("openslide: not installed (pip install openslide-python openslide-bin)")
                    continue
                return OpenSlideSlide(p)
            if name == "tifffile":
                return TiffSlide(p)
            return _open_pillow(p)
        except SlideError as e:
            errors.append(f"{name}: {e}")
        except ImportError as e:
            errors.append(f"{name}: not installed ({e})")
    raise SlideError(f"cannot open slide {p}; " + "; ".join(errors))


def _open_pillow(path: Path) -> ArraySlide:
    try:
        from PIL import Image

        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB"))
    except Exception as e:
        raise SlideError(f"Pillow cannot read {path}: {type(e).__name__}: {e}") from e
    return ArraySlide(image, path=path)
