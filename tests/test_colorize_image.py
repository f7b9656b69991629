"""Still images: reading targets/references/masks, `postprod colorize-image`, `postprod frame`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.color import guided_upsample
from pipeline.errors import PostprodError
from pipeline.images import read_colour, read_grey, read_mask, write_rgb


def postprod(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True)


def two_colour_scene(h: int = 64, w: int = 96) -> np.ndarray:
    """RGB float (h, w, 3): a light red left half with horizontal stripes, a dark blue right
    half with vertical stripes (distinct in grey too, as real objects are)."""
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.zeros((h, w, 3), np.float32)
    rgb[:, : w // 2] = (0.9, 0.35, 0.3)
    rgb[:, w // 2 :] = (0.1, 0.15, 0.55)
    stripes = np.where(xx < w // 2, (yy // 4) % 2, (xx // 4) % 2)[..., None] * 0.1
    return np.clip(rgb + stripes.astype(np.float32), 0, 1)


@pytest.fixture()
def images(tmp_path: Path) -> dict[str, Path]:
    rgb = two_colour_scene()
    grey = rgb @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    left = np.zeros(grey.shape, np.float32)
    left[:, : grey.shape[1] // 2] = 1
    paths = {
        "ref": tmp_path / "ref.png",
        "grey": tmp_path / "grey.png",
        "grey16": tmp_path / "grey16.png",
        "mask": tmp_path / "mask.png",
        "small_mask": tmp_path / "small.png",
        "empty": tmp_path / "empty.png",
    }
    write_rgb(paths["ref"], rgb)
    write_rgb(paths["grey"], grey)
    write_rgb(paths["grey16"], grey, bit_depth=16)
    write_rgb(paths["mask"], left)
    write_rgb(paths["small_mask"], left[:10, :10])
    write_rgb(paths["empty"], np.zeros_like(left))
    return paths


def test_readers_normalise_depth_and_detect_grey(images: dict[str, Path]) -> None:
    g8, g16 = read_grey(images["grey"]), read_grey(images["grey16"])
    assert (g8.bit_depth, g16.bit_depth) == (8, 16)
    assert g8.is_grey and g8.pixels.dtype == np.float32
    assert np.abs(g8.pixels - g16.pixels).max() <= 0.5 / 255 + 1e-6
    assert read_colour(images["ref"]).pixels.shape == (64, 96, 3)
    with pytest.raises(PostprodError, match="no colour"):
        read_colour(images["grey"])


def test_mask_errors_name_the_file(images: dict[str, Path], tmp_path: Path) -> None:
    assert read_mask(images["mask"], (64, 96)).sum() == 64 * 48
    with pytest.raises(PostprodError, match=r"small\.png: mask is 10x10 but the image .* is 96x64"):
        read_mask(images["small_mask"], (64, 96), of="grey.png")
    with pytest.raises(PostprodError, match="empty"):
        read_mask(images["empty"], (64, 96))
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(PostprodError, match="bad.png: cannot read image"):
        read_mask(bad, (64, 96))


def test_guided_upsample_keeps_edges_of_the_guide() -> None:
    guide = np.zeros((120, 160), np.float32)
    guide[:, 80:] = 1.0
    small = cv2.resize(guide, (40, 30), interpolation=cv2.INTER_AREA)[None] - 0.5  # chroma follows luma
    up = guided_upsample(small, guide)
    assert up.shape == (1, 120, 160)
    # a sharp edge at column 80: bilinear would smear it over ~4 px, the guided filter does not
    assert up[0, :, 78].mean() < -0.45 and up[0, :, 81].mean() > 0.45


def test_colorize_image_transfers_the_reference_colours(images: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    r = postprod(
        "colorize-image",
        "--target",
        str(images["grey16"]),
        "--ref",
        str(images["ref"]),
        "--device",
        "cpu",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    result = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert result.dtype == np.uint16  # a 16-bit target gives a 16-bit result
    rgb = result[:, :, ::-1].astype(np.float32) / 65535
    left, right = rgb[:, 8:40].mean(axis=(0, 1)), rgb[:, 56:88].mean(axis=(0, 1))
    assert left[0] > left[2] + 0.2 and right[2] > right[0] + 0.2  # red stays left, blue right


def test_colorize_image_with_masks_moves_colour_where_the_masks_say(images: dict[str, Path], tmp_path: Path) -> None:
    # the target is the mirror image: its left half must take the reference's right (blue) half
    target = tmp_path / "mirror.png"
    write_rgb(target, read_grey(images["grey"]).pixels[:, ::-1])
    right = tmp_path / "right.png"
    write_rgb(right, read_mask(images["mask"], (64, 96))[:, ::-1].astype(np.float32))
    out = tmp_path / "out.png"
    r = postprod(
        "colorize-image",
        "--target",
        str(target),
        "--ref",
        str(images["ref"]),
        "--target-mask",
        str(images["mask"]),
        "--ref-mask",
        str(right),
        "--target-mask",
        str(right),
        "--ref-mask",
        str(images["mask"]),
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    rgb = cv2.imread(str(out))[:, :, ::-1].astype(np.float32) / 255
    left = rgb[:, 8:40].mean(axis=(0, 1))
    assert left[2] > left[0] + 0.2


@pytest.mark.parametrize("case", ["mask size", "missing ref", "unpaired", "exists"])
def test_colorize_image_bad_input_is_one_line(images: dict[str, Path], tmp_path: Path, case: str) -> None:
    out = tmp_path / "out.png"
    args = ["colorize-image", "--target", str(images["grey"]), "--ref", str(images["ref"]), "--out", str(out)]
    expect = {
        "mask size": "mask is 10x10",
        "missing ref": "no such file",
        "unpaired": "in pairs",
        "exists": "already exists",
    }[case]
    if case == "mask size":
        args += ["--target-mask", str(images["small_mask"]), "--ref-mask", str(images["mask"])]
    elif case == "missing ref":
        args[4] = str(tmp_path / "nope.jpg")
    elif case == "unpaired":
        args += ["--target-mask", str(images["mask"])]
    else:
        out.write_bytes(b"keep me")
    r = postprod(*args)
    assert r.returncode != 0
    assert expect in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 3  # click usage errors add a usage line
    if case == "exists":
        assert out.read_bytes() == b"keep me"
    else:
        assert not out.exists()


def test_frame_extracts_native_depth_luma(clip_10bit, tmp_path: Path) -> None:
    out = tmp_path / "f.png"
    r = postprod("frame", str(clip_10bit.path), "--frame", "3", "--out", str(out))
    assert r.returncode == 0, r.stderr
    img = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint16 and img.shape == (clip_10bit.height, clip_10bit.width)
    r = postprod("frame", str(clip_10bit.path), "--frame", "999", "--out", str(tmp_path / "g.png"))
    assert r.returncode == 2 and "out of range" in r.stderr
