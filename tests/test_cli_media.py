"""`postprod probe` / `postprod transcode`: output, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import av
import pytest
from conftest import REPO_ROOT, Clip

from cli.main import EXIT_USER_ERROR, main
from pipeline.media import probe


def run_main(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """Run the console entry point in-process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["postprod", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == EXIT_USER_ERROR
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("postprod: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_probe_text_and_json(
    clip_8bit: Clip, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_main(["probe", str(clip_8bit.path)], monkeypatch, capsys)
    assert code == 0 and "24000/1001" in out and "01:00:00:00" in out and "36 frames" in out
    code, out, _ = run_main(["probe", str(clip_8bit.path), "--json"], monkeypatch, capsys)
    data = json.loads(out)
    assert code == 0 and data["fps"] == "24000/1001" and data["frames"] == 36
    assert data["audio"][0]["codec"] == "aac"


def test_bad_inputs(
    tmp_path: Path,
    audio_only: Path,
    clip_8bit: Clip,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    cut = tmp_path / "cut.mov"  # the index ('moov') of a MOV written by FFmpeg comes last
    cut.write_bytes(clip_8bit.path.read_bytes()[: clip_8bit.path.stat().st_size // 2])
    cases = [
        (tmp_path / "missing.mp4", ["missing.mp4", "file not found"]),
        (text, ["notes.mp4", "not a video file"]),
        (audio_only, ["tone.m4a", "no video stream", "audio aac"]),
        (cut, ["cut.mov", "truncated", "moov"]),
        (tmp_path, ["is a folder"]),
    ]
    for path, fragments in cases:
        for command in (
            ["probe", str(path)],
            ["transcode", str(path), "--codec", "ffv1", "--out", str(tmp_path / "o.mkv")],
        ):
            code, _, err = run_main(command, monkeypatch, capsys)
            assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "o.mkv").exists()


def test_error_through_the_installed_entry_point(tmp_path: Path) -> None:
    """The real process: one line on stderr, exit status 2, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-c", "from cli.main import main; main()", "probe", str(tmp_path / "missing.mp4")],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert proc.returncode == EXIT_USER_ERROR
    assert proc.stderr.strip() == f"postprod: error: {tmp_path / 'missing.mp4'}: file not found"


def test_transcode_outputs(
    clip_8bit: Clip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "out.mkv"
    code, out, _ = run_main(
        ["transcode", str(clip_8bit.path), "--codec", "ffv1", "--out", str(dest)], monkeypatch, capsys
    )
    assert code == 0 and "36 frames" in out and dest.is_file()
    before = dest.read_bytes()
    # existing output without --force: refused, untouched
    code, _, err = run_main(
        ["transcode", str(clip_8bit.path), "--codec", "ffv1", "--out", str(dest)], monkeypatch, capsys
    )
    assert_one_line_error(code, err, "already exists", "--force")
    assert dest.read_bytes() == before
    code, _, _ = run_main(
        ["transcode", str(clip_8bit.path), "--codec", "ffv1", "--out", str(dest), "--force"], monkeypatch, capsys
    )
    assert code == 0 and dest.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out.mkv"]  # no temporary left behind


def test_unwritable_destinations(
    clip_8bit: Clip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    regular = tmp_path / "file.txt"
    regular.write_text("x")
    for dest, fragment in [
        (tmp_path / "no" / "such" / "out.mov", "does not exist"),
        (regular / "out.mov", "does not exist"),
    ]:  # tests run as root: no chmod
        code, _, err = run_main(
            ["transcode", str(clip_8bit.path), "--codec", "prores", "--out", str(dest)], monkeypatch, capsys
        )
        assert_one_line_error(code, err, fragment)
    code, _, err = run_main(
        ["transcode", str(clip_8bit.path), "--codec", "prores", "--out", str(tmp_path / "out.mp4")], monkeypatch, capsys
    )
    assert_one_line_error(code, err, ".mov")
    code, _, err = run_main(
        ["transcode", str(clip_8bit.path), "--codec", "h264", "--out", str(clip_8bit.path), "--force"],
        monkeypatch,
        capsys,
    )
    assert_one_line_error(code, err, "is an input of this command", "would overwrite it")
    assert probe(clip_8bit.path).frames == 36


def test_corrupt_reel_is_transcoded_with_a_report(
    make_clip: Callable[..., Clip], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = make_clip("intra_cli.mov", frames=12, codec="mjpeg", pix_fmt="yuvj420p", audio_codec=None)
    with av.open(str(clip.path)) as c:
        pos, size = [(p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size][5]
    data = bytearray(clip.path.read_bytes())
    data[pos : pos + size] = bytes(size)
    bad = tmp_path / "bad.mov"
    bad.write_bytes(bytes(data))
    dest = tmp_path / "out.mkv"
    with pytest.warns(UserWarning, match=r"bad\.mov: frame 5: could not be decoded"):
        code, out, _ = run_main(["transcode", str(bad), "--codec", "ffv1", "--out", str(dest)], monkeypatch, capsys)
    assert code == 0 and "12 frames" in out
    with av.open(str(dest)) as c:
        assert sum(1 for p in c.demux(video=0) if p.size) == 12
