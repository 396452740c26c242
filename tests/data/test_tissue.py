"""Otsu tissue masks and tissue patch grids in level-0 coordinates."""

import numpy as np
import pytest

from medmoe.data.slides import ArraySlide
from medmoe.data.tissue import otsu_threshold, tile_grid, tissue_mask


def _disc_slide(h=400, w=600, r=150, magnification=None):
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 3) ** 2 < r**2
    img = np.full((h, w, 3), 242, np.uint8)
    img[disc] = (200, 90, 160)  # pink H&E-like tissue on white glass
    rng = np.random.default_rng(0)
    img = np.clip(img.astype(int) + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
    return ArraySlide(img, magnification=magnification), disc


def test_otsu_splits_two_modes():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(0.2, 0.03, 1000), rng.normal(0.8, 0.03, 500)])
    assert 0.3 < otsu_threshold(v) < 0.7
    with pytest.raises(ValueError):
        otsu_threshold(np.array([np.nan]))


def test_tissue_mask_finds_the_disc():
    slide, disc = _disc_slide()
    mask = tissue_mask(slide.image)
    iou = (mask & disc).sum() / (mask | disc).sum()
    assert iou > 0.95
    blank = np.full((50, 50, 3), 240, np.uint8)
    assert not tissue_mask(blank).any()
    with pytest.raises(ValueError, match="RGB"):
        tissue_mask(np.zeros((5, 5)))


def test_tile_grid_keeps_tissue_patches():
    slide, disc = _disc_slide()
    everything = tile_grid(slide, 50, tissue_threshold=0.0, thumbnail_size=600)
    assert len(everything) == (600 // 50) * (400 // 50)
    grid = tile_grid(slide, 50, tissue_threshold=0.5, thumbnail_size=600)
    assert 0 < len(grid) < len(everything)
    assert (grid.coords % 50 == 0).all() and grid.patch_size_level0 == 50
    for (x, y), frac in zip(grid.coords, grid.tissue_fraction):
        true = disc[y : y + 50, x : x + 50].mean()
        assert abs(true - frac) < 0.1 and frac >= 0.5
    assert grid.attrs()["patch_size_level0"] == 50
    strided = tile_grid(slide, 50, stride=25, tissue_threshold=0.5, thumbnail_size=600)
    assert len(strided) > 3 * len(grid)


def test_tile_grid_magnification():
    slide, _ = _disc_slide(magnification=40)
    grid = tile_grid(slide, 50, magnification=20, tissue_threshold=0.5)
    assert grid.patch_size_level0 == 100 and (grid.coords % 100 == 0).all()
    slide_nomag, _ = _disc_slide()
    with pytest.raises(ValueError, match="does not record its magnification"):
        tile_grid(slide_nomag, 50, magnification=20)
