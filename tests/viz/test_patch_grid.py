"""Top-k patch grids per expert / attention branch."""

import numpy as np
import pytest

from medmoe.data.slides import ArraySlide
from medmoe.viz.patch_grid import patch_grid, save_top_k_grids, top_k_indices


def test_top_k_indices():
    s = np.array([0.1, np.nan, 5.0, -np.inf, 2.0, 5.0])
    assert top_k_indices(s, 3).tolist() == [2, 5, 4]
    assert top_k_indices(s, 10).tolist() == [2, 5, 4, 0]
    with pytest.raises(ValueError):
        top_k_indices(s, 0)


def test_save_top_k_grids(tmp_path):
    img = np.zeros((64, 256, 3), np.uint8)
    for i in range(4):
        img[:, i * 64 : (i + 1) * 64] = 60 * i
    slide = ArraySlide(img)
    coords = np.array([[i * 64, 0] for i in range(4)])
    scores = {"attention": np.array([0.1, 0.9, 0.5, 0.2]), "expert 03": np.array([4.0, 3, 2, 1])}
    out = save_top_k_grids(slide, coords, 64, scores, tmp_path, k=2, thumb_size=32)
    assert set(out) == {"attention", "expert 03"} and out["expert 03"].name == "expert_03_top2.png"
    assert all(p.is_file() and p.stat().st_size > 500 for p in out.values())
    # the crops of the top patches are the right ones
    top = top_k_indices(scores["attention"], 2)
    assert [int(slide.read_level0(coords[i], 64, 8).mean()) for i in top] == [60, 120]
    with pytest.raises(ValueError, match="4 coords"):
        save_top_k_grids(slide, coords, 64, {"bad": np.ones(3)}, tmp_path)
    with pytest.raises(ValueError, match="outside the slide"):
        save_top_k_grids(slide, coords + 1000, 64, scores, tmp_path)
    with pytest.raises(ValueError, match="captions"):
        patch_grid([img[:8, :8]], ["a", "b"])
