"""Colorize one grey image from colour references (and optional object masks).

The single entry point for still images; video keyframes use the same function.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from model.features import VGG16Features
    from model.net import ColorNet

from pipeline.settings import DEFAULT_METHOD, METHODS, Device, Method


@dataclass(frozen=True)
class Exemplar:
    """A colour reference with optional object masks.

    rgb: (Hr, Wr, 3) float32 in [0, 1].
    masks: (target_mask (H, W) bool, reference_mask (Hr, Wr) bool) pairs: the region of the
        target that must take its colours from the paired region of this reference.
    """

    rgb: np.ndarray
    masks: tuple[tuple[np.ndarray, np.ndarray], ...] = field(default_factory=tuple)


def resolve_device(device: Device | str | torch.device = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cpu' / 'cuda' as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


_LOADING = threading.Lock()
"""Held while a shared model loads: shots coloured at once ask for it together."""


def shared_vgg16(device: torch.device) -> VGG16Features:
    """The frozen VGG-16 feature extractor on ``device``, loaded once per process and shared by
    every colorizer (keyframes, the propagation's attention term, stills) and every thread."""
    with _LOADING:
        return _vgg16(device)


def shared_colornet(device: torch.device) -> ColorNet:
    """The trained exemplar network (bundled weights) on ``device``, loaded once per process and
    shared by every thread."""
    with _LOADING:
        return _colornet(device)


def clear_shared_models() -> None:
    """Forget the shared models (the next call loads them again; their memory goes once unused)."""
    with _LOADING:
        _vgg16.cache_clear()
        _colornet.cache_clear()


@lru_cache(maxsize=4)
def _vgg16(device: torch.device) -> VGG16Features:
    from model.features import load_vgg16

    return load_vgg16(device=device)


@lru_cache(maxsize=4)
def _colornet(device: torch.device) -> ColorNet:
    from model.net import load_colornet

    return load_colornet(device=device)


def colorize_still(
    target: np.ndarray,
    exemplars: list[Exemplar],
    *,
    method: Method = DEFAULT_METHOD,
    device: Device | str | torch.device = "auto",
    features: torch.nn.Module | None = None,
    net: ColorNet | None = None,
) -> np.ndarray:
    """Colorize a grey image; returns its chroma as Lab ab.

    target: (H, W) float32 grey in [0, 1] (sRGB-encoded grey, any size).
    method: :data:`Method` (the network's weights are model/weights/colornet.pt unless ``net`` is given).
    features / net: models to use instead of :func:`shared_vgg16` / :func:`shared_colornet`.
    Returns (2, H, W) float32 Lab a*, b* (CIE units, roughly [-110, 110]) for the target's pixels;
    combine with the target's own lightness with :func:`compose_rgb`.
    """
    from model.color import grey_lightness, rgb_to_lab
    from model.transfer import transfer_colour

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    if not exemplars:
        raise ValueError("at least one exemplar is needed")
    dev = resolve_device(device)
    with torch.inference_mode():
        target_l = grey_lightness(torch.from_numpy(np.ascontiguousarray(target))[None, None].to(dev))
        refs = [
            rgb_to_lab(torch.from_numpy(np.ascontiguousarray(e.rgb)).permute(2, 0, 1)[None].to(dev)) for e in exemplars
        ]
        masks = None
        if any(e.masks for e in exemplars):
            masks = [
                [(torch.from_numpy(t).to(dev), torch.from_numpy(r).to(dev)) for t, r in e.masks] for e in exemplars
            ]
        vgg = features if features is not None else shared_vgg16(dev)
        if method == "net":
            from model.net import colorize_net

            ab = colorize_net(net if net is not None else shared_colornet(dev), vgg, target_l, refs, masks)
        else:
            ab = transfer_colour(target_l, refs, masks, features=vgg)
    return ab[0].float().cpu().numpy()


def compose_rgb(target: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """Grey target (H, W) in [0, 1] + ab (2, H, W) -> RGB (H, W, 3) float32 in [0, 1], target's lightness kept."""
    from pipeline.color import lightness_from_grey, rgb_from_lab

    return rgb_from_lab(lightness_from_grey(target), ab)
