"""Describe a reel exactly: frame count from demuxed packets, frame rate as a Fraction, timecode.

Nothing here trusts container headers for what can be measured: the frame count is the
number of video packets the demuxer delivers, constant vs. variable frame rate is decided
from the presentation timestamps (pts) of those packets, and the start time is the pts of
the first displayed frame.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import numpy as np
from av.container import InputContainer
from av.video.stream import VideoStream

from pipeline.errors import PostprodError

if TYPE_CHECKING:
    from pipeline.color import Matrix, Range

# H.273 code points (what FFmpeg stores in AVColorSpace & co.), named as ffprobe names them.
_MATRIX_NAMES = {
    0: "gbr",
    1: "bt709",
    4: "fcc",
    5: "bt470bg",
    6: "smpte170m",
    7: "smpte240m",
    8: "ycgco",
    9: "bt2020nc",
    10: "bt2020c",
    11: "smpte2085",
    12: "chroma-derived-nc",
    13: "chroma-derived-c",
    14: "ictcp",
}
_PRIMARIES_NAMES = {
    1: "bt709",
    4: "bt470m",
    5: "bt470bg",
    6: "smpte170m",
    7: "smpte240m",
    8: "film",
    9: "bt2020",
    10: "smpte428",
    11: "smpte431",
    12: "smpte432",
    22: "ebu3213",
}
_TRANSFER_NAMES = {
    1: "bt709",
    4: "gamma22",
    5: "gamma28",
    6: "smpte170m",
    7: "smpte240m",
    8: "linear",
    9: "log100",
    10: "log316",
    11: "iec61966-2-4",
    12: "bt1361e",
    13: "iec61966-2-1",
    14: "bt2020-10",
    15: "bt2020-12",
    16: "smpte2084",
    17: "smpte428",
    18: "arib-std-b67",
}
_RANGE_NAMES = {1: "tv", 2: "pc"}

# Frame rates a reel is expected to have, tried when the stream's nominal rate does not fit
# its timestamps (Matroska stores milliseconds, so 24000/1001 arrives as 41/42 ms steps).
STANDARD_RATES: tuple[Fraction, ...] = tuple(
    Fraction(n, d)
    for n, d in (
        (24000, 1001),
        (24, 1),
        (25, 1),
        (30000, 1001),
        (30, 1),
        (48000, 1001),
        (48, 1),
        (50, 1),
        (60000, 1001),
        (60, 1),
        (16, 1),
        (18, 1),
        (20, 1),
        (15, 1),
        (12, 1),
        (120000, 1001),
        (120, 1),
        (100, 1),
    )
)
_RATE_TOLERANCE = 1e-2  # relative: how far from a standard rate to still try it


@dataclass(frozen=True)
class AudioInfo:
    """One audio stream: ``index`` is the stream index in the container."""

    index: int
    codec: str
    sample_rate: int
    channels: int
    layout: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "codec": self.codec,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "layout": self.layout,
        }


@dataclass(frozen=True)
class PacketIndex:
    """What one demux pass over the video stream tells (no decoding).

    ``pts``: (N,) int64, presentation timestamps of the displayed frames in display order,
    in units of ``time_base`` (seconds per tick). ``key_pts`` / ``key_dts``: (K,) int64, pts and
    dts of the keyframe packets in decode order. ``last_duration``: ticks the last frame lasts.
    ``declared_frames``: the header's frame count (0 when the container has none).
    ``demux_error``: why demuxing stopped before the end of the file, or None.
    """

    time_base: Fraction
    pts: np.ndarray
    key_pts: np.ndarray
    key_dts: np.ndarray
    last_duration: int
    declared_frames: int
    demux_error: str | None

    @property
    def frames(self) -> int:
        return int(self.pts.shape[0])

    def display_index(self, pts: int | None) -> int | None:
        """Display index of the frame with this pts, or None if no packet had it."""
        if pts is None:
            return None
        i = int(np.searchsorted(self.pts, pts))
        return i if i < self.pts.shape[0] and int(self.pts[i]) == pts else None


@dataclass(frozen=True)
class ReelInfo:
    """What a reel is, measured rather than read from headers where it matters.

    ``fps``: exact frames per second (24000/1001, never 23.976); for a variable-frame-rate
    reel (``vfr``) it is the average rate ``frames / duration``. ``duration`` = ``frames / fps``
    seconds. ``start_time``: seconds, pts of the first displayed frame. ``rotation``: degrees
    counter-clockwise to turn the stored picture for display (FFmpeg's display-matrix
    convention, in (-180, 180]; -90 means turn clockwise by 90). ``color_*`` are FFmpeg/ffprobe
    names or None when the file does not say. ``notes``: anything suspicious (truncation).
    """

    path: Path
    container: str
    video_index: int
    codec: str
    width: int
    height: int
    sample_aspect_ratio: Fraction
    rotation: int
    pix_fmt: str
    bit_depth: int
    fps: Fraction
    vfr: bool
    frames: int
    duration: Fraction
    start_time: Fraction
    timecode: str | None
    color_range: str | None
    color_matrix: str | None
    color_primaries: str | None
    color_transfer: str | None
    audio: tuple[AudioInfo, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def matrix(self) -> Matrix:
        """The YCbCr matrix to use, "bt601" or "bt709": the tagged one, else by picture size."""
        from pipeline.color import choose_matrix

        return choose_matrix(self.color_matrix, self.width, self.height)

    @property
    def luma_range(self) -> Range:
        """Range of the luma code values that :func:`~pipeline.media.decode.iter_frames` yields.

        "pc" (full) for full-range YUV, RGB and grey sources (RGB is converted to full-range
        YCbCr), "tv" (limited) otherwise, including when the file does not say.
        """
        if self.color_range == "pc" or self.pix_fmt.startswith(("yuvj", "gray", "ya")):
            return "pc"
        try:
            return "pc" if av.VideoFormat(self.pix_fmt).is_rgb else "tv"
        except ValueError:  # a pixel format FFmpeg does not name
            return "tv"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: Fractions as "num/den" strings (fps "24000/1001"), paths as strings."""
        return {
            "path": str(self.path),
            "container": self.container,
            "video_index": self.video_index,
            "codec": self.codec,
            "width": self.width,
            "height": self.height,
            "sample_aspect_ratio": _frac_str(self.sample_aspect_ratio),
            "rotation": self.rotation,
            "pix_fmt": self.pix_fmt,
            "bit_depth": self.bit_depth,
            "fps": _frac_str(self.fps),
            "vfr": self.vfr,
            "frames": self.frames,
            "duration": _frac_str(self.duration),
            "duration_seconds": float(self.duration),
            "start_time": _frac_str(self.start_time),
            "timecode": self.timecode,
            "color_range": self.color_range,
            "color_matrix": self.color_matrix,
            "color_primaries": self.color_primaries,
            "color_transfer": self.color_transfer,
            "audio": [a.to_dict() for a in self.audio],
            "notes": list(self.notes),
        }

    def describe(self) -> str:
        """A short human-readable block."""
        rate = f"{_frac_str(self.fps)} fps ({float(self.fps):.3f})" + (" VFR, average" if self.vfr else "")
        sar = "" if self.sample_aspect_ratio == 1 else f", SAR {_frac_str(self.sample_aspect_ratio)}"
        rot = f", rotation {self.rotation}°" if self.rotation else ""
        colour = "/".join(
            v or "?" for v in (self.color_range, self.color_matrix, self.color_primaries, self.color_transfer)
        )
        lines = [
            f"{self.path}",
            f"  container  {self.container}",
            f"  video      #{self.video_index} {self.codec} {self.width}x{self.height}{sar}{rot}, "
            f"{self.pix_fmt} ({self.bit_depth}-bit), colour {colour}",
            f"  timing     {rate}, {self.frames} frames, {float(self.duration):.3f} s, "
            f"starts at {float(self.start_time):.3f} s, timecode {self.timecode or 'none'}",
        ]
        lines += [
            f"  audio      #{a.index} {a.codec} {a.sample_rate} Hz {a.layout} ({a.channels} ch)" for a in self.audio
        ] or ["  audio      none"]
        lines += [f"  note       {n}" for n in self.notes]
        return "\n".join(lines)


def luma_depth(pix_fmt: str) -> int:
    """Bits per luma code as :func:`~pipeline.media.decode.iter_frames` delivers it for this
    pixel format: 8, 10, 12 or 16 (9-bit sources come as 10, 14-bit as 16)."""
    bits = av.VideoFormat(pix_fmt).components[0].bits
    return 8 if bits <= 8 else 10 if bits <= 10 else 12 if bits <= 12 else 16


def _frac_str(x: Fraction) -> str:
    return f"{x.numerator}/{x.denominator}"


def open_input(path: Path) -> InputContainer:
    """Open ``path`` for reading; every failure is a one-line :class:`PostprodError`."""
    path = Path(path)
    if not path.exists():
        raise PostprodError(path, "file not found")
    if path.is_dir():
        raise PostprodError(path, "is a folder, not a video file")
    if path.stat().st_size == 0:
        raise PostprodError(path, "the file is empty")
    try:
        return av.open(str(path), "r")
    except PermissionError as err:
        raise PostprodError(path, "cannot read the file (permission denied)") from err
    except av.EOFError as err:
        raise PostprodError(
            path,
            "the file ends before its container header is complete (truncated, or a recording that never got data)",
        ) from err
    except av.FFmpegError as err:
        if _isobmff_without_moov(path):
            raise PostprodError(
                path,
                "truncated or unfinished recording: the MP4/MOV has no 'moov' "
                "index, so no frame can be located; it cannot be read",
            ) from err
        raise PostprodError(path, f"not a video file or unreadable container ({err.strerror})") from err


def _isobmff_without_moov(path: Path) -> bool:
    """True for an MP4/MOV file whose top-level boxes include 'ftyp' or 'mdat' but no 'moov'."""
    seen: set[bytes] = set()
    size = path.stat().st_size
    with path.open("rb") as fh:
        pos = 0
        while pos + 8 <= size:
            fh.seek(pos)
            box_size, kind = struct.unpack(">I4s", fh.read(8))
            if box_size == 1:  # 64-bit size follows
                box_size = struct.unpack(">Q", fh.read(8))[0]
            elif box_size == 0:  # box runs to end of file
                box_size = size - pos
            if box_size < 8 or not re.fullmatch(rb"[a-zA-Z0-9 ]{4}", kind):
                break
            seen.add(kind)
            pos += box_size
    return bool(seen & {b"ftyp", b"mdat"}) and b"moov" not in seen


def video_stream(container: InputContainer, path: Path) -> VideoStream:
    """The reel's video stream (the first one that is not a cover picture)."""
    videos = [s for s in container.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)]
    if not videos:
        found = (
            ", ".join(f"{s.type} {s.codec_context.name if s.codec_context else '?'}" for s in container.streams)
            or "no streams at all"
        )
        raise PostprodError(path, f"no video stream (found: {found})")
    return videos[0]


def scan_packets(path: Path) -> PacketIndex:
    """Demux the video stream of ``path`` once (no decoding) and index its packets.

    Packets the demuxer marks as discarded (edit-list pre-roll) are not displayed frames and
    are left out. A demux error before the end of the file (a cut file) stops the scan;
    what was read is kept and the error is recorded in ``demux_error``. In a file cut short
    (an error, or fewer packets than the header declares), frames displayed after a missing
    one are left out (:func:`_displayed_after_a_gap`).
    """
    with open_input(path) as container:
        stream = video_stream(container, path)
        if stream.time_base is None:
            raise PostprodError(path, "video stream has no time base")
        pts: list[int] = []
        keys: list[tuple[int, int]] = []
        durations: list[int] = []
        error = None
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:
                    continue  # the flush packet at the end, edit-list pre-roll
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is None:
                    raise PostprodError(
                        path,
                        "video packets carry no timestamps (a raw elementary stream?); remux it into MOV/MKV first",
                    )
                pts.append(ts)
                durations.append(packet.duration or 0)
                if packet.is_keyframe:
                    keys.append((ts, packet.dts if packet.dts is not None else ts))
        except av.FFmpegError as err:
            error = f"demuxing stopped after {len(pts)} video packets: {err.strerror}"
        order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
        sorted_pts = np.asarray(pts, dtype=np.int64)[order]
        tb = Fraction(stream.time_base)

        def span_of(n: int) -> tuple[int, Fraction]:
            """(last frame's duration in ticks, seconds covered) of the first ``n`` displayed frames."""
            last = int(durations[order[n - 1]]) if n else 0
            if not last and n > 1:
                last = int(np.median(np.diff(sorted_pts[:n])))
            return last, ((int(sorted_pts[n - 1] - sorted_pts[0]) + last) * tb if n else Fraction(0))

        n = len(pts)
        last_duration, span = span_of(n)
        declared = _declared_frames(stream, n, span)
        if error is not None or declared > n:  # cut short: drop the frames displayed after a missing one
            n -= _displayed_after_a_gap(sorted_pts)
            last_duration, _ = span_of(n)
        kept = sorted_pts[:n]
        present = [k for k in keys if n and k[0] <= int(kept[-1])]
        return PacketIndex(
            time_base=tb,
            pts=kept,
            key_pts=np.asarray([k[0] for k in present], dtype=np.int64),
            key_dts=np.asarray([k[1] for k in present], dtype=np.int64),
            last_duration=last_duration,
            declared_frames=declared,
            demux_error=error,
        )


MAX_REORDER = 16
"""The most frames a decoder holds back for reordering (the H.264/HEVC picture buffer): how far
before a cut end a frame can be missing while later-displayed ones were delivered."""


def _displayed_after_a_gap(sorted_pts: np.ndarray) -> int:
    """How many of the last displayed frames of a stream cut short come after a missing frame.

    A file cut inside its packets keeps the reference frames sent before the B-frames displayed
    ahead of them: their timestamps leave a gap (a step above 1.5 times the median step) among
    the last :data:`MAX_REORDER` frames. Those frames cannot be numbered (the missing ones
    before them are unknown), so they are dropped; what is left has no gap, and a
    constant-rate reel stays constant-rate.
    """
    if sorted_pts.shape[0] < 3:
        return 0
    steps = np.diff(sorted_pts)
    tail = steps[-MAX_REORDER:]
    gaps = np.nonzero(tail > 1.5 * np.median(steps))[0]
    if not gaps.size:
        return 0
    return int(tail.shape[0] - gaps[0])


def _declared_frames(stream: VideoStream, frames: int, span: Fraction) -> int:
    """The frame count the headers promise: the MP4/MOV sample count, Matroska's
    NUMBER_OF_FRAMES tag, or, from a Matroska DURATION tag longer than the packets cover by
    more than two frames, the packets found plus the missing time at the nominal rate."""
    if stream.frames:
        return int(stream.frames)
    tags = {k.lower().split("-")[0]: v for k, v in stream.metadata.items()}
    if tags.get("number_of_frames", "").isdigit():
        return int(tags["number_of_frames"])
    m = re.fullmatch(r"(\d+):(\d{2}):(\d{2})(?:\.(\d+))?", tags.get("duration", ""))
    rate = stream.guessed_rate or stream.average_rate
    if not m or not rate:
        return 0
    seconds = Fraction(int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3])) + Fraction(f"0.{m[4] or 0}")
    missing = seconds - span
    return frames + round(missing * Fraction(rate)) if missing > 2 / Fraction(rate) else frames


def frame_rate(index: PacketIndex, nominal: Fraction | None) -> tuple[Fraction, bool]:
    """(exact fps, vfr) from the display-order pts.

    A rate fits when every frame sits within one tick (timestamp rounding, e.g. Matroska's
    milliseconds) of where that rate puts it. Tried in order: the stream's nominal rate, the
    standard rates nearest the measured one, the measured rate itself; the first that fits
    gives a constant-rate reel. If none fits, the reel is variable-rate and its rate is the
    average: frames / (last pts - first pts + last frame's duration).
    """
    n = index.frames
    tb = index.time_base
    if n < 2:
        return (nominal or Fraction(24)), False
    offsets = (index.pts - index.pts[0]).astype(np.float64)
    measured = Fraction(n - 1) / (int(offsets[-1]) * tb)
    near = sorted(
        (r for r in STANDARD_RATES if abs(r - measured) / measured < _RATE_TOLERANCE), key=lambda r: abs(r - measured)
    )
    for fps in ([nominal] if nominal else []) + near + [measured]:
        ideal_step = float(1 / (fps * tb))
        if np.all(np.abs(offsets - np.arange(n) * ideal_step) <= 1.0 + 1e-9):
            return fps, False
    steps = np.diff(index.pts)
    span = int(offsets[-1]) + (index.last_duration or int(np.median(steps)))
    return Fraction(n) / (span * tb), True


def _first_frame_props(container: InputContainer, stream: VideoStream) -> dict[str, Any]:
    """Rotation and colour tags of the first decodable frame (the decoder knows more than the
    container, e.g. H.264 VUI colour info); {} if nothing decodes in the first packets."""
    stream.codec_context.thread_type = "AUTO"
    for i, packet in enumerate(container.demux(stream)):
        try:
            frames = packet.decode()
        except av.FFmpegError:
            frames = []
        if frames:
            f = frames[0]
            return {
                "rotation": f.rotation,
                "color_range": f.color_range,
                "colorspace": f.colorspace,
                "color_primaries": f.color_primaries,
                "color_trc": f.color_trc,
            }
        if i > 300:
            break
    return {}


def _find_timecode(container: InputContainer, stream: VideoStream) -> str | None:
    """Start timecode from the video stream, the container, or a tmcd data stream."""
    sources = [stream.metadata, container.metadata] + [s.metadata for s in container.streams.data]
    for meta in sources:
        for key, value in meta.items():
            if key.lower() == "timecode" and value:
                return value
    return None


def _normalise_rotation(degrees: float) -> int:
    r = round(degrees) % 360
    return r - 360 if r > 180 else r


def _audio_streams(container: InputContainer) -> tuple[AudioInfo, ...]:
    return tuple(
        AudioInfo(
            index=s.index,
            codec=s.codec_context.name,
            sample_rate=s.codec_context.sample_rate,
            channels=s.codec_context.channels,
            layout=s.codec_context.layout.name,
        )
        for s in container.streams.audio
        if s.codec_context is not None
    )


@dataclass(frozen=True)
class ReelHeader:
    """What a reel's container header says, read without demuxing a packet: for the checks made
    before any work (:func:`pipeline.run.check_run_inputs`). Fields as in :class:`ReelInfo`."""

    path: Path
    container: str
    codec: str
    width: int
    height: int
    pix_fmt: str
    bit_depth: int
    audio: tuple[AudioInfo, ...] = ()


def probe_header(path: Path) -> ReelHeader:
    """Open ``path`` and read its video stream's parameters and its audio streams from the
    header (milliseconds, whatever the reel's length). Raises :class:`PostprodError` as
    :func:`open_input` and :func:`video_stream` do."""
    path = Path(path)
    with open_input(path) as container:
        stream = video_stream(container, path)
        ctx = stream.codec_context
        return ReelHeader(
            path=path,
            container=container.format.name,
            codec=ctx.name,
            width=ctx.width,
            height=ctx.height,
            pix_fmt=ctx.pix_fmt or "unknown",
            bit_depth=luma_depth(ctx.pix_fmt) if ctx.pix_fmt else 8,
            audio=_audio_streams(container),
        )


def probe(path: Path) -> ReelInfo:
    """Measure ``path``: see :class:`ReelInfo`. Raises :class:`PostprodError` for a missing file,
    a file that is not a video, a reel without video stream or without frames."""
    path = Path(path)
    index = scan_packets(path)
    if index.frames == 0:
        raise PostprodError(
            path, "the video stream has no frames" + (f" ({index.demux_error})" if index.demux_error else "")
        )
    with open_input(path) as container:
        stream = video_stream(container, path)
        ctx = stream.codec_context
        nominal = stream.guessed_rate or stream.average_rate
        fps, vfr = frame_rate(index, Fraction(nominal) if nominal else None)
        timecode = _find_timecode(container, stream)
        audio = _audio_streams(container)
        props = _first_frame_props(container, stream)
        rotation = props.get("rotation") or 0
        if not rotation and "rotate" in stream.metadata:  # old-style tag: clockwise degrees
            rotation = -float(stream.metadata["rotate"])
        notes = []
        if index.demux_error:
            notes.append(index.demux_error + " (file truncated?)")
        if index.declared_frames > index.frames:
            notes.append(
                f"the header declares {index.declared_frames} frames, only {index.frames} "
                "could be demuxed (file truncated?)"
            )

        def tag(key: str, names: dict[int, str], fallback: int) -> str | None:
            return names.get(props.get(key, fallback) or fallback)

        return ReelInfo(
            path=path,
            container=container.format.name,
            video_index=stream.index,
            codec=ctx.name,
            width=ctx.width,
            height=ctx.height,
            sample_aspect_ratio=Fraction(stream.sample_aspect_ratio or ctx.sample_aspect_ratio or 1),
            rotation=_normalise_rotation(rotation),
            pix_fmt=ctx.pix_fmt or "unknown",
            bit_depth=luma_depth(ctx.pix_fmt) if ctx.pix_fmt else 8,
            fps=fps,
            vfr=vfr,
            frames=index.frames,
            duration=index.frames / fps,
            start_time=int(index.pts[0]) * index.time_base,
            timecode=timecode,
            color_range=tag("color_range", _RANGE_NAMES, ctx.color_range),
            color_matrix=tag("colorspace", _MATRIX_NAMES, ctx.colorspace),
            color_primaries=tag("color_primaries", _PRIMARIES_NAMES, ctx.color_primaries),
            color_transfer=tag("color_trc", _TRANSFER_NAMES, ctx.color_trc),
            audio=audio,
            notes=tuple(notes),
        )
