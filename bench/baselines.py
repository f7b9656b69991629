"""Comparison colorizers for the harness: all share the :data:`Colorizer` signature.

A colorizer gets the target's lightness and colour references in Lab and returns the target's
chroma; the harness composes it with the target's own L. Lab is CIE L*a*b* (D65): L in
[0, 100], a and b roughly in [-110, 110].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np
from scipy.ndimage import uniform_filter
from scipy.spatial import cKDTree

MaskPairs = Sequence[tuple[np.ndarray, np.ndarray]]
"""Per reference: (target mask (H, W) bool, reference mask (Hr, Wr) bool) pairs; the target
region should take its colours from the paired reference region."""

Colorizer = Callable[[np.ndarray, Sequence[np.ndarray], Sequence[MaskPairs] | None], np.ndarray]
"""``colorize(target_l, reference_labs, masks) -> ab``.

target_l: (H, W) float32, L in [0, 100]. reference_labs: one (Hr, Wr, 3) float32 Lab per
reference (sizes may differ). masks: ``None`` or one :data:`MaskPairs` per reference.
Returns (H, W, 2) float32 ab. A colorizer that does not use masks ignores them.
"""


def grey(
    target_l: np.ndarray, reference_labs: Sequence[np.ndarray], masks: Sequence[MaskPairs] | None = None
) -> np.ndarray:
    """No colour: ab = 0 everywhere, (H, W, 2) float32."""
    return np.zeros((*target_l.shape, 2), np.float32)


def copy_chroma(
    target_l: np.ndarray, reference_labs: Sequence[np.ndarray], masks: Sequence[MaskPairs] | None = None
) -> np.ndarray:
    """The first reference's ab, resized (bilinear) to the target's size: (H, W, 2) float32."""
    h, w = target_l.shape
    return cv2.resize(reference_labs[0][..., 1:].astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


def reinhard_stats_transfer(source: np.ndarray, mean: np.ndarray, std: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Reinhard et al. (2001) transfer: (x - mean(x)) * std / std(x) + mean, per channel.

    source: (N, C) values (a channel constant over N maps to ``mean``); mean, std: (C,) target statistics.
    Returns (N, C) float64.
    """
    src_mean, src_std = source.mean(axis=0), source.std(axis=0)
    return (source - src_mean) * (std / np.maximum(src_std, eps)) + mean


def _regions(
    target_shape: tuple[int, int], reference_labs: Sequence[np.ndarray], masks: Sequence[MaskPairs] | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(target region (H, W) bool, reference pixels (N, C)) pairs to transfer between.

    reference_labs: (Hr, Wr, C) per reference, Lab first (C >= 3).

    Without masks: the whole target from all reference pixels. With masks: each target mask
    from its reference mask, and the rest of the target from the reference pixels outside all
    masks (all reference pixels if the masks cover them). Pixels in several target masks take
    the last one.
    """
    all_pixels = np.concatenate([lab.reshape(-1, lab.shape[-1]) for lab in reference_labs])
    if not masks or not any(masks):
        return [(np.ones(target_shape, bool), all_pixels)]
    rest_t = np.ones(target_shape, bool)
    rest_r = [np.ones(lab.shape[:2], bool) for lab in reference_labs]
    regions = []
    for i, pairs in enumerate(masks):
        for t_mask, r_mask in pairs:
            if t_mask.any() and r_mask.any():
                regions.append((t_mask.astype(bool), reference_labs[i][r_mask.astype(bool)]))
                rest_t &= ~t_mask.astype(bool)
                rest_r[i] &= ~r_mask.astype(bool)
    rest_pixels = np.concatenate([lab[m] for lab, m in zip(reference_labs, rest_r)])
    return [(rest_t, rest_pixels if len(rest_pixels) else all_pixels), *regions]


def reinhard(
    target_l: np.ndarray, reference_labs: Sequence[np.ndarray], masks: Sequence[MaskPairs] | None = None
) -> np.ndarray:
    """Global colour transfer of Reinhard et al. (2001) in Lab, the target's L kept: (H, W, 2) float32.

    The target is grey (ab = 0, std 0), so the transfer gives every pixel the references' mean
    ab. With masks, each target region gets the mean ab of its reference region (see
    :func:`_regions`), which makes it a simple masked baseline.
    """
    ab = np.zeros((*target_l.shape, 2), np.float64)
    for region, pixels in _regions(target_l.shape, reference_labs, masks):
        grey_ab = np.zeros((int(region.sum()), 2))
        ab[region] = reinhard_stats_transfer(grey_ab, pixels[:, 1:].mean(0), pixels[:, 1:].std(0))
    return ab.astype(np.float32)


def _local_std(l: np.ndarray, size: int = 5) -> np.ndarray:
    """Standard deviation of L over size x size neighbourhoods: (H, W) float64."""
    mean = uniform_filter(l, size, mode="reflect")
    return np.sqrt(np.maximum(uniform_filter(l * l, size, mode="reflect") - mean * mean, 0.0))


def welsh(
    target_l: np.ndarray,
    reference_labs: Sequence[np.ndarray],
    masks: Sequence[MaskPairs] | None = None,
    *,
    samples: int = 256,
    seed: int = 0,
) -> np.ndarray:
    """Global matching of Welsh et al. (2002), "Transferring color to greyscale images": (H, W, 2) float32.

    The reference L is remapped to the target's L mean/std (Reinhard-style), ``samples`` random
    reference pixels are drawn, and each target pixel takes the ab of the sample nearest in
    (L, 5x5 std of L), weighted 50/50 as in the paper. With masks, matching is restricted to
    the paired regions (see :func:`_regions`).
    """
    rng = np.random.default_rng(seed)
    t_l = target_l.astype(np.float64)
    t_feat = np.stack([t_l, _local_std(t_l)], -1)
    r_feats = [
        np.concatenate([lab, _local_std(lab[..., 0].astype(np.float64))[..., None]], -1) for lab in reference_labs
    ]  # (Hr, Wr, 4): L, a, b, std(L)
    ab = np.zeros((*t_l.shape, 2), np.float64)
    for region, pixels in _regions(t_l.shape, r_feats, masks):
        if not region.any():
            continue
        pick = pixels[rng.choice(len(pixels), size=min(samples, len(pixels)), replace=False)]
        target_px = t_feat[region]
        # luminance remapping: reference L (and so its local std) scaled to the target's L statistics
        scale = target_px[:, 0].std() / max(pixels[:, 0].std(), 1e-6)
        remapped = np.stack(
            [(pick[:, 0] - pixels[:, 0].mean()) * scale + target_px[:, 0].mean(), pick[:, 3] * scale], 1
        )
        _, idx = cKDTree(remapped).query(target_px, k=1)
        ab[region] = pick[idx, 1:3]
    return ab.astype(np.float32)


BASELINES: dict[str, Colorizer] = {
    "grey": grey,
    "copy-chroma": copy_chroma,
    "reinhard": reinhard,
    "welsh": welsh,
}
"""Name -> colorizer; ``reinhard`` and ``welsh`` also use masks when given."""
