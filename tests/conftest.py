"""Shared fixtures: small generated clips (PyAV) and the path to ../shared/data.

``make_clip`` is a session-scoped factory for any variant; the ready-made clips
(``clip_8bit``, ``clip_10bit``, ``clip_late_start``, ``audio_only``) are built once per session.
Every generated clip has a moving pattern (frames differ) and fine texture; its luma is
exactly :func:`clip_luma` (lossless codecs) or close to it (lossy ones).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.media.synth import write_tone

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
TONE_AMPLITUDE = 0.3  # the clips' 440 Hz tone, full scale 1


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (footage and photos); skips the test where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not available at {SHARED_DATA}")
    return SHARED_DATA


@dataclass(frozen=True)
class Clip:
    """A generated clip and what went into it."""

    path: Path
    frames: int
    fps: Fraction
    width: int
    height: int
    bit_depth: int
    texture: bool
    timecode: str | None
    audio_codec: str | None
    start_time: Fraction  # seconds, pts of the first video frame


def clip_luma(i: int, height: int, width: int, bit_depth: int, texture: bool = True) -> np.ndarray:
    """(H, W) luma codes of frame ``i``: a diagonal ramp (+ fine texture) + a bar moving 3 px a
    frame, inside the limited range; uint8 for 8 bits, uint16 otherwise (all low bits used)."""
    unit = 2 ** (bit_depth - 8)
    yy, xx = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(1234)  # same texture every frame: frames differ by motion
    texture = rng.integers(0, 24 * unit, size=(height, width)) if texture else 0
    ramp = (xx + yy) * (150 * unit) // (width + height)
    bar = ((xx - 3 * i) % width < 12) * (40 * unit)
    luma = 16 * unit + ramp + texture + bar + i * unit  # + i: no two frames are alike
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return np.clip(luma, 16 * unit, 235 * unit).astype(dtype)


def clip_chroma(i: int, height: int, width: int, bit_depth: int) -> np.ndarray:
    """(2, H, W) Cb, Cr codes of frame ``i`` at full resolution (subsampled by the writer)."""
    unit = 2 ** (bit_depth - 8)
    yy, xx = np.mgrid[0:height, 0:width]
    cb = 128 * unit + ((xx * 60 * unit) // width) - 30 * unit
    cr = 128 * unit + (((yy + 2 * i) % height) * 50 * unit) // height - 25 * unit
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return np.stack([cb, cr]).astype(dtype)


def _fill(frame: av.VideoFrame, i: int, plane: np.ndarray) -> None:
    p = frame.planes[i]
    dtype = plane.dtype.newbyteorder("<") if plane.dtype.itemsize > 1 else plane.dtype
    per_line = p.line_size // plane.dtype.itemsize
    view = np.frombuffer(memoryview(p), dtype=dtype).reshape(p.height, per_line)
    view[:, : p.width] = plane


def _picture(i: int, width: int, height: int, pix_fmt: str, texture: bool) -> av.VideoFrame:
    fmt = av.VideoFormat(pix_fmt)
    depth = fmt.components[0].bits
    frame = av.VideoFrame(width, height, pix_fmt)
    _fill(frame, 0, clip_luma(i, height, width, depth, texture))
    chroma = clip_chroma(i, height, width, depth)
    cw, ch = fmt.chroma_width(width), fmt.chroma_height(height)
    for k in (1, 2):
        _fill(frame, k, chroma[k - 1, :: height // ch, :: width // cw][:ch, :cw])
    frame.color_range, frame.colorspace, frame.color_primaries, frame.color_trc = 1, 1, 1, 1
    return frame


def write_clip(
    path: Path,
    *,
    frames: int = 36,
    fps: Fraction = Fraction(24000, 1001),
    width: int = 160,
    height: int = 96,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    audio_codec: str | None = "aac",
    timecode: str | None = "01:00:00:00",
    start_time: Fraction = Fraction(0),
    texture: bool = True,
) -> Clip:
    """Write a clip with PyAV: video pts start at ``start_time`` seconds, audio (a 440 Hz stereo
    tone at 48 kHz, covering the video) starts at 0. The container follows the suffix."""
    fps = Fraction(fps)
    opts = {"g": "12", "bf": "2", "crf": "16", "preset": "veryfast"} if codec == "libx264" else {}
    opts.update(options or {})
    with av.open(str(path), "w") as out:
        video = out.add_stream(codec, rate=fps, options=opts)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        video.time_base = 1 / fps
        ctx = video.codec_context  # tagged: limited range, BT.709 throughout
        ctx.color_range, ctx.colorspace, ctx.color_primaries, ctx.color_trc = 1, 1, 1, 1
        if timecode:
            video.metadata["timecode"] = timecode
        audio = out.add_stream(audio_codec, rate=48000) if audio_codec else None
        if audio is not None:
            audio.layout = "stereo"
        first = round(start_time * fps)
        for i in range(frames):
            picture = _picture(i, width, height, pix_fmt, texture)
            picture.pts = first + i
            out.mux(video.encode(picture))
        out.mux(video.encode(None))
        if audio is not None:
            write_tone(out, audio, float(start_time + frames / fps), amplitude=TONE_AMPLITUDE)
    return Clip(
        path=path,
        frames=frames,
        fps=fps,
        width=width,
        height=height,
        bit_depth=av.VideoFormat(pix_fmt).components[0].bits,
        texture=texture,
        timecode=timecode,
        audio_codec=audio_codec,
        start_time=Fraction(round(start_time * fps)) / fps,
    )


@pytest.fixture(scope="session")
def make_clip(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Clip]:
    """Factory: ``make_clip("name.mov", **write_clip_options) -> Clip`` in a session temp dir."""
    folder = tmp_path_factory.mktemp("clips")

    def make(name: str, **kwargs) -> Clip:
        return write_clip(folder / name, **kwargs)

    return make


@pytest.fixture(scope="session")
def clip_8bit(make_clip: Callable[..., Clip]) -> Clip:
    """36 frames 160x96 H.264 (GOP 12, B-frames) in .mov at 24000/1001, AAC, TC 01:00:00:00."""
    return make_clip("clip8.mov")


@pytest.fixture(scope="session")
def clip_10bit(make_clip: Callable[..., Clip]) -> Clip:
    """30 frames 160x96 lossless FFV1 yuv422p10le in .mkv at 24000/1001, PCM s16, TC 01:00:00:00."""
    return make_clip("clip10.mkv", frames=30, codec="ffv1", pix_fmt="yuv422p10le", audio_codec="pcm_s16le")


@pytest.fixture(scope="session")
def clip_late_start(make_clip: Callable[..., Clip]) -> Clip:
    """24 frames at 25 fps whose video starts at 0.4 s while its AAC audio starts at 0 (.mp4)."""
    return make_clip("late.mp4", frames=24, fps=Fraction(25), start_time=Fraction(2, 5), timecode=None)


@pytest.fixture(scope="session")
def audio_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 0.5 s AAC-only .m4a file (no video stream)."""
    path = tmp_path_factory.mktemp("audio") / "tone.m4a"
    with av.open(str(path), "w") as out:
        audio = out.add_stream("aac", rate=48000)
        audio.layout = "stereo"
        write_tone(out, audio, 0.5, amplitude=TONE_AMPLITUDE)
    return path


# --- Prefect (flows tests): settings Prefect reads once, at its first import -----------------
import os  # noqa: E402
from collections.abc import Iterator  # noqa: E402

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "600")


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A temporary Prefect server (SQLite in a temp PREFECT_HOME) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=600):
        yield
