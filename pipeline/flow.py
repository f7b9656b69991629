"""Optical flow between lightness frames, behind one interface (:class:`FlowBackend`).

Frames are batched tensors ``(B, 1, h, w)`` float32, Lab L in [0, 100]; a flow is
``(B, 2, h, w)`` float32 in px as (dx, dy) with ``l_from(x) ~ l_to(x + flow(x))``, on the
frames' device. Two backends:

* :class:`DISFlow`: OpenCV's DIS (Kroeger et al., "Fast optical flow using dense inverse
  search", ECCV 2016), medium preset, computed down to pyramid level ``finest_scale`` (0: the
  working resolution; the preset stops at 1) on 8-bit L. CPU only: the batch goes through
  OpenCV one pair at a time and comes back to the frames' device.
* :class:`TorchFlow`: dense pyramidal Lucas-Kanade (Bouguet's coarse-to-fine scheme), all in
  torch on the frames' device, batched over the frame pairs, no learned weights. Each level: a
  few Gauss-Newton updates of a per-pixel translation over a Gaussian window (symmetric
  gradients, robust weights, a small Tikhonov term for flat areas), then a separable 3x3 median
  of the flow (Sun, Roth & Black 2010) against outliers.

:func:`flow_backend` picks one: ``"auto"`` is DIS on every device. The torch backend keeps
the flows on the device but is not as good yet: on the first 20 frames of DAVIS libby the
propagation gives 31.42 dB with it against 32.32 with DIS (figures in bench/README.md,
"Propagation"), beyond the 0.2 dB a default may lose.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, Protocol

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

FlowMethod = Literal["auto", "dis", "torch"]
FLOW_METHODS: tuple[FlowMethod, ...] = ("auto", "dis", "torch")


class FlowBackend(Protocol):
    """Dense optical flow on batched L frames (see the module notes for the conventions)."""

    def flow(self, l_from: Tensor, l_to: Tensor) -> Tensor:
        """(B, 1, h, w) L, (B, 1, h, w) L -> (B, 2, h, w) float32 px, ``l_from(x) ~ l_to(x + flow(x))``."""
        ...


def _to_u8(l: np.ndarray) -> np.ndarray:
    return np.clip(l * 2.55 + 0.5, 0, 255).astype(np.uint8)


class DISFlow:
    """OpenCV DIS, medium preset, down to pyramid level ``finest_scale`` (0: full size)."""

    def __init__(self, finest_scale: int = 0) -> None:
        self._dis = cv2.DISOpticalFlow.create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        self._dis.setFinestScale(finest_scale)

    def flow(self, l_from: Tensor, l_to: Tensor) -> Tensor:
        """See :meth:`FlowBackend.flow`; one OpenCV call per pair of the batch."""
        a = _to_u8(l_from.detach().to("cpu", torch.float32).numpy()[:, 0])
        b = _to_u8(l_to.detach().to("cpu", torch.float32).numpy()[:, 0])
        # OpenCV allocates the output for None; its stub does not list that overload
        flows = np.stack([self._dis.calc(x, y, None) for x, y in zip(a, b, strict=True)])  # type: ignore[call-overload]
        return torch.from_numpy(flows).permute(0, 3, 1, 2).contiguous().to(l_from.device)


def pixel_grid(shape: Sequence[int], device: torch.device | str = "cpu") -> Tensor:
    """Absolute pixel coordinates (1, 2, h, w) float32, (x, y), for an image of ``shape`` (..., h, w)."""
    h, w = shape[-2], shape[-1]
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([xs, ys])[None]


def remap(image: Tensor, coords: Tensor, border: float | None = None) -> Tensor:
    """Sample ``image`` (B, C, h, w) bilinearly at absolute coordinates ``coords`` (B, 2, h', w')
    (x, y) px: (B, C, h', w'). ``border``: the value outside the image; None replicates the edge."""
    h, w = image.shape[-2:]
    gx = coords[:, 0] * (2.0 / max(w - 1, 1)) - 1.0
    gy = coords[:, 1] * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    if border is None:
        return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)
    if border == 0.0:
        return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return F.grid_sample(image - border, grid, mode="bilinear", padding_mode="zeros", align_corners=True) + border


def warp(image: Tensor, flow: Tensor, border: float | None = None) -> Tensor:
    """Sample ``image`` (B, C, h, w) at x + flow(x) (bilinear, ``flow`` (B, 2, h, w) px):
    (B, C, h, w). ``border``: the value outside the image; None replicates the edge."""
    return remap(image, pixel_grid(flow.shape, device=flow.device) + flow, border)


def _gaussian_kernel(sigma: float) -> list[float]:
    """Normalised 1-D Gaussian taps, radius ceil(2 sigma)."""
    radius = max(1, math.ceil(2.0 * sigma))
    taps = [math.exp(-(x * x) / (2.0 * sigma * sigma)) for x in range(-radius, radius + 1)]
    return [t / sum(taps) for t in taps]


def _blur(x: Tensor, kernel: list[float]) -> Tensor:
    """Separable blur of (B, C, h, w) with a symmetric 1-D kernel, edges replicated: weighted sums
    of shifted views (faster than a depthwise convolution on a CPU)."""
    r = len(kernel) // 2
    h, w = x.shape[-2:]
    p = F.pad(x, (r, r, 0, 0), mode="replicate")
    rows = p[..., :, r : r + w] * kernel[r]
    for i in range(r):
        rows += (p[..., :, i : i + w] + p[..., :, 2 * r - i : 2 * r - i + w]) * kernel[i]
    p = F.pad(rows, (0, 0, r, r), mode="replicate")
    out = p[..., r : r + h, :] * kernel[r]
    for i in range(r):
        out += (p[..., i : i + h, :] + p[..., 2 * r - i : 2 * r - i + h, :]) * kernel[i]
    return out


def _gradients(l: Tensor) -> tuple[Tensor, Tensor]:
    """Central differences of (B, 1, h, w), edges replicated: (d/dx, d/dy)."""
    p = F.pad(l, (1, 1, 1, 1), mode="replicate")
    return (p[..., 1:-1, 2:] - p[..., 1:-1, :-2]) * 0.5, (p[..., 2:, 1:-1] - p[..., :-2, 1:-1]) * 0.5


def _med3(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    return torch.maximum(torch.minimum(a, b), torch.minimum(torch.maximum(a, b), c))


def _median3(flow: Tensor) -> Tensor:
    """Separable 3x3 median of each channel of (B, C, h, w) (median of 3 along rows, then along
    columns; edges replicated)."""
    h, w = flow.shape[-2:]
    p = F.pad(flow, (1, 1, 0, 0), mode="replicate")
    rows = _med3(p[..., :w], p[..., 1 : w + 1], p[..., 2 : w + 2])
    p = F.pad(rows, (0, 0, 1, 1), mode="replicate")
    return _med3(p[..., :h, :], p[..., 1 : h + 1, :], p[..., 2 : h + 2, :])


class TorchFlow:
    """Dense pyramidal Lucas-Kanade in torch (see the module notes), batched over frame pairs.

    levels: pyramid levels at most (each halves the size; stops when the short side would fall
        below ``min_size``). iterations: Gauss-Newton updates per level. window_sigma: the
        Gaussian window of the local translation, px at each level. regularise: Tikhonov term
        added to the structure tensor's diagonal, (L units / px)^2. robust: residual scale of
        the per-pixel weights, L units.
    """

    def __init__(
        self,
        levels: int = 6,
        iterations: int = 4,
        window_sigma: float = 2.5,
        regularise: float = 0.5,
        robust: float = 5.0,
        min_size: int = 16,
    ) -> None:
        self.robust = robust
        self.levels = levels
        self.iterations = iterations
        self.window_sigma = window_sigma
        self.regularise = regularise
        self.min_size = min_size

    def flow(self, l_from: Tensor, l_to: Tensor) -> Tensor:
        """See :meth:`FlowBackend.flow`."""
        a, b = l_from.float(), l_to.float()
        pyramid = [(a, b)]
        while len(pyramid) < self.levels and min(pyramid[-1][0].shape[-2:]) // 2 >= self.min_size:
            pa, pb = pyramid[-1]
            pyramid.append((F.avg_pool2d(pa, 2, ceil_mode=True), F.avg_pool2d(pb, 2, ceil_mode=True)))
        window = _gaussian_kernel(self.window_sigma)
        flow = torch.zeros(a.shape[0], 2, *pyramid[-1][0].shape[-2:], device=a.device)
        for level, (la, lb) in enumerate(reversed(pyramid)):
            if level:
                size = la.shape[-2:]
                scale = torch.tensor([size[1] / flow.shape[-1], size[0] / flow.shape[-2]], device=a.device)
                flow = F.interpolate(flow, size=size, mode="bilinear", align_corners=False) * scale.view(1, 2, 1, 1)
            flow = self._refine(la, lb, flow, window)
        return flow

    def _refine(self, la: Tensor, lb: Tensor, flow: Tensor, window: list[float]) -> Tensor:
        """Gauss-Newton updates of ``flow`` at one level: the gradient is the mean of the
        template's and the warped image's (efficient second-order minimisation, Benhimane &
        Malis 2004), each pixel of the window weighted by 1 / (1 + (residual / robust)^2)
        (iteratively reweighted least squares with a Lorentzian-like penalty, Black & Anandan
        1996), so that occlusions and outliers pull less."""
        gx, gy = _gradients(la)
        grid = pixel_grid(la.shape, device=la.device)
        for _ in range(self.iterations):
            warped = remap(lb, grid + flow)
            diff = warped - la
            wx, wy = _gradients(warped)
            ex, ey = (gx + wx) * 0.5, (gy + wy) * 0.5
            weight = 1.0 / (1.0 + (diff * (1.0 / self.robust)) ** 2)
            sums = _blur(
                torch.cat(
                    [weight * ex * ex, weight * ex * ey, weight * ey * ey, weight * ex * diff, weight * ey * diff], 1
                ),
                window,
            )
            sxx, sxy, syy, bx, by = sums.split(1, dim=1)
            sxx, syy = sxx + self.regularise, syy + self.regularise
            det = sxx * syy - sxy * sxy
            du = (syy * bx - sxy * by) / det
            dv = (sxx * by - sxy * bx) / det
            flow = flow - torch.cat([du, dv], dim=1)
        return _median3(flow)


def flow_backend(method: FlowMethod, device: torch.device | str, finest_scale: int = 0) -> FlowBackend:
    """The flow backend for ``method``: ``"dis"`` (:class:`DISFlow` with ``finest_scale``),
    ``"torch"`` (:class:`TorchFlow`), ``"auto"``: DIS on every ``device`` (see the module notes)."""
    if method not in FLOW_METHODS:
        raise ValueError(f"unknown flow method {method!r}; choose from {FLOW_METHODS}")
    if method == "torch":
        return TorchFlow()
    return DISFlow(finest_scale)


__all__ = [
    "FLOW_METHODS",
    "DISFlow",
    "FlowBackend",
    "FlowMethod",
    "TorchFlow",
    "flow_backend",
    "pixel_grid",
    "remap",
    "warp",
]
