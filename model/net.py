"""Exemplar colorization network with (masked) super-attention (paper §3, thesis ch. 3, 5, 6).

Pieces:

* :func:`match_references` (no parameters): super-attention between the grey target and one or
  more colour references. Matching features are the frozen VGG-16 (``model.features``, relu1_2,
  relu2_2, relu3_3) of the grey target and of each reference's grey L, resized to the working
  resolution and max-pooled per superpixel (SFE); centred cosine correlation per level, row
  softmax with temperature tau and a lightness prior, the levels' maps averaged (as
  ``model.transfer``). Several references: their superpixels are concatenated along N, so one
  softmax chooses among them. Masks: rows of target superpixels inside target mask k may only
  attend to superpixels inside the paired reference mask k (``pair_mask``, thesis §6.3). The
  attention carries, per target superpixel, the references' mean ab (a superpixel-level colour
  transfer) and their colour features phi (VGG-16 relu1_2 / relu2_2 / relu3_3 of the colour
  reference, amax-pooled).
* :class:`ColorNet`: the U-Net of thesis ch. 3 (encoder of 2x(conv3x3-BN-ReLU) blocks with
  max-pooling, transposed-conv decoder, skips fused by 1x1 convolutions) predicting ab from L at
  the working resolution. The attended phi of level l is projected by a learned 1x1 value map
  (on super-features, before unpooling) and concatenated to the input of encoder level l (thesis
  ch. 6: super-attention in the encoder, at the first three levels). The decoder predicts a
  correction to the unpooled attended ab, so the untrained network (zero-initialised head)
  equals the superpixel-level transfer and training learns to fix it.
* :func:`colorize_net`: any input size; working resolution (short side ``work_size``), SLIC
  superpixels per mask region (MaskSLIC, as ``model.transfer``), network, then the chroma back
  to full resolution with ``model.transfer.guided_upsample`` steered by the full-resolution L.

Deviations from the thesis, for a CPU training budget of about an hour on 2 cores:

* The attention map is not learned: the query/key are the frozen VGG-16 features of the grey
  images, not the U-Net's own encoder features (which are meaningless before training and would
  need a long training to match). Only the value maps (what is carried) are learned. The VGG
  colour features phi are frozen (thesis §6.4.2 optionally fine-tunes them).
* One superpixel grid at the working resolution for all levels (as ``model.transfer``) instead of
  one SLIC per level: the attended features of levels 2 and 3 are unpooled at full working
  resolution and average-pooled to the level's size.
* Residual prediction on top of the superpixel-level transfer (see above) instead of predicting ab
  from scratch: the network starts where the training-free matching is and needs far fewer steps.
* A small width (32-64-128-256 channels): ~1.9 M parameters, 3.7 MB in float16.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.color import grey_rgb, lab_to_rgb
from model.super_attention import (
    DEFAULT_TAU,
    attention,
    correlation,
    encode_superfeatures,
    pair_mask,
    superpixel_membership,
    unpool,
)
from model.superpixels import region_map, superpixels
from model.transfer import (
    LIGHTNESS_SIGMA,
    MASK_TAU_SCALE,
    OBJECT_POSITION_SIGMA,
    FeatureExtractor,
    MaskPairs,
    check_exemplar_inputs,
    guided_upsample,
    object_coordinates,
    object_position_log_prior,
    resize,
    resize_mask,
    working_size,
)
from model.weights import WEIGHTS_DIR, WeightsError, read_state

COLORNET_WEIGHTS = WEIGHTS_DIR / "colornet.pt"
DEFAULT_WORK_SIZE = 256
PHI_CHANNELS: tuple[int, ...] = (64, 128, 256)  # VGG-16 relu1_2, relu2_2, relu3_3
AB_SCALE = 110.0  # ab units -> roughly [-1, 1] inside the network


@dataclass(frozen=True)
class Matched:
    """Output of :func:`match_references` (batch B, N_t target superpixels, working size h x w).

    ab: (B, 2, h, w) unpooled attended reference ab (superpixel-level transfer), CIE units.
    confidence: (B, 2, h, w) unpooled best correlation in [-1, 1] and largest attention weight in [0, 1].
    phi: one (B, C_l, N_t) attended colour super-feature tensor per level (C_l = PHI_CHANNELS).
    labels: (B, h, w) int64 target superpixels (-1: none).
    """

    ab: Tensor
    confidence: Tensor
    phi: tuple[Tensor, ...]
    labels: Tensor


def _pool_levels(maps: Mapping[str, Tensor], labels: Tensor, n: int) -> list[Tensor]:
    """Each (B, C, h', w') map bilinearly resized to labels' (h, w), amax-pooled: list of (B, C, n)."""
    size = tuple(labels.shape[-2:])
    return [
        encode_superfeatures(
            f if tuple(f.shape[-2:]) == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False),
            labels,
            "amax",
            n,
        )[0]
        for f in maps.values()
    ]


def _batch_remap(l: Tensor, source: Tensor, target: Tensor) -> Tensor:
    """Per-sample luminance remapping: (B, N) values of ``source`` (B, 1, h, w) moved to the mean/std of
    ``target`` (B, 1, h', w'); see ``model.transfer.remap_lightness``."""
    s_mean, s_std = source.mean(dim=(1, 2, 3)), source.std(dim=(1, 2, 3)).clamp(min=1e-3)
    t_mean, t_std = target.mean(dim=(1, 2, 3)), target.std(dim=(1, 2, 3))
    return (l - s_mean[:, None]) * (t_std / s_std)[:, None] + t_mean[:, None]


@torch.no_grad()
def _centroids(labels: Tensor, n: int) -> Tensor:
    """(B, h, w) int64 superpixels ``0..n-1`` (-1 = none) -> (B, n, 2) float centroids (y, x) in px."""
    b, h, w = labels.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, device=labels.device, dtype=torch.float32),
        torch.arange(w, device=labels.device, dtype=torch.float32),
        indexing="ij",
    )
    grid = torch.stack([ys, xs])[None].expand(b, -1, -1, -1)
    return encode_superfeatures(grid, labels, "mean", n)[0].transpose(1, 2)


def match_references(
    features: FeatureExtractor,
    target_l: Tensor,
    labels_t: Tensor,
    reference_lab: Sequence[Tensor],
    labels_r: Sequence[Tensor],
    masks: Sequence[tuple[Tensor, Tensor]] | None = None,
    *,
    tau: float = DEFAULT_TAU,
    lightness_sigma: float = LIGHTNESS_SIGMA,
) -> Matched:
    """Super-attention of a batch of grey targets on their references (see the module notes).

    Args:
        features: frozen extractor, (B, 3, h, w) RGB [0, 1] -> {relu1_2, relu2_2, relu3_3} maps.
        target_l: (B, 1, h, w) L in [0, 100] at the working resolution.
        labels_t: (B, h, w) int64 target superpixels ``0..N_t-1`` (per sample), -1 = none.
        reference_lab: R tensors (B, 3, h_r, w_r) Lab (one per reference; sizes may differ between
            references), at working resolution.
        labels_r: R tensors (B, h_r, w_r) int64 superpixels of each reference.
        masks: optional (target_masks (B, K, h, w) bool, reference_masks (B, K, h_r, w_r) bool) per
            reference (K may be 0); mask pair k of reference r restricts the target superpixels in
            target mask k to reference r's superpixels in its mask k.
        tau: softmax temperature.
        lightness_sigma: L units of the lightness prior.

    Returns:
        :class:`Matched`.
    """
    b = target_l.shape[0]
    n_t = int(labels_t.max()) + 1
    levels_t = _pool_levels(features(grey_rgb(target_l)), labels_t, n_t)
    light_t, valid_t = encode_superfeatures(target_l, labels_t, "mean", n_t)
    light_t = light_t[:, 0]
    levels_r: list[list[Tensor]] = [[] for _ in levels_t]
    phis_r: list[list[Tensor]] = [[] for _ in levels_t]
    ab_r, light_r, valid_r, member_r, member_t, masks_t, coords_r = [], [], [], [], [], [], []
    for r, (lab, labels) in enumerate(zip(reference_lab, labels_r, strict=True)):
        n = int(labels.max()) + 1
        grey_maps = features(grey_rgb(lab[:, :1]))
        colour_maps = features(lab_to_rgb(lab))
        pooled = zip(_pool_levels(grey_maps, labels, n), _pool_levels(colour_maps, labels, n), strict=True)
        for level, (g, c) in enumerate(pooled):
            levels_r[level].append(g)
            phis_r[level].append(c)
        ab, valid = encode_superfeatures(lab[:, 1:], labels, "mean", n)
        ab_r.append(ab)
        valid_r.append(valid)
        mean_l = encode_superfeatures(lab[:, :1], labels, "mean", n)[0][:, 0]
        light_r.append(_batch_remap(mean_l, lab[:, :1], target_l))
        if masks is not None:
            tm, rm = masks[r]
            k_total = sum(m[0].shape[1] for m in masks)
            first = sum(m[0].shape[1] for m in masks[:r])
            mem_r = torch.zeros(b, n, k_total, dtype=torch.bool, device=lab.device)
            if tm.shape[1]:
                mem_r[..., first : first + tm.shape[1]] = superpixel_membership(labels, rm, n)
                member_t.append(superpixel_membership(labels_t, tm, n_t))
                masks_t.append(tm)
            member_r.append(mem_r)
            # reference superpixels in the frame of each of their own masks (zeros for the others)
            cen = _centroids(labels, n)
            coords_r.append(
                torch.stack(
                    [
                        torch.stack(
                            [
                                object_coordinates(cen[i], rm[i, k - first])
                                if first <= k < first + rm.shape[1]
                                else torch.zeros_like(cen[i])
                                for k in range(k_total)
                            ]
                        )
                        for i in range(b)
                    ]
                )
            )
    valid = torch.cat(valid_r, dim=1)
    allowed = valid[:, None, :] & valid_t[:, :, None]
    prior = -((light_t[:, :, None] - torch.cat(light_r, dim=1)[:, None, :]) ** 2) / (2.0 * lightness_sigma**2)
    temperature: float | Tensor = tau
    if member_t:
        # as model.transfer: rows inside a mask pair match more softly and prefer the same place
        # in the paired object (harness protocol B, see the transfer's module notes)
        mem_t, mem_r = torch.cat(member_t, dim=2), torch.cat(member_r, dim=1)
        allowed = pair_mask(mem_t, mem_r, valid) & valid_t[:, :, None]
        temperature = torch.where(mem_t.any(dim=2, keepdim=True), tau * MASK_TAU_SCALE, tau)
        tmasks, cen_t, cr = torch.cat(masks_t, dim=1), _centroids(labels_t, n_t), torch.cat(coords_r, dim=2)
        prior = prior + torch.stack(
            [
                object_position_log_prior(
                    mem_t[i],
                    mem_r[i],
                    torch.stack([object_coordinates(cen_t[i], m) for m in tmasks[i]]),
                    cr[i],
                    OBJECT_POSITION_SIGMA,
                )
                for i in range(b)
            ]
        )
    levels = zip(levels_t, levels_r, strict=True)
    scores = torch.stack([correlation(f_t, torch.cat(f_r, dim=2)) for f_t, f_r in levels]).mean(0)
    weights = attention(scores, temperature, allowed, prior)
    carried = [torch.einsum("btr,bcr->bct", weights, torch.cat(p, dim=2)) for p in phis_r]
    ab_sp = torch.einsum("btr,bcr->bct", weights, torch.cat(ab_r, dim=2))
    best = scores.masked_fill(~allowed, -1.0).amax(dim=2)
    confidence = torch.stack([best, weights.amax(dim=2)], dim=1)
    return Matched(unpool(ab_sp, labels_t), unpool(confidence, labels_t), tuple(carried), labels_t)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """2 x (conv3x3 - BN - ReLU), thesis ch. 3."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ColorNet(nn.Module):
    """U-Net with super-attention in the encoder, predicting ab (see the module notes).

    Args:
        width: channels of the first level (levels: width, 2 width, 4 width, 8 width).
        value_channels: channels of each level's learned value map of the attended phi.

    Forward: ``(target_l (B, 1, h, w) L [0, 100], matched: Matched) -> ab (B, 2, h, w)`` CIE units,
    any h, w (padded internally to a multiple of 8).
    """

    def __init__(self, width: int = 32, value_channels: tuple[int, ...] = (16, 32, 32)) -> None:
        super().__init__()
        widths = (width, 2 * width, 4 * width, 8 * width)
        self.values = nn.ModuleList(nn.Conv1d(c, v, 1) for c, v in zip(PHI_CHANNELS, value_channels, strict=True))
        # level 1 input: L, attended ab, confidence (2), value of phi_1
        self.encoders = nn.ModuleList(
            [
                _block(1 + 2 + 2 + value_channels[0], widths[0]),
                _block(widths[0] + value_channels[1], widths[1]),
                _block(widths[1] + value_channels[2], widths[2]),
                _block(widths[2], widths[3]),
            ]
        )
        self.ups = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(3))
        self.fuse = nn.ModuleList(nn.Conv2d(2 * widths[i], widths[i], 1) for i in range(3))
        self.decoders = nn.ModuleList(_block(widths[i], widths[i]) for i in range(3))
        self.head = nn.Conv2d(widths[0], 2, 1)
        # zero head: the untrained network returns the attended ab unchanged
        nn.init.zeros_(self.head.weight)
        assert self.head.bias is not None  # nn.Conv2d(..., bias=True), the default
        nn.init.zeros_(self.head.bias)

    def forward(self, target_l: Tensor, matched: Matched) -> Tensor:
        h, w = target_l.shape[-2:]
        pad = (0, (-w) % 8, 0, (-h) % 8)
        attended = [
            F.pad(unpool(v(p), matched.labels), pad, mode="replicate")
            for v, p in zip(self.values, matched.phi, strict=True)
        ]
        x = torch.cat([target_l / 50.0 - 1.0, matched.ab / AB_SCALE, matched.confidence], dim=1)
        x = F.pad(x, pad, mode="replicate")
        skips = []
        for level, encoder in enumerate(self.encoders):
            if level < len(attended):
                a = attended[level]
                x_h, x_w = x.shape[-2:]
                x = torch.cat([x, F.adaptive_avg_pool2d(a, (x_h, x_w)) if level else a], dim=1)
            x = encoder(x)
            skips.append(x)
            if level < 3:
                x = F.max_pool2d(x, 2)
        x = skips.pop()
        for i in reversed(range(3)):
            x = self.decoders[i](self.fuse[i](torch.cat([self.ups[i](x), skips[i]], dim=1)))
        delta = self.head(x)[..., :h, :w] * AB_SCALE
        return (matched.ab + delta).clamp(-AB_SCALE, AB_SCALE)


def colornet_shapes(net: ColorNet | None = None) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the float tensors of a :class:`ColorNet` state dict (what the weights file holds)."""
    state = (net or ColorNet()).state_dict()
    return {k: tuple(v.shape) for k, v in state.items() if v.is_floating_point()}


def load_colornet(path: str | PathLike[str] = COLORNET_WEIGHTS, device: torch.device | str | None = None) -> ColorNet:
    """:class:`ColorNet` in eval mode with the weights of ``path`` (float16 or float32 file), float32.

    Raises :class:`model.weights.WeightsError` if the file is missing, corrupt or of another architecture.
    """
    net = ColorNet()
    state = read_state(path, colornet_shapes(net))
    try:
        net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as err:
        raise WeightsError(Path(path), f"does not fit ColorNet ({str(err).splitlines()[0]})") from err
    return net.eval().to(device)


def _labels(l: Tensor, regions: Tensor | None) -> Tensor:
    """SLIC labels (1, h, w) of L (1, 1, h, w), each mask region segmented alone."""
    return superpixels(l[0, 0] / 100.0, mask=regions)[None]


@torch.no_grad()
def colorize_net(
    net: ColorNet,
    features: FeatureExtractor,
    target_l: Tensor,
    reference_lab: Sequence[Tensor],
    masks: MaskPairs | None = None,
    *,
    work_size: int = DEFAULT_WORK_SIZE,
    tau: float = DEFAULT_TAU,
) -> Tensor:
    """Colour a grey image with the network from one or more references (and optional mask pairs).

    Args:
        net: trained :class:`ColorNet` (eval mode).
        features: frozen VGG-16 extractor (``model.features.load_vgg16()``).
        target_l: (1, 1, H, W) L in [0, 100], any size.
        reference_lab: one or more (1, 3, Hr, Wr) Lab references, any sizes.
        masks: optional, ``masks[r]`` = list of (target_mask (H, W) bool, reference_mask (Hr, Wr)
            bool) pairs of reference r (as ``model.transfer.transfer_colour``).
        work_size: short side of the working resolution, px.
        tau: attention temperature.

    Returns:
        (1, 2, H, W) float ab on ``target_l``'s device.
    """
    check_exemplar_inputs(target_l, reference_lab, masks)
    device = target_l.device
    pairs = [list(p) for p in masks] if masks is not None else [[] for _ in reference_lab]
    target_h, target_w = target_l.shape[-2:]
    size_t = working_size(target_h, target_w, work_size)
    l_t = resize(target_l.float(), size_t)
    full_t = [tm.to(device) for p in pairs for tm, _ in p]
    small_t = [resize_mask(tm, size_t) for tm in full_t]
    regions_t = region_map(torch.stack(small_t)) if small_t else None
    labels_t = _labels(l_t, regions_t)
    refs, labels_r, mask_args = [], [], []
    k_first = 0
    for ref, ref_pairs in zip(reference_lab, pairs, strict=True):
        ref_h, ref_w = ref.shape[-2:]
        lab = resize(ref.to(device).float(), working_size(ref_h, ref_w, work_size))
        lab_h, lab_w = lab.shape[-2:]
        rm = [resize_mask(m.to(device), (lab_h, lab_w)) for _, m in ref_pairs]
        regions = region_map(torch.stack(rm)) if rm else None
        refs.append(lab)
        labels_r.append(_labels(lab[:, :1], regions))
        tm = small_t[k_first : k_first + len(rm)]
        k_first += len(rm)
        mask_args.append(
            (
                torch.stack(tm)[None] if tm else torch.zeros(1, 0, *size_t, dtype=torch.bool, device=device),
                torch.stack(rm)[None] if rm else torch.zeros(1, 0, *lab.shape[-2:], dtype=torch.bool, device=device),
            )
        )
    matched = match_references(features, l_t, labels_t, refs, labels_r, mask_args if small_t else None, tau=tau)
    ab = net(l_t, matched)
    return guided_upsample(ab, target_l.float())
