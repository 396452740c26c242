"""Heatmaps of per-patch scores drawn over a slide thumbnail, or over the patch layout alone.

Works for any model: the input is ``coords (n, 2)`` (top-left level-0 pixels, the TRIDENT/CLAM
convention), ``scores (n,)`` (attention, instance logits, an expert's routing share, ...) and the patch
side in level-0 pixels (from the ``.h5`` attributes or an argument).

* :func:`normalize_scores` — percentile ranks (CLAM's default), min-max, percentile clipping, or none.
* :func:`scores_to_canvas` — paint the scores as squares on a canvas of ``downsample`` level-0 px per
  pixel; overlapping patches (stride < patch size) are **averaged**; optional Gaussian blur (in patch
  units) that stays inside the painted area. Many patches are painted at once with a 2-D difference array
  (cost independent of ``n``), few patches one by one.
* :func:`blend` — colour-map the canvas and alpha-blend it over the thumbnail (or a grey background).
* :func:`draw_heatmap` — all of the above plus a colour bar and a title, saved as a PNG.
* :func:`draw_expert_maps` — one routing heatmap per expert from ``expert_assignment (n, E)``.
* :func:`draw_argmax_expert_map` — each patch coloured by its arg-max expert (categorical legend),
  shaded by the routing confidence.

Bad input raises ``ValueError``: coordinates outside the slide, coords and scores of different lengths,
no finite score.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.slides import Slide, open_slide
from ..errors import SETTING, InputError

__all__ = [
    "Heatmap",
    "HeatmapCanvas",
    "blend",
    "categorical_colors",
    "draw_argmax_expert_map",
    "draw_expert_maps",
    "draw_heatmap",
    "make_canvas",
    "normalize_scores",
    "scores_to_canvas",
]

logger = logging.getLogger(__name__)

NORMALIZATIONS = ("percentile", "minmax", "clip", "none")


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def normalize_scores(
    scores: Any, method: str = "percentile", clip: tuple[float, float] = (1.0, 99.0)
) -> np.ndarray:
    """Map scores to [0, 1]; non-finite scores stay ``NaN``.

    Args:
        scores: ``(n,)``.
        method: ``percentile`` — percentile rank among the finite scores (ties share the average rank;
            CLAM's choice, robust to outliers and to the scale of attention logits); ``minmax``;
            ``clip`` — clip to the ``clip`` percentiles, then min-max; ``none`` — clip to [0, 1].
        clip: lower/upper percentiles for ``clip``.

    Returns:
        ``(n,)`` float64 in [0, 1] (a constant input maps to 0.5, or to itself under ``none``).
    """
    s = _as_numpy(scores).astype(np.float64).reshape(-1)
    out = np.full_like(s, np.nan)
    ok = np.isfinite(s)
    if method not in NORMALIZATIONS:
        raise ValueError(f"unknown normalisation {method!r}; choose one of {NORMALIZATIONS}")
    if not ok.any():
        return out
    v = s[ok]
    if method == "none":
        out[ok] = np.clip(v, 0.0, 1.0)
        return out
    if method == "percentile":
        if v.size == 1 or v.max() == v.min():
            out[ok] = 0.5
            return out
        from scipy.stats import rankdata

        out[ok] = (rankdata(v, method="average") - 1.0) / (v.size - 1.0)
        return out
    if method == "clip":
        lo, hi = np.percentile(v, clip)
        v = np.clip(v, lo, hi)
    lo, hi = float(v.min()), float(v.max())
    out[ok] = 0.5 if hi <= lo else (v - lo) / (hi - lo)
    return out


@dataclass
class HeatmapCanvas:
    """Where heatmap pixels sit on the slide.

    Attributes:
        shape: ``(h, w)`` of the canvas in pixels.
        downsample: level-0 pixels per canvas pixel.
        background: ``(h, w, 3)`` uint8 thumbnail, or ``None`` in coordinates-only mode.
        origin: level-0 ``(x, y)`` of the canvas' top-left pixel (non-zero only in coordinates-only mode,
            where the canvas is cropped to the patches).
    """

    shape: tuple[int, int]
    downsample: float
    background: np.ndarray | None = None
    origin: tuple[float, float] = (0.0, 0.0)


def _check_inputs(coords: Any, n_scores: int | None, patch_size_level0: float) -> np.ndarray:
    c = _as_numpy(coords)
    if c.ndim != 2 or c.shape[1] != 2:
        raise ValueError(f"coords must be (n, 2) level-0 (x, y) pixels, got shape {c.shape}")
    if n_scores is not None and c.shape[0] != n_scores:
        raise ValueError(
            f"coords and scores have different lengths ({c.shape[0]} vs {n_scores}); they must come from "
            "the same feature file, in the same order"
        )
    if c.shape[0] == 0:
        raise ValueError("no patches: coords is empty")
    if not np.isfinite(c).all():
        raise ValueError("coords contain NaN or inf")
    if not (isinstance(patch_size_level0, (int, float, np.integer, np.floating)) and patch_size_level0 > 0):
        raise InputError(f"{{patch_size_level0}} must be a positive number of level-0 pixels, got {patch_size_level0!r}",
                         patch_size_level0=SETTING)
    return c.astype(np.float64)


def _check_inside(c: np.ndarray, dims: tuple[int, int], patch_size_level0: float, name: str) -> None:
    w, h = dims
    outside = (c[:, 0] < 0) | (c[:, 1] < 0) | (c[:, 0] >= w) | (c[:, 1] >= h)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        hint = ""
        if c[:, 0].max() >= w or c[:, 1].max() >= h:
            hint = (" Are the coordinates from another slide, or at a different level/magnification than "
                    "level 0?")
        raise ValueError(
            f"{int(outside.sum())} of {len(c)} patch coordinates lie outside the slide {name} ({w} x {h} level-0 "
            f"px), e.g. #{i} = ({c[i, 0]:g}, {c[i, 1]:g}); coords must be top-left level-0 pixels "
            f"(patch size {patch_size_level0:g}).{hint}"
        )


#: The widest span of patch coordinates accepted without a slide, in level-0 pixels and in patch sides: the
#: largest whole-slide images are about 200,000 px wide, so a wider span means a corrupt coordinate (drawn
#: to scale, every real patch would shrink below one pixel and the map would come out blank).
MAX_SPAN_PX = 1_000_000
MAX_SPAN_PATCHES = 1000


def _check_extent(c: np.ndarray, patch_size_level0: float) -> None:
    """Refuse coordinates spanning more than any slide could (see :data:`MAX_SPAN_PX`), naming the
    coordinates cut off from the others by the widest gap."""
    limit = max(MAX_SPAN_PX, MAX_SPAN_PATCHES * float(patch_size_level0))
    for axis, name in ((0, "x"), (1, "y")):
        v = c[:, axis]
        if v.max() - v.min() + patch_size_level0 <= limit:
            continue
        order = np.sort(np.unique(v))
        cut = int(np.argmax(np.diff(order)))
        low, high = v <= order[cut], v > order[cut]
        odd = high if high.sum() <= low.sum() else low
        rest = ~odd
        i = int(np.flatnonzero(odd)[0])
        raise ValueError(
            f"{int(odd.sum())} of {len(c)} patch coordinates lie far outside the others on {name} (e.g. #{i} = "
            f"({c[i, 0]:g}, {c[i, 1]:g}); the other {int(rest.sum())} span {name} = {v[rest].min():g}..{v[rest].max():g}): "
            f"a span over {limit:g} level-0 px is larger than any slide; the feature file's coords are corrupt: "
            "re-extract it, or drop those patches"
        )


def make_canvas(
    coords: Any,
    patch_size_level0: float,
    *,
    slide: Slide | str | os.PathLike | None = None,
    thumbnail: np.ndarray | None = None,
    downsample: float | None = None,
    max_size: int = 2048,
) -> HeatmapCanvas:
    """The canvas a heatmap is painted on.

    * ``slide`` given: its thumbnail (longer side ``max_size``); coords are checked against the slide.
    * ``thumbnail`` given (with ``downsample`` = level-0 px per thumbnail px): that image.
    * neither: coordinates-only mode, a canvas just covering the patches (grey background later); coords
      spanning more than any slide (:data:`MAX_SPAN_PX`) raise a ``ValueError`` naming the odd ones.
    """
    c = _check_inputs(coords, None, patch_size_level0)
    if slide is not None:
        sl = open_slide(slide)
        _check_inside(c, sl.dimensions, patch_size_level0, sl.name)
        image, ds = sl.thumbnail(max_size)
        return HeatmapCanvas(image.shape[:2], ds, image)
    if thumbnail is not None:
        image = np.asarray(thumbnail)
        if image.ndim != 3 or image.shape[-1] < 3:
            raise ValueError(f"thumbnail must be (h, w, 3), got shape {image.shape}")
        if downsample is None or downsample <= 0:
            raise ValueError("a thumbnail needs downsample = level-0 pixels per thumbnail pixel (> 0)")
        h, w = image.shape[:2]
        _check_inside(c, (math.ceil(w * downsample), math.ceil(h * downsample)), patch_size_level0,
                      "thumbnail")
        return HeatmapCanvas((h, w), float(downsample), np.ascontiguousarray(image[..., :3]).astype(np.uint8))
    _check_extent(c, patch_size_level0)
    x0, y0 = c[:, 0].min(), c[:, 1].min()
    x1, y1 = c[:, 0].max() + patch_size_level0, c[:, 1].max() + patch_size_level0
    # a small margin of half a patch around the tissue
    m = patch_size_level0 / 2
    x0, y0, x1, y1 = x0 - m, y0 - m, x1 + m, y1 + m
    ds = float(downsample) if downsample else max(1.0, max(x1 - x0, y1 - y0) / float(max_size))
    shape = (max(1, math.ceil((y1 - y0) / ds)), max(1, math.ceil((x1 - x0) / ds)))
    return HeatmapCanvas(shape, ds, None, (float(x0), float(y0)))


def scores_to_canvas(
    coords: Any,
    scores: Any,
    patch_size_level0: float,
    canvas: HeatmapCanvas,
    blur: float = 0.0,
) -> np.ndarray:
    """Paint ``scores`` as squares; overlapping squares are averaged.

    Args:
        coords: ``(n, 2)`` top-left level-0 ``(x, y)``.
        scores: ``(n,)`` (already normalised; non-finite scores are skipped).
        patch_size_level0: patch side in level-0 pixels.
        canvas: from :func:`make_canvas`.
        blur: Gaussian sigma in patch sides (0 = none); the blur never spreads colour outside the
            painted area.

    Returns:
        ``(h, w)`` float64, ``NaN`` where no patch lies.
    """
    s = _as_numpy(scores).astype(np.float64).reshape(-1)
    c = _check_inputs(coords, s.shape[0], patch_size_level0)
    ok = np.isfinite(s)
    c, s = c[ok], s[ok]
    h, w = canvas.shape
    ds = canvas.downsample
    ox, oy = canvas.origin
    x0 = np.clip(np.floor((c[:, 0] - ox) / ds).astype(np.int64), 0, w)
    y0 = np.clip(np.floor((c[:, 1] - oy) / ds).astype(np.int64), 0, h)
    x1 = np.clip(np.ceil((c[:, 0] - ox + patch_size_level0) / ds).astype(np.int64), 0, w)
    y1 = np.clip(np.ceil((c[:, 1] - oy + patch_size_level0) / ds).astype(np.int64), 0, h)
    x1, y1 = np.maximum(x1, np.minimum(x0 + 1, w)), np.maximum(y1, np.minimum(y0 + 1, h))

    # Few / small squares: add them one by one (cost ~ painted area). Many: a 2-D difference array and two
    # cumulative sums (cost ~ canvas area, independent of n).
    # Cost model measured on CPU (benchmarks/bench_heatmap.py): a slice costs ~2000 pixel-adds of overhead
    # plus its area; the difference array costs ~7 pixel-adds per canvas pixel.
    loop_cost = 2000.0 * len(s) + float(((x1 - x0) * (y1 - y0)).sum())
    use_loop = loop_cost < 7.0 * h * w

    def paint(values: np.ndarray) -> np.ndarray:
        if use_loop:
            acc = np.zeros((h, w), dtype=np.float64)
            for a, b, c_, d, v in zip(y0.tolist(), y1.tolist(), x0.tolist(), x1.tolist(), values.tolist()):
                acc[a:b, c_:d] += v
            return acc
        diff = np.zeros((h + 1, w + 1), dtype=np.float64)
        np.add.at(diff, (y0, x0), values)
        np.add.at(diff, (y0, x1), -values)
        np.add.at(diff, (y1, x0), -values)
        np.add.at(diff, (y1, x1), values)
        np.cumsum(diff, axis=0, out=diff)
        np.cumsum(diff, axis=1, out=diff)
        return diff[:h, :w]

    total = paint(s)
    count = paint(np.ones_like(s))
    covered = count > 0.5
    if blur > 0:
        from scipy.ndimage import gaussian_filter

        sigma = blur * patch_size_level0 / ds
        total = gaussian_filter(total, sigma, mode="constant")
        count = gaussian_filter(count, sigma, mode="constant")
    out = np.full((h, w), np.nan)
    good = covered & (count > 1e-9)
    out[good] = total[good] / count[good]
    return out


def blend(
    values: np.ndarray,
    background: np.ndarray | None = None,
    cmap: str = "turbo",
    alpha: float = 0.5,
    vmin: float = 0.0,
    vmax: float = 1.0,
    background_color: Sequence[int] = (235, 235, 235),
    alpha_map: np.ndarray | None = None,
) -> np.ndarray:
    """Colour-map ``values (h, w)`` and alpha-blend them over ``background (h, w, 3)``.

    ``NaN`` pixels show the background only. ``alpha_map (h, w)`` in [0, 1] scales ``alpha`` per pixel.

    Returns:
        ``(h, w, 3)`` uint8.
    """
    import matplotlib

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    h, w = values.shape
    if background is None:
        bg = np.empty((h, w, 3), dtype=np.float64)
        bg[:] = np.asarray(background_color, dtype=np.float64)
    else:
        if background.shape[:2] != (h, w):
            raise ValueError(f"background {background.shape[:2]} and values {(h, w)} differ in size")
        bg = background[..., :3].astype(np.float64)
    norm = np.clip((values - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    colours = matplotlib.colormaps[cmap](np.nan_to_num(norm))[..., :3] * 255.0
    a = np.where(np.isnan(values), 0.0, alpha)
    if alpha_map is not None:
        a = a * np.clip(np.nan_to_num(alpha_map), 0.0, 1.0)
    out = bg * (1 - a[..., None]) + colours * a[..., None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


@dataclass
class Heatmap:
    """A rendered heatmap: ``image (h, w, 3)`` (blended, without colour bar), ``values (h, w)`` (the
    normalised canvas, NaN off-tissue), the :class:`HeatmapCanvas` and the PNG ``path`` if saved."""

    image: np.ndarray
    values: np.ndarray
    canvas: HeatmapCanvas
    path: Path | None = None


def _save_figure(
    image: np.ndarray,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    colorbar: tuple[str, float, float, str] | None = None,
    legend: Sequence[tuple[str, Sequence[float]]] | None = None,
    dpi: int = 100,
) -> Path:
    """Save ``image`` at its native resolution with an optional colour bar or categorical legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    h, w = image.shape[:2]
    side = 1.6 if (colorbar or legend) else 0.0
    top = 0.4 if title else 0.05
    fig = plt.figure(figsize=(w / dpi + side, h / dpi + top + 0.05), dpi=dpi)
    fw, fh = fig.get_size_inches()
    ax = fig.add_axes((0.0, 0.05 / fh, (w / dpi) / fw, (h / dpi) / fh))
    ax.imshow(image, interpolation="nearest")
    ax.set_axis_off()
    if title:
        fig.text(0.5 * (w / dpi) / fw, 1 - 0.3 / fh, title, ha="center", va="bottom", fontsize=10)
    if colorbar:
        label, vmin, vmax, cmap = colorbar
        cax = fig.add_axes(((w / dpi + 0.15) / fw, 0.1, 0.2 / fw, 0.8 * min(1.0, (h / dpi) / fh)))
        sm = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(vmin, vmax), cmap=cmap)
        cb = fig.colorbar(sm, cax=cax)
        cb.set_label(label, fontsize=8)
        cb.ax.tick_params(labelsize=7)
    if legend:
        handles = [Patch(facecolor=tuple(c), edgecolor="none", label=lab) for lab, c in legend]
        fig.legend(handles=handles, loc="upper left", bbox_to_anchor=((w / dpi + 0.05) / fw, 1 - top / fh),
                   fontsize=7, frameon=False, title="expert", title_fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def draw_heatmap(
    coords: Any,
    scores: Any,
    patch_size_level0: float,
    *,
    slide: Slide | str | os.PathLike | None = None,
    thumbnail: np.ndarray | None = None,
    downsample: float | None = None,
    canvas: HeatmapCanvas | None = None,
    max_size: int = 2048,
    normalize: str = "percentile",
    cmap: str = "turbo",
    alpha: float = 0.5,
    blur: float = 0.0,
    title: str | None = None,
    label: str | None = None,
    colorbar: bool = True,
    out_path: str | os.PathLike | None = None,
) -> Heatmap:
    """Heatmap of per-patch ``scores`` over a slide thumbnail (or the patch layout alone).

    Args:
        coords: ``(n, 2)`` top-left level-0 ``(x, y)`` (numpy or torch).
        scores: ``(n,)`` raw scores (attention logits/weights, instance logits, expert shares, ...).
        patch_size_level0: patch side in level-0 pixels (the ``.h5``'s ``patch_size_level0``).
        slide, thumbnail, downsample, max_size: the background, see :func:`make_canvas`; with none of
            them the map is drawn on a grey canvas from the coordinates only.
        canvas: reuse a canvas (several maps over one thumbnail read once).
        normalize: see :func:`normalize_scores`.
        cmap: a matplotlib colour map (``turbo``, ``jet``, ``coolwarm``...).
        alpha: opacity of the colours over the thumbnail.
        blur: Gaussian sigma in patch sides (0.5 softens the squares; 0 = none).
        title: text above the map.
        label: colour-bar label (default: ``"<normalize> of score"``).
        colorbar: draw a colour bar in the saved PNG.
        out_path: write a PNG there.

    Returns:
        :class:`Heatmap` (``image`` is the blended map without colour bar).
    """
    s = _as_numpy(scores).astype(np.float64).reshape(-1)
    c = _check_inputs(coords, s.shape[0], patch_size_level0)
    if not np.isfinite(s).any():
        raise ValueError("scores has no finite value; nothing to draw")
    if canvas is None:
        canvas = make_canvas(c, patch_size_level0, slide=slide, thumbnail=thumbnail, downsample=downsample,
                             max_size=max_size)
    elif canvas.background is not None:
        h, w = canvas.shape
        _check_inside(c, (math.ceil(w * canvas.downsample), math.ceil(h * canvas.downsample)),
                      patch_size_level0, "canvas")
    norm = normalize_scores(s, normalize)
    values = scores_to_canvas(c, norm, patch_size_level0, canvas, blur=blur)
    image = blend(values, canvas.background, cmap=cmap, alpha=alpha if canvas.background is not None else 1.0)
    path = None
    if out_path is not None:
        lab = label or ("percentile of score" if normalize == "percentile" else f"score ({normalize})")
        path = _save_figure(image, out_path, title=title, colorbar=(lab, 0.0, 1.0, cmap) if colorbar else None)
    return Heatmap(image, values, canvas, path)


def categorical_colors(k: int) -> np.ndarray:
    """``(k, 3)`` distinct RGB colours in [0, 1] (tab10/tab20, then tab20b/tab20c, then a hue wheel)."""
    import matplotlib

    if k <= 10:
        return np.asarray(matplotlib.colormaps["tab10"].colors)[:k, :3]
    base = np.concatenate([np.asarray(matplotlib.colormaps[n].colors)[:, :3] for n in ("tab20", "tab20b", "tab20c")])
    if k <= len(base):
        return base[:k]
    hues = np.linspace(0, 1, k, endpoint=False)
    return matplotlib.colors.hsv_to_rgb(np.stack([hues, np.full(k, 0.75), np.full(k, 0.9)], 1))


def _assignment(expert_assignment: Any, n: int | None = None) -> np.ndarray:
    a = _as_numpy(expert_assignment).astype(np.float64)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"expert_assignment must be (n, E), got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"coords and expert_assignment have different lengths ({n} vs {a.shape[0]})")
    return a


def draw_expert_maps(
    coords: Any,
    expert_assignment: Any,
    patch_size_level0: float,
    out_dir: str | os.PathLike,
    *,
    experts: Sequence[int] | None = None,
    slide: Slide | str | os.PathLike | None = None,
    canvas: HeatmapCanvas | None = None,
    max_size: int = 2048,
    normalize: str = "percentile",
    cmap: str = "turbo",
    alpha: float = 0.4,
    blur: float = 0.0,
    prefix: str = "expert",
) -> dict[int, Path]:
    """One heatmap per expert of its routing share per patch (the Mammoth tutorial's per-expert maps).

    Args:
        coords: ``(n, 2)`` level-0 top-left ``(x, y)``.
        expert_assignment: ``(n, E)`` (or ``(1, n, E)``) share of each patch's routing mass per expert
            (:attr:`medmoe.nn.routing.Routing.expert_assignment`).
        patch_size_level0: patch side in level-0 pixels.
        out_dir: PNGs ``<prefix>_<e:02d>.png`` go there.
        experts: which experts (default: all).
        slide, canvas, max_size, normalize, cmap, alpha, blur: as :func:`draw_heatmap`.

    Returns:
        ``{expert: path}``.
    """
    c = _check_inputs(coords, None, patch_size_level0)
    a = _assignment(expert_assignment, c.shape[0])
    E = a.shape[1]
    chosen = list(range(E)) if experts is None else [int(e) for e in experts]
    bad = [e for e in chosen if not 0 <= e < E]
    if bad:
        raise ValueError(f"experts {bad} do not exist; the routing has {E} experts (0..{E - 1})")
    if canvas is None:
        canvas = make_canvas(c, patch_size_level0, slide=slide, max_size=max_size)
    load = a.mean(0)
    out: dict[int, Path] = {}
    for e in chosen:
        hm = draw_heatmap(c, a[:, e], patch_size_level0, canvas=canvas, normalize=normalize, cmap=cmap,
                          alpha=alpha, blur=blur, title=f"expert {e}: routing share (load {load[e]:.1%})",
                          label=f"{normalize} of routing share" if normalize != "none" else "routing share",
                          out_path=Path(out_dir) / f"{prefix}_{e:02d}.png")
        assert hm.path is not None
        out[e] = hm.path
    return out


def draw_argmax_expert_map(
    coords: Any,
    expert_assignment: Any,
    patch_size_level0: float,
    *,
    slide: Slide | str | os.PathLike | None = None,
    canvas: HeatmapCanvas | None = None,
    max_size: int = 2048,
    alpha: float = 0.6,
    shade_by_confidence: bool = True,
    max_legend: int = 30,
    title: str | None = "arg-max expert per patch",
    out_path: str | os.PathLike | None = None,
) -> Heatmap:
    """Colour each patch by the expert that takes most of its routing mass (categorical legend).

    With ``shade_by_confidence`` the opacity grows with the winning share relative to uniform routing
    (``(max - 1/E) / (1 - 1/E)``, at least a quarter of ``alpha``), so confidently routed regions stand out.

    Returns:
        :class:`Heatmap` whose ``values`` hold the arg-max expert id per pixel (``NaN`` off-tissue).
    """
    c = _check_inputs(coords, None, patch_size_level0)
    a = _assignment(expert_assignment, c.shape[0])
    E = a.shape[1]
    if canvas is None:
        canvas = make_canvas(c, patch_size_level0, slide=slide, max_size=max_size)
    winner = a.argmax(1)
    conf = (a.max(1) - 1.0 / E) / max(1.0 - 1.0 / E, 1e-12)
    colours = categorical_colors(E)
    h, w = canvas.shape
    rgb = np.zeros((h, w, 3))
    for ch in range(3):
        rgb[..., ch] = np.nan_to_num(scores_to_canvas(c, colours[winner, ch], patch_size_level0, canvas))
    ids = scores_to_canvas(c, winner.astype(np.float64), patch_size_level0, canvas)
    covered = ~np.isnan(ids)
    # overlapping patches of different winners: keep the mixed colour but report the rounded id
    ids[covered] = np.round(ids[covered])
    shade = np.ones((h, w))
    if shade_by_confidence:
        shade = np.nan_to_num(scores_to_canvas(c, np.clip(conf, 0.0, 1.0), patch_size_level0, canvas))
        shade = 0.25 + 0.75 * shade
    bg = canvas.background
    base = (np.full((h, w, 3), 235.0) if bg is None else bg.astype(np.float64))
    a_px = np.where(covered, alpha if bg is not None else 1.0, 0.0) * shade
    image = np.clip(base * (1 - a_px[..., None]) + rgb * 255.0 * a_px[..., None] + 0.5, 0, 255).astype(np.uint8)
    path = None
    if out_path is not None:
        counts = np.bincount(winner, minlength=E)
        order = [int(e) for e in np.argsort(-counts) if counts[e] > 0][:max_legend]
        legend = [(f"{e} ({counts[e]} patches)", colours[e]) for e in order]
        hidden = int((counts > 0).sum()) - len(order)
        if hidden > 0:
            legend.append((f"+{hidden} more", (1.0, 1.0, 1.0)))
        path = _save_figure(image, out_path, title=title, legend=legend)
    return Heatmap(image, ids, canvas, path)
