"""Colorize one grey image from colour references (and optional object masks).

The single entry point for still images; video keyframes use the same function.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

METHODS = ("transfer", "net")


@dataclass(frozen=True)
class Exemplar:
    """A colour reference with optional object masks.

    rgb: (Hr, Wr, 3) float32 in [0, 1].
    masks: (target_mask (H, W) bool, reference_mask (Hr, Wr) bool) pairs: the region of the
        target that must take its colours from the paired region of this reference.
    """

    rgb: np.ndarray
    masks: tuple[tuple[np.ndarray, np.ndarray], ...] = field(default_factory=tuple)


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cpu' / 'cuda' as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def colorize_still(target: np.ndarray, exemplars: list[Exemplar], *, method: str = "transfer",
                   device: str = "auto", features: torch.nn.Module | None = None,
                   net: torch.nn.Module | None = None) -> np.ndarray:
    """Colorize a grey image; returns its chroma as Lab ab.

    target: (H, W) float32 grey in [0, 1] (sRGB-encoded grey, any size).
    method: "transfer" (training-free super-attention transfer, model.transfer) or "net" (the
    trained network, model.net, weights model/weights/colornet.pt unless ``net`` is given).
    features / net: pass loaded models in to reuse them across calls.
    Returns (2, H, W) float32 Lab a*, b* (CIE units, roughly [-110, 110]) for the target's pixels;
    combine with the target's own lightness with :func:`compose_rgb`.
    """
    from model.color import rgb_to_lab
    from model.transfer import transfer_colour

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    if not exemplars:
        raise ValueError("at least one exemplar is needed")
    dev = resolve_device(device)
    with torch.inference_mode():
        target_l = _lightness(torch.from_numpy(np.ascontiguousarray(target)).to(dev))
        refs = [rgb_to_lab(torch.from_numpy(np.ascontiguousarray(e.rgb)).permute(2, 0, 1)[None].to(dev))
                for e in exemplars]
        masks = None
        if any(e.masks for e in exemplars):
            masks = [[(torch.from_numpy(t).to(dev), torch.from_numpy(r).to(dev)) for t, r in e.masks]
                     for e in exemplars]
        if method == "net":
            from model.features import load_vgg16
            from model.net import colorize_net, load_colornet

            ab = colorize_net(net if net is not None else load_colornet(device=dev),
                              features if features is not None else load_vgg16(device=dev), target_l, refs, masks)
        else:
            ab = transfer_colour(target_l, refs, masks, features=features)
    return ab[0].float().cpu().numpy()


def compose_rgb(target: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """Grey target (H, W) in [0, 1] + ab (2, H, W) -> RGB (H, W, 3) float32 in [0, 1], target's lightness kept."""
    from model.color import lab_to_rgb

    with torch.inference_mode():
        l = _lightness(torch.from_numpy(np.ascontiguousarray(target)))
        lab = torch.cat([l, torch.from_numpy(ab)[None].to(l.dtype)], dim=1)
        rgb = lab_to_rgb(lab)[0].permute(1, 2, 0).clamp(0, 1)
    return rgb.numpy().astype(np.float32)


def _lightness(grey: torch.Tensor) -> torch.Tensor:
    """Grey (H, W) in [0, 1] (sRGB-encoded) -> Lab L (1, 1, H, W) in [0, 100]."""
    from model.color import rgb_to_lab

    return rgb_to_lab(grey[None, None].expand(1, 3, -1, -1))[:, :1]
