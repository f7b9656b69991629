"""Write a reel: ProRes 422 HQ, FFV1, H.264 preview, or a 16-bit TIFF/PNG image sequence.

What carries over from the source (:class:`~pipeline.media.probe.ReelInfo`): the exact frame
rate (time base 1/fps, pts = frame number), start timecode (a tmcd track in MOV/MP4, a
TIMECODE tag in MKV, the sidecar JSON of an image sequence), sample aspect ratio, rotation
(display matrix), colour tags, and every audio stream remuxed packet for packet (same bytes,
same timestamps relative to the first video frame; no re-encode). The luma is the source's
luma codes: bit for bit in FFV1 (4:4:4 at the source depth), shifted to 10 bits in ProRes
(8-bit sources ``<< 2``), rounded to 8 bits for H.264; image sequences are RGB and so carry
the luma only up to the YCbCr -> RGB conversion.

Decisions:
- Variable-frame-rate sources are written at constant rate, their average rate (the
  ``fps`` probe reports), frame for frame, with a warning: frame timing inside the reel
  changes, the total duration does not.
- An audio codec the output container cannot hold (e.g. PCM in .mp4) is an error before
  anything is written (no silent re-encode); MKV and MOV hold almost anything (an H.264
  preview may be a .mov for that), an image sequence's audio goes into a sidecar MKA.
  Subtitle and data streams are not carried.
- The output appears atomically (temporary name, renamed on success); on any error nothing
  is left behind and an existing destination is untouched. What may be replaced is
  :mod:`pipeline.files`' rule; everything about an output that is known before the first frame
  (codec, suffix, frame size, audio, destination) is :func:`check_output`, which the writer
  runs first and ``postprod run`` runs before any work.
- An image sequence is a folder ``<name>/`` holding ``<name>.%06d.png|tif``, the sidecar
  ``<name>.json`` (``pattern``, ``frames``, ``fps``, ``timecode``, ``audio``, ...) and, with
  audio, ``<name>.mka``. The sidecar is also how ``--force`` recognises a sequence postprod
  wrote (:func:`pipeline.files.sequence_files`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Literal

import av
import numpy as np
from av.container import InputContainer, OutputContainer
from av.packet import Packet
from av.video.codeccontext import VideoCodecContext
from av.video.stream import VideoStream

from pipeline.color import change_depth, chroma_to_codes, rgb_from_luma_chroma
from pipeline.errors import PostprodError
from pipeline.files import atomic_output, check_destination
from pipeline.media.decode import iter_frames
from pipeline.media.probe import AudioInfo, ReelInfo, open_input, probe, video_stream

# ReelInfo colour names -> H.273 code points for the encoder's tags.
_RANGE_CODES = {"tv": 1, "pc": 2}
_MATRIX_CODES = {"bt709": 1, "fcc": 4, "bt470bg": 5, "smpte170m": 6, "smpte240m": 7, "bt2020nc": 9, "bt2020c": 10}
_PRIMARIES_CODES = {"bt709": 1, "bt470m": 4, "bt470bg": 5, "smpte170m": 6, "smpte240m": 7, "film": 8, "bt2020": 9}
_TRANSFER_CODES = {
    "bt709": 1,
    "gamma22": 4,
    "gamma28": 5,
    "smpte170m": 6,
    "smpte240m": 7,
    "linear": 8,
    "iec61966-2-1": 13,
    "bt2020-10": 14,
    "bt2020-12": 15,
}


_MUXERS = {".mov": "mov", ".mp4": "mp4", ".mkv": "matroska"}
# Audio codecs MP4 carries reliably; FFmpeg accepts PCM in MP4 at setup but fails to finish the
# file, so it is refused up front.
_MP4_AUDIO = frozenset({"aac", "mp3", "mp2", "ac3", "eac3", "opus", "flac", "alac"})


# No random UIDs, dates or library versions in the files: the same input gives the same bytes
# (a resumed run's lossless output equals an uninterrupted run's).
_BITEXACT = {"fflags": "+bitexact"}


class VariableFrameRateWarning(UserWarning):
    """A variable-frame-rate source is being written at its constant average rate."""


@dataclass(frozen=True)
class CodecSpec:
    """One output kind. ``container``: FFmpeg muxer for the first suffix, None for an image
    sequence; another allowed suffix picks its own muxer (h264 in .mov)."""

    name: str
    encoder: str
    container: str | None
    suffixes: tuple[str, ...]
    options: tuple[tuple[str, str], ...] = ()

    @property
    def is_sequence(self) -> bool:
        return self.container is None

    @property
    def image_ext(self) -> str:
        """File extension of an image sequence's frames."""
        return {"tiff": "tif", "png": "png"}[self.name]

    def pix_fmt(self, source_depth: int) -> str:
        """The pixel format written for a source of this luma bit depth."""
        if self.name == "ffv1":  # 4:4:4 at the source depth so the luma is bit-exact
            return "yuv444p" if source_depth <= 8 else f"yuv444p{_ffv1_depth(source_depth)}le"
        return {"prores": "yuv422p10le", "h264": "yuv420p", "tiff": "rgb48le", "png": "rgb48be"}[self.name]


def _ffv1_depth(depth: int) -> int:
    return 10 if depth <= 10 else 12 if depth <= 12 else 16


CodecName = Literal["prores", "ffv1", "h264", "tiff", "png"]
"""Output codecs: ProRes 422 HQ (.mov), FFV1 lossless (.mkv), H.264 preview (.mp4/.mov), 16-bit
TIFF or PNG image sequences (a folder)."""
REMUX_CODECS: frozenset[CodecName] = frozenset({"prores", "ffv1"})
"""Intra-only output codecs whose per-shot segments are joined by copying packets
(:meth:`ReelWriter.append`); other codecs' segments are lossless FFV1 re-encoded at assembly."""
CODECS: dict[CodecName, CodecSpec] = {
    "prores": CodecSpec("prores", "prores_ks", "mov", (".mov",), (("profile", "3"), ("vendor", "apl0"))),  # 3 = 422 HQ
    "ffv1": CodecSpec("ffv1", "ffv1", "matroska", (".mkv",), (("level", "3"), ("slicecrc", "1"), ("g", "1"))),
    "h264": CodecSpec("h264", "libx264", "mp4", (".mp4", ".mov"), (("crf", "18"), ("preset", "medium"))),
    "tiff": CodecSpec("tiff", "tiff", None, ("",), (("compression_algo", "deflate"),)),
    # "up" prediction at zlib level 3: ~3x faster than the defaults and smaller on film frames
    "png": CodecSpec("png", "png", None, ("",), (("pred", "up"), ("compression_level", "3"))),
}


_FILE_SUFFIXES = frozenset(
    {".mov", ".mp4", ".mkv", ".mxf", ".avi", ".m4v", ".png", ".tif", ".tiff", ".jpg", ".jpeg", ".dpx", ".exr"}
)
"""Suffixes that name a file: an image sequence (a folder) is not given one of them."""


def check_output(
    dest: Path,
    codec: CodecName,
    *,
    width: int,
    height: int,
    bit_depth: int,
    audio: Sequence[AudioInfo] = (),
    force: bool = False,
    inputs: Iterable[Path | None] = (),
) -> None:
    """Raise :class:`PostprodError` for anything that would stop a ``width`` x ``height`` reel of
    ``bit_depth``-bit luma with ``audio`` from being written to ``dest`` in ``codec``: an unknown
    codec, a suffix the codec does not take (an image sequence is a folder: no file suffix), a
    frame size the encoder's chroma subsampling refuses (odd widths in ProRes 4:2:2, odd sizes
    in H.264 4:2:0), an audio codec the container cannot carry without re-encoding, and what
    :func:`pipeline.files.check_destination` refuses. Reads nothing but the destination's folder."""
    dest = Path(dest)
    if codec not in CODECS:
        raise PostprodError(dest, f"unknown codec {codec!r} (choose from {', '.join(CODECS)})")
    spec = CODECS[codec]
    if spec.is_sequence:
        if dest.suffix.lower() in _FILE_SUFFIXES:
            raise PostprodError(
                dest, f"{codec} output is an image-sequence folder; give a folder name, not a {dest.suffix} file"
            )
    elif dest.suffix.lower() not in spec.suffixes:
        raise PostprodError(dest, f"{codec} output must be a {' or '.join(spec.suffixes)} file")
    if not spec.is_sequence:
        fmt = av.VideoFormat(spec.pix_fmt(bit_depth))
        sub_x, sub_y = fmt.chroma_width(width) < width, fmt.chroma_height(height) < height
        if (sub_x and width % 2) or (sub_y and height % 2):  # encoders refuse these
            raise PostprodError(
                dest,
                f"{spec.name} ({fmt.name}) needs an even {'width' if sub_x and width % 2 else 'height'}, "
                f"the reel is {width}x{height}; use --codec ffv1",
            )
    if dest.suffix.lower() == ".mp4":
        for a in audio:
            if a.codec not in _MP4_AUDIO:
                raise PostprodError(
                    dest,
                    f"audio stream #{a.index} ({a.codec}) cannot be carried in "
                    ".mp4 without re-encoding; write a .mov instead",
                )
    check_destination(dest, force=force, inputs=inputs, kind="sequence" if spec.is_sequence else "file")


def _writable_plane(frame: av.VideoFrame, i: int, dtype: np.dtype) -> np.ndarray:
    """Plane ``i`` of ``frame`` as a writable (h, w) view (line_size may be padded)."""
    plane = frame.planes[i]
    per_line = plane.line_size // np.dtype(dtype).itemsize
    view = np.frombuffer(memoryview(plane), dtype=dtype).reshape(plane.height, per_line)
    return view[:, : plane.width]


def _subsample(chroma: np.ndarray, sx: int, sy: int) -> np.ndarray:
    """(2, H, W) -> (2, ceil(H/sy), ceil(W/sx)) by averaging sx*sy blocks (edge replicated)."""
    if sx == 1 and sy == 1:
        return chroma
    _, h, w = chroma.shape
    padded = np.pad(chroma, ((0, 0), (0, -h % sy), (0, -w % sx)), mode="edge")
    ph, pw = padded.shape[1:]
    return padded.reshape(2, ph // sy, sy, pw // sx, sx).mean(axis=(2, 4))


class ReelWriter:
    """Context manager writing frames to ``dest`` in ``codec`` with the source's carry-over.

    ``write(luma, chroma)``: ``luma`` (H, W) the source's native-depth codes (uint8/uint16, as
    :class:`~pipeline.media.decode.Frame` gives them), ``chroma`` (2, H, W) float32 Cb, Cr in
    [-0.5, 0.5] or None for neutral grey. On a clean exit the encoder is flushed, the rest of
    the audio is muxed and the output renamed into place; on an exception nothing is left.
    Raises :class:`PostprodError` for what :func:`check_output` refuses (before anything is
    written) or no frames; ``ValueError`` for a frame of the wrong size or non-finite chroma.
    ``inputs``: the command's other inputs (the reel is one already), never to be replaced.

    ``template``: a reel already in ``codec`` (a segment :class:`ReelWriter` wrote from the same
    source): the output's video stream copies its codec parameters and frames come by
    :meth:`append`, packets remuxed without decoding; only for :data:`REMUX_CODECS`.
    """

    def __init__(
        self,
        dest: Path,
        source: ReelInfo,
        codec: CodecName,
        *,
        force: bool = False,
        copy_audio: bool = True,
        inputs: Iterable[Path | None] = (),
        template: Path | None = None,
    ) -> None:
        if template is not None and codec not in REMUX_CODECS:
            raise ValueError(f"{codec} segments cannot be joined by remuxing (only {', '.join(REMUX_CODECS)})")
        self.template = None if template is None else Path(template)
        self.inputs = (source.path, *inputs)
        check_output(
            dest,
            codec,
            width=source.width,
            height=source.height,
            bit_depth=source.bit_depth,
            audio=source.audio if copy_audio else (),
            force=force,
            inputs=self.inputs,
        )
        self.dest = Path(dest)
        self.source = source
        self.spec = CODECS[codec]
        self.force = force
        self.copy_audio = copy_audio
        self.frames_written = 0
        self.fps = source.fps
        self._stack = ExitStack()
        self._out: OutputContainer | None = None
        self._video: VideoStream | None = None
        self._images: VideoCodecContext | None = None
        self._tmp: Path | None = None
        self._audio_in: InputContainer | None = None
        self._audio_packets: Iterator[Packet] | None = None
        self._audio_map: dict[int, av.stream.Stream] = {}
        self._audio_shift: dict[int, int] = {}
        self._pending: Packet | None = None

    # --- setup --------------------------------------------------------------------------

    def __enter__(self) -> ReelWriter:
        try:
            self._open()
        except BaseException as err:
            self._stack.__exit__(type(err), err, err.__traceback__)
            raise
        return self

    def _open(self) -> None:
        src = self.source
        if src.vfr:
            warnings.warn(
                f"{src.path}: variable frame rate; writing {src.frames} frames at the constant "
                f"average rate {src.fps} fps",
                VariableFrameRateWarning,
                stacklevel=3,
            )
        self._tmp = self._stack.enter_context(
            atomic_output(
                self.dest, force=self.force, kind="sequence" if self.spec.is_sequence else "file", inputs=self.inputs
            )
        )
        if self.spec.is_sequence:
            self._images = self._image_encoder()
            if self.copy_audio and src.audio:
                self._out = self._stack.enter_context(
                    av.open(str(self._tmp / f"{self.dest.name}.mka"), "w", format="matroska", options=_BITEXACT)
                )
                self._add_audio(self._out)
            return
        muxer = _MUXERS.get(self.dest.suffix.lower(), self.spec.container)
        self._out = self._stack.enter_context(av.open(str(self._tmp), "w", format=muxer, options=_BITEXACT))
        self._video = self._add_video(self._out)
        if self.copy_audio and src.audio:
            self._add_audio(self._out)

    def _add_video(self, out: OutputContainer) -> VideoStream:
        src = self.source
        if self.template is not None:
            with open_input(self.template) as seg:
                copied = out.add_stream_from_template(video_stream(seg, self.template))
            assert isinstance(copied, VideoStream)
            copied.time_base = 1 / self.fps
            copied.codec_context.framerate = self.fps  # the mov muxer's tmcd track needs the rate
            if src.rotation:
                copied.set_display_rotation(src.rotation)
            if src.timecode:
                copied.metadata["timecode"] = src.timecode
            return copied
        stream = out.add_stream(self.spec.encoder, rate=self.fps, options=dict(self.spec.options))
        assert isinstance(stream, VideoStream), f"{self.spec.encoder} is not a video encoder"
        stream.width, stream.height = src.width, src.height
        stream.pix_fmt = self.spec.pix_fmt(src.bit_depth)
        stream.time_base = 1 / self.fps
        ctx = stream.codec_context
        ctx.thread_type = "AUTO"
        # Written as 'pasp' in MOV/MP4 and in the H.264 VUI. Matroska takes it only from the
        # AVStream, which PyAV cannot set: FFV1 .mkv outputs lose a non-square SAR.
        ctx.sample_aspect_ratio = src.sample_aspect_ratio
        ctx.color_range = _RANGE_CODES[src.luma_range]
        ctx.colorspace = _MATRIX_CODES.get(src.color_matrix or "", 1 if src.matrix == "bt709" else 6)
        ctx.color_primaries = _PRIMARIES_CODES.get(src.color_primaries or "", 2)
        ctx.color_trc = _TRANSFER_CODES.get(src.color_transfer or "", 2)
        if src.rotation:
            stream.set_display_rotation(src.rotation)
        if src.timecode:  # the mov muxer turns this into a tmcd track, matroska into a tag
            stream.metadata["timecode"] = src.timecode
        return stream

    def _image_encoder(self) -> VideoCodecContext:
        ctx = av.CodecContext.create(self.spec.encoder, "w")
        assert isinstance(ctx, VideoCodecContext), f"{self.spec.encoder} is not a video encoder"
        ctx.width, ctx.height = self.source.width, self.source.height
        ctx.pix_fmt = self.spec.pix_fmt(self.source.bit_depth)
        ctx.time_base = 1 / self.fps
        ctx.options = dict(self.spec.options)
        return ctx

    def _add_audio(self, out: OutputContainer) -> None:
        """Streams for the source's audio, copied from templates; demuxing starts lazily."""
        src = self.source
        self._audio_in = self._stack.enter_context(open_input(src.path))
        wanted = {a.index for a in src.audio}
        streams = [s for s in self._audio_in.streams.audio if s.index in wanted]
        for s in streams:
            try:
                o = out.add_stream_from_template(s)
            except ValueError as err:
                raise PostprodError(
                    self.dest,
                    f"audio stream #{s.index} ({s.codec_context.name}) cannot be "
                    f"carried in {out.format.name} without re-encoding",
                ) from err
            for key in ("language", "title", "handler_name"):
                if key in s.metadata:
                    o.metadata[key] = s.metadata[key]
            self._audio_map[s.index] = o
            # Keep sync with the video, which is written starting at 0: shift audio by the
            # source's first video frame time (in this stream's ticks).
            assert s.time_base is not None  # demuxed streams always have one
            self._audio_shift[s.index] = round(src.start_time / Fraction(s.time_base))
        self._audio_packets = (p for p in self._audio_in.demux(streams) if p.size)

    # --- writing ------------------------------------------------------------------------

    def append(self, segment: Path, on_frame: Callable[[], None] | None = None) -> int:
        """Append every frame of ``segment`` (written by a :class:`ReelWriter` in this codec from
        the same source, as ``template``) by copying its video packets: no decode, no encode.
        Timestamps are renumbered to follow the frames already written; the source's audio is
        interleaved as :meth:`write` does. ``on_frame()`` after each frame. Returns the frames appended.

        Raises :class:`PostprodError` if the segment's video stream does not match the template's
        (codec, frame size, pixel format) or is not intra-only.
        """
        if self.template is None or self._video is None or self._out is None:
            raise ValueError("append needs a ReelWriter opened with a template segment")
        segment = Path(segment)
        tb = 1 / self.fps
        appended = 0
        with open_input(segment) as seg:
            stream = video_stream(seg, segment)
            want, have = self._video.codec_context, stream.codec_context
            shape = [(c.name, c.width, c.height, c.format.name if c.format else None) for c in (have, want)]
            if shape[0] != shape[1]:
                raise PostprodError(
                    segment, f"segment is {shape[0]}, the output {shape[1]}; it cannot be joined by remuxing"
                )
            for packet in seg.demux(stream):
                if not packet.size:
                    continue
                if not packet.is_keyframe:
                    raise PostprodError(segment, "segment is not intra-only; it cannot be joined by remuxing")
                i = self.frames_written
                packet.stream = self._video
                packet.time_base = tb
                packet.pts = packet.dts = i
                packet.duration = 1
                self._out.mux(packet)
                self.frames_written += 1
                appended += 1
                self._mux_audio_until(Fraction(i + 1) / self.fps)
                if on_frame is not None:
                    on_frame()
        return appended

    def write(self, luma: np.ndarray, chroma: np.ndarray | None = None) -> None:
        """Append one frame (see the class docstring for shapes and ranges).

        ``chroma`` may also be the frame's chroma planes already quantised: an integer array
        (2, ceil(H / sy), ceil(W / sx)) of Cb, Cr codes at the depth and range of
        :attr:`chroma_layout` (e.g. :func:`pipeline.color.full_chroma_codes`), written as they are.
        """
        src = self.source
        if self.template is not None:
            raise ValueError("a ReelWriter opened with a template takes segments (append), not frames")
        if luma.shape != (src.height, src.width):
            raise ValueError(f"luma must be ({src.height}, {src.width}), got {luma.shape}")
        i = self.frames_written
        if chroma is not None and np.issubdtype(chroma.dtype, np.integer):
            sx, sy, _ = self.chroma_layout
            want = (2, -(-src.height // sy), -(-src.width // sx))
            if chroma.shape != want:
                raise ValueError(f"chroma codes must be {want}, got {chroma.shape}")
            self._encode(luma, chroma)
            return
        if chroma is not None and not np.isfinite(chroma).all():  # NaN would be encoded as a colour
            raise ValueError(f"{self.dest}: frame {i}: chroma has non-finite values (NaN or inf); not written")
        if self.spec.is_sequence:
            self._write_image(i, luma, chroma)
            self.frames_written += 1
            self._mux_audio_until(Fraction(i + 1) / self.fps)
            return
        sx, sy, depth = self.chroma_layout
        # None: neutral grey, a (2, 1, 1) zero broadcast over the planes
        sub = np.zeros((2, 1, 1), dtype=np.float32) if chroma is None else _subsample(chroma, sx, sy)
        self._encode(luma, chroma_to_codes(sub, depth, src.luma_range))

    @property
    def chroma_layout(self) -> tuple[int, int, int]:
        """(sx, sy, depth) of the reel's chroma planes: subsampling (2, 1 for 4:2:2, 2, 2 for
        4:2:0) and code bit depth, what :meth:`write` takes as codes. Reels only, not sequences."""
        if self.spec.is_sequence:
            raise ValueError("an image sequence is written as RGB: it has no chroma planes")
        src = self.source
        fmt = av.VideoFormat(self.spec.pix_fmt(src.bit_depth))
        sx = 2 if fmt.chroma_width(src.width) < src.width else 1
        sy = 2 if fmt.chroma_height(src.height) < src.height else 1
        return sx, sy, fmt.components[0].bits

    def _encode(self, luma: np.ndarray, codes: np.ndarray) -> None:
        assert self._out is not None and self._video is not None  # set by _open for a reel
        i = self.frames_written
        frame = self._video_frame(luma, codes)
        frame.pts = i
        frame.time_base = 1 / self.fps
        self._out.mux(self._video.encode(frame))
        self.frames_written += 1
        self._mux_audio_until(Fraction(i + 1) / self.fps)

    def _video_frame(self, luma: np.ndarray, codes: np.ndarray) -> av.VideoFrame:
        """A frame of the reel's pixel format: ``luma`` at the source depth, chroma ``codes`` at
        the output depth, subsampled (or (2, 1, 1), broadcast)."""
        src = self.source
        fmt = av.VideoFormat(self.spec.pix_fmt(src.bit_depth))
        depth = fmt.components[0].bits
        dtype = np.dtype(np.uint8) if depth == 8 else np.dtype("<u2")
        frame = av.VideoFrame(src.width, src.height, fmt.name)
        _writable_plane(frame, 0, dtype)[...] = change_depth(luma, src.bit_depth, depth)
        for k in (1, 2):
            _writable_plane(frame, k, dtype)[...] = codes[k - 1]
        # Some encoders (prores_ks) take the colour tags from each frame, not the context.
        assert self._video is not None  # set by _open for a reel
        ctx = self._video.codec_context
        frame.color_range, frame.colorspace = ctx.color_range, ctx.colorspace
        frame.color_primaries, frame.color_trc = ctx.color_primaries, ctx.color_trc
        return frame

    def _write_image(self, i: int, luma: np.ndarray, chroma: np.ndarray | None) -> None:
        src = self.source
        rgb = rgb_from_luma_chroma(luma, chroma, src.bit_depth, src.luma_range, src.matrix)
        codes = np.rint(rgb * 65535.0).astype(np.uint16)
        frame = av.VideoFrame.from_ndarray(codes, format=self.spec.pix_fmt(src.bit_depth))
        frame.pts = i
        assert self._images is not None and self._tmp is not None  # set by _open for a sequence
        data = b"".join(bytes(p) for p in self._images.encode(frame))
        (self._tmp / f"{self.dest.name}.{i:06d}.{self.spec.image_ext}").write_bytes(data)

    def _mux_audio_until(self, t: Fraction | None) -> None:
        """Mux source audio packets up to output time ``t`` seconds (all if None)."""
        if self._audio_packets is None:
            return
        while True:
            packet = self._pending or next(self._audio_packets, None)
            self._pending = None
            if packet is None:
                self._audio_packets = None
                return
            shift = self._audio_shift[packet.stream.index]
            ts = packet.dts if packet.dts is not None else packet.pts
            if t is not None and ts is not None and (ts - shift) * Fraction(packet.time_base) > t:
                self._pending = packet  # not yet: keeps the file interleaved
                return
            if packet.pts is not None:
                packet.pts -= shift
            if packet.dts is not None:
                packet.dts -= shift
            packet.stream = self._audio_map[packet.stream.index]
            assert self._out is not None  # audio packets are only read when there is an output
            self._out.mux(packet)

    # --- finishing ----------------------------------------------------------------------

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            try:
                self._finish()
            except BaseException as err:
                self._stack.__exit__(type(err), err, err.__traceback__)
                raise
            self._stack.__exit__(None, None, None)
        else:
            self._stack.__exit__(exc_type, exc, tb)

    def _finish(self) -> None:
        if self.frames_written == 0:
            raise PostprodError(self.dest, "no frames were written")
        if self._video is not None and self.template is None:
            assert self._out is not None  # the video stream belongs to it
            self._out.mux(self._video.encode(None))  # flush: no frame lost at the end
        self._mux_audio_until(None)
        if self.spec.is_sequence:
            self._write_sidecar()

    def _write_sidecar(self) -> None:
        src = self.source
        ext = self.spec.image_ext
        meta = {
            "source": str(src.path),
            "codec": self.spec.name,
            "frames": self.frames_written,
            "fps": f"{self.fps.numerator}/{self.fps.denominator}",
            "timecode": src.timecode,
            "first_frame": f"{self.dest.name}.{0:06d}.{ext}",
            "pattern": f"{self.dest.name}.%06d.{ext}",
            "width": src.width,
            "height": src.height,
            "sample_aspect_ratio": f"{src.sample_aspect_ratio.numerator}/{src.sample_aspect_ratio.denominator}",
            "rotation": src.rotation,
            "rgb": "16-bit R'G'B' (full range), from YCbCr " + src.matrix,
            "audio": f"{self.dest.name}.mka" if self._out is not None else None,
        }
        assert self._tmp is not None  # set by _open
        (self._tmp / f"{self.dest.name}.json").write_text(json.dumps(meta, indent=2) + "\n")


def transcode(reel: Path, dest: Path, codec: CodecName, *, force: bool = False) -> int:
    """Decode ``reel`` and write it to ``dest`` in ``codec`` keeping luma, chroma and the
    carry-over (see the module docstring). Returns the number of frames written."""
    info = probe(reel)
    with ReelWriter(dest, info, codec, force=force) as writer:
        for frame in iter_frames(reel, chroma=True):
            writer.write(frame.luma, frame.chroma)
    return writer.frames_written
