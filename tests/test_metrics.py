"""pipeline.metrics on synthetic images with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.color import lab2rgb

from pipeline.metrics import (
    HIS_BINS,
    ab_histogram,
    colourfulness,
    delta_his,
    histogram_chi2,
    masked_ab_error,
    psnr,
    rgb_to_lab,
    ssim,
)


def lab_image(l: float, a: float, b: float, shape: tuple[int, int] = (8, 10)) -> np.ndarray:
    """Uniform RGB float image (H, W, 3) of the given Lab colour."""
    return lab2rgb(np.broadcast_to(np.array([l, a, b], float), (*shape, 3)).copy())


def test_psnr_of_a_known_mse() -> None:
    target = np.zeros((4, 5, 3))
    assert psnr(target + 0.1, target) == pytest.approx(20.0)  # MSE 0.01, data range 1
    t8 = np.full((4, 5, 3), 100, np.uint8)
    assert psnr(t8 + 10, t8) == pytest.approx(10 * np.log10(255**2 / 100))  # MSE 100, data range 255
    # same images as uint8 and as float in [0, 1] give the same dB
    assert psnr((t8 + 10) / 255.0, t8 / 255.0) == pytest.approx(psnr(t8 + 10, t8))
    assert psnr(target, target) == float("inf")


def test_psnr_inside_a_mask_ignores_the_outside() -> None:
    target = np.zeros((4, 4, 3))
    pred = target.copy()
    pred[:, 2:] = 0.5  # wrong only on the right half
    left = np.zeros((4, 4), bool)
    left[:, :2] = True
    assert psnr(pred, target, mask=left) == float("inf")
    assert psnr(pred, target, mask=~left) == pytest.approx(10 * np.log10(1 / 0.25))
    with pytest.raises(ValueError):
        psnr(pred, target, mask=np.zeros((4, 4), bool))


def test_mismatched_inputs_are_rejected() -> None:
    with pytest.raises(ValueError):
        psnr(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3)))
    with pytest.raises(ValueError):
        ssim(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))


def test_ssim_is_one_for_equal_images_and_drops_with_noise() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((32, 32, 3))
    assert ssim(image, image) == pytest.approx(1.0)
    assert ssim(np.clip(image + rng.normal(0, 0.2, image.shape), 0, 1), image) < 0.9


def test_colourfulness_known_values() -> None:
    rng = np.random.default_rng(0)
    grey = np.repeat(rng.random((16, 16, 1)), 3, axis=2)
    assert colourfulness(grey) == pytest.approx(0.0, abs=1e-9)
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255  # rg = 255, yb = 127.5, no spread
    assert colourfulness(red) == pytest.approx(0.3 * np.hypot(255, 127.5))
    assert colourfulness(red / 255.0) == pytest.approx(colourfulness(red))


def test_ab_histogram_and_chi2() -> None:
    grey = np.full((6, 6, 3), 0.5)
    hist = ab_histogram(grey)
    assert hist.shape == (HIS_BINS * HIS_BINS,) and hist.sum() == pytest.approx(1.0)
    assert hist[(HIS_BINS // 2) * HIS_BINS + HIS_BINS // 2] == pytest.approx(1.0)  # ab = 0: the centre bin
    assert histogram_chi2(hist, hist) == 0.0
    other = ab_histogram(lab_image(50, 60, -40))
    assert histogram_chi2(hist, other) == pytest.approx(4.0, rel=1e-4)  # disjoint: 2 * (1 + 1)


def test_delta_his() -> None:
    target, reference = lab_image(50, 40, 20), lab_image(60, -30, 30)
    assert delta_his(target, target, reference) == 0.0
    # a prediction with the reference's colours is closer to it than the truth is: |4 - 0| = 4
    assert delta_his(lab_image(50, -30, 30), target, reference) == pytest.approx(4.0, rel=1e-4)
    # sizes may differ
    assert delta_his(target, target, lab_image(60, -30, 30, shape=(5, 3))) == 0.0


def test_masked_ab_error_is_the_mean_ab_distance_in_the_mask() -> None:
    target = lab_image(50, 10, 0)
    pred = target.copy()
    pred[:, 5:] = lab_image(50, 13, 4, shape=(8, 5))  # ab off by (3, 4) -> 5 on the right half
    right = np.zeros((8, 10), bool)
    right[:, 5:] = True
    assert masked_ab_error(pred, target, right) == pytest.approx(5.0, abs=0.05)
    assert masked_ab_error(pred, target, ~right) == pytest.approx(0.0, abs=1e-6)
    assert masked_ab_error(pred, target, np.ones((8, 10), bool)) == pytest.approx(2.5, abs=0.05)
    assert rgb_to_lab(target)[..., 1].mean() == pytest.approx(10.0, abs=0.01)
