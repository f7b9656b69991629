"""Frame-exact, memory-bounded decoding of a reel's video stream with PyAV.

Frame ``N`` is the N-th displayed frame (in pts order) of the video stream, whether the reel
is decoded from the start or from a seek, whatever its frame rate (constant or variable) and
wherever its first timestamp lies. The display order comes from one demux pass
(:func:`~pipeline.media.probe.scan_packets`) per call; frames are matched to it by pts.

Damaged data never shifts the numbering: a frame that cannot be decoded (a corrupt packet, a
packet whose data is missing) is replaced by a copy of the previous frame that decodes, wherever
the decoding started (a range starting at a damaged frame looks back for it: ``postprod frame``
and ``postprod run`` give the same picture), the next one only when no earlier frame decodes
(damage at the very start of the reel), and reported through ``on_corrupt`` with its
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

import sys
import warnings
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
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
    readable = (
        bits == depth
        and not fmt.is_big_endian
        and not rgb
        and all(c.bits == depth for c in fmt.components)
        and (fmt.is_planar or len(fmt.components) == 1)
        and pix_fmt.startswith(("yuv", "gray"))
        and not pix_fmt.startswith("yuva")
    )
    if grey:
        return _Plan(
            convert_to=None if readable else f"gray{suffix}", chroma_444=None, depth=depth, full_range_rgb=False
        )
    return _Plan(
        convert_to=None if readable else f"yuv444p{suffix}",
        chroma_444=f"yuv444p{suffix}",
        depth=depth,
        full_range_rgb=rgb,
    )


def _plane(frame: VideoFrame, i: int, depth: int) -> np.ndarray:
    """Plane ``i`` as a fresh (h, w) array; line_size may include padding past the width."""
    plane = frame.planes[i]
    dtype = np.dtype(np.uint8) if depth <= 8 else np.dtype("<u2")
    per_line = plane.line_size // dtype.itemsize
    arr = np.frombuffer(memoryview(plane), dtype=dtype, count=per_line * plane.height)
    return arr.reshape(plane.height, per_line)[:, : plane.width].copy()


def _scaled_size(width: int, height: int, max_height: int | None) -> tuple[int, int] | None:
    if max_height is None or height <= max_height:
        return None
    if max_height < 2:
        raise ValueError(f"max_height must be at least 2, got {max_height}")
    new_w = max(2, round(width * max_height / height / 2) * 2)  # even: chroma subsampling
    return new_w, max_height


def _to_frame(vf: VideoFrame, index: int, time: Fraction, *, max_height: int | None, chroma: bool) -> Frame:
    plan = _plan(vf.format.name)
    size = _scaled_size(vf.width, vf.height, max_height)
    if plan.convert_to or size:
        kwargs: dict = {"format": plan.convert_to or vf.format.name, "interpolation": "AREA"}
        if size:
            kwargs.update(width=size[0], height=size[1])
        if plan.full_range_rgb:
            from pipeline.color import choose_matrix

            matrix = choose_matrix(None, vf.width, vf.height)
            kwargs.update(dst_colorspace="itu709" if matrix == "bt709" else "itu601", dst_color_range="JPEG")
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


def is_intra_only(index: PacketIndex) -> bool:
    """True when every frame of the reel is a keyframe (ProRes, DNxHD, MJPEG, intra-only FFV1, ...).

    Every frame of such a stream decodes on its own, so a frame that is not wanted is skipped
    without being decoded; in a long-GOP stream (H.264, HEVC, MPEG-2) it may be needed as a reference.
    """
    return index.frames > 0 and index.key_pts.shape[0] == index.frames


def configure_decoder(stream: VideoStream, analysis: bool) -> None:
    """Decoder settings, before the first packet opens the codec (see ``analysis`` in :func:`iter_frame_ranges`)."""
    ctx = stream.codec_context
    ctx.thread_type = "AUTO"
    if analysis:
        ctx.options = {**ctx.options, "skip_loop_filter": "all"}
        ctx.flags2 |= av.codec.context.Flags2.fast


def _packets_from(
    container: InputContainer,
    stream: VideoStream,
    index: PacketIndex,
    start: int,
    path: Path,
    *,
    analysis: bool = False,
) -> Iterator[Packet]:
    """Video packets in decode order, beginning at the keyframe that ``start`` depends on.

    The keyframe is the last one (decode order) displayed at or before frame ``start``. The
    container seeks near its dts, then packets before it are skipped without decoding; if
    the seek overshot (some formats index by pts), the file is read again from the start
    (decoded as ``analysis`` says).
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
        configure_decoder(stream2, analysis)
        it = again.demux(stream2)
        for packet in it:
            if packet.is_keyframe and (packet.pts if packet.pts is not None else packet.dts) == key_pts:
                yield packet
                break
        yield from it


def iter_frames(
    path: Path,
    start: int = 0,
    stop: int | None = None,
    *,
    max_height: int | None = None,
    chroma: bool = False,
    on_corrupt: CorruptCallback | None = None,
    analysis: bool = False,
) -> Iterator[Frame]:
    """Yield frames ``start`` .. ``stop - 1`` (display order) of ``path`` one by one.

    Memory stays bounded by a few frames plus the per-call pts index (8 bytes a frame).
    ``max_height``: downscale with swscale (area filter) so the height is at most this,
    keeping the stored aspect (width rounded to even); luma keeps the source's dtype, depth
    and range. ``chroma``: also return Cb/Cr (see :class:`Frame`). ``on_corrupt(frames, msg)``
    is called for frames that could not be decoded (replaced by a neighbour, see the module
    docstring) or were concealed; default: a :class:`CorruptFrameWarning`. ``analysis``:
    faster, slightly inexact pixels (see :func:`iter_frame_ranges`).
    Raises :class:`PostprodError` for a missing/unreadable file, no video stream, no frames,
    or when no frame at all can be decoded; ``ValueError`` for a negative ``start``.
    """
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    yield from iter_frame_ranges(
        path,
        [range(start, sys.maxsize if stop is None else stop)],
        max_height=max_height,
        chroma=chroma,
        on_corrupt=on_corrupt,
        analysis=analysis,
    )


def iter_frame_ranges(
    path: Path,
    ranges: Sequence[range],
    *,
    index: PacketIndex | None = None,
    max_height: int | None = None,
    chroma: bool = False,
    on_corrupt: CorruptCallback | None = None,
    analysis: bool = False,
) -> Iterator[Frame]:
    """Yield the frames of several display-index ranges of ``path`` in order, in one pass (one seek at most).

    ``ranges``: increasing and disjoint, each with any step >= 1 (``range(0, n, 5)`` is every
    5th frame); clipped to the reel's frames. Only what the wanted frames need is decoded:
    reading starts at the keyframe the first one depends on (a seek, as :func:`iter_frames`);
    a frame that is not wanted is not decoded at all if the stream is intra-only
    (:func:`is_intra_only`), else only if a wanted frame may depend on it (the decoder discards
    non-reference frames, and whole GOPs before the one a wanted frame starts from are not
    decoded). Damaged frames get stand-ins and reports as in :func:`iter_frames`.
    ``index``: the reel's :func:`~pipeline.media.probe.scan_packets` if the caller has it (saves
    a demux pass). ``analysis``: decode faster, not exactly: the decoder skips its loop filter
    (H.264/HEVC deblocking; intra-only codecs such as ProRes have none) and may take non-spec
    shortcuts (``flags2=fast``), so pixels differ slightly from the true frames (mostly near
    block edges): for analysis such as shot detection, never for output.
    Raises :class:`PostprodError` as :func:`iter_frames`; ``ValueError`` for ranges that are
    not increasing and disjoint, or that start below 0.
    """
    path = Path(path)
    previous_end = 0
    for r in ranges:
        if r.step < 1 or r.start < previous_end:
            raise ValueError(f"ranges must be increasing, disjoint, with step >= 1 and start >= 0, got {list(ranges)}")
        if len(r):
            previous_end = r[-1] + 1
    report = on_corrupt or warn_corrupt(path)
    index = scan_packets(path) if index is None else index
    n = index.frames
    if n == 0:
        raise PostprodError(path, "the video stream has no frames")
    clipped = [c for c in (range(r.start, min(r.stop, n), r.step) for r in ranges) if len(c)]
    if not clipped:
        return
    if index.declared_frames > n and clipped[-1].stop == n:
        report(range(n, index.declared_frames), f"missing: the file ends early (truncated); {n} frames are present")
    yield from _frame_ranges(path, clipped, index, max_height, chroma, report, analysis, lookback=True)


def _frame_ranges(
    path: Path,
    clipped: list[range],
    index: PacketIndex,
    max_height: int | None,
    chroma: bool,
    report: CorruptCallback,
    analysis: bool,
    *,
    lookback: bool,
) -> Iterator[Frame]:
    """:func:`iter_frame_ranges` on checked, clipped ranges. ``lookback``: damaged frames that no
    frame of the ranges precedes are stood in for by the previous frame that decodes
    (:func:`_picture_before`), else by the next that decodes (in the ranges, else after them:
    :func:`_picture_after`); without it, only frames of the ranges stand in."""
    first, last = clipped[0].start, clipped[-1][-1]

    def before() -> Frame | None:
        if not lookback:
            return None
        return _picture_before(path, index, first, max_height=max_height, chroma=chroma, analysis=analysis)

    def after() -> Frame | None:
        if not lookback:
            return None
        return _picture_after(path, index, last + 1, max_height=max_height, chroma=chroma, analysis=analysis)

    with open_input(path) as container:
        stream = video_stream(container, path)
        configure_decoder(stream, analysis)
        packets = _packets_from(container, stream, index, first, path, analysis=analysis)
        yield from _decode(
            packets,
            index,
            _Wanted(clipped),
            path,
            intra=is_intra_only(index),
            max_height=max_height,
            chroma=chroma,
            report=report,
            before=before,
            after=after,
        )


_NOT_DECODED = "could not be decoded"
_LOOKBACK = 16
"""Frames decoded per step when looking back for the last frame before a range that decodes."""


def _picture_before(
    path: Path, index: PacketIndex, first: int, *, max_height: int | None, chroma: bool, analysis: bool
) -> Frame | None:
    """The last frame before display index ``first`` that decodes, looking back :data:`_LOOKBACK`
    frames at a time; None when none does."""
    stop = first
    while stop > 0:
        start = max(0, stop - _LOOKBACK)
        found = _decodable(path, index, range(start, stop), max_height=max_height, chroma=chroma, analysis=analysis)
        if found:
            return found[-1]
        stop = start
    return None


def _picture_after(
    path: Path, index: PacketIndex, after: int, *, max_height: int | None, chroma: bool, analysis: bool
) -> Frame | None:
    """The first frame from display index ``after`` on that decodes; None when none does."""
    for start in range(after, index.frames, _LOOKBACK):
        stop = min(index.frames, start + _LOOKBACK)
        found = _decodable(path, index, range(start, stop), max_height=max_height, chroma=chroma, analysis=analysis)
        if found:
            return found[0]
    return None


def _decodable(
    path: Path, index: PacketIndex, frames: range, *, max_height: int | None, chroma: bool, analysis: bool
) -> list[Frame]:
    """The frames of ``frames`` that decode (stand-ins left out), in order."""
    stand_ins: set[int] = set()

    def note(replaced: range, message: str) -> None:
        if message.startswith(_NOT_DECODED):
            stand_ins.update(replaced)

    try:
        got = list(_frame_ranges(path, [frames], index, max_height, chroma, note, analysis, lookback=False))
    except PostprodError:
        return []  # nothing in this stretch decodes
    return [f for f in got if f.index not in stand_ins]


class _Wanted:
    """The wanted display indices: increasing, disjoint, non-empty ranges (any step)."""

    def __init__(self, ranges: list[range]) -> None:
        self.ranges = ranges
        self._starts = [r.start for r in ranges]
        self.last = ranges[-1][-1]

    def __contains__(self, i: int) -> bool:
        k = bisect_right(self._starts, i) - 1
        return k >= 0 and i in self.ranges[k]

    def next(self, i: int) -> int | None:
        """The first wanted index >= ``i``, None past the last."""
        k = bisect_right(self._starts, i) - 1
        if k >= 0 and i <= self.ranges[k][-1]:
            r = self.ranges[k]
            return r.start + -(-(i - r.start) // r.step) * r.step
        return self._starts[k + 1] if k + 1 < len(self.ranges) else None

    def parts(self, lo: int, hi: int) -> list[range]:
        """The wanted indices in [lo, hi), as one range per input range that has some."""
        out = []
        for r in self.ranges[max(0, bisect_right(self._starts, lo) - 1) :]:
            if r.start >= hi:
                break
            first = r.start if lo <= r.start else r.start + -(-(lo - r.start) // r.step) * r.step
            if first < min(r.stop, hi):
                out.append(range(first, min(r.stop, hi), r.step))
        return out


def _decode(
    packets: Iterator[Packet],
    index: PacketIndex,
    wanted: _Wanted,
    path: Path,
    *,
    intra: bool,
    max_height: int | None,
    chroma: bool,
    report: CorruptCallback,
    before: Callable[[], Frame | None],
    after: Callable[[], Frame | None],
) -> Iterator[Frame]:
    """The ``wanted`` frames from ``packets`` (:func:`_packets_from`), with stand-ins for those that
    never come out: the previous frame yielded, else ``before()`` (asked for once: the frame
    before the ranges that decodes), else the next frame of the ranges that decodes, else
    ``after()`` (the first after the ranges that decodes) when none of them does."""
    tb, n = index.time_base, index.frames
    key_order = {int(t): k for k, t in enumerate(index.key_pts)}  # keyframe pts -> position in decode order
    # the keyframe frame w depends on is the last one (decode order) with pts <= pts[w]; a suffix
    # minimum makes that a binary search even if keyframe pts are not increasing
    suffix_min = np.minimum.accumulate(index.key_pts[::-1])[::-1]
    expected = wanted.next(0)  # next wanted display index not yet yielded
    previous: Frame | None = None
    errors: list[str] = []
    done = False
    earlier: list[Frame | None] = []  # before(), once

    def stand_in(fallback: Frame) -> Frame:
        """What replaces frames that never came out: the previous one, the one before the range, the next."""
        if previous is not None:
            return previous
        if not earlier:
            earlier.append(before())
        return earlier[0] or fallback

    def fill(upto: int, source: Frame) -> Iterator[Frame]:
        """Stand-ins for the wanted frames expected .. upto-1, which never came out of the decoder."""
        nonlocal expected
        assert expected is not None  # None only once every wanted frame is out (then done)
        parts = wanted.parts(expected, upto)
        if parts:
            why = "; ".join(dict.fromkeys(errors)) or "no picture for this packet"
            for part in parts:
                report(part, f"{_NOT_DECODED} ({why}); replaced by a copy of frame {source.index}")
            errors.clear()
        for i in (i for part in parts for i in part):
            yield Frame(
                index=i,
                time=int(index.pts[i]) * tb,
                luma=source.luma.copy(),
                bit_depth=source.bit_depth,
                chroma=None if source.chroma is None else source.chroma.copy(),
            )
        expected = wanted.next(upto)

    def emit(decoded: Iterable[VideoFrame]) -> Iterator[Frame]:
        nonlocal previous, expected, done
        for vf in decoded:
            assert expected is not None  # None only once every wanted frame is out (then done)
            i = index.display_index(vf.pts)
            if i is None:
                if vf.pts is not None and vf.pts < int(index.pts[0]):
                    continue  # pre-roll the index does not count
                # displayed after the last indexed frame (a cut file's frames after a missing one): past the end
                i = index.frames if vf.pts is not None and vf.pts > int(index.pts[-1]) else expected
            if i < expected:
                continue  # decoded only as a reference for later frames (after a seek)
            if i > wanted.last:  # the last wanted frames never came out: stand in for them
                yield from fill(
                    wanted.last + 1,
                    stand_in(
                        _to_frame(vf, i, int(index.pts[min(i, n - 1)]) * tb, max_height=max_height, chroma=chroma)
                    ),
                )
                done = True
                return
            if i not in wanted:
                continue  # a reference between the wanted frames
            frame = _to_frame(vf, i, int(index.pts[i]) * tb, max_height=max_height, chroma=chroma)
            yield from fill(i, stand_in(frame))
            if vf.is_corrupt:
                report(range(i, i + 1), "decoded with errors (concealed by the decoder)")
            yield frame
            previous, expected = frame, wanted.next(i + 1)
            if expected is None:
                done = True
                return

    gop = -1  # position (decode order) of the last keyframe read
    for packet in packets:
        assert expected is not None  # None only once every wanted frame is out (then done)
        ctx = packet.stream.codec_context
        i = None
        if packet.size:
            ts = packet.pts if packet.pts is not None else packet.dts
            if packet.is_keyframe and ts is not None:  # key_order's keys are ints
                gop = key_order.get(ts, gop)
            i = index.display_index(ts)
            needed = i is None or (i >= expected and i in wanted)
            if intra:
                if not needed:
                    continue  # a picture of its own that nothing else needs
            elif gop < int(np.searchsorted(suffix_min, index.pts[expected], side="right")) - 1:
                continue  # a GOP before the one the next wanted frame starts from
            else:  # references must be decoded, a non-reference frame only if it is wanted
                ctx.skip_frame = "DEFAULT" if needed else "NONREF"
        try:
            decoded = packet.decode()
        except av.FFmpegError as err:
            errors.append(err.strerror or type(err).__name__)
            continue
        yield from emit(decoded)
        if done:
            return
        if intra and i == wanted.last:
            try:  # nothing after it is needed: drain the decoder instead of reading on to the end
                decoded = ctx.decode(None)
            except av.FFmpegError as err:
                errors.append(err.strerror or type(err).__name__)
            else:
                yield from emit(decoded)
            break
    if done:
        return
    if previous is None and not earlier:
        earlier.append(before())
    source = previous or earlier[0] or after()
    if source is None:
        raise PostprodError(
            path,
            f"no frame in {wanted.ranges[0].start}..{wanted.last} could be decoded"
            + (f" ({errors[-1]})" if errors else ""),
        )
    yield from fill(wanted.last + 1, source)
