"""Superpixel label maps: counts, contiguity, masks, regions, pyramid."""

from __future__ import annotations

import math

import pytest
import torch

from model.superpixels import default_n_segments, region_map, relabel, superpixel_pyramid, superpixels


def smooth_image(h: int, w: int) -> torch.Tensor:
    """(h, w) float in [0, 1]: smooth blobs plus a vertical step edge at w/2."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    blobs = 0.25 + 0.15 * torch.sin(7 * xs) * torch.cos(5 * ys)
    return blobs + 0.5 * (xs >= 0.5)


def assert_contiguous(labels: torch.Tensor) -> int:
    inside = labels[labels >= 0]
    n = int(inside.max()) + 1
    assert torch.equal(torch.unique(inside), torch.arange(n)), "ids must be 0..N-1 with none empty"
    return n


def test_default_rule_is_three_sqrt_n() -> None:
    assert default_n_segments(100 * 100) == 300
    assert default_n_segments(256 * 455) == round(3 * math.sqrt(256 * 455))
    assert default_n_segments(1) == 3
    assert default_n_segments(0) == 1


@pytest.mark.parametrize("method", ["slic", "grid"])
def test_labels_shape_dtype_count(method: str) -> None:
    image = smooth_image(64, 80)
    labels = superpixels(image, method=method)
    assert labels.shape == (64, 80) and labels.dtype == torch.int64
    assert (labels >= 0).all()
    n = assert_contiguous(labels)
    wanted = default_n_segments(64 * 80)
    assert 0.6 * wanted <= n <= 1.4 * wanted


def test_slic_follows_a_strong_edge() -> None:
    image = smooth_image(64, 80)
    labels = superpixels(image)
    right = torch.zeros_like(labels, dtype=torch.bool)
    right[:, 40:] = True
    n = int(labels.max()) + 1
    inside_right = torch.zeros(n).scatter_add_(0, labels.flatten(), right.flatten().float())
    size = torch.bincount(labels.flatten(), minlength=n).float()
    purity = torch.maximum(inside_right, size - inside_right) / size
    assert (purity >= 0.9).all(), "SLIC superpixels should not straddle the step edge"


@pytest.mark.parametrize("method", ["slic", "grid"])
def test_masked_labels_are_minus_one_outside(method: str) -> None:
    image = smooth_image(60, 60)
    mask = torch.zeros(60, 60, dtype=torch.bool)
    mask[10:40, 5:50] = True
    labels = superpixels(image, mask=mask, method=method)
    assert (labels[~mask] == -1).all()
    assert (labels[mask] >= 0).all()
    n = assert_contiguous(labels)
    wanted = default_n_segments(int(mask.sum()))
    assert 0.6 * wanted <= n <= 1.4 * wanted


def test_regions_are_segmented_separately() -> None:
    image = smooth_image(48, 48)
    regions = torch.zeros(48, 48, dtype=torch.int64)
    regions[:, 17:] = 1  # a border that does not follow the image edge at x = 24
    regions[30:, :] = 2
    regions[:4, :4] = -1
    labels = superpixels(image, mask=regions)
    assert (labels[regions < 0] == -1).all() and (labels[regions >= 0] >= 0).all()
    n = assert_contiguous(labels)
    for i in range(n):
        assert torch.unique(regions[labels == i]).numel() == 1, "a superpixel crosses a region border"


def test_explicit_count_and_tiny_inputs() -> None:
    labels = superpixels(smooth_image(50, 50), n_segments=25, method="grid")
    assert int(labels.max()) + 1 == 25
    assert superpixels(torch.rand(1, 1)).tolist() == [[0]]
    assert_contiguous(superpixels(torch.rand(2, 3)))
    one_pixel = torch.zeros(16, 16, dtype=torch.bool)
    one_pixel[5, 7] = True
    labels = superpixels(torch.rand(16, 16), mask=one_pixel)
    assert labels[5, 7] == 0 and (labels[~one_pixel] == -1).all()


def test_pyramid_recomputes_each_level() -> None:
    image = smooth_image(64, 96)
    sizes = [(64, 96), (32, 48), (16, 24)]
    levels = superpixel_pyramid(image, sizes)
    for (h, w), labels in zip(sizes, levels):
        assert labels.shape == (h, w)
        n = assert_contiguous(labels)
        assert 0.5 * default_n_segments(h * w) <= n <= 1.5 * default_n_segments(h * w)
    mask = torch.zeros(64, 96, dtype=torch.bool)
    mask[:, :48] = True
    masked = superpixel_pyramid(image, sizes, mask=mask)
    for (_, w), labels in zip(sizes, masked):
        assert (labels[:, w // 2 :] == -1).all() and (labels[:, : w // 2] >= 0).all()


def test_relabel_and_region_map() -> None:
    labels = torch.tensor([[7, 7, -1], [3, 9, 3]])
    assert relabel(labels).tolist() == [[1, 1, -1], [0, 2, 0]]
    masks = torch.zeros(2, 2, 3, dtype=torch.bool)
    masks[0, :, :2] = True  # overlaps mask 1 at (1, 1)
    masks[1, 1, 1:] = True
    regions = region_map(masks)
    assert regions.dtype == torch.int64
    # patterns: (1,0) at (0,0),(0,1),(1,0); (0,0) at (0,2); (1,1) at (1,1); (0,1) at (1,2)
    assert torch.unique(regions).numel() == 4
    assert regions[0, 0] == regions[0, 1] == regions[1, 0]
    assert len({int(regions[0, 2]), int(regions[1, 1]), int(regions[1, 2]), int(regions[0, 0])}) == 4
