"""CIE Lab <-> sRGB, the one place for Lab in the project (kornia, D65 white).

Lab convention everywhere: L in [0, 100], a and b roughly in [-128, 127]; sRGB in [0, 1].
"""

from __future__ import annotations

import kornia.color
import torch
from torch import Tensor


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB (B, 3, H, W) float in [0, 1] -> Lab (B, 3, H, W): L in [0, 100], ab roughly [-128, 127]."""
    return kornia.color.rgb_to_lab(rgb)


def lab_to_rgb(lab: Tensor, clip: bool = True) -> Tensor:
    """Lab (B, 3, H, W) -> sRGB (B, 3, H, W) float; clipped to [0, 1] unless ``clip=False``."""
    return kornia.color.lab_to_rgb(lab, clip=clip)


def grey_lightness(grey: Tensor) -> Tensor:
    """Lab L of sRGB-encoded grey: (B, 1, H, W) float in [0, 1] -> (B, 1, H, W) L in [0, 100]."""
    return rgb_to_lab(grey.expand(-1, 3, -1, -1))[:, :1]


def grey_rgb(l: Tensor) -> Tensor:
    """Neutral grey with lightness ``l``: L (B, 1, H, W) in [0, 100] -> sRGB (B, 3, H, W) in [0, 1].

    The three channels are exactly equal (what the feature extractors expect for a grey image).
    """
    # a = b = 0 is the white point, so linear R = G = B = Y: kornia's L -> Y step, then sRGB gamma
    # (3x cheaper than a full lab_to_rgb, and exactly grey instead of grey up to matrix rounding).
    fy = (l + 16.0) / 116.0
    y = torch.where(fy > 0.2068966, fy**3, (fy - 4.0 / 29.0) / 7.787)
    return kornia.color.linear_rgb_to_rgb(y.expand(-1, 3, -1, -1)).clamp(0.0, 1.0)
