"""YCbCr <-> RGB (BT.601 / BT.709, limited or full range, any bit depth) and luma passthrough.

Conventions: ``y`` is luma normalised to [0, 1] (float32), ``chroma`` is (2, H, W) float32
Cb, Cr in [-0.5, 0.5], ``rgb`` is (H, W, 3) float32 gamma-encoded R'G'B' in [0, 1]. Integer
"codes" are the values stored in the file at ``bit_depth`` bits: limited ("tv") range puts
black..white at 16..235 and chroma at 16..240 (scaled by 2**(bit_depth - 8)), full ("pc")
range uses 0..2**bit_depth - 1.

Colorization never alters the archive's detail: the output luma is the source's luma codes
(only shifted when the output has another bit depth); colorizers only supply chroma, see
:func:`chroma_from_rgb` and :func:`merge_luma_chroma`.

:func:`full_chroma_codes` is the output path of a coloured frame in torch, on the run's device
(the same maths as :func:`guided_upsample`, :func:`legal_chroma`, block-mean subsampling and
:func:`chroma_to_codes`, which stay the numpy reference).

CIE Lab for numpy arrays (:func:`lab_from_rgb`, :func:`lightness_from_grey`, :func:`rgb_from_lab`)
goes through ``model.color``, the one Lab implementation: L in [0, 100], ab in CIE units, planes
first ((3, H, W) Lab, (2, H, W) ab).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

Matrix = Literal["bt601", "bt709"]
Range = Literal["tv", "pc"]

# (Kr, Kb) luma weights of each matrix.
_WEIGHTS: dict[str, tuple[float, float]] = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}
# FFmpeg colour-matrix names (ReelInfo.color_matrix) that mean one of ours.
_TAGS: dict[str, Matrix] = {"bt709": "bt709", "bt470bg": "bt601", "smpte170m": "bt601", "fcc": "bt601"}


def choose_matrix(color_matrix: str | None, width: int, height: int) -> Matrix:
    """The matrix the file is tagged with, else by size: SD (up to 1024x576) BT.601, HD BT.709.

    Tags we do not implement (BT.2020, SMPTE 240M...) also fall back to the size rule.
    """
    if color_matrix in _TAGS:
        return _TAGS[color_matrix]
    return "bt709" if width > 1024 or height > 576 else "bt601"


def _check_depth(bit_depth: int) -> None:
    if not 8 <= bit_depth <= 16:
        raise ValueError(f"bit depth must be 8..16, got {bit_depth}")


def code_dtype(bit_depth: int) -> type[np.unsignedinteger]:
    """uint8 for 8-bit codes, uint16 above."""
    _check_depth(bit_depth)
    return np.uint8 if bit_depth == 8 else np.uint16


def luma_levels(bit_depth: int, color_range: Range) -> tuple[float, float]:
    """(black code, white - black) of luma at this depth and range."""
    _check_depth(bit_depth)
    if color_range == "pc":
        return 0.0, float(2**bit_depth - 1)
    unit = 2 ** (bit_depth - 8)
    return 16.0 * unit, 219.0 * unit


def chroma_levels(bit_depth: int, color_range: Range) -> tuple[float, float]:
    """(neutral code, code span of Cb/Cr from -0.5 to 0.5) at this depth and range."""
    _check_depth(bit_depth)
    if color_range == "pc":
        return float(2 ** (bit_depth - 1)), float(2**bit_depth - 1)
    unit = 2 ** (bit_depth - 8)
    return 128.0 * unit, 224.0 * unit


def _quantise(values: np.ndarray, bit_depth: int) -> np.ndarray:
    return np.clip(np.rint(values), 0, 2**bit_depth - 1).astype(code_dtype(bit_depth))


def codes_to_luma(codes: np.ndarray, bit_depth: int, color_range: Range) -> np.ndarray:
    """(H, W) integer luma codes -> float32 in [0, 1] (clipped: sub-black/super-white cut)."""
    black, span = luma_levels(bit_depth, color_range)
    return np.clip((codes.astype(np.float32) - black) / span, 0.0, 1.0)


def luma_table(bit_depth: int, color_range: Range) -> np.ndarray:
    """(2**bit_depth,) float32: :func:`codes_to_luma` of every code, so that ``table[codes]``
    gives the same values as ``codes_to_luma(codes, ...)`` by one lookup (3-5x faster at 1080p)."""
    return codes_to_luma(np.arange(2**bit_depth, dtype=np.uint32), bit_depth, color_range)


def work_grey(luma: np.ndarray, table: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) luma codes -> (h, w) float32 grey in [0, 1] at working resolution ``size``: the
    codes through ``table`` (:func:`luma_table`), area-averaged to ``size`` (bilinear when
    enlarging). Stored as is in the work folder, so the propagation reads exactly the grey a
    decode would give it."""
    grey = table[luma] if luma.dtype != np.uint8 else cv2.LUT(luma, table)
    h, w = size
    if grey.shape != (h, w):
        interp = cv2.INTER_AREA if h < grey.shape[0] else cv2.INTER_LINEAR
        grey = cv2.resize(grey, (w, h), interpolation=interp)
    return np.clip(grey, 0.0, 1.0, out=grey).astype(np.float32, copy=False)


def luma_to_codes(y: np.ndarray, bit_depth: int, color_range: Range) -> np.ndarray:
    """(H, W) float luma in [0, 1] -> integer codes (uint8 / uint16)."""
    black, span = luma_levels(bit_depth, color_range)
    return _quantise(black + np.asarray(y, dtype=np.float64) * span, bit_depth)


def codes_to_chroma(codes: np.ndarray, bit_depth: int, color_range: Range) -> np.ndarray:
    """(2, H, W) integer Cb, Cr codes -> float32 in [-0.5, 0.5]."""
    neutral, span = chroma_levels(bit_depth, color_range)
    return np.clip((codes.astype(np.float32) - neutral) / span, -0.5, 0.5)


def chroma_to_codes(chroma: np.ndarray, bit_depth: int, color_range: Range) -> np.ndarray:
    """(2, H, W) float Cb, Cr in [-0.5, 0.5] -> integer codes (uint8 / uint16)."""
    neutral, span = chroma_levels(bit_depth, color_range)
    return _quantise(neutral + np.clip(np.asarray(chroma, dtype=np.float32), -0.5, 0.5) * np.float32(span), bit_depth)


def change_depth(codes: np.ndarray, from_depth: int, to_depth: int) -> np.ndarray:
    """Integer codes at another bit depth by shifting (8 -> 10 bit is ``<< 2``; down: rounded)."""
    _check_depth(from_depth)
    out_dtype = code_dtype(to_depth)
    if to_depth >= from_depth:
        return codes.astype(out_dtype) << (to_depth - from_depth)
    k = from_depth - to_depth
    rounded = (codes.astype(np.uint32) + (1 << (k - 1))) >> k
    return np.minimum(rounded, 2**to_depth - 1).astype(out_dtype)


def rgb_to_ycbcr(rgb: np.ndarray, matrix: Matrix) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) float R'G'B' in [0, 1] -> (y (H, W) in [0, 1], chroma (2, H, W) in [-0.5, 0.5])."""
    kr, kb = _WEIGHTS[matrix]
    rgb = np.asarray(rgb, dtype=np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = kr * r + (1.0 - kr - kb) * g + kb * b
    cb = (b - y) / (2.0 * (1.0 - kb))
    cr = (r - y) / (2.0 * (1.0 - kr))
    return y.astype(np.float32), np.stack([cb, cr]).astype(np.float32)


def ycbcr_to_rgb(y: np.ndarray, chroma: np.ndarray, matrix: Matrix) -> np.ndarray:
    """y (H, W) in [0, 1] and chroma (2, H, W) in [-0.5, 0.5] -> (H, W, 3) float32 R'G'B' in [0, 1]."""
    kr, kb = _WEIGHTS[matrix]
    kg = 1.0 - kr - kb
    y = np.asarray(y, dtype=np.float32)
    cb, cr = np.asarray(chroma[0], dtype=np.float32), np.asarray(chroma[1], dtype=np.float32)
    r = y + 2.0 * (1.0 - kr) * cr
    b = y + 2.0 * (1.0 - kb) * cb
    g = (y - kr * r - kb * b) / kg
    return np.clip(np.stack([r, g, b], axis=-1), 0.0, 1.0).astype(np.float32)


def legal_chroma(y: np.ndarray, chroma: np.ndarray, matrix: Matrix) -> np.ndarray:
    """Chroma (2, H, W) scaled towards neutral, per pixel, just enough that it makes R'G'B' in
    [0, 1] with the luma y (H, W) in [0, 1] it will be shown with: hue and luma kept, saturation
    limited where the luma leaves no room. Black and white get no colour (a black border stays
    black, not a dark navy); chroma computed against another luma (the colorizer's) would
    otherwise be clipped channel by channel when shown, shifting its hue. (2, H, W) float32."""
    kr, kb = _WEIGHTS[matrix]
    kg = 1.0 - kr - kb
    y = np.clip(np.asarray(y, dtype=np.float32), 0.0, 1.0)
    cb, cr = np.asarray(chroma[0], dtype=np.float32), np.asarray(chroma[1], dtype=np.float32)
    # each channel is y + d: R' = y + dr, B' = y + db, G' = y + dg (ycbcr_to_rgb without the clip)
    dr, db = 2.0 * (1.0 - kr) * cr, 2.0 * (1.0 - kb) * cb
    dg = -(kr * dr + kb * db) / kg
    scale = np.ones_like(y)
    for d in (dr, dg, db):
        room = np.where(d > 0, 1.0 - y, y)  # how far the channel may move from y in d's direction
        scale = np.minimum(scale, np.where(np.abs(d) > 1e-12, room / np.maximum(np.abs(d), 1e-12), 1.0))
    return (np.stack([cb, cr]) * scale).astype(np.float32)


def chroma_from_rgb(rgb: np.ndarray, matrix: Matrix) -> np.ndarray:
    """What a colorizer hands to the writer: (H, W, 3) float32 R'G'B' in [0, 1] -> (2, H, W)
    float32 Cb, Cr in [-0.5, 0.5]. The RGB's own luma is dropped (the source luma is kept)."""
    return rgb_to_ycbcr(rgb, matrix)[1]


def merge_luma_chroma(
    luma: np.ndarray, chroma: np.ndarray | None, bit_depth: int, color_range: Range, out_depth: int | None = None
) -> np.ndarray:
    """Source luma codes + new chroma -> (3, H, W) Y, Cb, Cr codes at ``out_depth`` (default: same).

    ``luma``: (H, W) integer codes at ``bit_depth``; it passes through unchanged (bit for bit
    at the same depth, shifted otherwise). ``chroma``: (2, H, W) float in [-0.5, 0.5], None
    for neutral grey. Chroma is quantised in the same range as the luma.
    """
    out_depth = out_depth or bit_depth
    y = change_depth(np.asarray(luma), bit_depth, out_depth)
    if chroma is None:
        neutral = chroma_levels(out_depth, color_range)[0]
        c = np.full((2, *y.shape), neutral, dtype=y.dtype)
    else:
        if chroma.shape != (2, *y.shape):
            raise ValueError(f"chroma must be (2, {y.shape[0]}, {y.shape[1]}), got {chroma.shape}")
        c = chroma_to_codes(chroma, out_depth, color_range)
    return np.concatenate([y[None], c], axis=0)


def rgb_from_luma_chroma(
    luma: np.ndarray, chroma: np.ndarray | None, bit_depth: int, color_range: Range, matrix: Matrix
) -> np.ndarray:
    """Source luma codes + chroma (None = grey) -> (H, W, 3) float32 R'G'B' in [0, 1] for images."""
    y = codes_to_luma(np.asarray(luma), bit_depth, color_range)
    c = np.zeros((2, *y.shape), dtype=np.float32) if chroma is None else chroma
    return ycbcr_to_rgb(y, c, matrix)


def guided_upsample(src: np.ndarray, guide: np.ndarray, *, radius: int = 1, eps: float = 1e-3) -> np.ndarray:
    """Bring low-resolution planes to the guide's resolution, following the guide's edges.

    The fast guided filter (He & Sun 2015): the local linear model ``src ≈ a * guide + b`` is
    fitted at ``src``'s resolution (box windows of ``radius`` px there), then ``a`` and ``b`` are
    upsampled bilinearly and applied to the full-resolution guide, so edges come from the guide
    (the source's luma) and colours from ``src``.

    The default radius 1 (a 3x3 window at the working resolution) keeps the chroma's own detail;
    a wider window smooths it away.

    src: (C, h, w) float32 (e.g. Cb, Cr at working resolution). guide: (H, W) float32 in [0, 1].
    Returns (C, H, W) float32. Cost is linear in H*W (a few cv2 passes), so 4K frames are cheap.
    """
    big_h, big_w = guide.shape
    _, h, w = src.shape
    if (h, w) == (big_h, big_w):
        return src.astype(np.float32, copy=True)
    guide = guide.astype(np.float32)
    small = cv2.resize(guide, (w, h), interpolation=cv2.INTER_AREA)
    k = (2 * radius + 1, 2 * radius + 1)

    def box(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, -1, k, borderType=cv2.BORDER_REFLECT)

    mean_i = box(small)
    var_i = box(small * small) - mean_i * mean_i
    out = np.empty((src.shape[0], big_h, big_w), dtype=np.float32)
    for c, p in enumerate(src.astype(np.float32)):
        mean_p = box(p)
        a = (box(small * p) - mean_i * mean_p) / (var_i + eps)
        b = mean_p - a * mean_i
        a_big = cv2.resize(box(a), (big_w, big_h), interpolation=cv2.INTER_LINEAR)
        b_big = cv2.resize(box(b), (big_w, big_h), interpolation=cv2.INTER_LINEAR)
        out[c] = a_big * guide + b_big
    return out


def lab_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) sRGB in [0, 1] -> (3, H, W) float32 Lab (``model.color.rgb_to_lab``)."""
    import torch

    from model.color import rgb_to_lab

    with torch.inference_mode():
        lab = rgb_to_lab(torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None])
    return lab[0].numpy()


def lightness_from_grey(grey: np.ndarray) -> np.ndarray:
    """(H, W) sRGB-encoded grey in [0, 1] -> (H, W) float32 Lab L in [0, 100]."""
    import torch

    from model.color import grey_lightness

    with torch.inference_mode():
        return grey_lightness(torch.from_numpy(np.ascontiguousarray(grey, dtype=np.float32))[None, None])[0, 0].numpy()


def rgb_from_lab(l: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """L (H, W) in [0, 100] + ab (2, H, W) -> (H, W, 3) float32 sRGB in [0, 1] (out of gamut: clipped)."""
    import torch

    from model.color import lab_to_rgb

    lab = np.concatenate([np.asarray(l, dtype=np.float32)[None], np.asarray(ab, dtype=np.float32)])
    with torch.inference_mode():
        rgb = lab_to_rgb(torch.from_numpy(lab)[None])
    return rgb[0].permute(1, 2, 0).clamp(0, 1).numpy()


# --- the output chroma of a coloured frame, in torch on the run's device ----------------------


def _box(x: Tensor, radius: int) -> Tensor:
    """Mean over (2r+1)^2 windows of (C, h, w), edges mirrored with the edge pixel repeated
    (OpenCV's ``BORDER_REFLECT``, as :func:`guided_upsample` uses)."""
    import torch
    import torch.nn.functional as F

    r = radius
    x = torch.cat([x[:, :r].flip(1), x, x[:, -r:].flip(1)], dim=1)
    x = torch.cat([x[:, :, :r].flip(2), x, x[:, :, -r:].flip(2)], dim=2)
    return F.avg_pool2d(x[None], 2 * r + 1, stride=1)[0]


def full_chroma_codes(
    luma: Tensor,
    small_grey: Tensor,
    ab: Tensor,
    *,
    bit_depth: int,
    color_range: Range,
    matrix: Matrix,
    out_depth: int,
    subsampling: tuple[int, int],
    radius: int = 1,
    eps: float = 1e-3,
) -> Tensor:
    """A coloured frame's chroma codes for the writer, all in torch on ``luma``'s device.

    luma: (H, W) integer luma codes at ``bit_depth`` (uint8, or int32/int16 holding them);
    small_grey: (h, w) float32 grey in [0, 1] at working resolution (the frame's luma area-
    averaged, :func:`work_grey`); ab: (2, h, w) float32 CIE ab there.
    Steps: Lab (L of ``small_grey``) -> R'G'B' -> Cb, Cr at working resolution; guided upsampling
    by the full-resolution grey (the fast guided filter, He & Sun 2015, as :func:`guided_upsample`);
    :func:`legal_chroma` for that grey; block means over ``subsampling`` (sx, sy) pixels (edge
    replicated, as the encoder's 4:2:2 / 4:2:0 planes need); quantised as :func:`chroma_to_codes`
    at ``out_depth`` in ``color_range``. Returns (2, ceil(H/sy), ceil(W/sx)) int32 codes.
    """
    import torch
    import torch.nn.functional as F

    from model.color import grey_lightness, lab_to_rgb

    black, span = luma_levels(bit_depth, color_range)
    grey = luma.to(torch.float32).sub_(black).mul_(1.0 / span).clamp_(0.0, 1.0)
    small = small_grey.to(torch.float32)
    l_small = grey_lightness(small[None, None])[0]
    rgb = lab_to_rgb(torch.cat([l_small, ab.to(torch.float32)])[None])[0].clamp(0.0, 1.0)
    kr, kb = _WEIGHTS[matrix]
    kg = 1.0 - kr - kb
    y = kr * rgb[0] + kg * rgb[1] + kb * rgb[2]
    src = torch.stack([(rgb[2] - y) / (2.0 * (1.0 - kb)), (rgb[0] - y) / (2.0 * (1.0 - kr))])
    big_h, big_w = grey.shape
    if src.shape[1:] == grey.shape:
        chroma = src
    else:
        g = small[None]
        mean_i = _box(g, radius)
        var_i = _box(g * g, radius) - mean_i * mean_i
        mean_p = _box(src, radius)
        a = (_box(g * src, radius) - mean_i * mean_p) / (var_i + eps)
        b = mean_p - a * mean_i
        coeffs = torch.cat([_box(a, radius), _box(b, radius)])[None]
        big = F.interpolate(coeffs, size=(big_h, big_w), mode="bilinear", align_corners=False)[0]
        chroma = torch.addcmul(big[2:], big[:2], grey)
    # legal_chroma with fewer full-resolution passes: channel k moves by d_k from the grey, so
    # it stays in [0, 1] for a scale up to (1 - grey) / d_k (d_k > 0) or grey / -d_k (d_k < 0);
    # need_k = max(d_k / (1 - grey), -d_k / grey) is 1 / that limit, and scale = 1 / max(1, need)
    over = (1.0 - grey).clamp_(min=1e-12).reciprocal_()
    under = grey.clamp(min=1e-12).reciprocal_().neg_()
    cb, cr = chroma[0], chroma[1]
    need = torch.zeros_like(grey)
    for d in (
        cr * (2.0 * (1.0 - kr)),
        cb * (2.0 * (1.0 - kb)),
        cr * (-2.0 * kr * (1.0 - kr) / kg) + cb * (-2.0 * kb * (1.0 - kb) / kg),
    ):
        need = torch.maximum(need, torch.maximum(d * over, d.mul_(under)))
    chroma = chroma / need.clamp_(min=1.0)
    sx, sy = subsampling
    if sx > 1 or sy > 1:
        chroma = F.pad(chroma[None], (0, -big_w % sx, 0, -big_h % sy), mode="replicate")
        chroma = F.avg_pool2d(chroma, (sy, sx))[0]
    neutral, cspan = chroma_levels(out_depth, color_range)
    codes = chroma.clamp_(-0.5, 0.5).mul_(cspan).add_(neutral).round_()
    return codes.clamp_(0, 2**out_depth - 1).to(torch.int32)
