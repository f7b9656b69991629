"""Image metrics for colorization: PSNR, SSIM, ΔHIS, colourfulness, in-mask ab error.

Images are RGB arrays (H, W, 3), either both uint8 (0-255) or both float in [0, 1]; the data
range (255 or 1) follows from the dtype. Lab is CIE L*a*b* (D65) of sRGB via scikit-image:
L in [0, 100], a and b roughly in [-110, 110]. LPIPS lives in :mod:`model.lpips` (torch).
"""

from __future__ import annotations

import numpy as np
from skimage.color import rgb2lab
from skimage.metrics import structural_similarity

# ΔHIS histograms (thesis §2.7, eq. 2.9-2.10; App. B: Q = 441 bins, eps = 1e-5): 21 x 21 bins over
# a, b in [-110, 110], which covers the ab values of all sRGB colours.
HIS_BINS = 21
HIS_AB_RANGE = (-110.0, 110.0)
HIS_EPS = 1e-5


def _as_float(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 (0-255) or float ([0, 1]) -> float64 in [0, 1]."""
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {rgb.shape}")
    if rgb.dtype == np.uint8:
        return rgb.astype(np.float64) / 255.0
    if not np.issubdtype(rgb.dtype, np.floating):
        raise ValueError(f"expected uint8 or float RGB, got {rgb.dtype}")
    return rgb.astype(np.float64)


def _check_pair(pred: np.ndarray, target: np.ndarray) -> float:
    """Data range (255 for uint8, 1 for float) of a matching pair of RGB images."""
    if pred.shape != target.shape or pred.dtype != target.dtype:
        raise ValueError(f"images differ: {pred.shape} {pred.dtype} vs {target.shape} {target.dtype}")
    _as_float(pred)  # shape/dtype check
    return 255.0 if pred.dtype == np.uint8 else 1.0


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (H, W, 3) uint8 or float [0, 1] -> Lab (H, W, 3) float64 (L [0, 100], ab ~[-110, 110])."""
    return rgb2lab(_as_float(rgb))


def psnr(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB over all RGB values, or over the pixels of ``mask``.

    Data range: 255 for uint8 inputs, 1 for float inputs in [0, 1] (the same dB either way).
    mask: optional (H, W) bool; must select at least one pixel. Returns ``inf`` if equal.
    """
    data_range = _check_pair(pred, target)
    err = (pred.astype(np.float64) - target.astype(np.float64)) ** 2
    if mask is not None:
        if mask.shape != pred.shape[:2] or not mask.any():
            raise ValueError(f"mask must be a non-empty (H, W) = {pred.shape[:2]} bool array")
        err = err[mask.astype(bool)]
    mse = float(err.mean())
    return float("inf") if mse == 0 else 10.0 * np.log10(data_range**2 / mse)


def ssim(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean SSIM over the RGB channels, Wang et al. 2004 settings (Gaussian window sigma 1.5).

    Data range as in :func:`psnr`. Images need at least 7 pixels on each side.
    """
    data_range = _check_pair(pred, target)
    return float(
        structural_similarity(
            pred,
            target,
            channel_axis=-1,
            data_range=data_range,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
    )


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Süsstrunk (2003) colourfulness M on 0-255 RGB values; 0 for a grey image.

    M = sqrt(std(rg)^2 + std(yb)^2) + 0.3 * sqrt(mean(rg)^2 + mean(yb)^2), rg = R - G,
    yb = (R + G) / 2 - B. Float input in [0, 1] is scaled to 0-255 first, so M is comparable
    to the paper's scale (about 0-110; "moderately colourful" ~ 33).
    """
    r, g, b = np.moveaxis(_as_float(rgb) * 255.0, -1, 0)
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def ab_histogram(rgb: np.ndarray, bins: int = HIS_BINS, ab_range: tuple[float, float] = HIS_AB_RANGE) -> np.ndarray:
    """Normalised 2-D histogram of the Lab ab values of ``rgb``: (bins * bins,) float64 summing to 1."""
    lab = rgb_to_lab(rgb)
    hist, _, _ = np.histogram2d(lab[..., 1].ravel(), lab[..., 2].ravel(), bins=bins, range=(ab_range, ab_range))
    return hist.ravel() / hist.sum()


def histogram_chi2(h1: np.ndarray, h2: np.ndarray, eps: float = HIS_EPS) -> float:
    """T_hist of thesis eq. 2.10: 2 * sum_q (h1 - h2)^2 / (h1 + h2 + eps); 0 when equal, <= 4 for
    normalised histograms."""
    return float(2.0 * np.sum((h1 - h2) ** 2 / (h1 + h2 + eps)))


def delta_his(pred: np.ndarray, target: np.ndarray, reference: np.ndarray) -> float:
    """ΔHIS of thesis eq. 2.9: |T_hist(T_H, R_H) - T_hist(T^_H, R_H)| (lower is better).

    How far the prediction's ab histogram is from the reference's, compared with how far the
    ground truth's is: 0 when the prediction is as close to the reference's colours as the
    truth is. ``pred``/``target`` (H, W, 3) and ``reference`` (Hr, Wr, 3) RGB (any sizes).
    """
    ref_h = ab_histogram(reference)
    return abs(histogram_chi2(ab_histogram(target), ref_h) - histogram_chi2(ab_histogram(pred), ref_h))


def masked_ab_error(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    """Mean Euclidean distance in Lab ab (CIE units) between ``pred`` and ``target`` over ``mask`` pixels.

    pred, target: (H, W, 3) RGB; mask: (H, W) bool with at least one pixel.
    """
    _check_pair(pred, target)
    if mask.shape != pred.shape[:2] or not mask.any():
        raise ValueError(f"mask must be a non-empty (H, W) = {pred.shape[:2]} bool array")
    diff = rgb_to_lab(pred)[..., 1:] - rgb_to_lab(target)[..., 1:]
    return float(np.linalg.norm(diff[mask.astype(bool)], axis=-1).mean())
