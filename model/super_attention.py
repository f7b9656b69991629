"""Super-attention: attention between superpixel-pooled deep features (paper §3.2, thesis §4.5, §6.3).

Pieces (pure functions), composed by :func:`super_attention` and the :class:`SuperAttention` module:

* SFE / MSFE, :func:`encode_superfeatures`: pool a feature map ``(B, C, H, W)`` over each
  superpixel into super-features ``(B, C, N)`` (channel-wise max as in the paper, or the mean of
  thesis ch. 4). Pixels labelled -1 are not pooled: labels from a masked segmentation (MaskSLIC)
  or :func:`mask_labels` give the masked encoding of thesis §6.3.
* SFM, :func:`correlation` + :func:`attention`: centred cosine correlation (paper eq. 3, thesis
  eq. 4.5), row softmax with temperature tau (eq. 2 / 4.3), optionally restricted to allowed
  (target, reference) superpixel pairs (:func:`pair_mask`, masked super-attention).
* :func:`unpool` (thesis eq. 5.2): superpixel values back to pixels with the target labels.

Batches: images of a batch have different superpixel counts. Super-features are padded to the
largest ``N`` of the batch and come with a validity mask ``(B, N)``; padded or empty superpixels
are zero, never attended to, and produce zero rows.

Cost: with ``N ~ 3 sqrt(n)`` superpixels for ``n`` pixels the attention map has
``N_t * N_r ~ 9 n`` entries, so matching is linear in the pixel count (thesis §4.5.2), and the
encoding / unpooling are single passes over the pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

Reduce = Literal["amax", "mean"]
Projection = Callable[[Tensor], Tensor]

DEFAULT_TAU = 0.015  # thesis §4.6.2


def _check_labels(labels: Tensor, batch: int, size: tuple[int, int]) -> None:
    if labels.dtype != torch.int64 or tuple(labels.shape) != (batch, *size):
        raise ValueError(f"labels must be int64 of shape {(batch, *size)}, got {labels.dtype} {tuple(labels.shape)}")


def _n_segments(labels: Tensor) -> int:
    return int(labels.max().clamp(min=-1)) + 1 if labels.numel() else 0


def encode_superfeatures(
    features: Tensor, labels: Tensor, reduce: Reduce = "amax", n_segments: int | None = None
) -> tuple[Tensor, Tensor]:
    """Super-features encoding (SFE; MSFE when labels are -1 outside a mask).

    Args:
        features: (B, C, H, W) float.
        labels: (B, H, W) int64 superpixel ids ``0..N-1``, -1 = not pooled.
        reduce: ``"amax"`` (channel-wise max pooling, paper §3.2) or ``"mean"`` (thesis §4.5.1).
        n_segments: N; default: the largest label of the batch + 1.

    Returns:
        ``(super_features, valid)``: (B, C, N) float (0 for superpixels without pixels) and
        (B, N) bool (the superpixel has at least one pooled pixel).
    """
    b, c, h, w = features.shape
    _check_labels(labels, b, (h, w))
    if reduce not in ("amax", "mean"):
        raise ValueError(f"reduce must be 'amax' or 'mean', got {reduce!r}")
    n = _n_segments(labels) if n_segments is None else n_segments
    flat = labels.reshape(b, 1, h * w)
    # ignored pixels (-1) go to an extra bin n that is dropped afterwards
    index = torch.where(flat >= 0, flat, n)
    counts = torch.zeros(b, n + 1, device=features.device, dtype=features.dtype).scatter_add_(
        1, index[:, 0], torch.ones(b, h * w, device=features.device, dtype=features.dtype)
    )
    src, index = features.reshape(b, c, h * w), index.expand(b, c, h * w)
    if reduce == "amax":
        pooled = features.new_zeros(b, c, n + 1).scatter_reduce(2, index, src, "amax", include_self=False)
    else:
        # sum then divide: ~5x faster on CPU than scatter_reduce(..., "mean")
        pooled = features.new_zeros(b, c, n + 1).scatter_reduce(2, index, src, "sum")
        pooled = pooled / counts[:, None, :].clamp(min=1)
    return pooled[..., :n], counts[:, :n] > 0


def mask_labels(labels: Tensor, mask: Tensor) -> Tensor:
    """Labels restricted to a mask (-1 outside), for the masked encoding (MSFE, thesis §6.3).

    Superpixels with no pixel inside the mask become invalid in :func:`encode_superfeatures`;
    those straddling the border are pooled over their inside pixels only.

    Args:
        labels: (B, H, W) int64.
        mask: (B, H, W) bool.

    Returns:
        (B, H, W) int64, same ids (not renumbered, so unpooling with ``labels`` still works).
    """
    return torch.where(mask, labels, -1)


def superpixel_membership(labels: Tensor, masks: Tensor, n_segments: int | None = None) -> Tensor:
    """Which superpixels lie in which masks (majority of their pixels).

    Args:
        labels: (B, H, W) int64, -1 ignored.
        masks: (B, K, H, W) bool.
        n_segments: N; default: the largest label + 1.

    Returns:
        (B, N, K) bool: at least half of superpixel i's pixels are in mask k.
    """
    b, _k, h, w = masks.shape
    _check_labels(labels, b, (h, w))
    inside, _ = encode_superfeatures(masks.to(torch.float32), labels, "mean", n_segments)
    return (inside >= 0.5).transpose(1, 2)


def pair_mask(member_t: Tensor, member_r: Tensor, valid_r: Tensor) -> Tensor:
    """Allowed (target, reference) superpixel pairs for masked super-attention.

    Mask pair k is (target mask k, reference mask k). A target superpixel inside some target masks
    attends only to reference superpixels inside the paired reference masks (union over its
    masks); one inside no mask, or whose paired reference masks are all empty, attends to every
    valid reference superpixel (the unmasked matching).

    Args:
        member_t: (B, N_t, K) bool, from :func:`superpixel_membership` on the target.
        member_r: (B, N_r, K) bool, the same on the reference.
        valid_r: (B, N_r) bool, reference superpixels that exist.

    Returns:
        (B, N_t, N_r) bool.
    """
    paired = torch.einsum("btk,brk->btr", member_t.float(), member_r.float()) > 0
    paired &= valid_r[:, None, :]
    restricted = paired.any(dim=-1, keepdim=True)
    return torch.where(restricted, paired, valid_r[:, None, :].expand_as(paired))


def normalise_superfeatures(superfeatures: Tensor, eps: float = 1e-8) -> Tensor:
    """Centre each super-feature on its mean over channels and scale it to unit L2 norm.

    This is the normalisation of paper eq. 3 / thesis eq. 4.5 ("mu ... the mean of each
    super-feature"), and what the authors' code does (mean over the channel axis).

    Args:
        superfeatures: (B, C, N).

    Returns:
        (B, C, N); all-constant super-features become 0.
    """
    centred = superfeatures - superfeatures.mean(dim=1, keepdim=True)
    return centred / (centred.norm(dim=1, keepdim=True) + eps)


def correlation(query: Tensor, key: Tensor) -> Tensor:
    """Centred cosine correlation M_TR (paper eq. 3, thesis eq. 4.5).

    Args:
        query: (B, C, N_t) target super-features.
        key: (B, C, N_r) reference super-features.

    Returns:
        (B, N_t, N_r) in [-1, 1].
    """
    return torch.einsum("bct,bcr->btr", normalise_superfeatures(query), normalise_superfeatures(key))


def attention(
    scores: Tensor, tau: float | Tensor = DEFAULT_TAU, allowed: Tensor | None = None, log_prior: Tensor | None = None
) -> Tensor:
    """Row softmax of ``scores / tau`` (paper eq. 2, thesis eq. 4.3) over the allowed columns.

    Args:
        scores: (B, N_t, N_r) correlations.
        tau: temperature > 0, a float or a tensor broadcastable to (B, N_t, N_r) (e.g. one per row,
            (B, N_t, 1)); tau -> 0 approaches a one-hot argmax per row.
        allowed: (B, N_t, N_r) bool or None (all allowed).
        log_prior: (B, N_t, N_r) float or None: added to the logits, i.e. the rows become
            ``softmax(scores / tau) * exp(log_prior)`` renormalised (a prior on the pairs).

    Returns:
        (B, N_t, N_r): rows sum to 1, or are all 0 where no column is allowed.
    """
    if (torch.as_tensor(tau) <= 0).any():
        raise ValueError(f"tau must be > 0, got {tau}")
    logits = scores / tau
    if log_prior is not None:
        logits = logits + log_prior
    if allowed is None:
        return logits.softmax(dim=-1)
    weights = logits.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    # a row with nothing allowed is NaN after softmax: make it 0
    return torch.where(allowed.any(dim=-1, keepdim=True), weights, 0.0)


def unpool(values: Tensor, labels: Tensor) -> Tensor:
    """Superpixel values back to pixels (thesis eq. 5.2): each pixel takes its superpixel's value.

    Args:
        values: (B, C, N).
        labels: (B, H, W) int64, -1 -> 0.

    Returns:
        (B, C, H, W).
    """
    b, c, _ = values.shape
    h, w = labels.shape[-2:]
    _check_labels(labels, b, (h, w))
    flat = labels.reshape(b, 1, h * w)
    out = values.gather(2, flat.clamp(min=0).expand(b, c, h * w))
    return (out * (flat >= 0)).reshape(b, c, h, w)


def super_attention(
    f_t: Tensor,
    f_r: Tensor,
    phi_r: Tensor,
    labels_t: Tensor,
    labels_r: Tensor,
    *,
    tau: float = DEFAULT_TAU,
    reduce: Reduce = "amax",
    masks_t: Tensor | None = None,
    masks_r: Tensor | None = None,
    query: Projection | None = None,
    key: Projection | None = None,
    value: Projection | None = None,
) -> Tensor:
    """Super-attention block (paper Fig. 2, thesis eq. 5.2): reference colour features attended
    by target super-features, at target resolution.

    Args:
        f_t: (B, C, H, W) target (luminance) features.
        f_r: (B, C, Hr, Wr) reference luminance features.
        phi_r: (B, C', Hr, Wr) reference colour features (e.g. VGG features of the colour
            reference, or its ab channels).
        labels_t: (B, H, W) int64 target superpixels (-1 = not pooled, output 0 there).
        labels_r: (B, Hr, Wr) int64 reference superpixels.
        tau: softmax temperature.
        reduce: superpixel pooling, ``"amax"`` (paper) or ``"mean"`` (thesis ch. 4).
        masks_t, masks_r: (B, K, H, W) / (B, K, Hr, Wr) bool mask pairs for masked
            super-attention (see :func:`pair_mask`); both or neither.
        query, key: optional learned maps (B, C, N) -> (B, C'', N) applied to the normalised
            super-features before the dot product (the trained network's learned attention);
            None keeps the plain correlation of eq. 3.
        value: optional learned map (B, C', N) -> (B, C''', N) on the colour super-features.

    Returns:
        (B, C', H, W) (or C''' with ``value``).
    """
    if (masks_t is None) != (masks_r is None):
        raise ValueError("give both masks_t and masks_r, or neither")
    sf_t, valid_t = encode_superfeatures(f_t, labels_t, reduce)
    sf_r, valid_r = encode_superfeatures(f_r, labels_r, reduce)
    colour_r, _ = encode_superfeatures(phi_r, labels_r, reduce, n_segments=sf_r.shape[-1])
    allowed = valid_r[:, None, :].expand(-1, sf_t.shape[-1], -1)
    if masks_t is not None and masks_r is not None:
        allowed = pair_mask(
            superpixel_membership(labels_t, masks_t, sf_t.shape[-1]),
            superpixel_membership(labels_r, masks_r, sf_r.shape[-1]),
            valid_r,
        )
    allowed = allowed & valid_t[:, :, None]
    if query is None and key is None:
        scores = correlation(sf_t, sf_r)
    else:
        q = normalise_superfeatures(sf_t)
        k = normalise_superfeatures(sf_r)
        scores = torch.einsum("bct,bcr->btr", q if query is None else query(q), k if key is None else key(k))
    weights = attention(scores, tau, allowed)
    colours = colour_r if value is None else value(colour_r)
    return unpool(torch.einsum("btr,bcr->bct", weights, colours), labels_t)


class SuperAttention(nn.Module):
    """Thin module around :func:`super_attention`, with optional learned 1x1 projections.

    Args:
        tau: softmax temperature (thesis: 0.015; the authors' trained network uses 0.01).
        reduce: ``"amax"`` (paper) or ``"mean"``.
        channels: C of f_t / f_r; when given, learned query/key 1x1 convolutions (C -> C) act on
            the normalised super-features, as in the trained network ("the attention map is
            learned", paper §3.2). None: the fixed correlation of eq. 3 (no parameters).
        colour_channels: C' of phi_r; when given, a learned 1x1 value convolution (C' -> C').

    Forward: see :func:`super_attention`; returns (B, C', H, W).
    """

    def __init__(
        self,
        tau: float = DEFAULT_TAU,
        reduce: Reduce = "amax",
        channels: int | None = None,
        colour_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.tau = tau
        self.reduce: Reduce = reduce
        self.query = None if channels is None else nn.Conv1d(channels, channels, kernel_size=1)
        self.key = None if channels is None else nn.Conv1d(channels, channels, kernel_size=1)
        self.value = None if colour_channels is None else nn.Conv1d(colour_channels, colour_channels, 1)

    def forward(
        self,
        f_t: Tensor,
        f_r: Tensor,
        phi_r: Tensor,
        labels_t: Tensor,
        labels_r: Tensor,
        masks_t: Tensor | None = None,
        masks_r: Tensor | None = None,
    ) -> Tensor:
        return super_attention(
            f_t,
            f_r,
            phi_r,
            labels_t,
            labels_r,
            tau=self.tau,
            reduce=self.reduce,
            masks_t=masks_t,
            masks_r=masks_r,
            query=self.query,
            key=self.key,
            value=self.value,
        )
