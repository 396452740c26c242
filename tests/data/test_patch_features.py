"""Patch features: the built-in deterministic extractor, any torch encoder, TRIDENT-style .h5 output."""

import numpy as np
import pytest
import torch
from torch import nn

from medmoe.data import read_feature_file
from medmoe.data.patch_features import (
    BUILTIN_FEATURE_DIM,
    BuiltinPatchEncoder,
    extract_features,
    extract_slide_features,
)
from medmoe.data.slides import ArraySlide


def _checker_slide():
    """Four 64-px quadrants of known colours, in a 128 x 128 slide."""
    img = np.zeros((128, 128, 3), np.uint8)
    img[:64, :64] = (255, 0, 0)
    img[:64, 64:] = (0, 255, 0)
    img[64:, :64] = (0, 0, 255)
    img[64:, 64:] = (200, 100, 180)
    return ArraySlide(img)


def test_builtin_encoder_is_deterministic_and_sensitive():
    x = torch.rand(3, 3, 64, 64)
    a, b = BuiltinPatchEncoder()(x), BuiltinPatchEncoder()(x)
    assert a.shape == (3, BUILTIN_FEATURE_DIM) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b)
    # colour block: RGB means sit at columns 96..98
    torch.testing.assert_close(a[:, 96:99], x.mean(dim=(2, 3)), atol=1e-5, rtol=0)
    assert not torch.allclose(BuiltinPatchEncoder(seed=1)(x)[:, :96], a[:, :96])
    assert (a[0] - BuiltinPatchEncoder()(torch.rand(1, 3, 64, 64))[0]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="b, 3, h, w"):
        BuiltinPatchEncoder()(torch.rand(2, 64, 64))


def test_any_encoder_and_normalisation():
    slide = _checker_slide()
    coords = np.array([[0, 0], [64, 0], [0, 64], [64, 64]])
    mean_colour = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    feats = extract_features(slide, coords, 64, 32, encoder=mean_colour, batch_size=3)
    expected = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [200 / 255, 100 / 255, 180 / 255]])
    torch.testing.assert_close(feats, expected, atol=1e-4, rtol=0)
    norm = extract_features(slide, coords, 64, 32, encoder=mean_colour, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    torch.testing.assert_close(norm, expected * 2 - 1, atol=1e-4, rtol=0)


def test_bad_coords_are_reported():
    slide = _checker_slide()
    with pytest.raises(ValueError, match="outside the slide"):
        extract_features(slide, np.array([[0, 0], [500, 10]]), 64)
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        extract_features(slide, np.zeros((3, 3)), 64)
    with pytest.raises(ValueError, match="empty"):
        extract_features(slide, np.zeros((0, 2)), 64)


def test_extract_slide_features_writes_trident_h5(tmp_path):
    img = np.full((256, 320, 3), 245, np.uint8)
    img[40:220, 30:260] = (190, 80, 150)
    slide = ArraySlide(img, magnification=20)
    res = extract_slide_features(slide, tmp_path / "s.h5", patch_size=64, tissue_threshold=0.5)
    feats, coords, attrs = read_feature_file(res.path, with_attrs=True)
    assert feats.shape == (len(res.grid), BUILTIN_FEATURE_DIM) and coords.shape == (len(res.grid), 2)
    torch.testing.assert_close(feats, res.features)
    assert attrs["patch_size_level0"] == 64 and attrs["patch_size"] == 64 and attrs["patch_level"] == 0
    assert attrs["encoder"] == BuiltinPatchEncoder.name and attrs["level0_magnification"] == 20
    blank = ArraySlide(np.full((128, 128, 3), 250, np.uint8))
    with pytest.raises(ValueError, match="no patch has a tissue fraction"):
        extract_slide_features(blank, None, patch_size=64)
