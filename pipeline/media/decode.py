"""Frame-exact, memory-bounded decoding of a reel's video stream with PyAV.

Frame ``N`` is the N-th displayed frame (in pts order) of the video stream, whether the reel
is decoded from the start or from a seek, whatever its frame rate (constant or variable) and
wherever its first timestamp lies. The display order comes from one demux pass
(:func:`~pipeline.media.probe.scan_packets`) per call; frames are matched to it by pts.

Damaged data never shifts the numbering: a frame that cannot be decoded (a corrupt packet, a
packet whose data is missing) is replaced by a copy of the previous decoded frame (the next one if
the damage is at the very start of the range) and reported through ``on_corrupt`` with its
frame number(s); frames the decoder outputs with concealed errors are yielded as they are and
reported too (the H.264 decoder conceals some damage silently: such frames cannot be told
apart). A file whose end is cut is decoded as far as its packets go: the count is what
:func:`~pipeline.media.probe.probe` reports for it (it notes the truncation), and frames the
header declares beyond it are reported once as missing. An MP4/MOV with no 'moov' index (a
recording cut before it was finished) cannot be read at all: :class:`PostprodError`.
Numbering follows the packets the container delivers: a block a Matroska demuxer drops while
resynchronising after damage is not counted (MP4/MOV sample tables do not have this problem).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import av
import numpy as np
from av.container import InputContainer
from av.packet import Packet
from av.video.frame import VideoFrame
from av.video.stream import VideoStream

from pipeline.errors import PostprodError
from pipeline.media.probe import PacketIndex, luma_depth, open_input, scan_packets, video_stream

CorruptCallback = Callable[[range, str], None]


class CorruptFrameWarning(UserWarning):
    """Frames of a reel could not be decoded (or were concealed); the message names them."""


@dataclass(frozen=True, eq=False)
class Frame:
    """One displayed frame.

    ``index``: 0-based display index. ``time``: presentation time in seconds on the file's own
    timeline (the first frame's time is the reel's ``start_time``). ``luma``: (H, W) Y plane
    at the source's native depth: uint8 for 8-bit sources, uint16 holding native code values
    otherwise (0..1023 for 10-bit, 0..65535 for 16-bit); its range (limited/full) is
    :attr:`~pipeline.media.probe.ReelInfo.luma_range`. ``bit_depth``: bits per luma sample.
    ``chroma``: (2, H, W) float32 Cb, Cr in [-0.5, 0.5] upsampled to the luma size, or None.
    """

    index: int
    time: Fraction
    luma: np.ndarray
    bit_depth: int
    chroma: np.ndarray | None = None


def warn_corrupt(path: Path) -> CorruptCallback:
    """The default ``on_corrupt``: a :class:`CorruptFrameWarning` naming file and frames."""

    def report(frames: range, message: str) -> None:
        which = f"frame {frames.start}" if len(frames) == 1 else f"frames {frames.start}-{frames[-1]}"
        warnings.warn(f"{path}: {which}: {message}", CorruptFrameWarning, stacklevel=3)

    return report


@dataclass(frozen=True)
class _Plan:
    """How to turn a decoded picture into native-depth planar Y (and Cb, Cr)."""

    convert_to: str | None  # swscale target when the source layout cannot be read directly
    chroma_444: str | None  # planar 4:4:4 format of the same depth, None for grey
    depth: int
    full_range_rgb: bool  # RGB source converted to full-range YCbCr


@lru_cache(maxsize=32)
def _plan(pix_fmt: str) -> _Plan:
    fmt = av.VideoFormat(pix_fmt)
    bits = fmt.components[0].bits
    depth = luma_depth(pix_fmt)
    suffix = "" if depth == 8 else f"{depth}le"
    rgb = fmt.is_rgb or fmt.has_palette
    grey = len(fmt.components) <= 2 and not rgb  # gray*, ya*
    readable = (bits == depth and not fmt.is_big_endian and not rgb
                and all(c.bits == depth for c in fmt.components)
                and (fmt.is_planar or len(fmt.components) == 1)
                and pix_fmt.startswith(("yuv", "gray")) and not pix_fmt.startswith("yuva"))
    if grey:
        return _Plan(convert_to=None if readable else f"gray{suffix}", chroma_444=None, depth=depth,
                     full_range_rgb=False)
    return _Plan(convert_to=None if readable else f"yuv444p{suffix}", chroma_444=f"yuv444p{suffix}",
                 depth=depth, full_range_rgb=rgb)


def _plane(frame: VideoFrame, i: int, depth: int) -> np.ndarray:
    """Plane ``i`` as a fresh (h, w) array; line_size may include padding past the width."""
    plane = frame.planes[i]
    dtype = np.uint8 if depth <= 8 else np.dtype("<u2")
    per_line = plane.line_size // np.dtype(dtype).itemsize
    arr = np.frombuffer(plane, dtype=dtype, count=per_line * plane.height)
    return arr.reshape(plane.height, per_line)[:, :plane.width].copy()


def _scaled_size(width: int, height: int, max_height: int | None) -> tuple[int, int] | None:
    if max_height is None or height <= max_height:
        return None
    if max_height < 2:
        raise ValueError(f"max_height must be at least 2, got {max_height}")
    new_w = max(2, round(width * max_height / height / 2) * 2)  # even: chroma subsampling
    return new_w, max_height


def _to_frame(vf: VideoFrame, index: int, time: Fraction, *, max_height: int | None,
              chroma: bool) -> Frame:
    plan = _plan(vf.format.name)
    size = _scaled_size(vf.width, vf.height, max_height)
    if plan.convert_to or size:
        kwargs: dict = {"format": plan.convert_to or vf.format.name, "interpolation": "AREA"}
        if size:
            kwargs.update(width=size[0], height=size[1])
        if plan.full_range_rgb:
            from pipeline.color import choose_matrix

            matrix = choose_matrix(None, vf.width, vf.height)
            kwargs.update(dst_colorspace="itu709" if matrix == "bt709" else "itu601",
                          dst_color_range="JPEG")
        vf = vf.reformat(**kwargs)
    luma = _plane(vf, 0, plan.depth)
    cbcr = None
    if chroma:
        cbcr = _chroma(vf, plan)
    return Frame(index=index, time=time, luma=luma, bit_depth=plan.depth, chroma=cbcr)


def _chroma(vf: VideoFrame, plan: _Plan) -> np.ndarray:
    """(2, H, W) float32 Cb, Cr in [-0.5, 0.5] at the luma size (swscale upsampling)."""
    from pipeline.color import codes_to_chroma

    if plan.chroma_444 is None:  # grey source: neutral
        return np.zeros((2, vf.height, vf.width), dtype=np.float32)
    if vf.format.name != plan.chroma_444:
        vf = vf.reformat(format=plan.chroma_444, interpolation="BICUBIC")
    codes = np.stack([_plane(vf, 1, plan.depth), _plane(vf, 2, plan.depth)])
    full = plan.full_range_rgb or vf.color_range == 2 or (vf.color_range != 1 and vf.format.name.startswith("yuvj"))
    return codes_to_chroma(codes, plan.depth, "pc" if full else "tv")


def _packets_from(container: InputContainer, stream: VideoStream, index: PacketIndex,
                  start: int, path: Path) -> Iterator[Packet]:
    """Video packets in decode order, beginning at the keyframe that ``start`` depends on.

    The keyframe is the last one (decode order) displayed at or before frame ``start``. The
    container seeks near its dts, then packets before it are skipped without decoding; if
    the seek overshot (some formats index by pts), the file is read again from the start.
    """
    target = int(index.pts[start])
    usable = np.nonzero(index.key_pts <= target)[0]
    if start == 0 or usable.size == 0 or usable[-1] == 0:
        yield from container.demux(stream)
        return
    k = int(usable[-1])
    key_pts, key_dts = int(index.key_pts[k]), int(index.key_dts[k])
    try:
        container.seek(key_dts, stream=stream, backward=True, any_frame=False)
    except av.FFmpegError:
        pass  # unseekable here: read from the start below
    else:
        found = False
        for packet in container.demux(stream):
            if not found:
                if packet.size == 0:
                    break
                pkt_dts = packet.dts if packet.dts is not None else packet.pts
                if packet.is_keyframe and (packet.pts if packet.pts is not None else pkt_dts) == key_pts:
                    found = True
                elif pkt_dts is not None and pkt_dts > key_dts:
                    break  # overshot
                else:
                    continue
            yield packet
        if found:
            return
    with open_input(path) as again:  # slow but exact: skip packets from the very start
        stream2 = video_stream(again, path)
        stream2.codec_context.thread_type = "AUTO"
        it = again.demux(stream2)
        for packet in it:
            if packet.is_keyframe and (packet.pts if packet.pts is not None else packet.dts) == key_pts:
                yield packet
                break
        yield from it


def iter_frames(path: Path, start: int = 0, stop: int | None = None, *, max_height: int | None = None,
                chroma: bool = False, on_corrupt: CorruptCallback | None = None) -> Iterator[Frame]:
    """Yield frames ``start`` .. ``stop - 1`` (display order) of ``path`` one by one.

    Memory stays bounded by a few frames plus the per-call pts index (8 bytes a frame).
    ``max_height``: downscale with swscale (area filter) so the height is at most this,
    keeping the stored aspect (width rounded to even); luma keeps the source's dtype, depth
    and range. ``chroma``: also return Cb/Cr (see :class:`Frame`). ``on_corrupt(frames, msg)``
    is called for frames that could not be decoded (replaced by a neighbour, see the module
    docstring) or were concealed; default: a :class:`CorruptFrameWarning`.
    Raises :class:`PostprodError` for a missing/unreadable file, no video stream, no frames,
    or when no frame at all can be decoded; ``ValueError`` for a negative ``start``.
    """
    path = Path(path)
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    report = on_corrupt or warn_corrupt(path)
    index = scan_packets(path)
    n = index.frames
    if n == 0:
        raise PostprodError(path, "the video stream has no frames")
    stop = n if stop is None else min(stop, n)
    if start >= stop:
        return
    if index.declared_frames > n and stop == n:
        report(range(n, index.declared_frames), "missing: the file ends early (truncated); "
                                                 f"{n} frames are present")
    tb = index.time_base
    with open_input(path) as container:
        stream = video_stream(container, path)
        stream.codec_context.thread_type = "AUTO"
        expected = start  # next display index to yield
        previous: Frame | None = None
        errors: list[str] = []

        def fill(upto: int, source: Frame) -> Iterator[Frame]:
            """Stand-ins for frames expected .. upto-1, which never came out of the decoder."""
            nonlocal expected
            if upto <= expected:
                return
            why = "; ".join(dict.fromkeys(errors)) or "no picture for this packet"
            report(range(expected, upto), f"could not be decoded ({why}); "
                                          f"replaced by a copy of frame {source.index}")
            errors.clear()
            for i in range(expected, upto):
                yield Frame(index=i, time=int(index.pts[i]) * tb, luma=source.luma.copy(),
                            bit_depth=source.bit_depth,
                            chroma=None if source.chroma is None else source.chroma.copy())
            expected = upto

        for packet in _packets_from(container, stream, index, start, path):
            try:
                decoded = packet.decode()
            except av.FFmpegError as err:
                errors.append(err.strerror or type(err).__name__)
                continue
            for vf in decoded:
                i = index.display_index(vf.pts)
                if i is None:
                    if vf.pts is not None and vf.pts < int(index.pts[0]):
                        continue  # pre-roll the index does not count
                    i = expected
                if i < expected:
                    continue  # decoded only as a reference for later frames (after a seek)
                if i >= stop:  # frames up to stop never came out: stand in for them
                    yield from fill(stop, previous or _to_frame(vf, i, int(index.pts[i]) * tb,
                                                               max_height=max_height, chroma=chroma))
                    return
                frame = _to_frame(vf, i, int(index.pts[i]) * tb, max_height=max_height, chroma=chroma)
                yield from fill(i, previous or frame)
                if vf.is_corrupt:
                    report(range(i, i + 1), "decoded with errors (concealed by the decoder)")
                yield frame
                previous, expected = frame, i + 1
                if expected >= stop:
                    return
        if previous is None:
            raise PostprodError(path, f"no frame in {start}..{stop - 1} could be decoded"
                                      + (f" ({errors[-1]})" if errors else ""))
        yield from fill(stop, previous)
