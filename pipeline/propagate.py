"""Colour propagation through a shot from its coloured keyframes.

Input: the shot's lightness at working resolution (Lab L, (h, w) float32 in [0, 100], short side
about 256 px) and the ab of one or more keyframes; output: every frame's ab at working
resolution, which :func:`upsample_chroma` brings to full resolution guided by the full-resolution
L, one frame at a time. Only chroma is produced: the source's luma passes through untouched.

Method (its settings are measured on DAVIS with ``bench/bench_propagation.py``; figures and what
was tried: bench/README.md):

1. Sweeps. From each keyframe a forward sweep runs up to the next keyframe (or the shot's end)
   and a backward sweep down to the previous keyframe (or the shot's start). A sweep colours
   frame t from its previous frame s = t -/+ 1, which it has already coloured:

   a. Flow (``pipeline.flow``): OpenCV DIS (medium preset, down to the finest pyramid level) on
      8-bit L, both ways between t and s.
   b. Occlusion confidence: forward-backward consistency (Sundaram, Brox & Keutzer 2010,
      |w + w'|^2 < alpha (|w|^2 + |w'|^2) + beta; 1 inside the tolerance, decaying beyond);
      0 where the flow leaves the frame. The path confidence C_t = warp(C_s) * consistency_t
      is the product along the chain back to the keyframe: a pixel that was ever occluded or
      came in from outside the frame stays low.
   c. Propagated colour: s's output ab and L warped to t, then a local luma-guided correction
      (:func:`refine_chroma`): each pixel takes a softmax-weighted mean of the warped ab within
      ``search_radius`` px, weighted by the 3x3 patch distance between its L and the warped L
      plus a distance penalty, which snaps colour edges back onto the frame's luma edges where
      the flow is a few pixels off.
   d. Keyframe anchor (no drift): the keyframe coordinates of every pixel are composed along
      the chain and corrected by a residual flow between frame t and the keyframe's L
      resampled at them; the keyframe's own ab, sampled there once (so it never blurs), replaces
      the chained colour with weight C * exp(-patch L error / ``anchor_scale``). Where the
      keyframe at those coordinates matches frame t, g = (1 - C) exp(-patch L error /
      ``restore_scale``) gives the anchored colour weight g beside C and the path confidence
      becomes C + g, so that confidence is restored, not only decayed, along a pan.
      Revealed background (``anchor_direct``): where C < 1/2, a direct flow from frame t to the
      keyframe (forward-backward checked) gives a second guess of the coordinates, taken where
      its 5x5 patch L error is below ``anchor_direct_ratio`` times the chain's (background
      uncovered by a moving object: its chained coordinates followed the object).
   e. Attention term (content the keyframe does not show): every ``attention_every`` frames,
      when some of the frame has low path confidence, the exemplar colorizer (default: the
      training-free super-attention transfer of ``model.transfer``, thesis ch. 4, at
      ``attention_size``, no regrain, with an image-position prior) colours t from the sweep's
      keyframe. Between computations the term is carried by warping, and a new computation is
      averaged with the carried term (``attention_blend``) so that it does not flicker. The
      previous output is not a reference of the attention term (with it, unsure colours feed
      back on themselves and fade).
   f. Output: C^p * (c, d) + (1 - C^p) * attention term (p = ``confidence_power``): confident
      pixels follow the flow and the keyframe, occluded or new ones the attention term.

2. Fusion: between two keyframes, the forward and backward outputs are averaged per pixel
   with weights (C + eps) / d, d the temporal distance to the sweep's keyframe: a frame
   exactly between two keyframes with equal confidences takes half of each.

3. Memory: the lightness frames are read once, in order (a generator works). Lightness, the
   forward sweeps' results and the final ab go to an injected :class:`FrameStore` (default: on
   CUDA float16 tensors on the device, on a CPU a temporary folder of float16 ``.npy`` files);
   the sweeps themselves hold O(1) frames (the previous frame's L, ab, confidence, attention
   term and keyframe coordinates, and the keyframe), whatever the shot's length, plus the
   ``flow_batch`` frames whose consecutive flows are computed together.

4. Device: one torch implementation on the run's device (``pipeline.flow`` for the flows and
   warps). Each frame's L goes to the device once, its ab and confidence come back once when
   yielded; in between nothing leaves torch except the DIS flows (OpenCV, on the host) and one
   read every ``attention_every`` frames (whether the attention term is due). The steps that do
   not depend on colour (a, b, d) run first over a run of frames, so the frames due an
   attention term (e) are known and coloured in one batch.

Conventions: L in [0, 100], ab in CIE units (roughly [-110, 110]); images are (B, C, h, w)
float32 tensors, flows (B, 2, h, w) float32 in px as (dx, dy) with
``frame_from(x) ~ frame_to(x + flow(x))``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.confidence import UNSURE
from pipeline.flow import FlowBackend, FlowMethod, flow_backend, pixel_grid, remap, warp

if TYPE_CHECKING:
    from model.transfer import FeatureExtractor

Colorizer = Callable[[Tensor, Sequence[Tensor]], Tensor]
"""``colorizer(target_l, references) -> ab``: target_l (B, 1, h, w) float32 L in [0, 100], B
frames coloured from the same references; references: (1, 3, h_r, w_r) float32 Lab images;
returns (B, 2, h, w) float32 ab, on the target's device."""


@dataclass(frozen=True)
class PropagatedFrame:
    """One frame of a coloured shot, at working resolution.

    ab: (2, h, w) float32 Lab ab.
    confidence: (h, w) float32 in [0, 1], how sure the propagation is of each pixel's colour:
        1 on a keyframe; elsewhere the path confidence of the sweep(s) that coloured it (fused
        with the same weights as the colours between two keyframes). Below :data:`UNSURE` the
        colour came mostly from the attention term: it is guessed, not carried from a keyframe.
    """

    ab: np.ndarray
    confidence: np.ndarray


StepCallback = Callable[[int, int], None]
"""``on_step(done, total)``: called after each frame of each pass of :func:`propagate_shot`
(the forward pass reads and colours, the backward pass colours and fuses): ``total`` is
2 x the shot's length."""

FUSION_EPS = 0.05  # keeps a sweep's weight above 0 where both are unsure: distance decides there
REFINE_BAND = 64  # output rows of refine_chroma computed at once (bounds its 49-offset buffers)


@dataclass(frozen=True)
class PropagationSettings:
    """Parameters of :func:`propagate_shot` (defaults measured on DAVIS, see bench/README.md).

    work_size: short side of the working resolution, px, for callers (:func:`to_working`);
        :func:`propagate_shot` takes frames already at that size.
    search_radius: half-width of the local correction window, px (0: plain warping).
    match_temperature: softmax temperature of the correction, (L units)^2 per pixel.
    distance_penalty: added to the patch distance per px^2 of offset, (L units)^2.
    consistency_alpha, consistency_beta: forward-backward check (Sundaram et al. 2010), 1 and px^2.
    attention_every: frames between attention computations (0: never; flow only).
    attention_min_area: fraction of the frame with path confidence < 1/2 below which the
        attention computation is skipped (nothing new to colour; checked every
        ``attention_every`` frames).
    attention_size: short side (px) at which the default colorizer runs.
    attention_blend: weight of a new attention computation against the carried term.
    attention_previous: also give the colorizer the previous output as a reference (besides
        the keyframe); off: see step e of the module notes.
    attention_position_sigma: image-position prior of the default colorizer, in image
        heights/widths (None: none; ``model.transfer.transfer_colour``).
    confidence_power: the output is C^p * propagated + (1 - C^p) * attention term (step f).
    flow: optical flow backend (``pipeline.flow.flow_backend``: "auto" is OpenCV DIS).
    flow_finest_scale: finest DIS pyramid level (0: the working resolution; the medium
        preset's own is 1).
    flow_batch: frame pairs whose consecutive flows are computed in one call.
    anchor: blend in the keyframe's colours at drift-corrected keyframe coordinates.
    anchor_scale: (L units)^2; the anchor's weight falls as exp(-patch L error / anchor_scale).
    restore: let a good match with the keyframe at the anchored coordinates raise the path
        confidence (needs ``anchor``).
    restore_scale: (L units)^2; the restoring weight is (1 - C) exp(-patch L error / restore_scale).
    anchor_direct: where the chain is unsure, also try keyframe coordinates from a direct flow
        between frame t and the keyframe (background revealed behind a moving object; step d;
        needs ``anchor``).
    anchor_direct_ratio: the direct coordinates replace the chain's where their 5x5 patch L error
        is below this fraction of the chain's.
    """

    work_size: int = 256
    search_radius: int = 3
    match_temperature: float = 2.0
    distance_penalty: float = 0.5
    consistency_alpha: float = 0.01
    consistency_beta: float = 0.5
    attention_every: int = 4
    attention_min_area: float = 0.005
    attention_size: int = 192
    attention_blend: float = 0.5
    attention_previous: bool = False
    attention_position_sigma: float | None = 0.3
    confidence_power: float = 0.5
    flow: FlowMethod = "auto"
    flow_finest_scale: int = 0
    flow_batch: int = 8
    anchor: bool = True
    anchor_scale: float = 10.0
    restore: bool = True
    restore_scale: float = 20.0
    anchor_direct: bool = True
    anchor_direct_ratio: float = 0.5


# --- storage ------------------------------------------------------------------------------


class FrameStore(Protocol):
    """Per-frame tensors keyed by (name, frame index); values come back as float32 on the
    propagation's device."""

    def put(self, name: str, index: int, value: Tensor) -> None: ...

    def get(self, name: str, index: int) -> Tensor: ...

    def delete(self, name: str, index: int) -> None: ...


class MemoryStore:
    """In-memory :class:`FrameStore` (float16, like :class:`NpyStore`), on the tensors' own
    device: the default on CUDA, and for tests and short shots.

    ``peak`` is the largest number of tensors held at once, per name.
    """

    def __init__(self) -> None:
        self._data: dict[tuple[str, int], Tensor] = {}
        self.peak: dict[str, int] = {}

    def put(self, name: str, index: int, value: Tensor) -> None:
        self._data[name, index] = value.detach().to(torch.float16, copy=True)
        held = sum(1 for n, _ in self._data if n == name)
        self.peak[name] = max(self.peak.get(name, 0), held)

    def get(self, name: str, index: int) -> Tensor:
        return self._data[name, index].float()

    def delete(self, name: str, index: int) -> None:
        del self._data[name, index]

    def __len__(self) -> int:
        return len(self._data)


class NpyStore:
    """:class:`FrameStore` of float16 ``.npy`` files, ``<folder>/<name>-<index>.npy``, read back
    onto ``device``: bounded memory, the default on a CPU."""

    def __init__(self, folder: str | Path, device: torch.device | str = "cpu") -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(device)

    def _path(self, name: str, index: int) -> Path:
        return self.folder / f"{name}-{index:07d}.npy"

    def put(self, name: str, index: int, value: Tensor) -> None:
        np.save(self._path(name, index), value.detach().to("cpu", torch.float16).numpy())

    def get(self, name: str, index: int) -> Tensor:
        return torch.from_numpy(np.load(self._path(name, index))).to(self.device, torch.float32)

    def delete(self, name: str, index: int) -> None:
        self._path(name, index).unlink()


# --- image maths (torch: (B, C, h, w) float32; warps in pipeline.flow) ---------------------


def to_working(l: np.ndarray, work_size: int) -> np.ndarray:
    """(H, W) L -> (h, w) float32 with the short side at most ``work_size`` (area filter)."""
    from model.transfer import working_size

    h, w = working_size(l.shape[0], l.shape[1], work_size)
    l = np.asarray(l, dtype=np.float32)
    return l if (h, w) == l.shape else cv2.resize(l, (w, h), interpolation=cv2.INTER_AREA)


def upsample_chroma(ab: np.ndarray, l_full: np.ndarray) -> np.ndarray:
    """Working-resolution ab (2, h, w) -> (2, H, W) float32, edges following the full-resolution
    L (H, W) in [0, 100]: the reel's own upsampler (``pipeline.color.guided_upsample``, which
    ``postprod run`` applies to Cb, Cr), here on ab. One frame at a time: memory is a few
    full-resolution planes."""
    from pipeline.color import guided_upsample

    return guided_upsample(np.asarray(ab, dtype=np.float32), np.asarray(l_full, dtype=np.float32) / 100.0)


def box_mean(x: Tensor, size: int) -> Tensor:
    """Mean of (B, C, h, w) over ``size`` x ``size`` windows (odd ``size``, edges replicated):
    an average pooling written as separable sums of shifted views (faster than ``avg_pool2d``
    on a CPU for many channels)."""
    r = size // 2
    h, w = x.shape[-2:]
    p = F.pad(x, (r, r, r, r), mode="replicate")
    rows = p[..., :, :w].clone()
    for i in range(1, size):
        rows += p[..., :, i : i + w]
    out = rows[..., :h, :].clone()
    for i in range(1, size):
        out += rows[..., i : i + h, :]
    return out * (1.0 / (size * size))


def patch_error(l: Tensor, l_other: Tensor, size: int = 3) -> Tensor:
    """Mean squared difference of (B, C, h, w) over ``size`` x ``size`` patches (edges
    replicated): (B, C, h, w)."""
    return box_mean((l - l_other) ** 2, size)


def flow_confidence(flow_back: Tensor, flow_fwd: Tensor, alpha: float = 0.01, beta: float = 0.5) -> Tensor:
    """Occlusion-aware confidence of ``flow_back`` (t -> s) given ``flow_fwd`` (s -> t), both
    (B, 2, h, w) px.

    Sundaram et al. 2010: the round trip t -> s -> t should come back,
    |w + w'|^2 <= alpha (|w|^2 + |w'|^2) + beta with w' = flow_fwd sampled at x + w. Soft:
    1 inside the tolerance, exp(-(|w + w'|^2 / tolerance - 1)) beyond it, so that a long chain of
    consistent frames keeps its confidence. Pixels whose w leaves the frame get 0 (no source in s).

    Returns:
        (B, 1, h, w) float32 in [0, 1].
    """
    h, w = flow_back.shape[-2:]
    back_fwd = warp(flow_fwd, flow_back)
    err = ((flow_back + back_fwd) ** 2).sum(1, keepdim=True)
    tol = alpha * ((flow_back**2).sum(1, keepdim=True) + (back_fwd**2).sum(1, keepdim=True)) + beta
    xy = pixel_grid(flow_back.shape, flow_back.device) + flow_back
    inside = (xy[:, :1] >= 0) & (xy[:, :1] <= w - 1) & (xy[:, 1:] >= 0) & (xy[:, 1:] <= h - 1)
    return torch.where(inside, torch.exp(-(err / tol - 1.0).clamp(min=0.0)), 0.0)


def refine_chroma(
    l: Tensor,
    l_src: Tensor,
    ab_src: Tensor,
    radius: int = 3,
    temperature: float = 2.0,
    distance_penalty: float = 0.5,
    patch: int = 3,
) -> Tensor:
    """Local luma-guided correction of warped chroma.

    Each pixel x takes sum_o w_o ab_src(x + o) over offsets |o|_inf <= radius with
    w = softmax(-(D_o(x) + penalty |o|^2) / temperature), D_o the mean squared L difference
    between the ``patch`` x ``patch`` patches of ``l`` at x and ``l_src`` at x + o: the shifted
    views of the edge-replicated source, D_o a box filter over them; computed in bands of
    :data:`REFINE_BAND` output rows, each with the rows it depends on (the same result, a
    fraction of the memory).

    Args:
        l: (B, 1, h, w) L of the frame being coloured, [0, 100].
        l_src: (B, 1, h, w) L of the source, already warped onto ``l``.
        ab_src: (B, 2, h, w) ab of the source, warped like ``l_src``.
        radius: px; 0 returns ``ab_src``.
        temperature: (L units)^2.
        distance_penalty: (L units)^2 per px^2.
        patch: odd patch side, px.

    Returns:
        (B, 2, h, w) float32.
    """
    if radius <= 0:
        return ab_src
    h = l.shape[-2]
    context = radius + patch // 2  # the rows beyond its own that a band's output depends on
    bands = []
    for y0 in range(0, h, REFINE_BAND):
        y1 = min(h, y0 + REFINE_BAND)
        a, b = max(0, y0 - context), min(h, y1 + context)
        part = _refine_rows(
            l[..., a:b, :], l_src[..., a:b, :], ab_src[..., a:b, :], radius, temperature, distance_penalty, patch
        )
        bands.append(part[..., y0 - a : y1 - a, :])
    return torch.cat(bands, dim=-2)


def _refine_rows(
    l: Tensor, l_src: Tensor, ab_src: Tensor, radius: int, temperature: float, distance_penalty: float, patch: int
) -> Tensor:
    """:func:`refine_chroma` over all the rows given at once."""
    h, w = l.shape[-2:]
    r, k = radius, 2 * radius + 1
    src = F.pad(torch.cat([l_src, ab_src], dim=1), (r, r, r, r), mode="replicate")
    views = [src[:, :, dy : dy + h, dx : dx + w] for dy in range(k) for dx in range(k)]  # offset (dy - r, dx - r)
    offsets = torch.arange(-r, r + 1, device=l.device, dtype=torch.float32)
    penalty = (distance_penalty * (offsets[:, None] ** 2 + offsets[None, :] ** 2)).reshape(1, k * k, 1, 1)
    cost = patch_error(l, torch.cat([v[:, :1] for v in views], dim=1), patch) + penalty  # (B, k^2, h, w)
    weights = torch.softmax(cost * (-1.0 / temperature), dim=1)
    out = torch.zeros_like(ab_src)
    for i, v in enumerate(views):
        out.addcmul_(weights[:, i : i + 1], v[:, 1:])
    return out


def fusion_weights(conf_a: Tensor, dist_a: int, conf_b: Tensor, dist_b: int) -> tuple[Tensor, Tensor]:
    """Per-pixel weights of two sweeps' results, summing to 1: (C + eps) / d for each.

    conf_a, conf_b: path confidences in [0, 1] (any equal shapes); dist_a, dist_b: frames (> 0)
    from each sweep's keyframe.
    """
    wa = (conf_a + FUSION_EPS) / dist_a
    wb = (conf_b + FUSION_EPS) / dist_b
    total = wa + wb
    return wa / total, wb / total


# --- the sweeps ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Geometry:
    """The colour-independent part of one sweep step (flows, confidences, the keyframe anchor),
    each (1, C, h, w) on the device.

    back: flow t -> s. conf: the path confidence after anchoring. key: the keyframe's colour at
    the anchored coordinates (refined), its anchor weight, its restoring gain and C + gain (None
    without ``anchor``; gain None without ``restore``). due: the attention term is computed here.
    """

    back: Tensor
    conf: Tensor
    key: tuple[Tensor, Tensor, Tensor | None, Tensor] | None
    due: bool


class _Sweep:
    """State of one sweep, on the propagation's device: what it holds is O(1) frames (previous
    L, ab, confidence, attention term, keyframe coordinates and the keyframe's Lab), each
    (1, C, h, w) float32.

    A run of frames is coloured in two passes (:meth:`run`): first what does not depend on colour
    (flows, confidences, keyframe anchor), which tells which frames need the attention term;
    then their attention term in one batch; then the colours, frame after frame."""

    def __init__(
        self, settings: PropagationSettings, colorizer: Colorizer | None, flows: FlowBackend, device: torch.device
    ) -> None:
        self.s = settings
        self.colorizer = colorizer if settings.attention_every > 0 else None
        self.flows = flows
        # skipping the direct flows where nothing is unsure needs a host read: free on a CPU only
        self.lazy_direct = device.type == "cpu"
        self.key_lab = torch.zeros(1, 3, 0, 0, device=device)  # set by reset()

    def reset(self, l: Tensor, ab: Tensor) -> None:
        """Start from a keyframe: L (1, 1, h, w), ab (1, 2, h, w)."""
        self.key_lab = torch.cat([l, ab], dim=1)
        self.l, self.ab = l, ab
        self.conf = torch.ones_like(l)
        self.attn = ab
        self.since_attention = 0
        self.anchor = pixel_grid(l.shape, device=l.device)

    def run(self, ls: Sequence[Tensor], flows: Sequence[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        """Colour the next frames of the sweep, L (1, 1, h, w) each, given the flows between each
        and its previous frame ((t -> s, s -> t), (1, 2, h, w) each): their (ab (1, 2, h, w),
        confidence (1, 1, h, w))."""
        geometry = [self._geometry(l, back, fwd) for l, (back, fwd) in zip(ls, flows, strict=True)]
        fresh: dict[int, Tensor] = {}
        due = [i for i, g in enumerate(geometry) if g.due]
        if due and self.colorizer is not None and not self.s.attention_previous:
            batch = self.colorizer(torch.cat([ls[i] for i in due]), [self.key_lab])
            fresh = {i: batch[j : j + 1] for j, i in enumerate(due)}
        return [self._colour(l, g, fresh.get(i)) for i, (l, g) in enumerate(zip(ls, geometry, strict=True))]

    def _geometry(self, l: Tensor, back: Tensor, fwd: Tensor) -> _Geometry:
        """Path confidence and keyframe anchor of frame t (steps b, d): where frame t still sees
        keyframe content, the keyframe's own colours, to be blended in, and the confidence
        restored where the keyframe matches (``restore``).

        The keyframe coordinates of each pixel are composed along the chain, then corrected by a
        residual flow between frame t and the keyframe's L resampled there (undoing the
        positional drift of the chain); the keyframe's ab sampled at the corrected coordinates
        (resampled once, so it never blurs or fades) replaces the chained colour with weight
        C * exp(-patch L error / anchor_scale)."""
        s = self.s
        consistency = flow_confidence(back, fwd, s.consistency_alpha, s.consistency_beta)
        conf = warp(self.conf, back, border=0.0) * consistency
        key = None
        if s.anchor:
            key_l = self.key_lab[:, :1]
            coords = warp(self.anchor, back)
            coords = warp(coords, self.flows.flow(l, remap(key_l, coords)))
            if s.anchor_direct:
                coords = self._direct(l, coords, conf)
            self.anchor = coords
            anchored = remap(self.key_lab, coords)
            key_ab = refine_chroma(
                l, anchored[:, :1], anchored[:, 1:], s.search_radius, s.match_temperature, s.distance_penalty
            )
            err = patch_error(l, anchored[:, :1])
            weight = conf * torch.exp(-err / s.anchor_scale)
            gain = (1.0 - conf) * torch.exp(-err / s.restore_scale) if s.restore else None
            total = conf if gain is None else conf + gain
            key, conf = (key_ab, weight, gain, total), total
        self.conf = conf
        due = False
        if self.colorizer is not None:
            self.since_attention += 1
            if self.since_attention >= s.attention_every:
                self.since_attention = 0
                # one host read every ``attention_every`` frames
                due = float((conf < UNSURE).float().mean()) >= s.attention_min_area
        return _Geometry(back, conf, key, due)

    def _direct(self, l: Tensor, coords: Tensor, conf: Tensor) -> Tensor:
        """Keyframe coordinates (1, 2, h, w): the chain's ``coords``, or those of a direct flow
        from frame t to the keyframe where the chain is unsure (C < 1/2), the direct flow passes
        the forward-backward check and its 5x5 patch L error is below ``anchor_direct_ratio``
        times the chain's. Background revealed behind a moving object: its chained coordinates
        followed the object, the direct flow finds it where the keyframe shows it."""
        unsure = conf < UNSURE
        if self.lazy_direct and not bool(unsure.any()):
            return coords
        s = self.s
        key_l = self.key_lab[:, :1]
        both = self.flows.flow(torch.cat([l, key_l]), torch.cat([key_l, l]))  # t -> key and key -> t
        flow = both[:1]
        checked = flow_confidence(flow, both[1:], s.consistency_alpha, s.consistency_beta) > UNSURE
        direct = pixel_grid(l.shape, device=l.device) + flow
        sampled = remap(key_l.expand(2, -1, -1, -1), torch.cat([direct, coords]))
        errors = patch_error(torch.cat([l, l]), sampled, 5)
        closer = errors[:1] < s.anchor_direct_ratio * errors[1:]
        return torch.where(unsure & checked & closer, direct, coords)

    def _colour(self, l: Tensor, g: _Geometry, fresh: Tensor | None) -> tuple[Tensor, Tensor]:
        """Colour frame t (steps c, d, e, f) from the previous output and ``g``; ``fresh``: its
        new attention computation when batched (:meth:`run`)."""
        s = self.s
        src = warp(torch.cat([self.l, self.ab], dim=1), g.back)
        propagated = refine_chroma(l, src[:, :1], src[:, 1:], s.search_radius, s.match_temperature, s.distance_penalty)
        if g.key is not None:
            key_ab, weight, gain, total = g.key
            propagated = weight * key_ab + (1.0 - weight) * propagated
            if gain is not None:
                # (C out + g ab) / (C + g), written so that pixels with C + g ~ 0 keep ``out`` (not grey)
                propagated = propagated + gain / total.clamp(min=1e-6) * (key_ab - propagated)
        l_previous, self.l = self.l, l
        if self.colorizer is None:
            self.ab = propagated
            return propagated, g.conf
        # the attention term is smooth (superpixel colours): carried by plain warping
        attn = warp(self.attn, g.back)
        if g.due:
            if fresh is None:  # the previous output as a second reference: one frame at a time
                fresh = self.colorizer(l, [self.key_lab, torch.cat([l_previous, self.ab], dim=1)])
            attn = s.attention_blend * fresh + (1.0 - s.attention_blend) * attn
        weight = g.conf.clamp(0.0, 1.0) ** s.confidence_power
        self.ab = weight * propagated + (1.0 - weight) * attn
        self.attn = attn
        return self.ab, g.conf


def propagate_shot(
    luma: Iterable[np.ndarray | Tensor],
    keyframes: dict[int, np.ndarray],
    *,
    length: int | None = None,
    colorizer: Colorizer | None = None,
    store: FrameStore | None = None,
    settings: PropagationSettings | None = None,
    device: str = "cpu",
    on_step: StepCallback | None = None,
) -> Iterator[PropagatedFrame]:
    """Colour every frame of a shot from its keyframes; yields each frame in order.

    Every frame's L goes to ``device`` once; the sweeps, the fusion and the store (the default
    one) work there; each frame's ab and confidence come back once, when yielded.

    Args:
        luma: the shot's L frames at working resolution, (h, w) float32 in [0, 100] (numpy
            arrays or tensors), read once in order (a generator is fine).
        keyframes: {frame index in the shot: (2, h, w) ab at working resolution}; at least one.
            Keyframes are yielded as given.
        length: number of frames (default: ``len(luma)``).
        colorizer: exemplar colorizer for the attention term (:data:`Colorizer`); None builds
            :func:`attention_colorizer` on ``device`` when ``settings.attention_every`` > 0.
        store: where per-frame intermediates go (default: on CUDA a :class:`MemoryStore` on the
            device; on a CPU float16 .npy files in a temporary folder, removed when the
            generator finishes or is closed).
        settings: :class:`PropagationSettings`.
        device: torch device of the propagation and of the default colorizer.
        on_step: progress callback (:data:`StepCallback`).

    Yields:
        :class:`PropagatedFrame` (ab and confidence) for frames 0 .. length - 1. Nothing is
        yielded before both sweeps have run (the backward sweep needs the whole shot).
    """
    settings = settings or PropagationSettings()
    dev = torch.device(device)
    if length is not None:
        n = length
    elif isinstance(luma, Sized):
        n = len(luma)
    else:
        raise ValueError("give the shot's length when luma is a stream (a generator has no len)")
    keys = sorted(keyframes)
    if not keys:
        raise ValueError("propagation needs at least one keyframe")
    if keys[0] < 0 or keys[-1] >= n:
        raise ValueError(f"keyframes {keys} outside the shot's {n} frames")
    key_ab = {k: torch.as_tensor(np.ascontiguousarray(v, dtype=np.float32)).to(dev)[None] for k, v in keyframes.items()}
    if colorizer is None and settings.attention_every > 0:
        colorizer = attention_colorizer(
            device=device, work_size=settings.attention_size, position_sigma=settings.attention_position_sigma
        )
    flows = flow_backend(settings.flow, dev, settings.flow_finest_scale)
    on_disk = store is None and dev.type == "cpu"
    with tempfile.TemporaryDirectory(prefix="postprod-propagate-") if on_disk else nullcontext("") as folder:
        if store is None:
            store = NpyStore(folder, dev) if on_disk else MemoryStore()
        step = _counter(on_step, 2 * n)
        with torch.inference_mode():
            _forward(luma, n, key_ab, keys, store, settings, colorizer, flows, dev, step)
            _backward(n, key_ab, keys, store, settings, colorizer, flows, dev, step)
        for t in range(n):
            ab, conf = store.get("ab", t), store.get("conf", t)
            store.delete("ab", t)
            store.delete("conf", t)
            yield PropagatedFrame(ab[0].cpu().numpy(), conf[0, 0].cpu().numpy())


def _counter(on_step: StepCallback | None, total: int) -> Callable[[], None]:
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if on_step is not None:
            on_step(done, total)

    return step


def _pair_flows(flows: FlowBackend, current: list[Tensor], previous: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
    """(back: t -> s, fwd: s -> t) for each pair (current[i], previous[i]) of (1, 1, h, w) L, all
    in one batched call of the flow backend."""
    if not current:
        return []
    m = len(current)
    both = flows.flow(torch.cat(current + previous), torch.cat(previous + current))
    return [(both[i : i + 1], both[m + i : m + i + 1]) for i in range(m)]


def _chunks(order: range, size: int) -> Iterator[list[int]]:
    chunk: list[int] = []
    for t in order:
        chunk.append(t)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _forward(
    luma: Iterable[np.ndarray | Tensor],
    n: int,
    keyframes: dict[int, Tensor],
    keys: list[int],
    store: FrameStore,
    settings: PropagationSettings,
    colorizer: Colorizer | None,
    flows: FlowBackend,
    device: torch.device,
    step: Callable[[], None],
) -> None:
    """Read the L frames once; forward sweeps. Frames after the last keyframe are final ("ab");
    frames between keyframes keep their forward result ("fwd", "fwd_conf") for the fusion. The
    consecutive flows are computed ``settings.flow_batch`` frames at a time."""
    sweep = _Sweep(settings, colorizer, flows, device)
    frames = iter(luma)
    previous: Tensor | None = None
    for chunk in _chunks(range(n), max(1, settings.flow_batch)):
        ls: list[Tensor] = []
        for t in chunk:
            try:
                frame = next(frames)
            except StopIteration:
                raise ValueError(f"luma ended after {t} frames, expected {n}") from None
            # a copy on the device: the caller's frame is not kept
            ls.append(torch.as_tensor(frame, dtype=torch.float32).to(device, copy=True)[None, None])
            del frame
        befores = [previous, *ls[:-1]]
        moving = [i for i, t in enumerate(chunk) if t > keys[0] and t not in keyframes]
        pairs = dict(
            zip(moving, _pair_flows(flows, [ls[i] for i in moving], [_known(befores[i]) for i in moving]), strict=True)
        )
        for t, l in zip(chunk, ls, strict=True):
            store.put("l", t, l)
        for segment in _segments(chunk, moving):
            if segment[0] not in moving:  # a keyframe, or a frame before the first one
                t = chunk[segment[0]]
                if t in keyframes:
                    l, ab = ls[segment[0]], keyframes[t]
                    if ab.shape[-2:] != l.shape[-2:] or ab.shape[1] != 2:
                        raise ValueError(
                            f"keyframe {t}: ab {tuple(ab.shape[1:])} does not match L {tuple(l.shape[-2:])}"
                        )
                    sweep.reset(l, ab)
                    store.put("ab", t, ab)
                    store.put("conf", t, torch.ones_like(l))
                step()
                continue
            coloured = sweep.run([ls[i] for i in segment], [pairs[i] for i in segment])
            for i, (ab, conf) in zip(segment, coloured, strict=True):
                t = chunk[i]
                if t > keys[-1]:
                    store.put("ab", t, ab)
                    store.put("conf", t, conf)
                else:
                    store.put("fwd", t, ab)
                    store.put("fwd_conf", t, conf)
                step()
        previous = ls[-1]


def _segments(chunk: list[int], moving: list[int]) -> Iterator[list[int]]:
    """Indices 0 .. len(chunk) - 1 cut into runs of consecutive ``moving`` indices (coloured by
    one :meth:`_Sweep.run`) and single other indices, in order."""
    run: list[int] = []
    for i in range(len(chunk)):
        if i in moving:
            run.append(i)
            continue
        if run:
            yield run
            run = []
        yield [i]
    if run:
        yield run


def _known(l: Tensor | None) -> Tensor:
    if l is None:
        raise AssertionError("a frame after the first keyframe always has a previous frame")
    return l


def _backward(
    n: int,
    keyframes: dict[int, Tensor],
    keys: list[int],
    store: FrameStore,
    settings: PropagationSettings,
    colorizer: Colorizer | None,
    flows: FlowBackend,
    device: torch.device,
    step: Callable[[], None],
) -> None:
    """Backward sweeps from every keyframe, fused with the forward results; L frames dropped."""
    sweep = _Sweep(settings, colorizer, flows, device)
    previous: Tensor | None = None
    for chunk in _chunks(range(n - 1, -1, -1), max(1, settings.flow_batch)):
        ls = [store.get("l", t) for t in chunk]
        befores = [previous, *ls[:-1]]
        moving = [i for i, t in enumerate(chunk) if t < keys[-1] and t not in keyframes]
        pairs = dict(
            zip(moving, _pair_flows(flows, [ls[i] for i in moving], [_known(befores[i]) for i in moving]), strict=True)
        )
        for segment in _segments(chunk, moving):
            if segment[0] not in moving:  # a keyframe, or a frame after the last one
                t = chunk[segment[0]]
                if t in keyframes:
                    sweep.reset(ls[segment[0]], keyframes[t])
                store.delete("l", t)
                step()
                continue
            coloured = sweep.run([ls[i] for i in segment], [pairs[i] for i in segment])
            for i, (ab, conf) in zip(segment, coloured, strict=True):
                t = chunk[i]
                if t > keys[0]:
                    after = min(k for k in keys if k > t)
                    before = max(k for k in keys if k < t)
                    fwd, fwd_conf = store.get("fwd", t), store.get("fwd_conf", t)
                    w_fwd, w_back = fusion_weights(fwd_conf, t - before, conf, after - t)
                    ab = w_fwd * fwd + w_back * ab
                    conf = w_fwd * fwd_conf + w_back * conf
                    store.delete("fwd", t)
                    store.delete("fwd_conf", t)
                store.put("ab", t, ab)
                store.put("conf", t, conf.clamp(0.0, 1.0))
                store.delete("l", t)
                step()
        previous = ls[-1]


# --- the default attention term -----------------------------------------------------------


def attention_colorizer(
    device: str = "cpu",
    work_size: int = PropagationSettings.attention_size,
    features: FeatureExtractor | None = None,
    position_sigma: float | None = None,
) -> Colorizer:
    """The training-free super-attention transfer (``model.transfer.transfer_colour``, VGG-16
    loaded once) as a :data:`Colorizer` on ``device``, run at ``work_size`` without regrain (the
    propagation smooths it), its ab brought back to the target's size guided by the target's L;
    ``position_sigma``: its image-position prior (None: none). On CUDA the feature extractor
    runs under fp16 autocast (its features are used in float32). The B targets' features come
    from one forward pass; their superpixels (SLIC, on the host) from a worker thread meanwhile.

    A sweep passes the same keyframe tensor on every call, so the last references' encoding
    (superpixels and features, ``model.transfer.encode_reference``) is kept and reused while the
    caller passes the very same tensors (identity, not equality: tensors are not compared)."""
    from model.color import grey_rgb
    from model.transfer import encode_reference, resize, target_superpixels, transfer_colour, working_size
    from pipeline.colorize import shared_vgg16

    dev = torch.device(device)
    extractor = features if features is not None else shared_vgg16(dev)
    if dev.type == "cuda":
        base = extractor

        def half(rgb: Tensor) -> dict[str, Tensor]:
            with torch.autocast("cuda", dtype=torch.float16):
                maps = base(rgb)
            return {k: v.float() for k, v in maps.items()}

        extractor = half
    cached: tuple[list[Tensor], list] = ([], [])  # the last reference tensors and their encodings
    pool = _slic_worker()

    def colorize(target_l: Tensor, references: Sequence[Tensor]) -> Tensor:
        nonlocal cached
        with torch.inference_mode():
            if len(cached[0]) != len(references) or any(a is not b for a, b in zip(cached[0], references, strict=True)):
                cached = (
                    list(references),
                    [encode_reference(r.to(dev).float(), extractor, work_size=work_size) for r in references],
                )
            targets = target_l.to(dev).float()
            # the targets' superpixels (SLIC, on the host) in a worker thread while their
            # features are computed in one forward pass, as transfer_colour would compute each
            labels = pool.submit(lambda: [target_superpixels(t[None], work_size) for t in targets])
            size = working_size(targets.shape[-2], targets.shape[-1], work_size)
            maps = extractor(grey_rgb(resize(targets, size)))
            ab = [
                transfer_colour(
                    targets[i : i + 1],
                    cached[1],
                    features=_computed(maps, i),
                    work_size=work_size,
                    regrain_output=False,
                    position_sigma=position_sigma,
                    target_labels=labels_t,
                )
                for i, labels_t in enumerate(labels.result())
            ]
        return torch.cat(ab).float()

    return colorize


@cache
def _slic_worker() -> ThreadPoolExecutor:
    """The one worker thread of the process that computes the attention term's superpixels."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="postprod-slic")


def _computed(maps: Mapping[str, Tensor], index: int) -> Callable[[Tensor], dict[str, Tensor]]:
    """A feature extractor that answers frame ``index`` of features already computed for a batch
    (``maps``: {level: (B, C, h', w')}), for the one target image it is asked about."""

    def features(rgb: Tensor) -> dict[str, Tensor]:
        first = next(iter(maps.values()))
        if rgb.shape[0] != 1 or first.shape[0] <= index:
            raise ValueError(f"batched features answer one image of the batch, got {tuple(rgb.shape)}")
        return {k: v[index : index + 1] for k, v in maps.items()}

    return features


__all__ = [
    "UNSURE",
    "Colorizer",
    "FrameStore",
    "MemoryStore",
    "NpyStore",
    "PropagatedFrame",
    "PropagationSettings",
    "StepCallback",
    "attention_colorizer",
    "box_mean",
    "flow_confidence",
    "fusion_weights",
    "patch_error",
    "propagate_shot",
    "refine_chroma",
    "remap",
    "to_working",
    "upsample_chroma",
    "warp",
]
