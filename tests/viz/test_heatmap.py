"""Heatmaps from coordinates: normalisation, canvas painting (overlap, blur), blending, routing maps, errors."""

import matplotlib
import numpy as np
import pytest
import torch

from medmoe.data.slides import ArraySlide
from medmoe.viz.heatmap import (
    HeatmapCanvas,
    blend,
    draw_argmax_expert_map,
    draw_expert_maps,
    draw_heatmap,
    make_canvas,
    normalize_scores,
    scores_to_canvas,
)


def test_normalize_scores():
    s = np.array([3.0, -1.0, 10.0, 3.0, np.nan, -np.inf])
    p = normalize_scores(s, "percentile")
    np.testing.assert_allclose(p[:4], [0.5, 0.0, 1.0, 0.5])
    assert np.isnan(p[4:]).all()
    np.testing.assert_allclose(normalize_scores(s, "minmax")[:4], [4 / 11, 0, 1, 4 / 11])
    np.testing.assert_allclose(normalize_scores([2.0, 2.0], "minmax"), [0.5, 0.5])
    np.testing.assert_allclose(normalize_scores(torch.tensor([-1.0, 0.3, 2.0]), "none"), [0, 0.3, 1])
    clipped = normalize_scores(np.r_[np.arange(100.0), 1e6], "clip", clip=(0, 99))
    assert clipped[-1] == 1.0 and clipped[50] > 0.4  # the outlier does not squash the rest
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalize_scores(s, "zscore")


def test_canvas_paints_averages_and_blurs():
    canvas = HeatmapCanvas((10, 10), downsample=10.0)
    coords = np.array([[0, 0], [50, 0], [30, 0]])
    v = scores_to_canvas(coords[:2], [0.2, 0.8], 20, canvas)
    np.testing.assert_allclose(v[0:2, 0:2], 0.2)
    np.testing.assert_allclose(v[0:2, 5:7], 0.8)
    assert np.isnan(v[0:2, 2:5]).all() and np.isnan(v[2:]).all()
    # overlapping patches are averaged where they overlap
    w = scores_to_canvas(coords[[0, 2]], [0.0, 1.0], 40, canvas)
    np.testing.assert_allclose(w[0, 0:3], 0.0)
    np.testing.assert_allclose(w[0, 3:4], 0.5)
    np.testing.assert_allclose(w[0, 4:7], 1.0)
    b = scores_to_canvas(coords[:2], [0.2, 0.8], 20, canvas, blur=1.0)
    assert np.isnan(b[5:]).all()  # blur stays inside the painted area
    assert 0.2 <= np.nanmin(b) and np.nanmax(b) <= 0.8 and b[0, 6] < 0.8


def test_blend():
    values = np.array([[0.0, 1.0], [np.nan, 0.5]])
    bg = np.full((2, 2, 3), 100, np.uint8)
    np.testing.assert_array_equal(blend(values, bg, alpha=0.0), bg)
    full = blend(values, bg, cmap="viridis", alpha=1.0)
    expected = np.round(np.asarray(matplotlib.colormaps["viridis"](1.0)[:3]) * 255)
    np.testing.assert_allclose(full[0, 1], expected, atol=1)
    np.testing.assert_array_equal(full[1, 0], [100, 100, 100])  # NaN shows the background
    half = blend(values, bg, cmap="viridis", alpha=0.5)
    np.testing.assert_allclose(half[0, 1], (expected + 100) / 2, atol=1)


def test_draw_heatmap_coords_only_and_on_a_slide(tmp_path):
    rng = np.random.default_rng(0)
    coords = np.stack(np.meshgrid(np.arange(0, 640, 64), np.arange(0, 384, 64)), -1).reshape(-1, 2)
    scores = coords[:, 0] + 0.1 * rng.random(len(coords))  # increases left to right
    hm = draw_heatmap(coords, scores, 64, max_size=200, out_path=tmp_path / "coords.png", title="x")
    assert hm.path.is_file() and hm.path.stat().st_size > 1000
    assert hm.canvas.background is None
    row = hm.values[hm.values.shape[0] // 2]
    finite = row[np.isfinite(row)]
    assert finite[0] < 0.1 and finite[-1] > 0.9 and np.all(np.diff(finite) >= -1e-9)
    slide = ArraySlide(np.full((400, 700, 3), 200, np.uint8))
    hm2 = draw_heatmap(coords, scores, 64, slide=slide, max_size=350, alpha=0.4, blur=0.5,
                       out_path=tmp_path / "slide.png")
    assert hm2.image.shape == (200, 350, 3) and hm2.canvas.downsample == pytest.approx(2.0)
    assert (hm2.image[-5:, -5:] == 200).all()  # no patch in the bottom-right corner: thumbnail only
    thumb = np.full((40, 70, 3), 255, np.uint8)
    hm3 = draw_heatmap(coords, scores, 64, thumbnail=thumb, downsample=10.0)
    assert hm3.image.shape == (40, 70, 3)


def test_heatmap_errors():
    coords = np.array([[0, 0], [64, 0]])
    slide = ArraySlide(np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(ValueError, match="different lengths"):
        draw_heatmap(coords, [1.0, 2.0, 3.0], 64)
    with pytest.raises(ValueError, match="outside the slide"):
        draw_heatmap(np.array([[0, 0], [4000, 10]]), [1.0, 2.0], 64, slide=slide)
    with pytest.raises(ValueError, match="no finite"):
        draw_heatmap(coords, [np.nan, np.nan], 64)
    with pytest.raises(ValueError, match="patch_size_level0"):
        draw_heatmap(coords, [1.0, 2.0], 0)
    with pytest.raises(ValueError, match="downsample"):
        make_canvas(coords, 64, thumbnail=np.zeros((10, 10, 3)))


def test_routing_maps(tmp_path):
    coords = np.array([[0, 0], [100, 0], [0, 100], [100, 100]])
    a = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]])
    paths = draw_expert_maps(coords, a, 100, tmp_path / "r", experts=[0, 2], max_size=100)
    assert sorted(paths) == [0, 2] and all(p.is_file() for p in paths.values())
    hm = draw_argmax_expert_map(coords, torch.tensor(a).unsqueeze(0), 100, max_size=100,
                                out_path=tmp_path / "argmax.png")
    assert hm.path.is_file()
    ds = hm.canvas.downsample
    ox, oy = hm.canvas.origin
    for (x, y), winner in zip(coords, [0, 1, 2, 0]):
        assert hm.values[int((y + 50 - oy) / ds), int((x + 50 - ox) / ds)] == winner
    with pytest.raises(ValueError, match="experts \\[5\\] do not exist"):
        draw_expert_maps(coords, a, 100, tmp_path, experts=[5])
    with pytest.raises(ValueError, match="different lengths"):
        draw_argmax_expert_map(coords[:3], a, 100)


def test_difference_array_and_slice_painters_agree():
    """Many patches on a small canvas take the difference-array path; compare with a direct reference."""
    rng = np.random.default_rng(1)
    coords = rng.integers(0, 900, size=(3000, 2)).astype(float)
    scores = rng.random(3000)
    canvas = HeatmapCanvas((50, 50), downsample=20.0)
    got = scores_to_canvas(coords, scores, 100, canvas)
    total, count = np.zeros((50, 50)), np.zeros((50, 50))
    for (x, y), v in zip(coords, scores):
        x0, y0 = int(x // 20), int(y // 20)
        x1, y1 = min(int(np.ceil((x + 100) / 20)), 50), min(int(np.ceil((y + 100) / 20)), 50)
        total[y0:y1, x0:x1] += v
        count[y0:y1, x0:x1] += 1
    expected = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    np.testing.assert_allclose(got, expected, atol=1e-9)
    few = scores_to_canvas(coords[:3], scores[:3], 100, canvas)  # slice path
    assert np.isfinite(few).sum() > 0 and np.nanmax(few) <= scores[:3].max() + 1e-12
