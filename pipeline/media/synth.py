"""Synthetic media for the tests, the benchmarks and the demo: grey reels, a test tone, exemplars.

- :func:`write_grey_reel`: grey frames ((H, W) uint8) encoded as a grey scan would be (luma
  only, neutral chroma), with :data:`ENCODINGS`' codecs, optionally a start timecode, colour tags
  and a stereo AAC tone as long as the video;
- :func:`write_tone`: a sine tone into an audio stream (AAC's planar float or PCM's packed s16);
- :func:`cut_reel_frames` / :func:`write_cut_reel`: a reel of hard-cut shots of panning blocky
  textures (the flows' tests and the Prefect overhead bench);
- :func:`write_shot_refs`: ``shot-K.png`` colour exemplars of smooth random colours.

Nothing here is used to colour a reel; it only makes inputs with known content.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np
from av.audio.stream import AudioStream
from av.container import OutputContainer
from av.video.stream import VideoStream
from PIL import Image

# codec -> (pixel format, encoder options): H.264 as a camera or web source has it (long GOP,
# B-frames), ProRes 422 HQ and MJPEG as intra-only masters (every frame a keyframe), FFV1 lossless
ENCODINGS: dict[str, tuple[str, dict[str, str]]] = {
    "libx264": ("yuv420p", {"preset": "fast"}),
    "prores": ("yuv422p10le", {"profile": "3"}),  # HQ
    "mjpeg": ("yuvj420p", {}),
    "ffv1": ("yuv420p", {}),  # lossless
}

ColourTags = Literal["bt601", "bt709"]
# tag -> FFmpeg's (colorspace, color_primaries, color_trc) codes: 6 = SMPTE 170M (SD), 1 = BT.709
_COLOUR_CODES: dict[str, tuple[int, int, int]] = {"bt601": (6, 6, 6), "bt709": (1, 1, 1)}
_LIMITED_RANGE = 1  # FFmpeg's AVCOL_RANGE_MPEG

TONE_RATE = 48000  # Hz, the audio sample rate of every file written here
_TONE_BLOCK = 1024  # samples per audio frame (an AAC frame)


def write_tone(
    container: OutputContainer,
    stream: AudioStream,
    seconds: float | Fraction,
    *,
    amplitude: float = 0.05,
    frequency: float = 440.0,
) -> None:
    """Encode a stereo sine tone into ``stream`` of ``container`` from pts 0, then flush the encoder.

    ``stream``: a stereo audio stream at its ``rate`` (48 kHz here), planar float (``fltp``, what
    the AAC encoder takes) or packed ``s16`` (PCM). ``seconds``: the length, rounded down to whole
    samples (a :class:`~fractions.Fraction` is exact: ``frames / fps``); ``amplitude``: peak, full
    scale 1.0; ``frequency`` in Hz. Same samples in both channels, 1024 samples per frame.
    """
    rate = stream.rate
    total = int(seconds * rate)
    fmt = stream.codec_context.format.name
    for start in range(0, total, _TONE_BLOCK):
        t = np.arange(start, min(start + _TONE_BLOCK, total)) / rate
        tone = (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)
        if fmt == "fltp":
            frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
        else:  # packed s16 (PCM): one plane, channels interleaved
            pcm = (np.stack([tone, tone], axis=1).reshape(1, -1) * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="stereo")
        frame.sample_rate, frame.pts = rate, start
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def write_grey_reel(
    path: Path,
    frames: Iterable[np.ndarray],
    fps: Fraction | int,
    *,
    codec: str = "libx264",
    crf: int = 18,
    options: Mapping[str, str] | None = None,
    timecode: str | None = None,
    audio: bool = False,
    colour_tags: ColourTags | None = None,
) -> int:
    """Encode full-range grey frames ((H, W) uint8, H and W even) to ``path``; return the frame count.

    The luma is stored limited range (0 -> 16, 255 -> 235; MJPEG: full range, as JPEG has it)
    with neutral chroma, like a grey scan, frame ``i`` at pts ``i`` in a ``1 / fps`` time base;
    the container follows the suffix. ``codec``: a key of :data:`ENCODINGS` (its pixel format and
    options); ``crf``: the H.264 quality (libx264 only); ``options``: encoder options over
    ENCODINGS' (e.g. ``{"preset": "slow", "g": "24"}``). MJPEG is written in fixed-quantiser mode.
    ``timecode``: start timecode metadata (e.g. ``"10:00:00:00"``); ``colour_tags``: tag the
    stream limited range with that standard's matrix, primaries and transfer (default: untagged);
    ``audio``: add a stereo 48 kHz AAC tone (:func:`write_tone`) as long as the video (an
    archive's sound track, to check that it is copied untouched).
    """
    fps = Fraction(fps)
    pix_fmt, defaults = ENCODINGS[codec]
    opts = defaults | ({"crf": str(crf)} if codec == "libx264" else {}) | dict(options or {})
    count = 0
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps, options=opts)
        assert isinstance(stream, VideoStream), f"{codec} is not a video encoder"
        stream.pix_fmt = pix_fmt
        stream.time_base = 1 / fps
        if timecode:
            stream.metadata["timecode"] = timecode
        ctx = stream.codec_context
        if codec == "mjpeg":
            ctx.qscale = True
        if colour_tags is not None:
            ctx.color_range = _LIMITED_RANGE
            ctx.colorspace, ctx.color_primaries, ctx.color_trc = _COLOUR_CODES[colour_tags]
        sound = out.add_stream("aac", rate=TONE_RATE) if audio else None
        if sound is not None:
            sound.layout = "stereo"
        for grey in frames:
            if count == 0:
                stream.height, stream.width = grey.shape
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(grey), format="gray").reformat(format=pix_fmt)
            frame.pts = count
            out.mux(stream.encode(frame))
            count += 1
        out.mux(stream.encode(None))
        if sound is not None:
            write_tone(out, sound, count / fps)
    return count


def cut_reel_frames(shots: int, length: int, width: int = 96, height: int = 64, seed: int = 7) -> Iterator[np.ndarray]:
    """The frames ((height, width) uint8) of ``shots`` hard-cut shots of ``length`` frames each.

    Each shot is a different blocky random texture (codes 30-219) panned 2 px a frame, with a bar
    (+30) moving 3 px a frame. Blocks are 8 px per 64 px of height, so larger reels are not noise
    at the shot detector's analysis size. ``seed`` picks the textures.
    """
    rng = np.random.default_rng(seed)
    block = 8 * max(1, height // 64)
    for _ in range(shots):
        blocks = rng.integers(30, 220, size=(-(-height // block), -(-width // block))).astype(np.float32)
        texture = np.kron(blocks, np.ones((block, block), np.float32))[:height, :width]
        for f in range(length):
            bar = ((np.arange(width)[None] - 3 * f) % width < 6) * 30.0
            yield np.clip(np.roll(texture, 2 * f, axis=1) + bar, 0, 255).astype(np.uint8)


def write_cut_reel(path: Path, shots: int, length: int, width: int = 96, height: int = 64, seed: int = 7) -> Path:
    """:func:`cut_reel_frames` as a grey FFV1 reel at 24 fps (lossless luma, no sound); returns ``path``."""
    write_grey_reel(path, cut_reel_frames(shots, length, width, height, seed), Fraction(24), codec="ffv1")
    return path


def write_shot_refs(folder: Path, shots: Iterable[int], seed: int = 3) -> Path:
    """``folder/shot-K.png`` colour exemplars for the shots ``K`` in ``shots`` (folder created).

    Each is an 8 x 12 grid of random RGB colours, bilinearly scaled to 48 x 32 px (smooth colours,
    a different picture per shot, fixed by ``seed``). Returns ``folder``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in shots:
        small = rng.integers(0, 256, size=(8, 12, 3)).astype(np.uint8)
        Image.fromarray(small).resize((48, 32), Image.Resampling.BILINEAR).save(folder / f"shot-{k}.png")
    return folder
