"""Sliding-window labels stitched slab by slab equal MONAI's full-volume stitching, in bounded memory."""

import pytest
import torch
from torch import nn

from medmoe.engine.seg.inference import sliding_window_labels, sliding_window_logits


class _Net(nn.Module):
    """A small 3-D conv net with ``k`` outputs whose logits vary enough to make the arg-max non-trivial."""

    def __init__(self, k: int, c_in: int = 1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv3d(c_in, 8, 3, padding=1), nn.GELU(), nn.Conv3d(8, k, 3, padding=1))

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize(
    ("shape", "roi", "overlap", "mode", "batch"),
    [
        ((40, 24, 20), (16, 16, 16), 0.5, "gaussian", 1),
        ((37, 30, 18), (16, 16, 16), 0.25, "constant", 3),  # windows of two slabs in one batch
        ((10, 33, 12), (16, 16, 16), 0.5, "gaussian", 2),  # smaller than the ROI on two axes: padded
        ((48, 16, 16), (16, 16, 16), 0.0, "gaussian", 1),  # no overlap: slabs never carry over
        ((29, 21, 25), (8, 16, 8), 0.6, "gaussian", 4),
    ],
)
def test_labels_equal_argmax_of_monai_stitching(shape, roi, overlap, mode, batch):
    net = _Net(k=7).eval()
    image = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(1))
    full = sliding_window_logits(net, image, roi, overlap=overlap, mode=mode, sw_batch_size=batch)
    labels = sliding_window_labels(net, image, roi, overlap=overlap, mode=mode, sw_batch_size=batch)
    assert labels.shape == shape
    assert torch.equal(labels, full.argmax(1)[0])


def test_memory_is_bounded_by_the_slab(monkeypatch):
    # the biggest float buffer allocated holds one ROI-deep slab, not the whole depth
    sizes = []
    real_zeros = torch.zeros

    def spy(*args, **kwargs):
        t = real_zeros(*args, **kwargs)
        sizes.append(t.numel())
        return t

    monkeypatch.setattr(torch, "zeros", spy)
    net = _Net(k=12).eval()
    image = torch.randn(1, 1, 96, 16, 16)
    sliding_window_labels(net, image, (16, 16, 16), overlap=0.5)
    assert max(sizes) == 12 * 16 * 16 * 16  # K x roi_D x H x W; the full logits would be 12 x 96 x 16 x 16


def test_bad_arguments():
    net = _Net(k=2)
    with pytest.raises(ValueError, match="overlap"):
        sliding_window_labels(net, torch.zeros(1, 1, 8, 8, 8), (8, 8, 8), overlap=1.0)
    with pytest.raises(ValueError, match="\\(1, C, D, H, W\\)"):
        sliding_window_labels(net, torch.zeros(2, 1, 8, 8, 8), (8, 8, 8))
    with pytest.raises(ValueError, match="sw_batch_size"):
        sliding_window_labels(net, torch.zeros(1, 1, 8, 8, 8), (8, 8, 8), sw_batch_size=0)
