"""Opening slides: tifffile (tiled and plain), openslide, Pillow, in-memory; clear errors; the real CMU-1 crop."""

import numpy as np
import pytest

from medmoe.data.slides import ArraySlide, SlideError, TiffSlide, open_slide


def _image(h=200, w=300, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiled_tiff(tmp_path_factory):
    import tifffile

    img = _image()
    path = tmp_path_factory.mktemp("slides") / "tiled.tif"
    tifffile.imwrite(path, img, tile=(64, 64), photometric="rgb")
    return path, img


def test_tifffile_tiled_region_matches_array(tiled_tiff):
    path, img = tiled_tiff
    with open_slide(path, backend="tifffile") as s:
        assert isinstance(s, TiffSlide)
        assert s.dimensions == (300, 200) and s.level_count == 1
        np.testing.assert_array_equal(s.read_region((70, 30), 0, (100, 90)), img[30:120, 70:170])
        # partly outside: white padding, as openslide
        r = s.read_region((250, 180), 0, (80, 40))
        np.testing.assert_array_equal(r[:20, :50], img[180:200, 250:300])
        assert (r[20:] == 255).all() and (r[:, 50:] == 255).all()
        thumb, ds = s.thumbnail(150)
        assert thumb.shape == (100, 150, 3) and ds == pytest.approx(2.0)


def test_plain_tiff_png_and_array(tmp_path):
    import tifffile
    from PIL import Image

    img = _image(50, 40, seed=1)
    tifffile.imwrite(tmp_path / "plain.tif", img, photometric="rgb")
    Image.fromarray(img).save(tmp_path / "plain.png")
    for p in (tmp_path / "plain.tif", tmp_path / "plain.png"):
        s = open_slide(p)
        assert s.dimensions == (40, 50)
        np.testing.assert_array_equal(s.read_region((5, 6), 0, (10, 12)), img[6:18, 5:15])
    a = ArraySlide(img[..., 0], magnification=40)  # greyscale -> RGB
    assert a.read_region((0, 0), 0, (3, 3)).shape == (3, 3, 3)
    assert a.read_level0((0, 0), 20, 10).shape == (10, 10, 3)


def test_openslide_reads_tiled_tiff_like_tifffile(tiled_tiff):
    pytest.importorskip("openslide")
    path, img = tiled_tiff
    s = open_slide(path, backend="openslide")
    np.testing.assert_array_equal(s.read_region((70, 30), 0, (100, 90)), img[30:120, 70:170])


def test_unreadable_and_missing_slides_give_clear_errors(tmp_path):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"this is not a slide" * 100)
    with pytest.raises(SlideError, match="cannot open slide .*broken.svs"):
        open_slide(bad)
    with pytest.raises(SlideError, match="does not exist"):
        open_slide(tmp_path / "nope.svs")
    with pytest.raises(ValueError, match="unknown slide backend"):
        open_slide(bad, backend="magic")
    s = ArraySlide(_image(10, 10))
    with pytest.raises(SlideError, match="level 3 does not exist"):
        s.read_region((0, 0), 3, (2, 2))


@pytest.mark.slow
def test_real_cmu1_crop_backends_agree():
    from medmoe.data.slide_samples import cmu_small_region_path

    path = cmu_small_region_path()
    a = open_slide(path, backend="tifffile")
    assert a.dimensions == (2220, 2967) and a.magnification == 20 and a.mpp == pytest.approx(0.499)
    region = a.read_region((1000, 1200), 0, (300, 250))
    assert region.shape == (250, 300, 3) and 60 < region.mean() < 240
    pytest.importorskip("openslide")
    b = open_slide(path, backend="openslide")
    assert b.dimensions == a.dimensions and b.magnification == 20
    np.testing.assert_array_equal(b.read_region((1000, 1200), 0, (300, 250)), region)
