"""pipeline.media: probe, frame-exact decoding, timecode, writing with carry-over."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from conftest import Clip, clip_luma

from pipeline.color import chroma_from_rgb, rgb_from_luma_chroma
from pipeline.errors import PostprodError
from pipeline.media import CorruptFrameWarning, iter_frames, probe
from pipeline.media.decode import is_intra_only, iter_frame_ranges
from pipeline.media.encode import ReelWriter, VariableFrameRateWarning, transcode
from pipeline.media.probe import scan_packets
from pipeline.media.timecode import (
    add_frames,
    frames_per_day,
    frames_to_timecode,
    is_drop_frame_rate,
    timecode_to_frames,
)

NTSC_FILM = Fraction(24000, 1001)


def audio_packets(path: Path) -> list[tuple[Fraction, bytes]]:
    """(time relative to the first video frame in seconds, bytes) of the first audio stream."""
    info = probe(path)
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        tb = Fraction(stream.time_base)
        return [(p.pts * tb - info.start_time, bytes(p)) for p in c.demux(stream) if p.size]


def assert_same_audio(src: Path, out: Path, tolerance: Fraction = Fraction(0)) -> None:
    """Same packets, byte for byte, at the same times relative to the video (within the output
    container's timestamp precision, e.g. 1 ms for Matroska)."""
    a, b = audio_packets(src), audio_packets(out)
    assert len(a) == len(b) and len(a) > 10
    assert [x[1] for x in a] == [x[1] for x in b]
    assert max(abs(x[0] - y[0]) for x, y in zip(a, b)) <= tolerance


def luma_frames(path: Path, **kwargs) -> list[np.ndarray]:
    return [f.luma for f in iter_frames(path, **kwargs)]


# --- probe ---------------------------------------------------------------------------------


def test_probe_generated_clip(clip_8bit: Clip) -> None:
    info = probe(clip_8bit.path)
    assert (info.frames, info.fps, info.vfr) == (36, NTSC_FILM, False)
    assert (info.width, info.height, info.bit_depth, info.pix_fmt) == (160, 96, 8, "yuv420p")
    assert info.timecode == "01:00:00:00"
    assert info.duration == Fraction(36 * 1001, 24000) and info.start_time == 0
    assert (info.color_range, info.color_matrix, info.color_primaries, info.color_transfer) == ("tv",) + ("bt709",) * 3
    assert info.rotation == 0 and info.sample_aspect_ratio == 1
    assert [(a.codec, a.sample_rate, a.channels) for a in info.audio] == [("aac", 48000, 2)]
    d = json.loads(json.dumps(info.to_dict()))
    assert d["fps"] == "24000/1001" and d["frames"] == 36 and d["timecode"] == "01:00:00:00"
    assert "24000/1001" in info.describe() and "01:00:00:00" in info.describe()


def test_probe_10bit_matroska(clip_10bit: Clip) -> None:
    info = probe(clip_10bit.path)
    assert (info.bit_depth, info.pix_fmt, info.frames, info.fps) == (10, "yuv422p10le", 30, NTSC_FILM)
    assert info.timecode == "01:00:00:00"  # Matroska TIMECODE tag
    assert info.audio[0].codec == "pcm_s16le"


def test_probe_late_start(clip_late_start: Clip) -> None:
    info = probe(clip_late_start.path)
    assert info.start_time == Fraction(2, 5) and info.frames == 24 and info.fps == 25


REAL_EXPECTED = {  # what the files are (README, and their headers cross-checked by hand)
    "testvideo.mp4": dict(frames=720, fps=Fraction(30000, 1001), vfr=False),
    "goldeneye-vfr-drop3.mp4": dict(frames=160, vfr=True),
    "issue-134-rotate.mp4": dict(frames=240, fps=NTSC_FILM, rotation=-90),
    "issue-195-aspect-ratio.mp4": dict(frames=628, fps=Fraction(25), sample_aspect_ratio=Fraction(16, 11)),
    "delayed_start.mp4": dict(frames=24, fps=Fraction(25), start_time=Fraction(13760, 12800)),
    "issue-236-split-copy.mkv": dict(frames=48, fps=NTSC_FILM, vfr=False),
}


def test_probe_every_shared_reel(shared_data: Path) -> None:
    files = sorted(
        p
        for d in ("reels", "film")
        for p in (shared_data / d).glob("*.m[kp4o]*")
        if p.suffix in {".mp4", ".mkv", ".mov"}
    )
    assert len(files) >= 11
    for path in files:
        info = probe(path)
        assert info.frames > 0 and info.fps > 0 and info.width > 0, path
        json.dumps(info.to_dict())
        with av.open(str(path)) as c:  # MP4 sample tables must agree with the packet count
            declared = c.streams.video[0].frames
        assert declared in (0, info.frames), path
        for key, value in REAL_EXPECTED.get(path.name, {}).items():
            assert getattr(info, key) == value, (path.name, key)


def test_vfr_average_rate(shared_data: Path) -> None:
    info = probe(shared_data / "reels" / "goldeneye-vfr-drop3.mp4")
    assert info.vfr and info.duration == info.frames / info.fps
    assert 15 < info.fps < 17  # two of every three 24000/1001 frames kept


# --- decoding ------------------------------------------------------------------------------


def test_decode_10bit_luma_exact(clip_10bit: Clip) -> None:
    frames = list(iter_frames(clip_10bit.path))
    assert [f.index for f in frames] == list(range(30))
    for f in frames:
        assert f.luma.dtype == np.uint16 and f.bit_depth == 10 and f.chroma is None
        assert np.array_equal(f.luma, clip_luma(f.index, 96, 160, 10))
        assert abs(f.time - f.index / NTSC_FILM) <= Fraction(1, 1000)  # Matroska: ms timestamps


def test_frame_times_are_exact(clip_8bit: Clip, clip_late_start: Clip) -> None:
    assert [f.time for f in iter_frames(clip_8bit.path)] == [i / NTSC_FILM for i in range(36)]
    late = list(iter_frames(clip_late_start.path, start=20))
    assert [f.time for f in late] == [Fraction(2, 5) + Fraction(i, 25) for i in range(20, 24)]


def test_decode_chroma(clip_10bit: Clip) -> None:
    f = next(iter_frames(clip_10bit.path, start=3, stop=4, chroma=True))
    assert f.chroma.shape == (2, 96, 160) and f.chroma.dtype == np.float32
    assert np.abs(f.chroma).max() <= 0.5
    assert f.chroma[0, :, -1].mean() > 0.1 > -0.1 > f.chroma[0, :, 0].mean()  # Cb ramps left to right


def test_max_height_keeps_dtype_and_aspect(clip_8bit: Clip, clip_10bit: Clip) -> None:
    small = next(iter_frames(clip_8bit.path, max_height=48))
    assert small.luma.shape == (48, 80) and small.luma.dtype == np.uint8
    small10 = next(iter_frames(clip_10bit.path, max_height=48, chroma=True))
    assert small10.luma.dtype == np.uint16 and small10.bit_depth == 10 and small10.chroma.shape == (2, 48, 80)
    full = clip_luma(0, 96, 160, 10).astype(float)
    assert abs(small10.luma.mean() - full.mean()) < 4  # same code values, just fewer of them


@pytest.mark.parametrize("start", [1, 5, 11, 12, 13, 23, 34, 35])
def test_seek_is_frame_exact(clip_8bit: Clip, start: int, full_decode_8bit: list[np.ndarray]) -> None:
    got = list(iter_frames(clip_8bit.path, start=start, stop=start + 2))
    assert [f.index for f in got] == list(range(start, min(start + 2, 36)))
    for f in got:
        assert np.array_equal(f.luma, full_decode_8bit[f.index])


@pytest.fixture(scope="module")
def full_decode_8bit(clip_8bit: Clip) -> list[np.ndarray]:
    return luma_frames(clip_8bit.path)


@pytest.mark.parametrize("name", ["goldeneye-vfr-drop3.mp4", "delayed_start.mp4", "issue-236-split-copy.mkv"])
def test_seek_real_files(shared_data: Path, name: str) -> None:
    path = shared_data / "reels" / name
    n = probe(path).frames
    full = luma_frames(path, max_height=144)
    assert len(full) == n
    for start in (1, n // 2 + 1, n - 2):
        got = luma_frames(path, start=start, stop=start + 2, max_height=144)
        assert len(got) == 2
        assert all(np.array_equal(a, full[start + k]) for k, a in enumerate(got)), (name, start)


@pytest.fixture(scope="module")
def intra_clip(make_clip: Callable[..., Clip]) -> Clip:
    """24 frames of MJPEG: every frame a keyframe."""
    return make_clip("intra.mov", frames=24, codec="mjpeg", pix_fmt="yuvj420p", audio_codec=None)


@pytest.mark.parametrize(
    "ranges",
    [
        [range(0, 36, 5)],  # every 5th frame, across the GOPs of 12 and their B-frames
        [range(2, 36, 3)],
        [range(1, 4), range(9, 15, 2), range(15, 16), range(30, 99)],  # windows in the first and later GOPs
        [range(13, 14), range(14, 15), range(35, 36)],
    ],
)
def test_frame_ranges_are_exact_in_long_gop_and_intra_streams(
    clip_8bit: Clip, intra_clip: Clip, full_decode_8bit: list[np.ndarray], ranges: list[range]
) -> None:
    for clip, full in ((clip_8bit, full_decode_8bit), (intra_clip, luma_frames(intra_clip.path))):
        index = scan_packets(clip.path)
        got = list(iter_frame_ranges(clip.path, ranges, index=index))
        want = [i for r in ranges for i in range(r.start, min(r.stop, clip.frames), r.step)]
        assert [f.index for f in got] == want, clip.path.name
        assert all(np.array_equal(f.luma, full[f.index]) for f in got), clip.path.name
        assert all(f.time == int(index.pts[f.index]) * index.time_base for f in got)


def test_intra_only_streams_are_recognised(clip_8bit: Clip, clip_10bit: Clip, intra_clip: Clip) -> None:
    assert is_intra_only(scan_packets(intra_clip.path))
    assert not is_intra_only(scan_packets(clip_8bit.path))  # H.264, GOP 12


def test_frame_ranges_must_increase(clip_8bit: Clip) -> None:
    for bad in ([range(5, 10), range(8, 12)], [range(5, 10), range(0, 3)], [range(-1, 3)], [range(0, 10, -1)]):
        with pytest.raises(ValueError, match="increasing"):
            list(iter_frame_ranges(clip_8bit.path, bad))
    assert list(iter_frame_ranges(clip_8bit.path, [range(40, 50), range(60, 70)])) == []


def test_analysis_decoding_is_close_to_exact(clip_8bit: Clip, full_decode_8bit: list[np.ndarray]) -> None:
    fast = list(iter_frames(clip_8bit.path, analysis=True))
    assert [f.index for f in fast] == list(range(36))
    diff = [np.abs(f.luma.astype(int) - full_decode_8bit[f.index]).mean() for f in fast]
    assert 0 < max(diff) < 0.5  # deblocking skipped (so the option took): a few code values near block edges


def test_corrupt_packet_mid_stream(make_clip: Callable[..., Clip], tmp_path: Path) -> None:
    clip = make_clip("intra.mov", frames=24, codec="mjpeg", pix_fmt="yuvj420p", audio_codec=None)
    good = luma_frames(clip.path)
    with av.open(str(clip.path)) as c:
        packets = [(p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size]
    data = bytearray(clip.path.read_bytes())
    pos, size = packets[10]
    data[pos : pos + size] = bytes(size)  # zero frame 10's packet: nothing of the picture is left
    bad = tmp_path / "bad.mov"
    bad.write_bytes(bytes(data))
    assert probe(bad).frames == 24
    calls: list[tuple[range, str]] = []
    frames = list(iter_frames(bad, on_corrupt=lambda r, m: calls.append((r, m))))
    assert [f.index for f in frames] == list(range(24))  # numbering kept
    assert [c[0] for c in calls] == [range(10, 11)] and "frame 9" in calls[0][1]
    assert np.array_equal(frames[10].luma, good[9])  # the stand-in is the previous frame
    assert all(np.array_equal(frames[i].luma, good[i]) for i in range(24) if i != 10)
    with pytest.warns(CorruptFrameWarning, match=r"bad\.mov: frame 10: could not be decoded"):
        list(iter_frames(bad, start=8, stop=12))
    calls.clear()  # every 5th frame: 10 stands in as a copy of 5, the previous wanted one
    sparse = list(iter_frame_ranges(bad, [range(0, 24, 5)], on_corrupt=lambda r, m: calls.append((r, m))))
    assert [f.index for f in sparse] == [0, 5, 10, 15, 20]
    assert [c[0] for c in calls] == [range(10, 11)] and "frame 5" in calls[0][1]
    assert np.array_equal(sparse[2].luma, good[5])


def test_truncated_faststart_mov(clip_8bit: Clip, tmp_path: Path) -> None:
    """An index-first MOV cut short: the frames present decode, the rest is reported missing."""
    whole = tmp_path / "faststart.mov"
    with av.open(str(clip_8bit.path)) as src, av.open(str(whole), "w", options={"movflags": "faststart"}) as out:
        video = out.add_stream_from_template(src.streams.video[0])
        for p in src.demux(src.streams.video[0]):
            if p.size:
                p.stream = video
                out.mux(p)
    cut = tmp_path / "cut.mov"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    info = probe(cut)
    assert 0 < info.frames < 36 and any("truncated" in n for n in info.notes)
    calls: list[tuple[range, str]] = []
    frames = list(iter_frames(cut, on_corrupt=lambda r, m: calls.append((r, m))))
    assert len(frames) == info.frames
    # The last packets listed may be cut inside their data (stand-ins, reported), the rest is missing.
    missing = [r for r, m in calls if "truncated" in m]
    assert missing == [range(info.frames, 36)]
    assert all(r.stop <= info.frames for r, m in calls if r not in missing)


def test_truncated_matroska(clip_10bit: Clip, tmp_path: Path) -> None:
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(clip_10bit.path.read_bytes()[: clip_10bit.path.stat().st_size * 6 // 10])
    info = probe(cut)
    assert 0 < info.frames < 30 and info.notes
    frames = list(iter_frames(cut, on_corrupt=lambda r, m: None))
    assert len(frames) == info.frames
    assert all(np.array_equal(f.luma, clip_luma(f.index, 96, 160, 10)) for f in frames)


def test_zero_frames(tmp_path: Path) -> None:
    """A recording whose video track never got a frame (only audio was written)."""
    empty = tmp_path / "empty.mkv"
    with av.open(str(empty), "w") as out:
        video = out.add_stream("ffv1", rate=24)
        video.width, video.height = 64, 48
        audio = out.add_stream("pcm_s16le", rate=48000)
        audio.layout = "stereo"
        pcm = av.AudioFrame.from_ndarray(np.zeros((1, 2048), np.int16), format="s16", layout="stereo")
        pcm.sample_rate, pcm.pts = 48000, 0
        out.mux(audio.encode(pcm))
    with pytest.raises(PostprodError, match="no frames"):
        probe(empty)
    with pytest.raises(PostprodError, match="no frames"):
        list(iter_frames(empty))


def test_start_past_the_end_yields_nothing(clip_8bit: Clip) -> None:
    assert list(iter_frames(clip_8bit.path, start=36)) == []
    with pytest.raises(ValueError):
        list(iter_frames(clip_8bit.path, start=-1))


# --- timecode ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "fps", "tc"),
    [
        (86400, NTSC_FILM, "01:00:00:00"),
        (0, Fraction(25), "00:00:00:00"),
        (1799, Fraction(30000, 1001), "00:00:59;29"),
        (1800, Fraction(30000, 1001), "00:01:00;02"),
        (17982, Fraction(30000, 1001), "00:10:00;00"),
        (107892, Fraction(30000, 1001), "01:00:00;00"),
        (3600, Fraction(60000, 1001), "00:01:00;04"),
        (90000, Fraction(25), "01:00:00:00"),
    ],
)
def test_timecode_known_values(frame: int, fps: Fraction, tc: str) -> None:
    assert frames_to_timecode(frame, fps) == tc
    assert timecode_to_frames(tc, fps) == frame


@pytest.mark.parametrize("fps", [NTSC_FILM, Fraction(24), Fraction(25), Fraction(30000, 1001), Fraction(60000, 1001)])
def test_timecode_round_trip(fps: Fraction) -> None:
    day = frames_per_day(fps, is_drop_frame_rate(fps))
    for n in list(range(0, 40000, 7)) + [17981, 17982, 17983, day - 1]:
        assert timecode_to_frames(frames_to_timecode(n, fps), fps) == n
    assert frames_to_timecode(day, fps) == frames_to_timecode(0, fps)  # wraps at 24 hours


def test_timecode_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="does not exist"):
        timecode_to_frames("00:01:00;00", Fraction(30000, 1001))
    with pytest.raises(ValueError, match="drop-frame"):
        timecode_to_frames("00:00:10;00", Fraction(25))
    with pytest.raises(ValueError, match="out of range"):
        timecode_to_frames("00:00:00:24", NTSC_FILM)
    with pytest.raises(ValueError):
        timecode_to_frames("1:2:3", NTSC_FILM)
    assert frames_to_timecode(1800, Fraction(30000, 1001), drop_frame=False) == "00:01:00:00"


def test_timecode_offsets_wrap_at_24_hours() -> None:
    assert add_frames("01:00:00:00", -1, NTSC_FILM) == "00:59:59:23"
    assert add_frames("23:59:59:23", 1, Fraction(24)) == "00:00:00:00"
    assert add_frames("00:00:59;29", 1, Fraction(30000, 1001)) == "00:01:00;02"


# --- writing -------------------------------------------------------------------------------


@pytest.mark.parametrize("clip_name", ["clip_8bit", "clip_10bit"])
def test_ffv1_luma_bit_exact_with_carry_over(clip_name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    clip: Clip = request.getfixturevalue(clip_name)
    dest = tmp_path / "out.mkv"
    assert transcode(clip.path, dest, "ffv1") == clip.frames
    src, out = probe(clip.path), probe(dest)
    assert (out.frames, out.fps, out.timecode, out.bit_depth) == (src.frames, src.fps, src.timecode, src.bit_depth)
    assert out.pix_fmt == ("yuv444p" if src.bit_depth == 8 else "yuv444p10le")
    for a, b in zip(luma_frames(clip.path), luma_frames(dest), strict=True):
        assert np.array_equal(a, b)
    assert_same_audio(clip.path, dest, tolerance=Fraction(1, 1000))  # Matroska: ms timestamps


def test_luma_passthrough_with_new_chroma(clip_10bit: Clip, tmp_path: Path) -> None:
    """What a colorizer does: keep the source luma, hand in its own chroma."""
    info = probe(clip_10bit.path)
    dest = tmp_path / "colour.mkv"
    rng = np.random.default_rng(5)
    given = []
    with ReelWriter(dest, info, "ffv1", copy_audio=False) as writer:
        for f in iter_frames(clip_10bit.path, stop=6):
            rgb = rng.random((96, 160, 3), dtype=np.float32)
            given.append(chroma_from_rgb(rgb, info.matrix))
            writer.write(f.luma, given[-1])
    out = list(iter_frames(dest, chroma=True))
    assert len(out) == 6
    for f, chroma in zip(out, given):
        assert np.array_equal(f.luma, clip_luma(f.index, 96, 160, 10))
        assert np.abs(f.chroma - chroma).max() <= 0.5 / (224 * 4) + 1e-6


def test_prores_keeps_10_bits(make_clip: Callable[..., Clip], tmp_path: Path) -> None:
    clip = make_clip("smooth10.mkv", frames=8, codec="ffv1", pix_fmt="yuv422p10le", audio_codec=None, texture=False)
    dest = tmp_path / "out.mov"
    transcode(clip.path, dest, "prores")
    out = probe(dest)
    assert (out.codec, out.pix_fmt, out.bit_depth, out.frames, out.timecode) == (
        "prores",
        "yuv422p10le",
        10,
        8,
        "01:00:00:00",
    )
    errors = [np.abs(f.luma.astype(int) - clip_luma(f.index, 96, 160, 10, texture=False)) for f in iter_frames(dest)]
    # An 8-bit detour would cost ~1 code on average on this smooth ramp.
    assert np.mean([e.mean() for e in errors]) < 0.25 and max(e.max() for e in errors) <= 2


def test_prores_from_8bit_with_audio_and_timecode(clip_8bit: Clip, tmp_path: Path) -> None:
    dest = tmp_path / "out.mov"
    transcode(clip_8bit.path, dest, "prores")
    out = probe(dest)
    assert (out.frames, out.fps, out.timecode, out.pix_fmt) == (36, NTSC_FILM, "01:00:00:00", "yuv422p10le")
    assert (out.color_range, out.color_matrix, out.color_primaries, out.color_transfer) == ("tv",) + ("bt709",) * 3
    diffs = [
        np.abs(b.astype(int) - (a.astype(int) << 2))
        for a, b in zip(luma_frames(clip_8bit.path), luma_frames(dest), strict=True)
    ]
    assert np.mean([d.mean() for d in diffs]) < 4  # << 2 within ProRes rounding (10-bit codes)
    assert_same_audio(clip_8bit.path, dest)


def test_h264_preview(clip_8bit: Clip, tmp_path: Path) -> None:
    dest = tmp_path / "preview.mp4"
    transcode(clip_8bit.path, dest, "h264")
    out = probe(dest)
    assert (out.codec, out.frames, out.fps, out.timecode, out.pix_fmt) == (
        "h264",
        36,
        NTSC_FILM,
        "01:00:00:00",
        "yuv420p",
    )
    assert (out.color_range, out.color_matrix) == ("tv", "bt709")
    assert_same_audio(clip_8bit.path, dest)


def test_pcm_cannot_go_into_mp4(clip_10bit: Clip, tmp_path: Path) -> None:
    dest = tmp_path / "preview.mp4"
    with pytest.raises(PostprodError, match=r"pcm_s16le.*\.mov"):
        transcode(clip_10bit.path, dest, "h264")
    assert list(tmp_path.iterdir()) == []
    transcode(clip_10bit.path, tmp_path / "preview.mov", "h264")  # the suggested way works
    assert_same_audio(clip_10bit.path, tmp_path / "preview.mov", tolerance=Fraction(1, 1000))


def test_late_start_keeps_audio_sync(clip_late_start: Clip, tmp_path: Path) -> None:
    dest = tmp_path / "late.mov"
    transcode(clip_late_start.path, dest, "prores")
    assert probe(dest).frames == 24
    assert_same_audio(clip_late_start.path, dest)  # same offset from the first video frame


@pytest.mark.parametrize(("codec", "ext"), [("tiff", "tif"), ("png", "png")])
def test_image_sequence(clip_8bit: Clip, tmp_path: Path, codec: str, ext: str) -> None:
    dest = tmp_path / "seq"
    transcode(clip_8bit.path, dest, codec)
    names = sorted(p.name for p in dest.iterdir())
    assert names[:2] == [f"seq.000000.{ext}", f"seq.000001.{ext}"] and f"seq.000035.{ext}" in names
    assert len([n for n in names if n.endswith(ext)]) == 36
    meta = json.loads((dest / "seq.json").read_text())
    assert (meta["fps"], meta["timecode"], meta["frames"]) == ("24000/1001", "01:00:00:00", 36)
    image = cv2.imread(str(dest / f"seq.000007.{ext}"), cv2.IMREAD_UNCHANGED)
    assert image.dtype == np.uint16 and image.shape == (96, 160, 3)
    src = next(iter_frames(clip_8bit.path, start=7, stop=8, chroma=True))
    expected = np.rint(rgb_from_luma_chroma(src.luma, src.chroma, 8, "tv", "bt709") * 65535)
    assert np.abs(image[..., ::-1].astype(float) - expected).max() <= 1
    with av.open(str(dest / meta["audio"])) as mka, av.open(str(clip_8bit.path)) as orig:
        assert [bytes(p) for p in mka.demux() if p.size] == [bytes(p) for p in orig.demux(audio=0) if p.size]


def test_writer_leaves_nothing_on_error(clip_8bit: Clip, tmp_path: Path) -> None:
    info = probe(clip_8bit.path)
    dest = tmp_path / "out.mov"
    with pytest.raises(RuntimeError), ReelWriter(dest, info, "prores") as writer:
        writer.write(np.zeros((96, 160), np.uint8))
        raise RuntimeError("colorizer crashed")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(PostprodError, match="no frames"), ReelWriter(dest, info, "prores"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_existing_output_and_wrong_suffix(clip_8bit: Clip, tmp_path: Path) -> None:
    info = probe(clip_8bit.path)
    dest = tmp_path / "out.mkv"
    dest.write_bytes(b"keep me")
    with pytest.raises(PostprodError, match="already exists"):
        transcode(clip_8bit.path, dest, "ffv1")
    assert dest.read_bytes() == b"keep me"
    with pytest.raises(PostprodError, match=r"\.mov"):
        ReelWriter(tmp_path / "out.mp4", info, "prores")


@pytest.mark.parametrize("codec,ext", [("prores", ".mov"), ("h264", ".mp4")])
def test_rotation_and_aspect_carry_over(shared_data: Path, tmp_path: Path, codec: str, ext: str) -> None:
    for name, key, value in [
        ("issue-134-rotate.mp4", "rotation", -90),
        ("issue-195-aspect-ratio.mp4", "sample_aspect_ratio", Fraction(16, 11)),
    ]:
        src = shared_data / "reels" / name
        info = probe(src)
        dest = tmp_path / f"{name}{ext}"
        with ReelWriter(dest, info, codec, copy_audio=False) as writer:
            for f in iter_frames(src, stop=3, chroma=True):
                writer.write(f.luma, f.chroma)
        assert getattr(probe(dest), key) == value


def test_vfr_is_written_at_the_average_rate(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "reels" / "goldeneye-vfr-drop3.mp4"
    info = probe(src)
    dest = tmp_path / "vfr.mp4"
    with pytest.warns(VariableFrameRateWarning), ReelWriter(dest, info, "h264") as writer:
        for f in iter_frames(src, stop=5, max_height=None):
            writer.write(f.luma)
    out = probe(dest)
    assert (out.fps, out.vfr, out.frames) == (info.fps, False, 5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "codec,name", [("prores", "rt.mov"), ("ffv1", "rt.mkv"), ("h264", "rt.mp4"), ("tiff", "rt"), ("png", "rt")]
)
def test_round_trip_real_reel_with_audio(shared_data: Path, tmp_path: Path, codec: str, name: str) -> None:
    """Every codec on the full 628-frame reel: frames, rate, aspect and audio packets carried over."""
    src = shared_data / "reels" / "issue-195-aspect-ratio.mp4"
    info = probe(src)
    dest = tmp_path / name
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptFrameWarning)
        assert transcode(src, dest, codec) == info.frames
    if codec in ("tiff", "png"):
        meta = json.loads((dest / "rt.json").read_text())
        assert (meta["frames"], meta["fps"], meta["timecode"]) == (info.frames, "25/1", info.timecode)
        assert len(list(dest.glob("rt.0*"))) == info.frames
        with av.open(str(dest / meta["audio"])) as mka, av.open(str(src)) as orig:
            assert [bytes(p) for p in mka.demux() if p.size] == [bytes(p) for p in orig.demux(audio=0) if p.size]
        return
    out = probe(dest)
    assert (out.frames, out.fps, out.timecode) == (info.frames, info.fps, info.timecode)
    assert_same_audio(src, dest, tolerance=Fraction(1, 1000) if codec == "ffv1" else Fraction(0))


@pytest.mark.parametrize(
    ("pix_fmt", "size"), [("yuv420p12le", (160, 96)), ("yuv420p16le", (160, 96)), ("yuv444p", (161, 97))]
)
def test_ffv1_exact_at_any_depth_and_odd_sizes(
    make_clip: Callable[..., Clip], tmp_path: Path, pix_fmt: str, size: tuple[int, int]
) -> None:
    clip = make_clip(
        f"deep_{pix_fmt}.mkv", frames=4, codec="ffv1", pix_fmt=pix_fmt, audio_codec=None, width=size[0], height=size[1]
    )
    dest = tmp_path / "out.mkv"
    transcode(clip.path, dest, "ffv1")
    assert probe(dest).bit_depth == clip.bit_depth
    for f in iter_frames(dest):
        assert np.array_equal(f.luma, clip_luma(f.index, size[1], size[0], clip.bit_depth))
    if size[0] % 2:
        with pytest.raises(PostprodError, match="even width"):
            transcode(clip.path, tmp_path / "out.mp4", "h264")
        assert not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize("codec", ["prores", "ffv1"])
def test_segments_joined_by_remux_equal_one_encode(clip_8bit: Clip, tmp_path: Path, codec: str) -> None:
    """Shots written as separate segments and joined by copying packets give the frames, rate,
    timecode and audio of the same frames encoded in one go, without decoding the segments."""
    info = probe(clip_8bit.path)
    frames = list(iter_frames(clip_8bit.path))
    rng = np.random.default_rng(1)
    chroma = [(rng.random((2, info.height, info.width), dtype=np.float32) - 0.5) * 0.3 for _ in frames]
    ext = ".mov" if codec == "prores" else ".mkv"
    cuts = [0, 10, 11, len(frames)]  # a one-frame shot too
    segments = []
    for k, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):
        seg = tmp_path / f"seg{k}{ext}"
        with ReelWriter(seg, info, codec, copy_audio=False) as w:
            for f in frames[a:b]:
                w.write(f.luma, chroma[f.index])
        segments.append(seg)
    joined, whole = tmp_path / f"joined{ext}", tmp_path / f"whole{ext}"
    with ReelWriter(joined, info, codec, template=segments[0]) as w:
        assert [w.append(s) for s in segments] == [10, 1, len(frames) - 11]
    with ReelWriter(whole, info, codec) as w:
        for f in frames:
            w.write(f.luma, chroma[f.index])
    a, b = probe(joined), probe(whole)
    assert (
        (a.frames, a.fps, a.timecode, a.pix_fmt)
        == (b.frames, b.fps, b.timecode, b.pix_fmt)
        == (
            info.frames,
            info.fps,
            info.timecode,
            b.pix_fmt,
        )
    )
    for x, y in zip(iter_frames(joined, chroma=True), iter_frames(whole, chroma=True), strict=True):
        assert np.array_equal(x.luma, y.luma) and np.array_equal(x.chroma, y.chroma)
    assert_same_audio(clip_8bit.path, joined, tolerance=Fraction(1, 1000) if codec == "ffv1" else Fraction(0))


def test_remux_refuses_a_segment_of_another_kind(clip_8bit: Clip, tmp_path: Path) -> None:
    info = probe(clip_8bit.path)
    seg, other = tmp_path / "seg.mov", tmp_path / "other.mkv"
    for path, codec in ((seg, "prores"), (other, "ffv1")):
        with ReelWriter(path, info, codec, copy_audio=False) as w:  # type: ignore[arg-type]
            w.write(next(iter_frames(clip_8bit.path)).luma, None)
    with (
        pytest.raises(PostprodError, match="cannot be joined"),
        ReelWriter(tmp_path / "out.mov", info, "prores", template=seg) as w,
    ):
        w.append(other)
    assert not (tmp_path / "out.mov").exists()
    with pytest.raises(ValueError, match="remuxing"):
        ReelWriter(tmp_path / "out.mp4", info, "h264", template=seg)
