"""`postprod run` end to end on the bundled demo reel, as plain Python (engine local)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from pipeline.media.decode import iter_frames
from pipeline.media.probe import probe
from pipeline.run import RunSettings, run_reel
from pipeline.workdir import load_plan, segment_path

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo"


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The demo colorized once into FFV1: (output, work folder)."""
    work = tmp_path_factory.mktemp("run")
    out = work / "demo.mkv"
    run_reel(
        DEMO / "reel.mov", DEMO / "refs", out, workdir=work / "work", settings=RunSettings(codec="ffv1", device="cpu")
    )
    return out, work / "work"


def test_output_keeps_frames_rate_timecode_audio_and_luma(demo_run: tuple[Path, Path]) -> None:
    out, _ = demo_run
    src, dst = probe(DEMO / "reel.mov"), probe(out)
    assert (dst.frames, dst.fps, dst.timecode) == (src.frames, src.fps, src.timecode)
    assert audio_packets(out) == audio_packets(DEMO / "reel.mov")
    for a, b in zip(iter_frames(DEMO / "reel.mov"), iter_frames(out), strict=True):
        assert np.array_equal(a.luma, b.luma)  # luma passthrough, bit for bit in FFV1


def test_coloured_keyframe_takes_the_artists_chroma(demo_run: tuple[Path, Path]) -> None:
    out, _ = demo_run
    frame = next(iter_frames(out, 0, 1, chroma=True))
    ref = cv2.imread(str(DEMO / "refs" / "frame-0.png"))[:, :, ::-1].astype(np.float32) / 255
    ycc = cv2.cvtColor(ref, cv2.COLOR_RGB2YCrCb)  # BT.601, as the SD demo is tagged
    cb, cr = ycc[:, :, 2] - 0.5, ycc[:, :, 1] - 0.5
    assert np.abs(frame.chroma[0] - cb).mean() < 0.02 and np.abs(frame.chroma[1] - cr).mean() < 0.02


def test_every_shot_is_coloured(demo_run: tuple[Path, Path]) -> None:
    out, _ = demo_run
    for f in iter_frames(out, chroma=True):
        assert np.abs(f.chroma).mean() > 0.005, f"frame {f.index} is grey"


def test_finished_shots_are_not_recomputed(demo_run: tuple[Path, Path], tmp_path: Path) -> None:
    out, work = demo_run
    settings = RunSettings(codec="ffv1", device="cpu")
    plan = load_plan(work / "plan.json")
    segments = [segment_path(work, plan, s.index, settings) for s in plan.shots]
    stamps = [p.stat().st_mtime_ns for p in segments]
    again = tmp_path / "again.mkv"
    run_reel(DEMO / "reel.mov", DEMO / "refs", again, workdir=work, settings=settings)
    assert [p.stat().st_mtime_ns for p in segments] == stamps
    assert again.read_bytes() == out.read_bytes()


def test_bad_refs_stop_before_any_work(tmp_path: Path) -> None:
    refs = tmp_path / "refs"
    shutil.copytree(DEMO / "refs", refs)
    (refs / "frame-9999.png").write_bytes((refs / "frame-0.png").read_bytes())
    (refs / "shot-7.png").write_bytes(b"not an image")
    work = tmp_path / "work"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "run",
            "--engine",
            "local",
            "--reel",
            str(DEMO / "reel.mov"),
            "--refs",
            str(refs),
            "--out",
            str(tmp_path / "o.mkv"),
            "--codec",
            "ffv1",
            "--workdir",
            str(work),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "frame-9999.png" in r.stderr and "shot-7.png" in r.stderr  # every problem, at once
    assert not (work / "segments").exists() and not (tmp_path / "o.mkv").exists()


def test_artist_keyframe_keeps_its_fine_colour_detail(tmp_path: Path) -> None:
    """An artist-coloured keyframe goes out with its own full-resolution chroma, not with chroma
    brought back from the working resolution (which would blur a 2-pixel pattern to nothing)."""
    from pipeline.color import codes_to_luma, legal_chroma, ycbcr_to_rgb
    from pipeline.images import write_rgb
    from pipeline.run import colorize_shot, prepare_run

    info = probe(DEMO / "reel.mov")
    grey = codes_to_luma(next(iter_frames(DEMO / "reel.mov", 0, 1)).luma, info.bit_depth, info.luma_range)
    yy, xx = np.indices(grey.shape)
    sign = np.where((yy // 2 + xx // 2) % 2 == 0, 1.0, -1.0).astype(np.float32)
    painted = legal_chroma(grey, np.stack([0.08 * sign, -0.06 * sign]), info.matrix)
    refs = tmp_path / "refs"
    refs.mkdir()
    write_rgb(refs / "frame-0.png", ycbcr_to_rgb(grey, painted, info.matrix), bit_depth=16)
    settings = RunSettings(codec="ffv1", device="cpu", work_size=64)
    plan = prepare_run(DEMO / "reel.mov", refs, tmp_path / "work", settings)
    assert plan.shots[0].keyframes[0].kind == "coloured"
    segment = colorize_shot(plan, 0, tmp_path / "work", settings)
    assert segment is not None
    out = next(iter_frames(segment, 0, 1, chroma=True)).chroma
    assert np.percentile(np.abs(out - painted), 99) < 0.01  # 8-bit chroma codes: 1/224 a step


def test_a_new_colour_version_recomputes_shots(demo_run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Segments left by a postprod whose colour maths differed are not reused."""
    import pipeline.workdir as workdir

    _, work = demo_run
    settings = RunSettings(codec="ffv1", device="cpu")
    plan = load_plan(work / "plan.json")
    before = workdir.shot_key(plan, 0, settings)
    monkeypatch.setattr(workdir, "COLOUR_VERSION", workdir.COLOUR_VERSION + 1)
    assert workdir.shot_key(plan, 0, settings) != before


# --- one decode pass, progress ------------------------------------------------------------


class Recorder:
    """A :class:`pipeline.progress.Progress` that records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __getattr__(self, name: str):
        return lambda *args: self.calls.append((name, *args))


@pytest.fixture(scope="module")
def cut_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Recorder]:
    """A 3-shot synthetic reel (12 frames a shot, shot 1 left grey) run into ProRes: (reel, work, progress)."""
    from pipeline.media import synth

    d = tmp_path_factory.mktemp("cut")
    reel = synth.write_cut_reel(d / "reel.mkv", 3, 12)
    refs = synth.write_shot_refs(d / "refs", (0, 2))
    rec = Recorder()
    settings = RunSettings(codec="prores", device="cpu", work_size=64, missing="grey")
    run_reel(reel, refs, d / "out.mov", workdir=d / "work", settings=settings, progress=rec)
    return reel, d / "work", rec


def test_progress_follows_the_frames_coloured(cut_run: tuple[Path, Path, Recorder]) -> None:
    _, _, rec = cut_run
    names = [c[0] for c in rec.calls]
    assert rec.calls[0] == ("reel", 2, 24)  # two shots to colour, the grey one not counted
    assert names.count("shot") == names.count("shot_done") == 2
    for shot in (0, 2):  # coloured at once on a machine with two cores or more: calls interleave
        begin = rec.calls.index(("shot", shot, 12))
        end = rec.calls.index(("shot_done", shot))
        steps = [c for c in rec.calls if c[0] == "step" and c[1] == shot]
        assert steps == [("step", shot, k, 24) for k in range(1, 25)]  # every step, in order
        assert all(begin < rec.calls.index(c) < end for c in steps)
    assert rec.calls[-2 - 36 : -1] == [("assemble", 36), *[("assembled", 1)] * 36]
    assert rec.calls[-1] == ("done",)


def test_prores_run_joins_segments_and_a_grey_shot_by_remux(cut_run: tuple[Path, Path, Recorder]) -> None:
    reel, work, _ = cut_run
    out = work.parent / "out.mov"
    info, dst = probe(reel), probe(out)
    assert (dst.codec, dst.frames, dst.fps) == ("prores", info.frames, info.fps)
    segments = sorted((work / "segments").iterdir())
    assert [(p.suffix, probe(p).codec) for p in segments] == [(".mov", "prores")] * 3  # the grey shot too
    joined = [f.chroma for f in iter_frames(out, chroma=True)]
    parts = [f.chroma for seg in segments for f in iter_frames(seg, chroma=True)]
    assert all(np.array_equal(a, b) for a, b in zip(joined, parts, strict=True))  # packets copied as they are
    assert np.abs(np.stack(joined[12:24])).max() < 1e-3 < np.abs(np.stack(joined[:12])).mean()  # grey stays grey


def test_lightness_comes_from_the_analysis_pass(cut_run: tuple[Path, Path, Recorder]) -> None:
    """The stored working-resolution grey is the decoded luma brought to that size (as the
    propagation read it from a decode of its own)."""
    from pipeline.color import codes_to_luma
    from pipeline.images import resize_planes

    reel, work, _ = cut_run
    info = probe(reel)
    (path,) = (work / "lightness").iterdir()
    stored = np.load(path)
    assert stored.shape == (info.frames, 64, 96) and stored.dtype == np.float32
    for f in iter_frames(reel):
        grey = resize_planes(codes_to_luma(f.luma, info.bit_depth, info.luma_range)[None], (64, 96))[0]
        assert np.array_equal(stored[f.index], grey)


def test_no_terminal_prints_one_line_per_shot(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli.main import cli
    from pipeline.media import synth

    reel = synth.write_cut_reel(tmp_path / "reel.mkv", 2, 12)
    refs = synth.write_shot_refs(tmp_path / "refs", (0, 1))
    args = ["run", "--engine", "local", "--reel", str(reel), "--refs", str(refs), "--codec", "ffv1"]
    args += ["--out", str(tmp_path / "o.mkv"), "--workdir", str(tmp_path / "w"), "--work-size", "64", "--device", "cpu"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("postprod: ")]
    assert len(lines) == 3, result.stderr
    pattern = r"postprod: shot (\d+): 12 frames in [0-9.]+ s \([0-9.]+ frames/s\)"
    shots = [re.fullmatch(pattern, line) for line in lines[:2]]
    assert sorted(int(m.group(1)) for m in shots if m) == [0, 1], lines  # shots coloured at once end in any order
    assert re.fullmatch(r"postprod: assembled 24 frames in [0-9.]+ s", lines[2])


def test_terminal_line_counts_frames_coloured_and_an_eta_over_the_reel() -> None:
    import io

    from cli.progress import ReelProgress

    now = [0.0]
    out = io.StringIO()
    bar = ReelProgress(out, tty=True, clock=lambda: now[0])
    bar.reel(2, 20)
    bar.shot(0, 10)
    assert "shot 1/2 (keyframes)  0/20 frames" in out.getvalue()
    now[0] = 5.0  # keyframes took 5 s; then the two passes of 10 frames, 1 s a step
    for k in range(1, 21):
        now[0] += 1.0
        bar.step(0, k, 20)
    bar.shot_done(0)
    # 10 frames in 25 s: 0.4 frames/s over the reel so far, 10 frames left: 25 s
    assert bar.status() == "between shots  10/20 frames  0.4 frames/s  ETA 25s"
    bar.shot(1, 10)
    now[0] += 5.0
    bar.step(1, 10, 20)  # half of shot 1: 15 frames in 30 s
    assert bar.status() == "shot 2/2 (propagating)  15/20 frames  0.5 frames/s  ETA 10s"
