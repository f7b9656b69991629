"""Training-free exemplar colour transfer with super-attention (thesis ch. 4), for a grey target.

Pipeline (:func:`transfer_colour`):

1. Working resolution: target and references are resized (antialiased) so their short side is at
   most ``work_size``; everything up to step 6 runs there, so the cost is bounded at any input size.
2. Superpixels (SLIC, ``3 sqrt(n)``, thesis §4.6.2) on the target L and on each reference's L. With
   masks, each region of equal mask membership is segmented on its own (MaskSLIC, thesis §6.3).
3. Features: the feature extractor (default: the frozen VGG-16 of ``model.features``) on the grey
   target and on each reference's grey L (both replicated to 3 channels), each level resized
   to the working resolution and pooled per superpixel (SFE, channel-wise max by default).
4. Matching (SFM): centred cosine correlation per level, row softmax with temperature tau, the
   levels' attention maps averaged with weights omega_l = 1 (eqs. 4.3-4.5). Several references:
   their super-features are concatenated along N, so one softmax chooses among all references.
   Masks: a target superpixel inside target mask k attends only to superpixels inside the paired
   reference mask k; superpixels outside every mask use the unmasked matching.
5. Colour fusion (eqs. 4.6-4.9): each pixel's ab is a weighted mean of the attended superpixel
   colours, with Mahalanobis-like spatial/colour weights (delta_s, delta_c).
6. Regrain (Pitié et al. 2005/2007) in sRGB: keeps the fused colours near edges and takes the
   target's gradients in flat areas (removes blocky or noisy chroma that the target lacks).
7. ab back to full resolution by a fast guided filter steered by the full-resolution L.

Steps 1-3 of a reference do not depend on the target: :func:`encode_reference` does them once
(:class:`EncodedReference`) for a reference that colours many targets, e.g. a keyframe and the
frames of its shot.

Deviations from the thesis (ch. 4 transfers between two colour images); their measured effects
are in bench/README.md ("Still-image harness"):

* The target is grey: its features come from its L replicated to 3 channels, and so do the
  reference's matching features (as the paper does for f_R); the fusion's colour term uses L only.
* VGG-16 (``model.features``, with its max-pooling) instead of a VGG-19 whose first three
  max-poolings were removed: relu2_2 and relu3_3 (1/2 and 1/4 resolution) are bilinearly resized
  to the working resolution before pooling, so all levels share one superpixel grid as eq. 4.4
  requires. The thesis (Fig. 4.11) found pooled-then-upsampled features somewhat less precise;
  running VGG without pooling costs ~8x more on CPU.
* Pooling defaults to the paper's channel-wise max, not thesis ch. 4's mean (``reduce="mean"``
  gives the thesis' variant).
* Eq. 4.7 sums over every target superpixel; we sum over those whose centroid lies within
  ``fusion_radius`` (1.5) superpixel spacings of the pixel's own superpixel (and in its mask
  region): the fusion stays linear in the pixel count. With delta_s = 10 the spatial term is weak
  and the grey-only colour term (delta_c = 0.1) is very selective, so with a wide radius pixels
  pick up the colour of any nearby superpixel of equal lightness.
* Variances get floors (spatial: +1/12 px^2, a pixel's own extent; L: +1 L unit^2) so uniform
  superpixels do not give infinite weights.
* Regrain starts from the graded image and runs the coarsest pyramid level longest (see
  :func:`regrain`).
* Lightness prior in matching (ours): the attention logits get ``-(L_t - L_r)^2 / (2 * 5^2)``,
  ``L_t`` a target superpixel's mean L and ``L_r`` a reference superpixel's, remapped to the
  target's L mean and spread (luminance remapping, Hertzmann et al. 2001): features of grey
  images alone confuse dark and light things of similar texture.
* Masked matching (ours, on top of thesis §6.3's restriction to the paired reference mask):
  rows restricted to a mask pair use the temperature ``2 tau`` (inside a mask, where the wrong
  object is already excluded, a softer choice averages over the object's parts), and a
  Gaussian prior (sigma = 1 in units of the masks' standard deviations) favours reference
  superpixels at the same relative position in the paired object (top of the object to top).
* Steps 6-7 run per mask region (:func:`per_region`): each region's regrain and guided filter
  see only that region's colours (extended smoothly outside it), so no colour crosses a mask
  border.
* Steps 1 and 7 (working resolution, guided upsampling) are ours, for any input size.
* Image-position prior (ours, optional, off by default): ``position_sigma`` adds
  ``-|p_t - p_r|^2 / (2 sigma^2)`` to the logits, p a superpixel's centroid divided by its image's
  height and width. For frames of one shot, where a thing seldom moves across the whole picture
  (sky stays at the top); wrong for an unrelated photo, hence off by default.

References: H. Carrillo, M. Clément, A. Bugeau, "Super-attention for exemplar-based image
colorization", ACCV 2022 (§3.2: SFE, SFM); H. Carrillo, "Guiding neural networks for image
colorization through user interactions", PhD thesis, Univ. Bordeaux, 2024 (ch. 4: the transfer,
§6.3: masks); F. Pitié, A. Kokaram, R. Dahyot, "Automated colour grading using colour
distribution transfer", CVIU 2007 (regrain); K. He, J. Sun, "Fast guided filter", 2015.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypedDict

import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d, guided_blur
from torch import Tensor, nn

from model.color import grey_rgb, lab_to_rgb, rgb_to_lab
from model.super_attention import (
    DEFAULT_TAU,
    Reduce,
    attention,
    correlation,
    encode_superfeatures,
    pair_mask,
    superpixel_membership,
)
from model.superpixels import region_map, superpixels

FeatureExtractor = Callable[[Tensor], Mapping[str, Tensor]]
MaskPairs = Sequence[Sequence[tuple[Tensor, Tensor]]]

DEFAULT_WORK_SIZE = 256
# Pitié's regrain: Jacobi iterations per pyramid level, finest first (frcs/colour-transfer regrain.m).
REGRAIN_ITERATIONS: tuple[int, ...] = (4, 4, 16, 32, 64, 128, 128)
SPATIAL_VARIANCE_FLOOR = 1.0 / 12.0  # px^2
L_VARIANCE_FLOOR = 1.0  # (L units)^2
GUIDE_RADIUS = 4  # guided filter radius, in working-resolution pixels
GUIDE_EPS = 1e-3  # guided filter regulariser, in (L/100)^2
FUSION_CHUNK = 1 << 16  # pixels per fusion chunk (bounds memory)
LIGHTNESS_SIGMA = 5.0  # L units: scale of the lightness prior in matching (see the module notes)
MASK_TAU_SCALE = 2.0  # rows restricted to a mask pair match with temperature tau * this
OBJECT_POSITION_SIGMA = 1.0  # object-frame units (mask standard deviations): mask pairs' position prior


def working_size(height: int, width: int, work_size: int) -> tuple[int, int]:
    """(h, w) with the short side at most ``work_size`` (never upscaled), aspect ratio kept."""
    scale = min(1.0, work_size / min(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear, antialiased resize of (B, C, H, W) float to (B, C, *size); identity if same size."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)


def resize_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """(H, W) bool -> (*size) bool, by area coverage >= 1/2."""
    return resize(mask[None, None].float(), size)[0, 0] >= 0.5


def remap_lightness(l: Tensor, source: Tensor, target: Tensor) -> Tensor:
    """Luminance remapping (Hertzmann et al. 2001, Welsh et al. 2002): ``l``, a lightness of the
    ``source`` image, moved so that ``source`` would have the mean and standard deviation of ``target``.

    Args:
        l: (...) L in [0, 100] (e.g. superpixel means of the source).
        source: (...) L of the source image (any shape).
        target: (...) L of the target image (any shape).

    Returns:
        (...) like ``l``.
    """
    scale = target.std() / source.std().clamp(min=1e-3) if source.numel() > 1 and target.numel() > 1 else 1.0
    return (l - source.mean()) * scale + target.mean()


def lightness_log_prior(mean_t: Tensor, mean_r: Tensor, sigma: float) -> Tensor:
    """Log of a Gaussian prior on matching superpixels of similar lightness.

    Args:
        mean_t: (N_t,) mean L of the target superpixels.
        mean_r: (N_r,) mean L of the reference superpixels (remapped to the target's range).
        sigma: L units.

    Returns:
        (N_t, N_r) ``-(mean_t[i] - mean_r[j])^2 / (2 sigma^2)``.
    """
    return -((mean_t[:, None] - mean_r[None, :]) ** 2) / (2.0 * sigma**2)


def superpixel_centroids(labels: Tensor) -> Tensor:
    """(h, w) int64 labels ``0..N-1`` -> (N, 2) float32 centroids (y, x) in px."""
    h, w = labels.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, device=labels.device, dtype=torch.float32),
        torch.arange(w, device=labels.device, dtype=torch.float32),
        indexing="ij",
    )
    return encode_superfeatures(torch.stack([ys, xs])[None], labels[None], "mean")[0][0].T


def image_position(points: Tensor, shape: tuple[int, int] | torch.Size) -> Tensor:
    """(N, 2) (y, x) px in an image of ``shape`` (h, w) -> (N, 2) in image heights and widths."""
    return points / torch.tensor(tuple(shape), dtype=points.dtype, device=points.device)


def position_log_prior(places_t: Tensor, places_r: Tensor, sigma: float) -> Tensor:
    """Log of a Gaussian prior on matching superpixels at similar image positions.

    Args:
        places_t: (N_t, 2) target superpixel positions (:func:`image_position`).
        places_r: (N_r, 2) reference superpixel positions.
        sigma: in image heights/widths.

    Returns:
        (N_t, N_r) ``-|places_t[i] - places_r[j]|^2 / (2 sigma^2)``.
    """
    return -(torch.cdist(places_t, places_r) ** 2) / (2.0 * sigma**2)


def object_coordinates(points: Tensor, mask: Tensor) -> Tensor:
    """Points in the frame of a masked object: minus the mask's centroid, divided by its standard
    deviation along each axis (so "top of the object" means the same in two images).

    Args:
        points: (N, 2) (y, x) px.
        mask: (h, w) bool, the object.

    Returns:
        (N, 2) float, unitless; zeros for an empty mask.
    """
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(ys) == 0:
        return torch.zeros_like(points)
    pixels = torch.stack([ys, xs], 1).to(points.dtype)
    # floor of 1 px: a mask one pixel wide has no spread along that axis
    return (points - pixels.mean(0)) / pixels.std(0, unbiased=False).clamp(min=1.0)


def object_position_log_prior(
    member_t: Tensor, member_r: Tensor, coords_t: Tensor, coords_r: Tensor, sigma: float
) -> Tensor:
    """Log of a Gaussian prior on matching superpixels at similar positions in paired objects.

    For target superpixel i and reference superpixel j both in mask pair k, the prior is
    ``-|coords_t[k, i] - coords_r[k, j]|^2 / (2 sigma^2)`` (the largest over such k); pairs sharing
    no mask pair get 0 (rows without masks keep the plain matching; other columns are not allowed).

    Args:
        member_t: (N_t, K) bool, target superpixels in target mask k.
        member_r: (N_r, K) bool, reference superpixels in reference mask k.
        coords_t: (K, N_t, 2) target centroids in the frame of target mask k (:func:`object_coordinates`).
        coords_r: (K, N_r, 2) reference centroids in the frame of reference mask k.
        sigma: in object-frame units.

    Returns:
        (N_t, N_r) float, <= 0.
    """
    shared = member_t.T[:, :, None] & member_r.T[:, None, :]  # (K, N_t, N_r)
    log = -(torch.cdist(coords_t, coords_r) ** 2) / (2.0 * sigma**2)
    best = torch.where(shared, log, float("-inf")).amax(dim=0)
    return torch.where(shared.any(dim=0), best, 0.0)


def extend_region(x: Tensor, inside: Tensor) -> Tensor:
    """``x`` inside a region, and outside it a smooth extension of the inside values only (push-pull
    interpolation: average-pool the covered values until every pixel is covered, then fill back).

    Args:
        x: (B, C, H, W) float.
        inside: (H, W) bool with at least one True.

    Returns:
        (B, C, H, W): equal to ``x`` where ``inside``; elsewhere a function of ``x[..., inside]`` alone.
    """
    weight = inside.to(x.dtype)[None, None]
    return _push_pull(x * weight, weight)


def _push_pull(weighted: Tensor, weight: Tensor) -> Tensor:
    """Fill where ``weight`` (B', 1, H, W) in [0, 1] is below 1, from the premultiplied ``weighted``."""
    mean = weighted / weight.clamp(min=1e-12)
    if bool((weight > 0).all()) or max(weight.shape[-2:]) <= 1:
        return mean
    coarse = _push_pull(F.avg_pool2d(weighted, 2, ceil_mode=True), F.avg_pool2d(weight, 2, ceil_mode=True))
    up = F.interpolate(coarse, size=tuple(weight.shape[-2:]), mode="bilinear", align_corners=False)
    return weight * mean + (1 - weight) * up


def per_region(op: Callable[[Tensor], Tensor], x: Tensor, regions: Tensor, out_regions: Tensor | None = None) -> Tensor:
    """Apply ``op`` to each region alone, so that no value crosses a region border.

    For each region r, ``op`` sees ``x`` inside r and :func:`extend_region`'s extension of it
    elsewhere; the output takes ``op``'s result on the pixels of r. An output pixel of r thus only
    depends on the input pixels of r.

    Args:
        op: (B, C, H, W) -> (B, C', H', W').
        x: (B, C, H, W).
        regions: (H, W) int64 region ids of ``x``'s pixels.
        out_regions: (H', W') int64 region ids of the output pixels (same ids); default ``regions``.

    Returns:
        (B, C', H', W'); output pixels of a region absent from ``regions`` come from ``op(x)``.
    """
    out_regions = regions if out_regions is None else out_regions
    ids = torch.unique(regions).tolist()
    if len(ids) == 1:
        return op(x)
    results = {r: op(extend_region(x, regions == r)) for r in ids}
    # output pixels of a region too thin to survive in ``regions`` (resizing) take the unrestricted op
    out = op(x) if bool(torch.isin(out_regions, regions.new_tensor(ids), invert=True).any()) else results[ids[0]]
    for r in ids:
        out = torch.where(out_regions == r, results[r], out)
    return out


def superfeature_levels(features: FeatureExtractor, l: Tensor, labels: Tensor, reduce: Reduce) -> list[Tensor]:
    """Super-features of a grey image at every level the extractor returns.

    Args:
        features: extractor, (1, 3, h, w) RGB in [0, 1] -> {level: (1, C, h', w')}.
        l: (1, 1, h, w) L in [0, 100].
        labels: (h, w) int64 superpixels.
        reduce: pooling.

    Returns:
        one (1, C_level, N) tensor per level, in the extractor's order.
    """
    size = tuple(l.shape[-2:])
    n = int(labels.max()) + 1
    maps = features(grey_rgb(l))
    return [
        encode_superfeatures(
            F.interpolate(f, size=size, mode="bilinear", align_corners=False) if tuple(f.shape[-2:]) != size else f,
            labels[None],
            reduce,
            n,
        )[0]
        for f in maps.values()
    ]


def superpixel_statistics(l: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-superpixel centroid, inverse spatial covariance, mean and variance of L.

    Args:
        l: (h, w) L in [0, 100].
        labels: (h, w) int64 ``0..N-1`` (no -1).

    Returns:
        centroids (N, 2) (y, x) px; inverse covariances (N, 2, 2) 1/px^2 (floored by 1/12 px^2);
        mean L (N,); variance of L (N,) floored by :data:`L_VARIANCE_FLOOR`.
    """
    h, w = l.shape
    # float64: E[x^2] - E[x]^2 with x up to ~10^3 px loses too many digits in float32
    grey = l.double()
    ys, xs = torch.meshgrid(
        torch.arange(h, device=l.device, dtype=grey.dtype),
        torch.arange(w, device=l.device, dtype=grey.dtype),
        indexing="ij",
    )
    stack = torch.stack([ys, xs, ys * ys, ys * xs, xs * xs, grey, grey * grey])[None]
    moments, _ = encode_superfeatures(stack, labels[None], "mean")
    my, mx, myy, myx, mxx, ml, mll = moments[0]
    eye = torch.eye(2, device=l.device, dtype=grey.dtype)
    cov = (
        torch.stack(
            [torch.stack([myy - my * my, myx - my * mx], -1), torch.stack([myx - my * mx, mxx - mx * mx], -1)], -2
        )
        + SPATIAL_VARIANCE_FLOOR * eye
    )
    var_l = (mll - ml * ml).clamp(min=0) + L_VARIANCE_FLOOR
    stats = (torch.stack([my, mx], -1), torch.linalg.inv(cov), ml, var_l)
    return tuple(t.to(l.dtype) for t in stats)  # type: ignore[return-value]


def neighbour_superpixels(centroids: Tensor, radius: float, regions: Tensor | None = None) -> Tensor:
    """For each superpixel, the superpixels whose centroid lies within ``radius`` px (and in the
    same region), padded with -1.

    Args:
        centroids: (N, 2) px.
        radius: px.
        regions: (N,) int64 region of each superpixel, or None.

    Returns:
        (N, K) int64, K the largest neighbourhood; each row contains the superpixel itself.
    """
    dist = torch.cdist(centroids, centroids)
    near = dist <= radius
    if regions is not None:
        near &= regions[:, None] == regions[None, :]
    k = int(near.sum(dim=1).max())
    key = torch.where(near, dist, float("inf"))
    order = key.argsort(dim=1)[:, :k]
    return torch.where(near.gather(1, order), order, -1)


def colour_fusion(
    l: Tensor,
    labels: Tensor,
    colours: Tensor,
    *,
    delta_s: float = 10.0,
    delta_c: float = 0.1,
    fusion_radius: float = 1.5,
    regions: Tensor | None = None,
) -> Tensor:
    """Per-pixel colour fusion of thesis eqs. 4.6-4.9 for a grey target.

    T(p) = sum_j W(p,j) R(j) / sum_j W(p,j) with W(p,j) = sum_i d(p,i) A(i,j). Since the rows of A
    sum to 1 this equals sum_i d(p,i) c_i / sum_i d(p,i) with c_i = (A R)_i the attended colour of
    target superpixel i, which is what is computed (normalised in log space, so no underflow).
    d(p,i) = exp(-(V(p)-V_i)^T Sigma_i^-1 (V(p)-V_i)), V = [y, x, L], Sigma_i =
    diag(delta_s^2 Cov_i(y, x), delta_c^2 Var_i(L)).

    Args:
        l: (h, w) target L in [0, 100].
        labels: (h, w) int64 target superpixels ``0..N-1``.
        colours: (N, 2) attended ab of each target superpixel.
        delta_s, delta_c: spatial and colour scale factors (thesis: 10 and 0.1).
        fusion_radius: neighbourhood of superpixels considered, in superpixel spacings
            sqrt(h w / N) (see the module notes).
        regions: (N,) int64 mask region of each superpixel: pixels only take colours from their
            own region. None: no restriction.

    Returns:
        (2, h, w) ab.
    """
    h, w = l.shape
    n = colours.shape[0]
    centroids, inv_cov, mean_l, var_l = superpixel_statistics(l, labels)
    spacing = math.sqrt(h * w / n)
    neighbours = neighbour_superpixels(centroids, fusion_radius * spacing, regions)
    ys, xs = torch.meshgrid(
        torch.arange(h, device=l.device, dtype=l.dtype), torch.arange(w, device=l.device, dtype=l.dtype), indexing="ij"
    )
    coords = torch.stack([ys, xs], -1).reshape(-1, 2)
    flat_l, flat_labels = l.reshape(-1), labels.reshape(-1)
    chunks = []
    for start in range(0, h * w, FUSION_CHUNK):
        part = slice(start, start + FUSION_CHUNK)
        cand = neighbours[flat_labels[part]]  # (m, K)
        idx = cand.clamp(min=0)
        dxy = coords[part, None, :] - centroids[idx]  # (m, K, 2)
        spatial = torch.einsum("mki,mkij,mkj->mk", dxy, inv_cov[idx], dxy) / delta_s**2
        colour = (flat_l[part, None] - mean_l[idx]) ** 2 / (delta_c**2 * var_l[idx])
        weights = (-(spatial + colour)).masked_fill(cand < 0, float("-inf")).softmax(dim=1)
        chunks.append(torch.einsum("mk,mkc->mc", weights, colours[idx]))
    return torch.cat(chunks).T.reshape(2, h, w)


def regrain(original: Tensor, graded: Tensor, iterations: Sequence[int] = REGRAIN_ITERATIONS) -> Tensor:
    """Pitié's regrain: an image with the colours of ``graded`` and the gradients of ``original``.

    Minimises sum psi |J - graded|^2 + phi |grad J - grad original|^2 with Jacobi iterations on a
    coarse-to-fine pyramid (Pitié, Kokaram, Dahyot 2005/2007; after the authors' regrain.m, except
    that the iterations start from ``graded`` and the coarsest level gets ``max(iterations)``).
    psi = min(|grad|/5, 1) and phi = 30 / (1 + 10 |grad|), on 8-bit-scaled gradients of the
    blurred original (5-tap Gaussian, sigma 1: our reading of regrain.m's ``blur(I0, 5)``): flat
    areas follow the original's gradients, edges keep the graded colours.

    Args:
        original: (B, K, H, W) float in [0, 1].
        graded: (B, K, H, W) float in [0, 1].
        iterations: Jacobi iterations per pyramid level, finest first.

    Returns:
        (B, K, H, W) float (not clipped).
    """
    if original.shape != graded.shape:
        raise ValueError(f"original {tuple(original.shape)} and graded {tuple(graded.shape)} differ")
    return _regrain_level(graded, original, graded, tuple(iterations), max(iterations))


def regrain_ab(l: Tensor, ab: Tensor) -> Tensor:
    """Regrain the colouring ``ab`` of the grey image ``l`` (in sRGB, as Pitié's regrain works).

    Args:
        l: (B, 1, H, W) L in [0, 100] (the original: a grey image).
        ab: (B, 2, H, W) the graded chroma.

    Returns:
        (B, 2, H, W) ab of the regrained image (its L is discarded: the caller keeps ``l``).
    """
    graded = lab_to_rgb(torch.cat([l, ab], dim=1))
    return rgb_to_lab(regrain(grey_rgb(l), graded).clamp(0, 1))[:, 1:]


def _regrain_level(
    result: Tensor, original: Tensor, graded: Tensor, iterations: tuple[int, ...], coarsest: int
) -> Tensor:
    h, w = original.shape[-2:]
    half = (math.ceil(h / 2), math.ceil(w / 2))
    if len(iterations) > 1 and min(half) > 20:
        coarse = _regrain_level(
            resize(result, half), resize(original, half), resize(graded, half), iterations[1:], coarsest
        )
        return _regrain_solve(
            F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False), original, graded, iterations[0]
        )
    # regrain.m starts the coarsest level from the original and gives it 128 iterations on images
    # of ~1000 px, but only 4 on small ones. Where the original is flat (psi ~ 0) Jacobi hardly
    # moves from its start, so starting from the original loses the colours: we start from the
    # graded image (same fixed point) and always give the coarsest level the most iterations.
    return _regrain_solve(result, original, graded, coarsest)


def _four_neighbours(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Right, down, left, up neighbours of (B, C, H, W), replicating the border."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return p[..., 1:-1, 2:], p[..., 2:, 1:-1], p[..., 1:-1, :-2], p[..., :-2, 1:-1]


def _regrain_solve(result: Tensor, original: Tensor, graded: Tensor, n_iter: int) -> Tensor:
    blurred = gaussian_blur2d(original, (5, 5), (1.0, 1.0), border_type="replicate")
    right, down, _, _ = _four_neighbours(blurred)
    grad = (((right - blurred) * 255) ** 2 + ((down - blurred) * 255) ** 2).sum(dim=1, keepdim=True).sqrt()
    phi = 30.0 / (1.0 + 10.0 * grad)
    psi = (grad / 5.0).clamp(max=1.0)
    phis = [(nb + phi) / 2 for nb in _four_neighbours(phi)]
    den = psi + sum(phis) + 1e-12
    # the terms that do not change between iterations
    const = psi * graded + sum(p * (original - nb) for p, nb in zip(phis, _four_neighbours(original), strict=True))
    rho = 0.2
    for _ in range(n_iter):
        num = const + sum(p * nb for p, nb in zip(phis, _four_neighbours(result), strict=True))
        result = num / den * (1 - rho) + rho * result
    return result


def guided_upsample(ab: Tensor, l: Tensor, radius: int = GUIDE_RADIUS, eps: float = GUIDE_EPS) -> Tensor:
    """ab (1, 2, h, w) -> (1, 2, H, W), edges following the full-resolution L (fast guided filter).

    Args:
        ab: (1, 2, h, w).
        l: (1, 1, H, W) L in [0, 100], the guide.
        radius: filter radius in working-resolution (h, w) pixels.
        eps: regulariser in (L/100)^2.
    """
    size = tuple(l.shape[-2:])
    scale = size[0] / ab.shape[-2]
    up = F.interpolate(ab, size=size, mode="bilinear", align_corners=False) if ab.shape[-2:] != size else ab
    full_radius = max(1, round(radius * scale))
    return guided_blur(l / 100.0, up, 2 * full_radius + 1, eps, subsample=max(1, int(scale)))


def target_superpixels(target_l: Tensor, work_size: int = DEFAULT_WORK_SIZE) -> Tensor:
    """The superpixels :func:`transfer_colour` computes for a target without masks (step 2):
    target_l (1, 1, H, W) L in [0, 100] -> (h, w) int64 labels at the working resolution."""
    return _segment(resize(target_l.float(), working_size(target_l.shape[-2], target_l.shape[-1], work_size)), None)


def _segment(l: Tensor, regions: Tensor | None) -> Tensor:
    """SLIC labels (h, w) of L (1, 1, h, w), each region of ``regions`` ((h, w) int64) segmented alone."""
    return superpixels(l[0, 0] / 100.0, mask=regions)


@dataclass(frozen=True)
class EncodedReference:
    """A reference taken through steps 1-3 (working resolution, superpixels, super-features, mean
    colours), which depend on the reference, its masks, the feature extractor, ``work_size`` and
    ``reduce`` but not on the target: encoded once, a reference without masks colours many targets
    (every frame of a shot from its keyframe) without recomputing them.

    lab: (1, 3, h, w) working-resolution Lab. labels: (h, w) int64 superpixels 0..N-1.
    levels: one (1, C_level, N) super-feature tensor per feature level. colours: (1, 2, N) mean ab.
    masks: the reference masks at (h, w), bool (empty without masks).
    """

    lab: Tensor
    labels: Tensor
    levels: list[Tensor]
    colours: Tensor
    masks: list[Tensor]
    work_size: int
    reduce: Reduce


def encode_reference(
    reference_lab: Tensor,
    features: FeatureExtractor,
    reference_masks: Sequence[Tensor] = (),
    *,
    work_size: int = DEFAULT_WORK_SIZE,
    reduce: Reduce = "amax",
) -> EncodedReference:
    """Steps 1-3 of :func:`transfer_colour` on the reference side.

    Args:
        reference_lab: (1, 3, Hr, Wr) float Lab.
        features: feature extractor, as in :func:`transfer_colour`.
        reference_masks: (Hr, Wr) bool masks; each region of equal membership is segmented alone.
        work_size, reduce: as in :func:`transfer_colour` (which checks they match).
    """
    if reference_lab.ndim != 4 or reference_lab.shape[:2] != (1, 3):
        raise ValueError(f"reference_lab must be (1, 3, Hr, Wr), got {tuple(reference_lab.shape)}")
    ref_h, ref_w = reference_lab.shape[-2:]
    lab = resize(reference_lab.float(), working_size(ref_h, ref_w, work_size))
    lab_h, lab_w = lab.shape[-2:]
    masks = [resize_mask(m.to(lab.device), (lab_h, lab_w)) for m in reference_masks]
    labels = _segment(lab[:, :1], region_map(torch.stack(masks)) if masks else None)
    return EncodedReference(
        lab,
        labels,
        superfeature_levels(features, lab[:, :1], labels, reduce),
        encode_superfeatures(lab[:, 1:], labels[None], "mean")[0],
        masks,
        work_size,
        reduce,
    )


@torch.no_grad()
def check_exemplar_inputs(target_l: Tensor, reference_lab: Sequence[Tensor], masks: MaskPairs | None) -> None:
    """Raise ValueError unless target_l is (1, 1, H, W), reference_lab a non-empty list of (1, 3, Hr, Wr)
    and masks (if given) has one list of pairs per reference. Shared by every exemplar colorizer."""
    if target_l.ndim != 4 or target_l.shape[:2] != (1, 1):
        raise ValueError(f"target_l must be (1, 1, H, W), got {tuple(target_l.shape)}")
    if not reference_lab or any(r.ndim != 4 or r.shape[:2] != (1, 3) for r in reference_lab):
        raise ValueError("reference_lab must be a non-empty list of (1, 3, Hr, Wr) Lab tensors")
    if masks is not None and len(masks) != len(reference_lab):
        raise ValueError(f"masks has {len(masks)} lists for {len(reference_lab)} references")


def transfer_colour(
    target_l: Tensor,
    reference_lab: Sequence[Tensor | EncodedReference],
    masks: MaskPairs | None = None,
    *,
    features: FeatureExtractor | None = None,
    tau: float = DEFAULT_TAU,
    delta_s: float = 10.0,
    delta_c: float = 0.1,
    work_size: int = DEFAULT_WORK_SIZE,
    reduce: Reduce = "amax",
    fusion_radius: float = 1.5,
    regrain_output: bool = True,
    position_sigma: float | None = None,
    target_labels: Tensor | None = None,
) -> Tensor:
    """Colour a grey image from colour references (thesis ch. 4; see the module notes).

    Args:
        target_l: (1, 1, H, W) float, L in [0, 100].
        reference_lab: one or more (1, 3, Hr, Wr) float Lab references (any sizes), or references
            without masks already encoded by :func:`encode_reference` (same device, ``work_size``
            and ``reduce``).
        masks: optional, ``masks[r]`` = list of (target_mask (H, W) bool, reference_mask
            (Hr, Wr) bool) pairs for reference r; one list per reference (empty lists allowed).
        features: feature extractor (1, 3, h, w) RGB [0, 1] -> {level: (1, C, h', w')};
            None loads the pretrained VGG-16 (``model.features.load_vgg16``) on each call: pass
            one in to reuse it across frames.
        tau: softmax temperature (thesis 0.015).
        delta_s, delta_c: fusion scale factors (thesis 10 and 0.1).
        work_size: short side of the working resolution, px.
        reduce: superpixel pooling, ``"amax"`` (paper; default, see the module notes) or
            ``"mean"`` (thesis ch. 4).
        fusion_radius: fusion neighbourhood in superpixel spacings.
        regrain_output: apply the regrain post-process (thesis: yes).
        position_sigma: image-position prior's scale in image heights/widths (None: no prior;
            for references from the same shot, see the module notes).
        target_labels: the target's superpixels at the working resolution, (h, w) int64, when
            already computed (:func:`target_superpixels`, e.g. ahead, in another thread); None
            computes them here. Not with masks.

    Returns:
        (1, 2, H, W) float ab on ``target_l``'s device.
    """
    check_exemplar_inputs(target_l, [r.lab if isinstance(r, EncodedReference) else r for r in reference_lab], masks)
    if features is None:
        from model.features import load_vgg16  # lazy: the weights are only read when needed

        features = load_vgg16(device=target_l.device)
    device = target_l.device
    pairs = [list(p) for p in masks] if masks is not None else [[] for _ in reference_lab]
    for r, (ref, ref_pairs) in enumerate(zip(reference_lab, pairs, strict=True)):
        if isinstance(ref, EncodedReference):
            if ref_pairs or ref.masks or ref.work_size != work_size or ref.reduce != reduce:
                raise ValueError(
                    f"reference {r}: an encoded reference takes no masks and must match "
                    "work_size and reduce (pass a reference with masks as a tensor)"
                )
            continue
        for tm, rm in ref_pairs:
            if tm.shape != target_l.shape[-2:] or rm.shape != ref.shape[-2:]:
                raise ValueError(
                    f"mask pair of reference {r}: sizes {tuple(tm.shape)}, {tuple(rm.shape)} "
                    f"do not match target {tuple(target_l.shape[-2:])} and reference "
                    f"{tuple(ref.shape[-2:])}"
                )

    # 1-2. working resolution and superpixels
    target_h, target_w = target_l.shape[-2:]
    size_t = working_size(target_h, target_w, work_size)
    l_t = resize(target_l.float(), size_t)
    full_masks = [tm.to(device) for ref_pairs in pairs for tm, _ in ref_pairs]
    target_masks = [resize_mask(tm, size_t) for tm in full_masks]
    regions_t, regions_full = _region_maps(target_masks, full_masks)
    if target_labels is not None and (regions_t is not None or tuple(target_labels.shape) != size_t):
        raise ValueError(f"target_labels must be {size_t} int64 labels and come without masks")
    labels_t = _segment(l_t, regions_t) if target_labels is None else target_labels.to(device)
    n_t = int(labels_t.max()) + 1

    # 3. super-features, and mean L for the lightness prior; references concatenated along N
    levels_t = superfeature_levels(features, l_t, labels_t, reduce)
    levels_r: list[list[Tensor]] = []
    colours_r: list[Tensor] = []
    member_r: list[Tensor] = []
    lightness_r: list[Tensor] = []
    coords_r: list[Tensor] = []  # one per reference, only when there are mask pairs (k_total > 0)
    places_r: list[Tensor] = []
    k_total, first = len(target_masks), 0
    for ref, ref_pairs in zip(reference_lab, pairs, strict=True):
        encoded = (
            ref
            if isinstance(ref, EncodedReference)
            else encode_reference(
                ref.to(device), features, [rm for _, rm in ref_pairs], work_size=work_size, reduce=reduce
            )
        )
        lab, labels, ref_masks = encoded.lab, encoded.labels, encoded.masks
        levels_r.append(encoded.levels)
        colours_r.append(encoded.colours)
        lightness_r.append(
            encode_superfeatures(remap_lightness(lab[:, :1], lab[:, :1], l_t), labels[None], "mean")[0][0, 0]
        )
        # membership in this reference's masks, placed in its columns of the K mask pairs
        member = torch.zeros(1, int(labels.max()) + 1, k_total, dtype=torch.bool, device=device)
        if ref_masks:
            member[..., first : first + len(ref_masks)] = superpixel_membership(
                labels[None], torch.stack(ref_masks)[None], member.shape[1]
            )
        member_r.append(member)
        centroids = superpixel_centroids(labels)
        places_r.append(image_position(centroids, labels.shape))
        # this reference's superpixels in the frame of every mask pair (only its own pairs matter)
        if k_total:
            coords_r.append(
                torch.stack(
                    [
                        object_coordinates(centroids, ref_masks[k - first])
                        if first <= k < first + len(ref_masks)
                        else torch.zeros_like(centroids)
                        for k in range(k_total)
                    ]
                )
            )
        first += len(ref_masks)
    colours = torch.cat(colours_r, dim=2)  # (1, 2, N_r)

    # 4. matching: average of the per-level attention maps (eq. 4.4, omega_l = 1), each with the
    # lightness prior; rows restricted to a mask pair use a softer temperature (module notes)
    lightness_t = encode_superfeatures(l_t, labels_t[None], "mean")[0][0, 0]
    prior = lightness_log_prior(lightness_t, torch.cat(lightness_r), LIGHTNESS_SIGMA)[None]
    if position_sigma is not None:
        places_t = image_position(superpixel_centroids(labels_t), labels_t.shape)
        prior = prior + position_log_prior(places_t, torch.cat(places_r), position_sigma)[None]
    allowed, temperature = None, torch.full((1, n_t, 1), tau, device=device)
    if target_masks:
        member_t = superpixel_membership(labels_t[None], torch.stack(target_masks)[None], n_t)
        members = torch.cat(member_r, dim=1)
        allowed = pair_mask(member_t, members, torch.ones(1, colours.shape[2], dtype=torch.bool, device=device))
        restricted = (member_t & members.any(dim=1, keepdim=True)).any(dim=-1, keepdim=True)
        temperature = torch.where(restricted, tau * MASK_TAU_SCALE, temperature)
        centroids_t = superpixel_centroids(labels_t)
        coords_t = torch.stack([object_coordinates(centroids_t, tm) for tm in target_masks])
        prior = (
            prior
            + object_position_log_prior(
                member_t[0], members[0], coords_t, torch.cat(coords_r, dim=1), OBJECT_POSITION_SIGMA
            )[None]
        )
    attn = torch.stack(
        [
            attention(correlation(f_t, torch.cat(f_r, dim=2)), temperature, allowed, prior)
            for f_t, *f_r in zip(levels_t, *levels_r, strict=True)
        ]
    ).mean(dim=0)
    attended = torch.einsum("btr,bcr->btc", attn, colours)[0]  # (N_t, 2)

    # 5. colour fusion, within each mask region
    region_of_sp = None
    if regions_t is not None:
        region_of_sp = torch.zeros(n_t, dtype=torch.int64, device=device).scatter_(
            0, labels_t.reshape(-1), regions_t.reshape(-1)
        )
    ab = colour_fusion(
        l_t[0, 0],
        labels_t,
        attended,
        delta_s=delta_s,
        delta_c=delta_c,
        fusion_radius=fusion_radius,
        regions=region_of_sp,
    )[None]

    # 6-7. regrain in sRGB against the grey target, then back to full resolution guided by the
    # full-resolution L; with masks each region alone, so no colour crosses a mask border
    def post(chroma: Tensor) -> Tensor:
        return guided_upsample(regrain_ab(l_t, chroma) if regrain_output else chroma, target_l.float())

    if regions_t is None or regions_full is None:
        return post(ab)
    return per_region(post, ab, regions_t, regions_full)


def _region_maps(masks: list[Tensor], full_masks: list[Tensor]) -> tuple[Tensor | None, Tensor | None]:
    """Region ids (thesis §6.3 regions of equal mask membership, see ``region_map``) of the
    working-resolution masks (each (h, w) bool) and of the full-resolution ones (each (H, W)),
    numbered consistently; (None, None) without masks."""
    if not masks:
        return None, None
    k = len(masks)
    small, full = torch.stack(masks).reshape(k, 1, -1), torch.stack(full_masks).reshape(k, 1, -1)
    both = region_map(torch.cat([small, full], dim=2))[0]
    return both[: small.shape[2]].reshape(masks[0].shape), both[small.shape[2] :].reshape(full_masks[0].shape)


class _TransferOptions(TypedDict):
    """The keyword parameters :class:`ColourTransfer` passes on to :func:`transfer_colour`."""

    tau: float
    delta_s: float
    delta_c: float
    work_size: int
    reduce: Reduce
    fusion_radius: float
    regrain_output: bool
    position_sigma: float | None


class ColourTransfer(nn.Module):
    """Module form of :func:`transfer_colour` holding the feature extractor and parameters.

    Args:
        features: extractor module (default: pretrained VGG-16 loaded once here).
        tau, delta_s, delta_c, work_size, reduce, fusion_radius, regrain_output, position_sigma:
            see :func:`transfer_colour`.

    Forward: ``(target_l (1, 1, H, W), reference_lab list[(1, 3, Hr, Wr)], masks=None)`` ->
    ab (1, 2, H, W).
    """

    def __init__(
        self,
        features: nn.Module | None = None,
        *,
        tau: float = DEFAULT_TAU,
        delta_s: float = 10.0,
        delta_c: float = 0.1,
        work_size: int = DEFAULT_WORK_SIZE,
        reduce: Reduce = "amax",
        fusion_radius: float = 1.5,
        regrain_output: bool = True,
        position_sigma: float | None = None,
    ) -> None:
        super().__init__()
        if features is None:
            from model.features import load_vgg16

            features = load_vgg16()
        self.features = features
        self.options: _TransferOptions = {
            "tau": tau,
            "delta_s": delta_s,
            "delta_c": delta_c,
            "work_size": work_size,
            "reduce": reduce,
            "fusion_radius": fusion_radius,
            "regrain_output": regrain_output,
            "position_sigma": position_sigma,
        }

    def forward(self, target_l: Tensor, reference_lab: Sequence[Tensor], masks: MaskPairs | None = None) -> Tensor:
        return transfer_colour(target_l, reference_lab, masks, features=self.features, **self.options)
