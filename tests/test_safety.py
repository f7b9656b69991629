"""Data safety: what ``--force`` may replace, refs confinement, full disks, one run per work folder,
interruptions, bad input caught before any work, no telemetry, and the cases found by trying to
break postprod.

Every test of a destructive case records the sha256 of every file that was there before and
checks that all of them are still there, with the same bytes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pty
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from contextlib import nullcontext, suppress
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from conftest import REPO_ROOT, Clip

from cli.main import EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USER_ERROR, main
from pipeline.errors import PostprodError
from pipeline.files import host_tag, mount_point, sequence_files
from pipeline.media import synth
from pipeline.media.decode import iter_frames
from pipeline.media.encode import ReelWriter, transcode
from pipeline.media.probe import probe
from pipeline.refs import read_refs
from pipeline.run import RunSettings, run_reel
from pipeline.shots import Shot, ShotList
from pipeline.workdir import LOCK_NAME, SEGMENTS, lock_workdir, workdir_owner

# --- helpers --------------------------------------------------------------------------------


def tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root`` (a symbolic link: its target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            out[rel] = f"link:{os.readlink(p)}" if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def postprod(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The console entry point in this process: (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["postprod", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


def one_line(code: int, err: str, *fragments: str) -> str:
    """Assert a one-line user error containing ``fragments``; returns the line."""
    lines = err.strip().splitlines()
    assert code == EXIT_USER_ERROR and len(lines) == 1 and lines[0].startswith("postprod: error: "), (code, err)
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def env_for_subprocess(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


def cli_subprocess(*args: str, cwd: Path | None = None, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env_for_subprocess(),
        **kwargs,
    )


def dead_pid() -> int:
    """The id of a process of this host that has ended."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture(scope="module")
def small_clip(make_clip: Callable[..., Clip]) -> Clip:
    """12 frames 160x96 H.264 .mp4 with AAC: the reel of the destructive cases."""
    return make_clip("safety.mp4", frames=12)


@pytest.fixture
def victim(tmp_path: Path, small_clip: Clip) -> Path:
    """``victim/`` holding the reel (``reel.mp4``) and an unrelated ``notes.txt``, as in the issue."""
    folder = tmp_path / "victim"
    folder.mkdir()
    (folder / "reel.mp4").write_bytes(small_clip.path.read_bytes())
    (folder / "notes.txt").write_text("the only copy of the grading notes\n")
    (tmp_path / "link").symlink_to(folder, target_is_directory=True)
    return folder


@pytest.fixture(scope="module")
def cut_reel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2-shot grey FFV1 reel (12 frames each, 96x64) and a refs folder with a reference per shot."""
    folder = tmp_path_factory.mktemp("cut")
    reel = synth.write_cut_reel(folder / "reel.mkv", 2, 12)
    return reel, synth.write_shot_refs(folder / "refs", (0, 1))


# --- 1. --force replaces only what postprod wrote ------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--codec", "png", "--out", "{victim}"], "is a folder holding"),
        (["--codec", "tiff", "--out", "{victim}/../victim"], "is a folder holding"),
        (["--codec", "png", "--out", "{link}"], "is a folder holding"),
        (["--codec", "h264", "--out", "{victim}/reel.mp4"], "is an input of this command"),
        (["--codec", "h264", "--out", "{link}/reel.mp4"], "is an input of this command"),
        (["--codec", "png", "--out", "{victim}/notes.txt"], "is a file"),
        (["--codec", "ffv1", "--out", "{tmp}"], "must be a .mkv file"),
    ],
)
def test_transcode_force_never_deletes_the_source_or_other_files(
    victim: Path,
    tmp_path: Path,
    args: list[str],
    fragment: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = tree(tmp_path)
    args = [a.format(victim=victim, link=tmp_path / "link", tmp=tmp_path) for a in args]
    code, err = postprod(["transcode", str(victim / "reel.mp4"), *args, "--force"], monkeypatch, capsys)
    one_line(code, err, fragment)
    assert tree(tmp_path) == before


def test_transcode_force_refuses_a_folder_postprod_did_not_write(
    tmp_path: Path, small_clip: Clip, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "stills"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"\x89PNG not postprod's")
    (folder / "notes.txt").write_text("keep")
    before = tree(tmp_path)
    code, err = postprod(
        ["transcode", str(small_clip.path), "--codec", "png", "--out", str(folder), "--force"], monkeypatch, capsys
    )
    one_line(code, err, "is not an image sequence postprod wrote (a.png, notes.txt)")
    assert tree(tmp_path) == before


def test_force_replaces_a_sequence_postprod_wrote_and_only_its_files(
    tmp_path: Path, small_clip: Clip, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seq = tmp_path / "seq"
    (tmp_path / "beside.txt").write_text("next to the sequence")
    transcode(small_clip.path, seq, "png")
    assert sequence_files(seq) == frozenset(os.listdir(seq))  # the sidecar names every file: frames, sidecar, audio
    (seq / "mine.txt").write_text("added by a person")
    before = tree(tmp_path)
    command = ["transcode", str(small_clip.path), "--codec", "tiff", "--out", str(seq), "--force"]
    code, err = postprod(command, monkeypatch, capsys)
    one_line(code, err, "holds files postprod did not write (mine.txt)")
    assert tree(tmp_path) == before
    (seq / "mine.txt").unlink()
    code, err = postprod(command, monkeypatch, capsys)
    assert code == 0, err
    names = sorted(os.listdir(seq))
    assert names == sorted(sequence_files(seq) or ()) and all(not n.endswith(".png") for n in names)
    assert len([n for n in names if n.endswith(".tif")]) == small_clip.frames
    assert (tmp_path / "beside.txt").read_text() == "next to the sequence"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


@pytest.mark.parametrize(
    ("out", "fragment"),
    [
        ("{victim}", "is a folder holding"),
        ("{victim}/../victim", "is a folder holding"),
        ("{link}", "is a folder holding"),
        ("{refs}", "is an input of this command"),
        ("{refs}/out.mkv", "is inside"),
        ("{work}", "is an input of this command"),
        ("{work}/out.mkv", "is inside"),
        ("{work}/..", "is a folder holding"),
    ],
)
def test_run_force_never_deletes_an_input_or_other_files(
    victim: Path,
    tmp_path: Path,
    cut_reel: tuple[Path, Path],
    out: str,
    fragment: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / "shot-0.png").write_bytes((cut_reel[1] / "shot-0.png").read_bytes())
    work = tmp_path / "work"
    work.mkdir()
    (work / "plan.json").write_text("{}")
    before = tree(tmp_path)
    dest = out.format(victim=victim, link=tmp_path / "link", refs=refs, work=work)
    codec = "ffv1" if dest.endswith(".mkv") else "png"
    code, err = postprod(
        [
            "run",
            *("--engine", "local", "--reel", str(victim / "reel.mp4"), "--refs", str(refs)),
            *("--codec", codec, "--out", dest, "--workdir", str(work), "--force"),
        ],
        monkeypatch,
        capsys,
    )
    one_line(code, err, fragment)
    assert tree(tmp_path) == before


def test_frame_force_never_deletes_the_source_or_other_files(
    victim: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (victim / "pics.png").mkdir()
    (victim / "pics.png" / "keep.png").write_bytes(b"\x89PNG someone's")
    (victim / "alias.png").symlink_to("reel.mp4")
    before = tree(tmp_path)
    reel = str(victim / "reel.mp4")
    for out, fragment in [
        (victim, "unknown image type"),
        (victim / "pics.png", "is a folder"),
        (victim / "alias.png", "is an input of this command (" + reel),
        (tmp_path / "link" / "alias.png", "is an input of this command"),
    ]:
        code, err = postprod(["frame", reel, "--frame", "3", "--out", str(out), "--force"], monkeypatch, capsys)
        one_line(code, err, fragment)
        assert tree(tmp_path) == before


def test_shots_force_never_deletes_the_source_or_other_files(
    victim: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    before = tree(tmp_path)
    reel = str(victim / "reel.mp4")
    for option, out, fragment in [
        ("--csv", victim, "is a folder holding"),
        ("--json", victim / "reel.mp4", "is an input of this command"),
        ("--edl", tmp_path / "link" / "reel.mp4", "is an input of this command"),
        ("--csv", victim / ".." / "victim", "is a folder holding"),
    ]:
        code, err = postprod(["shots", reel, option, str(out), "--force"], monkeypatch, capsys)
        one_line(code, err, fragment)
        assert tree(tmp_path) == before


def test_plan_json_never_replaces_an_input(
    tmp_path: Path, cut_reel: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    reel, refs = cut_reel
    before = tree(reel.parent)
    for out, fragment in [(refs / "plan.json", "is inside"), (reel, "is an input"), (refs, "is an input")]:
        code, err = postprod(
            ["plan", "--reel", str(reel), "--refs", str(refs), "--json", str(out), "--force"], monkeypatch, capsys
        )
        one_line(code, err, fragment)
    assert tree(reel.parent) == before


def test_colorize_image_never_replaces_its_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "grey.png"), rng.integers(0, 256, (64, 96), dtype=np.uint8))
    cv2.imwrite(str(tmp_path / "ref.png"), rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    before = tree(tmp_path)
    for out in ("grey.png", "ref.png"):
        code, err = postprod(
            ["colorize-image", "--target", str(tmp_path / "grey.png"), "--ref", str(tmp_path / "ref.png")]
            + ["--out", str(tmp_path / out), "--force"],
            monkeypatch,
            capsys,
        )
        one_line(code, err, "is an input of this command")
    assert tree(tmp_path) == before


@pytest.mark.parametrize(
    ("out", "fragment"),
    [
        (".", "is the current folder"),
        ("..", "a folder holding the current one"),
        ("", "--out: empty output name"),
        ("/", "is the root folder"),
        ("~", "is the home folder"),
    ],
)
def test_special_output_names_are_one_line(
    victim: Path,
    tmp_path: Path,
    out: str,
    fragment: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(victim)
    before = tree(tmp_path)
    for command in (
        ["transcode", "reel.mp4", "--codec", "png", "--out", os.path.expanduser(out), "--force"],
        ["run", "--engine", "local", "--reel", "reel.mp4", "--missing-refs", "grey", "--codec", "png"]
        + ["--out", os.path.expanduser(out), "--force"],
    ):
        code, err = postprod(command, monkeypatch, capsys)
        one_line(code, err, fragment)
    assert tree(tmp_path) == before


# --- 2. refs confinement --------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_info(make_clip: Callable[..., Clip]) -> tuple[Path, ShotList]:
    clip = make_clip("refs_safety.mov", frames=36)
    shots = ShotList(
        clip.path, clip.fps, 36, "01:00:00:00", (Shot(0, 0, 12, "start"), Shot(1, 12, 24), Shot(2, 24, 36))
    )
    return clip.path, shots


def colour(path: Path, size: tuple[int, int] = (96, 160), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    cv2.imwrite(str(path), rng.integers(0, 256, size=(*size, 3), dtype=np.uint8))
    return path


def test_refs_outside_the_folder_are_problems_and_never_opened(
    tmp_path: Path, clip_info: tuple[Path, ShotList], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.images as images

    reel, shots = clip_info
    outside = colour(tmp_path / "outside.png")
    secret = colour(tmp_path / "secret.png", seed=1)
    secret.chmod(0)  # unreadable (for anyone but root): opening it would be another error
    refs = tmp_path / "refs"
    refs.mkdir()
    colour(refs / "frame-3.png")
    (refs / "shot-2.png").symlink_to(outside)
    (refs / "refs.toml").write_text(
        '[[ref]]\nimage = "../outside.png"\nshot = 0\n\n'
        f'[[ref]]\nimage = "{secret}"\nshot = 1\n\n'
        '[[ref]]\nimage = "frame-3.png"\nframe = 20\n'
        '  [[ref.object]]\n  name = "car"\n  mask = "../secret.png"\n  refmask = "frame-3.png"\n'
    )
    opened: list[Path] = []
    real_size = images.image_size

    def spy(path: str | Path) -> tuple[int, int]:
        opened.append(Path(path).resolve())
        return real_size(path)

    monkeypatch.setattr(images, "image_size", spy)
    result = read_refs(refs, probe(reel), shots)
    problems = [str(p) for p in result.problems]
    outside_problems = [p for p in problems if "outside the refs folder" in p]
    assert len(outside_problems) == 4, problems
    assert any("refs.toml: [[ref]] #1: image '../outside.png'" in p for p in outside_problems)
    assert any(f"refs.toml: [[ref]] #2: image '{secret}' is an absolute path" in p for p in outside_problems)
    assert any("shot-2.png: outside the refs folder (a symbolic link to" in p for p in outside_problems)
    assert any("object 'car': mask '../secret.png'" in p for p in outside_problems)
    assert opened and all(p.is_relative_to(refs.resolve()) for p in opened)  # nothing outside was opened
    assert tmp_path.resolve() / "outside.png" not in opened and secret.resolve() not in opened

    # postprod plan lists them with every other problem, exit 2
    (refs / "frame-one.png").write_bytes(b"")
    r = cli_subprocess("plan", "--reel", str(reel), "--refs", str(refs))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("outside the refs folder") == 4 and "frame-one.png: not a reference name" in r.stderr


def test_one_reference_name_per_shot_and_ascii_digits_only(tmp_path: Path, clip_info: tuple[Path, ShotList]) -> None:
    reel, shots = clip_info
    colour(tmp_path / "shot-1.png")
    colour(tmp_path / "shot-01.png", seed=1)
    colour(tmp_path / "frame-\u0663.png")  # ARABIC-INDIC DIGIT THREE
    colour(tmp_path / "frame-\uff15.png")  # FULLWIDTH DIGIT FIVE
    result = read_refs(tmp_path, probe(reel), shots)
    problems = sorted(str(p) for p in result.problems)
    assert any("more than one file for the same reference: shot-01.png, shot-1.png" in p for p in problems)
    assert sum("not a reference name" in p for p in problems) == 2, problems
    assert len(problems) == 3


# --- 8. references too small, too large, corrupt -----------------------------------------------


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims ``width`` x ``height`` (its pixel data is missing)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return path


def black_png(path: Path, width: int, height: int) -> Path:
    """A valid black RGB PNG of any size, written row by row (a few hundred KB, little memory)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    z = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * width)
    data = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def test_tiny_huge_and_bomb_references_are_problems_read_from_headers(
    tmp_path: Path, clip_info: tuple[Path, ShotList], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.images as images

    reel, shots = clip_info
    colour(tmp_path / "shot-0.png", size=(1, 1))
    bomb = png_header_only(tmp_path / "shot-1.png", 60000, 60000)
    big = black_png(tmp_path / "shot-2.png", 12000, 12000)
    (tmp_path / "frame-x.png").write_bytes(b"")  # another problem, listed with them
    assert bomb.stat().st_size < 100 and big.stat().st_size < 1_000_000
    decoded: list[int] = []
    real_decode = images.cv2.imdecode

    def spy(data: np.ndarray, flags: int) -> np.ndarray | None:
        decoded.append(int(data.size))
        return real_decode(data, flags)

    monkeypatch.setattr(images.cv2, "imdecode", spy)
    problems = sorted(str(p) for p in read_refs(tmp_path, probe(reel), shots).problems)
    assert len(problems) == 4, problems
    assert "shot-0.png: reference image is 1x1: too small to match (at least 16x16 px)" in problems[1]
    assert "shot-1.png: image is larger than postprod reads (at most 16384 px a side and 100 Mpx)" in problems[2]
    assert "shot-2.png: image is 12000x12000: larger than postprod reads" in problems[3]
    assert decoded == []  # refused from their headers: no pixel decoded


def test_nan_chroma_never_reaches_an_encoder(small_clip: Clip, tmp_path: Path) -> None:
    info = probe(small_clip.path)
    chroma = np.zeros((2, info.height, info.width), np.float32)
    chroma[0, 5, 5] = np.nan
    with pytest.raises(ValueError, match="non-finite"), ReelWriter(tmp_path / "o.mkv", info, "ffv1") as writer:
        writer.write(np.full((info.height, info.width), 128, np.uint8), chroma)
    assert list(tmp_path.iterdir()) == []


def test_colorize_image_refuses_tiny_images_and_bad_outputs_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import pipeline.colorize

    def no_work(*_: object, **__: object) -> None:
        raise AssertionError("colorized although the inputs were bad")

    monkeypatch.setattr(pipeline.colorize, "colorize_still", no_work)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "grey.png"), rng.integers(0, 256, (64, 96), dtype=np.uint8))
    cv2.imwrite(str(tmp_path / "dot.png"), rng.integers(0, 256, (1, 1), dtype=np.uint8))
    colour(tmp_path / "ref.png", size=(64, 96))
    colour(tmp_path / "dotref.png", size=(1, 1))
    for target, ref, out, fragment in [
        ("dot.png", "ref.png", "o.png", "dot.png: target image is 1x1: too small"),
        ("grey.png", "dotref.png", "o.png", "dotref.png: reference image is 1x1: too small"),
        ("grey.png", "ref.png", "o.xyz", "o.xyz: unknown image type '.xyz'"),
    ]:
        code, err = postprod(
            ["colorize-image", "--target", str(tmp_path / target), "--ref", str(tmp_path / ref)]
            + ["--out", str(tmp_path / out)],
            monkeypatch,
            capsys,
        )
        one_line(code, err, fragment)
    assert not (tmp_path / "o.png").exists()


def test_corrupt_png_is_exactly_one_line(tmp_path: Path) -> None:
    good = colour(tmp_path / "ref.png", size=(64, 96))
    data = bytearray(good.read_bytes())
    data[100:140] = b"x" * 40  # inside the pixel data: the header still reads
    (tmp_path / "bad.png").write_bytes(bytes(data))
    cv2.imwrite(str(tmp_path / "grey.png"), np.zeros((64, 96), np.uint8))
    r = cli_subprocess(
        "colorize-image", "--target", str(tmp_path / "grey.png"), "--ref", str(tmp_path / "bad.png"),
        "--out", str(tmp_path / "o.png"),
    )  # fmt: skip
    assert r.returncode == 2 and "libpng" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"postprod: error: {tmp_path / 'bad.png'}: cannot read image (not an image file, or corrupt)"
    ]


# --- 6. bad input to run is caught before anything starts -------------------------------------


_PROBE_IMPORTS = """
import sys, time
from cli.main import main
sys.argv = ["postprod", *sys.argv[1:]]
started = time.perf_counter()
try:
    main()
except SystemExit as e:
    code = e.code
print("RESULT", code, "prefect" in sys.modules, "torch" in sys.modules, round(time.perf_counter() - started, 2))
"""


@pytest.mark.parametrize("case", ["missing reel", "missing reel, workdir", "bad refs", "bad output"])
def test_run_checks_reel_refs_and_output_before_anything_starts(
    tmp_path: Path, cut_reel: tuple[Path, Path], case: str
) -> None:
    reel, refs = cut_reel
    bad_refs = tmp_path / "refs"
    bad_refs.mkdir()
    (bad_refs / "shot-0.png").write_bytes(b"not an image")
    (bad_refs / "shot-1.png").symlink_to(refs / "shot-1.png")  # outside this refs folder
    (bad_refs / "frame-9999.png").write_bytes((refs / "shot-0.png").read_bytes())  # past the reel's end
    args, fragment = {
        "missing reel": (["--reel", str(tmp_path / "missing.mov"), "--refs", str(refs)], "missing.mov: file not found"),
        "missing reel, workdir": (
            ["--reel", str(tmp_path / "missing.mov"), "--refs", str(refs), "--workdir", str(tmp_path / "w")],
            "missing.mov: file not found",
        ),
        "bad refs": (["--reel", str(reel), "--refs", str(bad_refs)], "3 problems"),  # every one at once
        "bad output": (["--reel", str(reel), "--refs", str(refs), "--codec", "ffv1", "--out", "x.mov"], ".mkv"),
    }[case]
    r = subprocess.run(
        [sys.executable, "-c", _PROBE_IMPORTS, "run", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env_for_subprocess(),
    )
    result = r.stdout.split()
    assert result[:4] == ["RESULT", "2", "False", "False"], (r.stdout, r.stderr)  # neither Prefect nor torch loaded
    assert fragment in r.stderr and "Traceback" not in r.stderr and not r.stderr.startswith("postprod: internal")
    assert sorted(os.listdir(tmp_path)) == ["refs"]  # no work folder, no output


def test_run_refuses_odd_width_for_prores_before_any_work(
    make_clip: Callable[..., Clip], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    odd = make_clip("odd.mkv", frames=4, codec="ffv1", pix_fmt="yuv444p", width=161, height=96, audio_codec=None)
    for codec, out, fragment in [
        ("prores", "o.mov", "prores (yuv422p10le) needs an even width, the reel is 161x96"),
        ("png", "o.png", "png output is an image-sequence folder"),
    ]:
        code, err = postprod(
            ["run", "--engine", "local", "--reel", str(odd.path), "--missing-refs", "grey"]
            + ["--codec", codec, "--out", str(tmp_path / out), "--workdir", str(tmp_path / "w")],
            monkeypatch,
            capsys,
        )
        one_line(code, err, fragment)
    assert list(tmp_path.iterdir()) == []


# --- 3. disk full ------------------------------------------------------------------------------


def full_after(frames: int, when: Callable[[ReelWriter], bool] = lambda w: True) -> Callable[..., None]:
    """A ReelWriter.write that fails like a full disk once ``frames`` frames are written."""
    real = ReelWriter.write

    def write(self: ReelWriter, luma: np.ndarray, chroma: np.ndarray | None = None) -> None:
        if self.frames_written >= frames and when(self):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, luma, chroma)

    return write


def full_append_after(frames: int, when: Callable[[ReelWriter], bool]) -> Callable[..., int]:
    """A ReelWriter.append (segments joined by remuxing) that fails like a full disk once ``frames`` frames are in."""
    real = ReelWriter.append

    def append(self: ReelWriter, segment: Path, on_frame: Callable[[], None] | None = None) -> int:
        def check() -> None:
            if self.frames_written >= frames and when(self):
                raise OSError(errno.ENOSPC, "No space left on device")
            if on_frame is not None:
                on_frame()

        return real(self, segment, check)

    return append


def test_disk_full_in_transcode_is_one_line_and_leaves_nothing(
    tmp_path: Path, small_clip: Clip, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "keep.txt").write_text("keep")
    before = tree(tmp_path)
    monkeypatch.setattr(ReelWriter, "write", full_after(5))
    for codec, dest in [("ffv1", tmp_path / "o.mkv"), ("png", tmp_path / "seq")]:
        code, err = postprod(
            ["transcode", str(small_clip.path), "--codec", codec, "--out", str(dest)], monkeypatch, capsys
        )
        one_line(code, err, f"no space left on {mount_point(tmp_path)} while writing {dest}")
        assert tree(tmp_path) == before  # no output, no temporary


def test_disk_full_in_run_leaves_the_work_folder_resumable(
    tmp_path: Path, cut_reel: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reel, refs = cut_reel
    settings = RunSettings(codec="ffv1", device="cpu", work_size=64)
    whole = run_reel(reel, refs, tmp_path / "whole.mkv", workdir=tmp_path / "w-whole", settings=settings)

    out, work = tmp_path / "out.mkv", tmp_path / "w"
    with monkeypatch.context() as m:  # the disk fills while shot 1 is being written
        m.setattr(ReelWriter, "write", full_after(4, lambda w: w.dest.name.startswith("shot-0001")))
        with pytest.raises(PostprodError, match=r"^no space left on .* while writing .*shot-0001-\w+\.mkv$"):
            # one shot at a time: shot 0 is finished when shot 1 fills the disk (shots coloured at
            # once stop together at the first failure: tests/test_jobs.py)
            run_reel(reel, refs, out, workdir=work, settings=settings, jobs=1)
    segments = sorted(p.name for p in (work / SEGMENTS).iterdir())
    assert len(segments) == 1 and segments[0].startswith("shot-0000-") and not out.exists()
    done = (work / SEGMENTS / segments[0]).stat().st_mtime_ns
    # a temporary left by a killed process of this host is removed by the rerun
    stale = work / SEGMENTS / f".shot-0001-x.partial-{dead_pid()}-{host_tag()}.mkv"
    stale.write_bytes(b"half a segment")

    with monkeypatch.context() as m:  # now the final output's disk is full
        m.setattr(ReelWriter, "write", full_after(20, lambda w: w.dest == out))
        m.setattr(ReelWriter, "append", full_append_after(20, lambda w: w.dest == out))  # FFV1: remuxed
        with pytest.raises(PostprodError, match=f"while writing {out}$"):
            run_reel(reel, refs, out, workdir=work, settings=settings)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    assert not stale.exists()

    run_reel(reel, refs, out, workdir=work, settings=settings)  # space freed: the same command finishes
    assert (work / SEGMENTS / segments[0]).stat().st_mtime_ns == done  # shot 0 was not recomputed
    assert out.read_bytes() == whole.read_bytes()  # frames identical to the uninterrupted run (FFV1)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_disk_full_on_a_real_small_file_system(
    tmp_path: Path, small_clip: Clip, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        dest = mnt / "o.mkv"
        code, err = postprod(
            ["transcode", str(small_clip.path), "--codec", "ffv1", "--out", str(dest)], monkeypatch, capsys
        )
        one_line(code, err, f"no space left on {mnt} while writing {dest}")
        assert os.listdir(mnt) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# --- 4. one run per work folder --------------------------------------------------------------


def test_second_run_on_a_work_folder_refuses_naming_the_first(tmp_path: Path, cut_reel: tuple[Path, Path]) -> None:
    reel, refs = cut_reel
    work = tmp_path / "w"
    code = (
        "import time\nfrom pipeline.workdir import lock_workdir\n"
        f"with lock_workdir({str(work)!r}):\n    print('held', flush=True)\n    time.sleep(120)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env_for_subprocess())
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        r = cli_subprocess(
            "run", "--engine", "local", "--reel", str(reel), "--refs", str(refs), "--codec", "ffv1",
            "--out", str(tmp_path / "o.mkv"), "--workdir", str(work),
        )  # fmt: skip
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [
            f"postprod: error: {work}: work folder in use by another run (process {holder.pid} on "
            f"{socket.gethostname()} since {r.stderr.split(' since ')[1].split(')')[0]}); wait for it to end or "
            "use another --workdir"
        ]
        assert not (tmp_path / "o.mkv").exists() and sorted(os.listdir(work)) == [LOCK_NAME]
    finally:
        holder.kill()  # a killed holder: the kernel releases its lock
        holder.wait()
    assert workdir_owner(work) is None
    with lock_workdir(work):
        assert json.loads((work / LOCK_NAME).read_text())["pid"] == os.getpid()
        assert str(os.getpid()) in (workdir_owner(work) or "")  # even this process's second run refuses
    assert (work / LOCK_NAME).read_text() == ""  # free


def test_lock_without_flock_takes_over_a_dead_runs_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.workdir as workdir

    def no_flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(workdir.fcntl, "flock", no_flock)
    work = tmp_path / "w"
    work.mkdir()
    record = {"host": socket.gethostname(), "started": 0}
    (work / LOCK_NAME).write_text(json.dumps({**record, "pid": dead_pid()}))
    assert workdir_owner(work) is None
    with lock_workdir(work):  # stale: taken over
        assert json.loads((work / LOCK_NAME).read_text())["pid"] == os.getpid()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (work / LOCK_NAME).write_text(json.dumps({**record, "pid": alive.pid}))
        with (
            pytest.raises(PostprodError, match=f"in use by another run \\(process {alive.pid} on "),
            lock_workdir(work),
        ):
            pass
    finally:
        alive.kill()
        alive.wait()


# --- 8. interruptions ------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], bool], proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, "the command ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.02)


def interrupt_when(
    start: Callable[[], subprocess.Popen], predicate: Callable[[], bool], sig: int, attempts: int = 3
) -> tuple[int, str]:
    """Start a process (``start``), freeze it once ``predicate`` holds, send ``sig``, let it go
    on; (exit code, stderr). If the predicate no longer holds once the process is frozen (it got
    past that moment between the check and the freeze, on a loaded machine), the run proves
    nothing: it is finished and the command started again (at most ``attempts`` times)."""
    for _ in range(attempts):
        proc = start()
        try:
            wait_for(predicate, proc)
            proc.send_signal(signal.SIGSTOP)  # frozen while the partial exists: no race with the end
            if not predicate():
                proc.send_signal(signal.SIGCONT)
                proc.communicate(timeout=120)
                continue
            proc.send_signal(sig)
            proc.send_signal(signal.SIGCONT)
            _, err = proc.communicate(timeout=120)
            return proc.returncode, err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    raise AssertionError(f"the command got past the moment to interrupt {attempts} times")


@pytest.fixture(scope="module")
def long_clip(make_clip: Callable[..., Clip]) -> Clip:
    """240 frames 320x240 FFV1: long enough to be interrupted while transcoding."""
    return make_clip("long.mkv", frames=240, codec="ffv1", width=320, height=240, audio_codec=None)


@pytest.mark.parametrize(
    ("sig", "code", "line"),
    [
        (signal.SIGTERM, EXIT_TERMINATED, "postprod: terminated (SIGTERM)"),
        (signal.SIGINT, EXIT_INTERRUPTED, "postprod: interrupted"),
    ],
)
def test_sigterm_and_sigint_remove_partials_and_exit_128_plus_the_signal(
    tmp_path: Path, long_clip: Clip, sig: int, code: int, line: str
) -> None:
    (tmp_path / "keep.txt").write_text("keep")
    before = tree(tmp_path)

    def start() -> subprocess.Popen:
        for done in tmp_path.glob("o.mov"):  # a run that got past the moment to interrupt
            done.unlink()
        # A process started with SIGINT ignored (a shell's background job) passes that on, and
        # postprod rightly keeps ignoring it: start the command with SIGINT at its default.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "cli", "transcode", str(long_clip.path), "--codec", "prores"]
                + ["--out", str(tmp_path / "o.mov")],
                stderr=subprocess.PIPE,
                text=True,
                env=env_for_subprocess(),
            )
        finally:
            signal.signal(signal.SIGINT, previous)

    returncode, err = interrupt_when(start, lambda: any(".partial-" in n for n in os.listdir(tmp_path)), sig)
    assert returncode == code and err.strip().splitlines()[-1] == line, err
    assert "Traceback" not in err and tree(tmp_path) == before  # the partial is gone, nothing else touched


def test_sigterm_during_run_leaves_no_partial_in_the_work_folder(tmp_path: Path, cut_reel: tuple[Path, Path]) -> None:
    reel, refs = cut_reel
    work = tmp_path / "w"

    def start() -> subprocess.Popen:
        shutil.rmtree(work, ignore_errors=True)  # a run that got past the moment to interrupt
        (tmp_path / "o.mkv").unlink(missing_ok=True)
        return subprocess.Popen(
            [sys.executable, "-m", "cli", "run", "--engine", "local", "--reel", str(reel), "--refs", str(refs),
             "--codec", "ffv1", "--out", str(tmp_path / "o.mkv"), "--workdir", str(work), "--device", "cpu",
             "--work-size", "64"],
            stderr=subprocess.PIPE, text=True, env=env_for_subprocess(),
        )  # fmt: skip

    segments = work / SEGMENTS
    returncode, err = interrupt_when(
        start, lambda: segments.is_dir() and any(".partial-" in n for n in os.listdir(segments)), signal.SIGTERM
    )
    assert returncode == EXIT_TERMINATED and err.strip().splitlines()[-1] == "postprod: terminated (SIGTERM)", err
    assert not [n for n in os.listdir(segments) if ".partial-" in n] and not (tmp_path / "o.mkv").exists()
    assert (work / LOCK_NAME).read_text() == ""  # the lock is released


def test_stale_partials_of_dead_processes_are_removed_and_nothing_else(tmp_path: Path, small_clip: Clip) -> None:
    pid, tag = dead_pid(), host_tag()
    stale = [tmp_path / f".o.partial-{pid}-{tag}.mkv", tmp_path / f".seq.partial-{pid}-{tag}"]
    stale[0].write_bytes(b"half a reel")
    stale[1].mkdir()
    (stale[1] / "seq.000000.png").write_bytes(b"half a sequence")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    kept = [
        tmp_path / f".o.partial-{alive.pid}-{tag}.mkv",  # a running process's
        tmp_path / f".o.partial-{pid}-00000000.mkv",  # another host's
        tmp_path / ".notes.partial-123.txt",  # not postprod's name
        tmp_path / "notes.txt",
    ]
    for p in kept:
        p.write_text(p.name)
    before = tree(tmp_path)
    try:
        transcode(small_clip.path, tmp_path / "o.mkv", "ffv1")
    finally:
        alive.kill()
        alive.wait()
    assert not any(p.exists() for p in stale)
    after = tree(tmp_path)
    untouched = {k: v for k, v in before.items() if not any(k.startswith(p.name) for p in stale)}
    assert {k: after.get(k) for k in untouched} == untouched and "o.mkv" in after


# --- 8. truncated constant-rate MP4, corrupt frames ------------------------------------------------


def test_truncated_faststart_mp4_stays_constant_rate(make_clip: Callable[..., Clip], tmp_path: Path) -> None:
    clip = make_clip("ntsc.mp4", frames=90, fps=Fraction(30000, 1001))
    whole = tmp_path / "faststart.mp4"
    with av.open(str(clip.path)) as src, av.open(str(whole), "w", options={"movflags": "faststart"}) as out:
        video = out.add_stream_from_template(src.streams.video[0])
        for p in src.demux(src.streams.video[0]):
            if p.size:
                p.stream = video
                out.mux(p)
    data = whole.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # the index is at the front
    gaps = 0
    for percent in range(20, 100, 2):
        cut = tmp_path / f"cut{percent}.mp4"
        cut.write_bytes(data[: len(data) * percent // 100])
        with av.open(str(cut)) as c:  # what the demuxer delivers: the B-frames before the cut end may be missing
            pts = sorted(p.pts for p in c.demux(video=0) if p.size)
        gaps += int(np.any(np.diff(pts) > 1001))
        info = probe(cut)
        assert (info.fps, info.vfr) == (Fraction(30000, 1001), False), percent
        assert np.all(
            np.diff([f.time for f in iter_frames(cut, on_corrupt=lambda r, m: None)]) == Fraction(1001, 30000)
        )
    assert gaps  # the case is exercised
    dest = tmp_path / "out.mkv"
    with pytest.warns(UserWarning):  # the missing end is reported
        transcode(tmp_path / "cut84.mp4", dest, "ffv1")
    assert probe(dest).fps == Fraction(30000, 1001)


def damaged(clip: Path, dest: Path, frames: tuple[int, ...]) -> Path:
    """``clip`` with the packets of ``frames`` zeroed (nothing of those pictures is left)."""
    with av.open(str(clip)) as c:
        packets = [(p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size]
    data = bytearray(clip.read_bytes())
    for k in frames:
        pos, size = packets[k]
        data[pos : pos + size] = bytes(size)
    dest.write_bytes(bytes(data))
    return dest


def test_frame_and_run_replace_a_corrupt_frame_by_the_same_picture(
    make_clip: Callable[..., Clip], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = make_clip("intra_safety.mov", frames=24, codec="mjpeg", pix_fmt="yuvj420p", audio_codec=None)
    good = [f.luma for f in iter_frames(clip.path)]
    bad = damaged(clip.path, tmp_path / "bad.mov", (0, 10, 11))
    with pytest.warns(UserWarning):
        whole = [f.luma for f in iter_frames(bad)]  # what run decodes: the whole reel in one pass
    assert np.array_equal(whole[10], good[9]) and np.array_equal(whole[11], good[9])
    assert np.array_equal(whole[0], good[1])  # the very start of the reel: the next frame
    for k in (0, 9, 10, 11):
        with pytest.warns(UserWarning) if k != 9 else nullcontext():
            code, err = postprod(
                ["frame", str(bad), "--frame", str(k), "--out", str(tmp_path / f"f{k}.png")], monkeypatch, capsys
            )
        assert code == 0, err
        picture = cv2.imread(str(tmp_path / f"f{k}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(picture, cv2.imread(str(tmp_path / f"f{9 if k else 0}.png"), cv2.IMREAD_UNCHANGED))
        assert np.array_equal(next(iter_frames(bad, k, k + 1, on_corrupt=lambda r, m: None)).luma, whole[k])


# --- 7. telemetry ------------------------------------------------------------------------------------


def on_a_terminal(code: str, env: dict[str, str]) -> str:
    """What ``python -c code`` prints with stdout and stderr on a pseudo-terminal."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    out = b""
    try:
        while select.select([master], [], [], 120)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the terminal closed: the process ended
                break
            if not chunk:
                break
            out += chunk
    finally:
        proc.wait(timeout=120)
        os.close(master)
    return out.decode(errors="replace")


def test_no_telemetry_notice_on_a_first_run_in_a_terminal(tmp_path: Path) -> None:
    from prefect._internal.analytics.ci_detection import CI_ENV_VARS

    env = {
        k: v
        for k, v in env_for_subprocess().items()
        if k not in CI_ENV_VARS and k != "DO_NOT_TRACK" and not k.startswith("PREFECT_")
    }
    notice = "collects anonymous usage data"
    assert notice in on_a_terminal("import prefect", {**env, "PREFECT_HOME": str(tmp_path / "a")})  # the test can fail
    assert notice not in on_a_terminal("import flows.reel", {**env, "PREFECT_HOME": str(tmp_path / "b")})


_RECORD_CONNECTIONS = """
import json, os, sys

_LOG = os.environ["POSTPROD_TEST_CONNECTIONS"]


def _hook(event, args):
    if event == "socket.connect":
        record = ["connect", int(args[0].family), repr(args[1])]
    elif event == "socket.getaddrinfo":
        record = ["resolve", 0, repr(args[0])]
    else:
        return
    with open(_LOG, "a") as f:
        f.write(json.dumps(record) + "\\n")


sys.addaudithook(_hook)
"""


def prefect_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a first run on a laptop: Prefect's embedded server, a fresh PREFECT_HOME."""
    env = {k: v for k, v in env_for_subprocess().items() if not k.startswith("PREFECT_") and k != "DO_NOT_TRACK"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), **extra)
    return env


@pytest.mark.slow
def test_a_run_connects_to_nothing_but_127_0_0_1(tmp_path: Path, cut_reel: tuple[Path, Path]) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_RECORD_CONNECTIONS)
    log = tmp_path / "connections.jsonl"
    env = prefect_env(tmp_path, POSTPROD_TEST_CONNECTIONS=str(log))
    env["PYTHONPATH"] = os.pathsep.join([str(hooks), env["PYTHONPATH"]])  # this process and the server's
    r = subprocess.run(
        [sys.executable, "-m", "cli", "run", "--reel", str(cut_reel[0]), "--missing-refs", "grey", "--codec", "ffv1",
         "--out", str(tmp_path / "o.mkv"), "--workdir", str(tmp_path / "w")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in log.read_text().splitlines()]
    connects = [address for kind, family, address in records if kind == "connect" and family != socket.AF_UNIX]
    assert connects, "the hook saw no connection: the test would prove nothing"
    assert all(a.startswith(("('127.0.0.1',", "('::1',")) for a in connects), connects
    resolved = {address for kind, _, address in records if kind == "resolve"}
    assert resolved <= {"'127.0.0.1'", "'localhost'", "'::1'"}, resolved


# --- 8. a killed run leaves no Prefect server behind ----------------------------------------------


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with suppress(FileNotFoundError, ProcessLookupError):  # a thread that ended meanwhile
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def cmdline(pid: int) -> str:
    """The command line of ``pid``, empty once it has ended (a child may end between listing and reading)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the server is tied to postprod with a Linux prctl")
def test_sigkilled_run_leaves_no_embedded_server_running(tmp_path: Path, cut_reel: tuple[Path, Path]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "run", "--reel", str(cut_reel[0]), "--missing-refs", "grey", "--codec", "ffv1",
         "--out", str(tmp_path / "o.mkv"), "--workdir", str(tmp_path / "w")],
        env=prefect_env(tmp_path), cwd=tmp_path, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: any("uvicorn" in cmdline(c) for c in children(proc.pid)), proc)
        server = next(c for c in children(proc.pid) if "uvicorn" in cmdline(c))
        os.kill(proc.pid, signal.SIGKILL)  # postprod only, not its process group
        proc.wait()
        deadline = time.monotonic() + 60
        while not gone(server) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert gone(server), "the embedded Prefect server outlived the killed run"
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_sigterm_during_a_prefect_run_removes_partials_and_stops_the_server(
    tmp_path: Path, cut_reel: tuple[Path, Path]
) -> None:
    reel, refs = cut_reel
    work = tmp_path / "w"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "run", "--reel", str(reel), "--refs", str(refs), "--codec", "ffv1",
         "--out", str(tmp_path / "o.mkv"), "--workdir", str(work), "--device", "cpu", "--work-size", "64"],
        env=prefect_env(tmp_path), cwd=tmp_path, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    segments = work / SEGMENTS

    def partial() -> bool:
        return segments.is_dir() and any(".partial-" in n for n in os.listdir(segments))

    try:
        wait_for(partial, proc)
        servers = [c for c in children(proc.pid) if "uvicorn" in cmdline(c)]
        returncode, err = interrupt_when(lambda: proc, partial, signal.SIGTERM, attempts=1)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert returncode == EXIT_TERMINATED and err.strip().splitlines()[-1] == "postprod: terminated (SIGTERM)", err
    assert "Traceback" not in err and not (tmp_path / "o.mkv").exists()
    assert not [n for n in os.listdir(segments) if ".partial-" in n]
    assert (work / LOCK_NAME).read_text() == "" and servers and all(gone(s) for s in servers)


def test_train_never_writes_into_its_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    colour(photos / "a.png", size=(64, 64))
    (tmp_path / "file").write_text("x")
    before = tree(tmp_path)
    for out, fragment in [
        (photos, "is " + str(photos) + ", an input of this command"),
        (photos / "run", "is inside"),
        (tmp_path, "is a folder holding"),
        (tmp_path / "file", "is a file, not a folder"),
    ]:
        code, err = postprod(["train", "--data", str(photos), "--out", str(out), "--steps", "1"], monkeypatch, capsys)
        one_line(code, err, fragment)
    assert tree(tmp_path) == before
