"""pipeline.color: YCbCr <-> RGB, code levels, bit depths, luma passthrough."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.color import (
    change_depth,
    choose_matrix,
    chroma_from_rgb,
    chroma_to_codes,
    codes_to_chroma,
    codes_to_luma,
    luma_to_codes,
    merge_luma_chroma,
    rgb_from_luma_chroma,
    rgb_to_ycbcr,
    ycbcr_to_rgb,
)


@pytest.mark.parametrize("matrix", ["bt601", "bt709"])
def test_rgb_ycbcr_round_trip(matrix: str) -> None:
    rgb = np.random.default_rng(0).random((17, 23, 3), dtype=np.float32)
    y, chroma = rgb_to_ycbcr(rgb, matrix)
    assert y.shape == (17, 23) and chroma.shape == (2, 17, 23) and chroma.dtype == np.float32
    assert np.all(np.abs(chroma) <= 0.5 + 1e-6)
    np.testing.assert_allclose(ycbcr_to_rgb(y, chroma, matrix), rgb, atol=1e-5)


def test_primaries_have_the_textbook_coordinates() -> None:
    red = np.array([[[1.0, 0.0, 0.0]]], dtype=np.float32)
    blue = np.array([[[0.0, 0.0, 1.0]]], dtype=np.float32)
    y601, c601 = rgb_to_ycbcr(red, "bt601")
    y709, _ = rgb_to_ycbcr(red, "bt709")
    assert y601[0, 0] == pytest.approx(0.299) and y709[0, 0] == pytest.approx(0.2126)
    assert c601[1, 0, 0] == pytest.approx(0.5)  # Cr of pure red is the maximum
    assert rgb_to_ycbcr(blue, "bt709")[1][0, 0, 0] == pytest.approx(0.5)  # Cb of pure blue
    grey = np.full((4, 4, 3), 0.37, dtype=np.float32)
    np.testing.assert_allclose(chroma_from_rgb(grey, "bt709"), 0.0, atol=1e-7)


@pytest.mark.parametrize(
    ("depth", "rng", "black", "white", "neutral", "cmin", "cmax"),
    [
        (8, "tv", 16, 235, 128, 16, 240),
        (10, "tv", 64, 940, 512, 64, 960),
        (8, "pc", 0, 255, 128, 0, 255),
        (16, "tv", 16 << 8, 235 << 8, 128 << 8, 16 << 8, 240 << 8),
    ],
)
def test_code_levels(depth: int, rng: str, black: int, white: int, neutral: int, cmin: int, cmax: int) -> None:
    y = luma_to_codes(np.array([0.0, 1.0]), depth, rng)
    assert y.tolist() == [black, white]
    assert y.dtype == (np.uint8 if depth == 8 else np.uint16)
    c = chroma_to_codes(np.array([[0.0, -0.5, 0.5]]), depth, rng)
    assert c.tolist() == [[neutral, cmin, cmax]]
    np.testing.assert_allclose(codes_to_luma(y, depth, rng), [0.0, 1.0], atol=1e-6)
    # full range centres chroma on 2**(depth-1) with span 2**depth - 1: +0.5 is half a step short
    np.testing.assert_allclose(codes_to_chroma(c, depth, rng), [[0.0, -0.5, 0.5]], atol=0.51 / (cmax - cmin))


def test_chroma_codes_round_trip_within_half_a_step() -> None:
    chroma = np.random.default_rng(1).uniform(-0.5, 0.5, (2, 8, 8)).astype(np.float32)
    back = codes_to_chroma(chroma_to_codes(chroma, 10, "tv"), 10, "tv")
    assert np.abs(back - chroma).max() <= 0.5 / (224 * 4) + 1e-6


def test_change_depth() -> None:
    codes8 = np.array([16, 128, 235, 255], dtype=np.uint8)
    assert change_depth(codes8, 8, 10).tolist() == [64, 512, 940, 1020]
    assert change_depth(np.array([64, 513, 514, 1023], dtype=np.uint16), 10, 8).tolist() == [16, 128, 129, 255]
    assert change_depth(np.array([65535], dtype=np.uint16), 16, 8).tolist() == [255]


@pytest.mark.parametrize("depth", [8, 10, 16])
def test_merge_luma_chroma_passes_luma_through_bit_for_bit(depth: int) -> None:
    dtype = np.uint8 if depth == 8 else np.uint16
    luma = np.random.default_rng(2).integers(0, 2**depth, (12, 20)).astype(dtype)
    chroma = np.random.default_rng(3).uniform(-0.5, 0.5, (2, 12, 20)).astype(np.float32)
    planes = merge_luma_chroma(luma, chroma, depth, "tv")
    assert planes.shape == (3, 12, 20) and planes.dtype == dtype
    assert np.array_equal(planes[0], luma)
    grey = merge_luma_chroma(luma, None, depth, "tv")
    assert np.all(grey[1:] == 128 * 2 ** (depth - 8))
    with pytest.raises(ValueError):
        merge_luma_chroma(luma, chroma[:, :5], depth, "tv")


def test_merge_shifts_luma_to_a_deeper_output() -> None:
    luma = np.arange(16, 236, dtype=np.uint8).reshape(4, 55)
    planes = merge_luma_chroma(luma, None, 8, "tv", out_depth=10)
    assert np.array_equal(planes[0], luma.astype(np.uint16) << 2)


def test_rgb_from_luma_keeps_the_source_luma() -> None:
    luma = np.random.default_rng(4).integers(16, 236, (6, 9)).astype(np.uint8)
    rgb = rgb_from_luma_chroma(luma, None, 8, "tv", "bt709")
    assert rgb.shape == (6, 9, 3)
    np.testing.assert_allclose(rgb[..., 0], (luma - 16) / 219, atol=1e-6)  # grey: R = G = B = Y
    np.testing.assert_allclose(rgb[..., 0], rgb[..., 2], atol=1e-6)


def test_choose_matrix() -> None:
    assert choose_matrix("bt709", 720, 576) == "bt709"
    assert choose_matrix("smpte170m", 1920, 1080) == "bt601"
    assert choose_matrix(None, 720, 576) == "bt601"
    assert choose_matrix(None, 1280, 720) == "bt709"
    assert choose_matrix("bt2020nc", 704, 576) == "bt601"  # unsupported tag: by size


@pytest.mark.parametrize("matrix", ["bt601", "bt709"])
def test_legal_chroma_fits_the_luma_it_is_shown_with(matrix: str) -> None:
    from pipeline.color import _WEIGHTS, legal_chroma

    rng = np.random.default_rng(1)
    rgb = rng.random((40, 40, 3)).astype(np.float32)
    y, chroma = rgb_to_ycbcr(rgb, matrix)
    np.testing.assert_allclose(legal_chroma(y, chroma, matrix), chroma, atol=1e-6)  # in gamut: untouched

    wild = (rng.random((2, 40, 40)) - 0.5).astype(np.float32)  # chroma made against another luma
    y = rng.random((40, 40)).astype(np.float32)
    y[:5] = 0.0  # a black border
    y[-5:] = 1.0  # and a white one
    legal = legal_chroma(y, wild, matrix)
    kr, kb = _WEIGHTS[matrix]
    r, b = y + 2 * (1 - kr) * legal[1], y + 2 * (1 - kb) * legal[0]
    g = (y - kr * r - kb * b) / (1 - kr - kb)
    for channel in (r, g, b):  # shown as is, no channel needs clipping
        assert channel.min() >= -1e-5 and channel.max() <= 1 + 1e-5
    assert np.abs(legal[:, :5]).max() < 1e-6 and np.abs(legal[:, -5:]).max() < 1e-6  # black, white: neutral
    ratio = np.linalg.norm(legal, axis=0) / np.linalg.norm(wild, axis=0)  # one scale per pixel: hue kept
    np.testing.assert_allclose(legal, wild * ratio, atol=1e-6)
    assert ratio.max() <= 1.0 + 1e-6 and np.median(ratio[5:-5]) > 0.2


@pytest.mark.parametrize(
    ("size", "bit_depth", "out_depth", "subsampling"),
    [((72, 130), 8, 8, (1, 1)), ((71, 129), 10, 10, (2, 1)), ((72, 130), 8, 10, (2, 2))],
)
def test_full_chroma_codes_match_the_numpy_reference(
    size: tuple[int, int], bit_depth: int, out_depth: int, subsampling: tuple[int, int]
) -> None:
    """The device path (torch) gives the chroma codes of the numpy steps it replaces: Lab -> Cb, Cr
    at working resolution, guided upsampling, legal chroma, block means, quantisation: at most one
    code apart (rounding of float32 sums in another order), 99 % equal."""
    import torch

    from pipeline.color import (
        chroma_from_rgb,
        chroma_levels,
        chroma_to_codes,
        codes_to_luma,
        full_chroma_codes,
        guided_upsample,
        legal_chroma,
        lightness_from_grey,
        rgb_from_lab,
    )
    from pipeline.images import resize_planes
    from pipeline.media.encode import _subsample

    rng = np.random.default_rng(5)
    h, w = size
    yy, xx = np.indices(size)
    top = 2**bit_depth - 1
    luma = np.clip(top * (0.5 + 0.45 * np.sin(xx / 7.0) * np.cos(yy / 5.0)) + rng.normal(0, top / 50, size), 0, top)
    luma = luma.astype(np.uint8 if bit_depth == 8 else np.uint16)
    grey = codes_to_luma(luma, bit_depth, "tv")
    small = resize_planes(grey[None], (h // 3, w // 3))[0]
    ab = np.stack([40 * np.sin(np.arange(w // 3) / 4.0)[None].repeat(h // 3, 0), rng.normal(0, 25, (h // 3, w // 3))])
    ab = ab.astype(np.float32)
    rgb = rgb_from_lab(lightness_from_grey(small), ab)
    reference = legal_chroma(grey, guided_upsample(chroma_from_rgb(rgb, "bt709"), grey), "bt709")
    reference = chroma_to_codes(_subsample(reference, *subsampling), out_depth, "tv").astype(np.int32)
    luma_t = torch.from_numpy(luma if bit_depth == 8 else luma.view(np.int16))
    codes = full_chroma_codes(
        luma_t,
        torch.from_numpy(small),
        torch.from_numpy(ab),
        bit_depth=bit_depth,
        color_range="tv",
        matrix="bt709",
        out_depth=out_depth,
        subsampling=subsampling,
    ).numpy()
    assert codes.shape == reference.shape
    diff = np.abs(codes - reference)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99
    assert np.abs(reference - chroma_levels(out_depth, "tv")[0]).mean() > 2  # the frame is coloured
