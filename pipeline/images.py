"""Still-image I/O for targets, references and masks, with one-line errors.

Images are returned as float32 arrays in [0, 1] whatever their bit depth (8 or 16-bit),
colour as (H, W, 3) RGB, grey as (H, W); masks as (H, W) bool.

Limits: the header is read first (:func:`image_size`, no pixel decoded) and an image larger
than :data:`MAX_SIDE` px a side or :data:`MAX_PIXELS` in all is refused before any decoding, so
a tiny file claiming a huge size costs nothing. References and targets must be at least
:data:`MIN_SIDE` px a side (smaller ones hold too few pixels to match regions against). A file
that is not an image, or is corrupt, is one error line: what the image libraries inside OpenCV
print on stderr while decoding is discarded.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.errors import PostprodError
from pipeline.files import atomic_output, check_destination

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
MAX_SIDE = 16384
"""Largest width or height, in px, of an image postprod reads."""
MAX_PIXELS = 100_000_000
"""Largest width x height of an image postprod reads (100 Mpx: 1.2 GB as float32 RGB)."""
MIN_SIDE = 16
"""Smallest width or height, in px, of a reference or a target image."""

_NATIVE_STDERR = threading.Lock()


@contextmanager
def _native_stderr_discarded() -> Iterator[None]:
    """Discard what native code writes on file descriptor 2 while the block runs (libpng's
    "libpng error: ..." lines from inside OpenCV): the caller reports failures on one line."""
    with _NATIVE_STDERR:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of the image at ``path`` from its header alone (nothing decoded).

    Raises :class:`PostprodError` for a missing file, a folder, a file that is not an image,
    and an image over :data:`MAX_SIDE` / :data:`MAX_PIXELS`.
    """
    path = Path(path)
    if not path.exists():
        raise PostprodError(path, "no such file")
    if path.is_dir():
        raise PostprodError(path, "is a folder, not an image")
    too_large = f"larger than postprod reads (at most {MAX_SIDE} px a side and {MAX_PIXELS // 10**6} Mpx)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
    except Image.DecompressionBombError as err:
        raise PostprodError(path, f"image is {too_large}") from err
    except PermissionError as err:
        raise PostprodError(path, "cannot read the file (permission denied)") from err
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise PostprodError(path, "cannot read image (not an image file, or corrupt)") from err
    if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        raise PostprodError(path, f"image is {width}x{height}: {too_large}")
    return height, width


def _check_min_size(path: Path, size: tuple[int, int], what: str) -> None:
    if min(size) < MIN_SIDE:
        raise PostprodError(
            path, f"{what} is {size[1]}x{size[0]}: too small to match (at least {MIN_SIDE}x{MIN_SIDE} px)"
        )


@dataclass(frozen=True)
class LoadedImage:
    """An image as read from disk.

    pixels: (H, W) grey or (H, W, 3) RGB, float32 in [0, 1].
    bit_depth: 8 or 16 (the file's sample depth).
    """

    path: Path
    pixels: np.ndarray
    bit_depth: int

    @property
    def is_grey(self) -> bool:
        return self.pixels.ndim == 2

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return self.pixels.shape[:2]


def read_image(path: str | Path) -> LoadedImage:
    """Read an 8 or 16-bit grey or colour image (alpha dropped); RGB channel order.

    The header is checked first (:func:`image_size`); then the pixels are decoded (OpenCV,
    which keeps 16-bit colour), any library chatter on stderr discarded.
    """
    path = Path(path)
    image_size(path)
    data = np.fromfile(path, dtype=np.uint8)  # imdecode: no silent None for odd paths
    with _native_stderr_discarded():
        raw = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if raw is None:
        raise PostprodError(path, "cannot read image (not an image file, or corrupt)")
    if raw.dtype == np.uint8:
        depth, scale = 8, 255.0
    elif raw.dtype == np.uint16:
        depth, scale = 16, 65535.0
    else:
        raise PostprodError(path, f"unsupported sample type {raw.dtype} (use 8 or 16-bit images)")
    if raw.ndim == 3:
        if raw.shape[2] == 4:
            raw = raw[:, :, :3]
        raw = raw[:, :, 0] if raw.shape[2] == 1 else cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)
    pixels = raw.astype(np.float32) / scale
    if pixels.ndim == 3 and _is_neutral(pixels):
        pixels = pixels[:, :, 0].copy()  # a grey image saved as RGB is still grey
    return LoadedImage(path=path, pixels=pixels, bit_depth=depth)


def _is_neutral(rgb: np.ndarray, tol: float = 1.5 / 255) -> bool:
    return bool(np.abs(rgb[..., 0] - rgb[..., 1]).max() <= tol and np.abs(rgb[..., 1] - rgb[..., 2]).max() <= tol)


def read_grey(path: str | Path) -> LoadedImage:
    """Read a target image as grey (H, W) float32 in [0, 1]; a colour file is converted (Rec. 709 luma).
    At least :data:`MIN_SIDE` px a side (checked from the header)."""
    _check_min_size(Path(path), image_size(path), "target image")
    img = read_image(path)
    if img.is_grey:
        return img
    grey = img.pixels @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
    return LoadedImage(path=img.path, pixels=grey.astype(np.float32), bit_depth=img.bit_depth)


def read_colour(path: str | Path) -> LoadedImage:
    """Read a reference image as RGB (H, W, 3) float32 in [0, 1]; a grey file is an error, and so
    is one under :data:`MIN_SIDE` px a side (checked from the header)."""
    _check_min_size(Path(path), image_size(path), "reference image")
    img = read_image(path)
    if img.is_grey:
        raise PostprodError(path, "reference image has no colour (it is grey)")
    return img


def read_rgb(path: str | Path) -> np.ndarray:
    """Read any 8/16-bit image as RGB (H, W, 3) float32 in [0, 1]; a grey file is replicated."""
    pixels = read_image(path).pixels
    return np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels


def list_images(folder: str | Path) -> list[Path]:
    """The image files (:data:`IMAGE_SUFFIXES`) directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PostprodError(folder, "not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def list_sequences(folder: str | Path) -> list[list[Path]]:
    """Frame sequences in ``folder``: one per sub-folder holding images, or the folder itself if none does."""
    folder = Path(folder)
    subs = [list_images(s) for s in sorted(folder.iterdir()) if s.is_dir()] if folder.is_dir() else []
    return [s for s in subs if s] or [list_images(folder)]


def read_mask(path: str | Path, size: tuple[int, int], *, of: str | Path | None = None) -> np.ndarray:
    """Read a mask (any 8/16-bit image, non-zero = inside) as (H, W) bool.

    size: the (height, width) of the image the mask belongs to (``of``, named in errors).
    """
    img = read_image(path)
    if img.size != tuple(size):
        target = f" of {of}" if of else ""
        raise PostprodError(path, f"mask is {img.size[1]}x{img.size[0]} but the image{target} is {size[1]}x{size[0]}")
    mask = img.pixels > 0 if img.is_grey else np.any(img.pixels > 0, axis=2)
    if not mask.any():
        raise PostprodError(path, "mask is empty (no non-zero pixel)")
    return mask


def resize_planes(planes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, H, W) float planes -> (C, h, w) float32: area averaging when shrinking, bilinear when
    enlarging; a copy as float32 when the size is already ``size`` (h, w)."""
    h, w = size
    if planes.shape[1:] == (h, w):
        return planes.astype(np.float32)
    interp = cv2.INTER_AREA if h < planes.shape[1] else cv2.INTER_LINEAR
    return np.stack([cv2.resize(c.astype(np.float32), (w, h), interpolation=interp) for c in planes])


def check_image_output(path: str | Path, *, force: bool = False, inputs: Iterable[Path | None] = ()) -> None:
    """Raise :class:`PostprodError` unless :func:`write_rgb` can write ``path``: a known image
    suffix (:data:`IMAGE_SUFFIXES`) and :func:`pipeline.files.check_destination`'s rule."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise PostprodError(path, f"unknown image type {path.suffix!r} (use one of {', '.join(IMAGE_SUFFIXES)})")
    check_destination(path, force=force, inputs=inputs)


def write_rgb(
    path: str | Path,
    rgb: np.ndarray,
    *,
    bit_depth: int = 8,
    force: bool = False,
    inputs: Iterable[Path | None] = (),
) -> Path:
    """Write (H, W, 3) RGB or (H, W) grey, float in [0, 1], as an 8 or 16-bit image, atomically.

    The format follows the suffix; 16 bits only for PNG and TIFF (others are written as 8-bit).
    ``path`` must pass :func:`check_image_output` (``inputs``: never replaced).
    """
    path = Path(path)
    check_image_output(path, force=force, inputs=inputs)
    try:
        data = encode_image(rgb, path.suffix, bit_depth=bit_depth)
    except ValueError:
        raise PostprodError(path, "could not encode image") from None
    with atomic_output(path, force=force, inputs=inputs) as tmp:
        tmp.write_bytes(data)
    return path


def encode_image(rgb: np.ndarray, suffix: str, *, bit_depth: int = 8) -> bytes:
    """(H, W, 3) RGB or (H, W) grey, float in [0, 1] -> the bytes of an 8 or 16-bit image file of
    type ``suffix`` (``.png``, ``.jpg``, ...; 16 bits only for PNG and TIFF, others get 8).
    Raises ValueError when OpenCV cannot encode it."""
    suffix = suffix.lower()
    if bit_depth == 16 and suffix not in (".png", ".tif", ".tiff"):
        bit_depth = 8  # JPEG/WebP/BMP hold 8 bits only
    scale, dtype = (65535.0, np.uint16) if bit_depth == 16 else (255.0, np.uint8)
    out = np.clip(np.rint(np.clip(rgb, 0.0, 1.0) * scale), 0, scale).astype(dtype)
    ok, buf = cv2.imencode(suffix, out if out.ndim == 2 else cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"cannot encode {suffix}")
    return bytes(buf.tobytes())
