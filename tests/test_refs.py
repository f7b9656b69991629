"""The refs folder (pipeline.refs): naming rules, refs.toml, timecodes, and every problem at once.

Nothing here decodes video: a small generated clip is only probed for its size, and the shot
lists are made by hand (3 shots of 12 frames over the 36-frame clip).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.media.probe import ReelInfo, probe
from pipeline.refs import Problem, RefSet, RefsProblems, frame_of_timecode, read_refs
from pipeline.shots import Shot, ShotList

H, W = 96, 160  # the clip_8bit fixture's size


@pytest.fixture(scope="module")
def info(clip_8bit) -> ReelInfo:
    return probe(clip_8bit.path)


@pytest.fixture(scope="module")
def shots(clip_8bit) -> ShotList:
    """3 shots of 12 frames, timecode 01:00:00:00 at 24000/1001 (24 frames a timecode second)."""
    return ShotList(
        clip_8bit.path,
        Fraction(24000, 1001),
        36,
        "01:00:00:00",
        (Shot(0, 0, 12, "start"), Shot(1, 12, 24), Shot(2, 24, 36)),
    )


def colour(path: Path, size: tuple[int, int] = (H, W), seed: int = 0) -> Path:
    """Write a random colour image of ``size`` (h, w) (format from the suffix)."""
    rng = np.random.default_rng(seed)
    cv2.imwrite(str(path), rng.integers(0, 256, size=(*size, 3), dtype=np.uint8))
    return path


def mask(path: Path, size: tuple[int, int] = (H, W), empty: bool = False) -> Path:
    """Write a mask of ``size`` (h, w): a filled rectangle, or nothing with ``empty``."""
    m = np.zeros(size, dtype=np.uint8)
    if not empty:
        m[size[0] // 4 : size[0] // 2, size[1] // 4 : size[1] // 2] = 255
    cv2.imwrite(str(path), m)
    return path


def problems_of(refs: RefSet) -> list[str]:
    return [str(p) for p in refs.problems]


def test_frame_and_shot_names(tmp_path: Path, info: ReelInfo, shots: ShotList) -> None:
    colour(tmp_path / "frame-5.png")
    colour(tmp_path / "frame-0013.TIFF")  # leading zeros and upper-case suffix are fine
    colour(tmp_path / "shot-2.jpg")
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "README.md").write_text("ignored")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "drafts").mkdir()
    colour(tmp_path / "drafts" / "whatever.png")
    refs = read_refs(tmp_path, info, shots)
    assert refs.problems == ()
    found = {r.image.name: (r.shot, r.frame, r.size) for r in refs.refs}
    assert found == {"frame-5.png": (0, 5, (H, W)), "frame-0013.TIFF": (1, 13, (H, W)), "shot-2.jpg": (2, None, (H, W))}
    assert [r.image.name for r in refs.for_shot(1)] == ["frame-0013.TIFF"]


def test_objects_with_and_without_their_own_image(tmp_path: Path, info: ReelInfo, shots: ShotList) -> None:
    colour(tmp_path / "shot-1.png", size=(120, 200))
    mask(tmp_path / "shot-1.car.mask.png")
    mask(tmp_path / "shot-1.car.refmask.png", size=(120, 200))  # the size of shot-1.png
    colour(tmp_path / "shot-1.dog.jpg", size=(50, 70), seed=1)
    mask(tmp_path / "shot-1.dog.mask.png")
    mask(tmp_path / "shot-1.dog.refmask.png", size=(50, 70))  # the size of its own image
    refs = read_refs(tmp_path, info, shots)
    assert refs.problems == ()
    (ref,) = refs.refs
    objects = {o.name: (o.image.name, o.mask.name, o.refmask.name) for o in ref.objects}
    assert objects == {
        "car": ("shot-1.png", "shot-1.car.mask.png", "shot-1.car.refmask.png"),
        "dog": ("shot-1.dog.jpg", "shot-1.dog.mask.png", "shot-1.dog.refmask.png"),
    }


def test_refs_toml_frame_timecode_shot_and_keyframe(tmp_path: Path, info: ReelInfo, shots: ShotList) -> None:
    for name in ("a.png", "b.png", "c.png", "d.png", "e.png"):
        colour(tmp_path / name)
    mask(tmp_path / "m.png")
    mask(tmp_path / "r.png")
    (tmp_path / "refs.toml").write_text("""
[[ref]]
image = "a.png"
frame = 3

[[ref]]
image = "b.png"
timecode = "01:00:01:02"   # one timecode second (24 frames) + 2 after the reel's start

[[ref]]
image = "c.png"
shot = 1
keyframe = 15

[[ref]]
image = "d.png"
shot = 0
keyframe = "01:00:00:05"

[[ref]]
image = "e.png"
shot = 2
[[ref.object]]
name = "car"
mask = "m.png"
refmask = "r.png"
""")
    refs = read_refs(tmp_path, info, shots)
    assert refs.problems == ()  # a.png... are named by refs.toml, so not unknown names
    found = {r.image.name: (r.shot, r.frame) for r in refs.refs}
    assert found == {"a.png": (0, 3), "b.png": (2, 26), "c.png": (1, 15), "d.png": (0, 5), "e.png": (2, None)}
    (e,) = [r for r in refs.refs if r.image.name == "e.png"]
    assert [(o.name, o.image.name, o.mask.name, o.refmask.name) for o in e.objects] == [
        ("car", "e.png", "m.png", "r.png")
    ]
    assert e.origin == "refs.toml [[ref]] #5"


def test_drop_frame_timecode() -> None:
    # 29.97 drop-frame: the labels ;00 and ;01 of minute 1 do not exist, so 00:01:00;02 is
    # only 2 frames after 00:00:59;28 (a non-drop count would say 4).
    df = ShotList(Path("reel.mov"), Fraction(30000, 1001), 100, "00:00:59;28", (Shot(0, 0, 100, "start"),))
    assert frame_of_timecode("00:01:00;02", df) == 2
    assert frame_of_timecode("00:00:59;29", df) == 1
    with pytest.raises(ValueError, match="wrong mode"):
        frame_of_timecode("00:01:00:02", df)
    with pytest.raises(ValueError, match="does not exist in drop-frame"):
        frame_of_timecode("00:01:00;00", df)
    # a reel without a timecode counts from 00:00:00;00 (drop-frame, as postprod shots prints it)
    untimed = ShotList(Path("reel.mov"), Fraction(30000, 1001), 4000, None, (Shot(0, 0, 4000, "start"),))
    assert frame_of_timecode("00:01:00;02", untimed) == 1800


def test_drop_frame_timecode_in_refs_toml(tmp_path: Path, make_clip) -> None:
    clip = make_clip("df.mov", frames=6, fps=Fraction(30000, 1001), timecode="00:00:59;28", audio_codec=None)
    info = probe(clip.path)
    assert info.timecode == "00:00:59;28"
    df = ShotList(clip.path, info.fps, info.frames, info.timecode, (Shot(0, 0, info.frames, "start"),))
    colour(tmp_path / "a.png")
    colour(tmp_path / "b.png")
    (tmp_path / "refs.toml").write_text(
        '[[ref]]\nimage = "a.png"\ntimecode = "00:01:00;02"\n[[ref]]\nimage = "b.png"\ntimecode = "00:01:00:02"\n'
    )
    refs = read_refs(tmp_path, info, df)
    assert [(r.image.name, r.frame) for r in refs.refs] == [("a.png", 2)]
    assert problems_of(refs) == [
        f"{tmp_path / 'refs.toml'}: [[ref]] #2: timecode '00:01:00:02' is in the wrong "
        "mode: the reel's timecode is drop-frame (HH:MM:SS;FF)"
    ]


def test_every_problem_is_reported_at_once(tmp_path: Path, info: ReelInfo, shots: ShotList) -> None:
    colour(tmp_path / "frame-x.png")  # not a name
    (tmp_path / "sketch.psd").write_bytes(b"8BPS")  # not a name
    colour(tmp_path / "frame-99.png")  # past the last frame (35)
    colour(tmp_path / "shot-5.png")  # the reel has 3 shots
    (tmp_path / "frame-3.png").write_bytes(b"not an image")  # unreadable
    cv2.imwrite(str(tmp_path / "frame-4.png"), np.full((H, W), 128, np.uint8))  # grey: no colour
    colour(tmp_path / "shot-0.png")
    mask(tmp_path / "shot-0.car.mask.png", size=(48, 80))  # not the reel's size
    mask(tmp_path / "shot-0.car.refmask.png")
    mask(tmp_path / "shot-0.dog.mask.png", empty=True)  # empty
    mask(tmp_path / "shot-0.dog.refmask.png")
    mask(tmp_path / "shot-0.cat.mask.png")  # no refmask partner
    colour(tmp_path / "shot-1.png")
    colour(tmp_path / "shot-1.jpg")  # two files for one reference
    colour(tmp_path / "t.png")
    (tmp_path / "refs.toml").write_text('[[ref]]\nimage = "t.png"\ntimecode = "02:00:00:00"\ncolour = "red"\n')
    refs = read_refs(tmp_path, info, shots)
    with pytest.raises(RefsProblems) as caught:
        refs.raise_problems()
    text = str(caught.value)
    lines = text.splitlines()
    expected = [
        ("frame-x.png", "not a reference name"),
        ("sketch.psd", "not a reference name"),
        ("frame-99.png", "frame 99 is outside the reel (frames 0-35, 01:00:00:00-01:00:01:11)"),
        ("shot-5.png", "shot 5 does not exist: the reel has 3 shots (0-2)"),
        ("frame-3.png", "cannot read image"),
        ("frame-4.png", "reference image has no colour"),
        ("shot-0.car.mask.png", "mask is 80x48 but the image of"),
        ("shot-0.dog.mask.png", "mask is empty"),
        ("shot-0.cat.mask.png", "object 'cat' has no partner shot-0.cat.refmask.<ext>"),
        ("shot-1.jpg", "more than one file for the same reference: shot-1.jpg, shot-1.png"),
        ("refs.toml", "[[ref]] #1: timecode 02:00:00:00 is outside the reel"),
        ("refs.toml", "[[ref]] #1: unknown key 'colour'"),
    ]
    assert lines[0] == f"{tmp_path}/: {len(expected)} problems"
    assert len(lines) == 1 + len(expected)
    for name, problem in expected:
        assert any(line.startswith(f"  {tmp_path / name}: ") and problem in line for line in lines[1:]), (name, text)
    # a reference whose objects are broken is not kept (the problems block the plan anyway)
    assert all(r.shot != 0 for r in refs.refs)


def test_broken_refs_toml_and_name_mistakes(tmp_path: Path, info: ReelInfo, shots: ShotList) -> None:
    (tmp_path / "refs.toml").write_text("[[ref]\nimage = ")
    colour(tmp_path / "shot-1.png")
    mask(tmp_path / "shot-1.mask.png")  # a mask needs an object name
    colour(tmp_path / "shot-2.car.png")  # an object without masks...
    mask(tmp_path / "shot-2.car.mask.png")
    mask(tmp_path / "shot-2.car.refmask.png")  # ...now with masks, but no shot-2.<ext> for the rest
    refs = read_refs(tmp_path, info, shots)
    text = "\n".join(problems_of(refs))
    assert f"{tmp_path / 'refs.toml'}: not valid TOML" in text
    assert f"{tmp_path / 'shot-1.mask.png'}: a mask needs an object name: shot-1.<object>.mask.png" in text
    assert f"{tmp_path / 'shot-2.car.png'}: object references need the main reference shot-2.<ext>" in text
    assert len(refs.problems) == 3
    assert [r.image.name for r in refs.refs] == ["shot-1.png"]


def test_refs_toml_schema_mistakes(tmp_path: Path, info: ReelInfo, shots: ShotList) -> None:
    colour(tmp_path / "a.png")
    (tmp_path / "refs.toml").write_text("""
[[ref]]
image = "a.png"
frame = 2
shot = 0

[[ref]]
image = "a.png"
frame = 4
keyframe = 5

[[ref]]
image = "missing.png"
shot = 1
keyframe = 30

[[ref]]
frame = -1
""")
    refs = read_refs(tmp_path, info, shots)
    toml = tmp_path / "refs.toml"
    assert set(problems_of(refs)) == {
        f"{toml}: [[ref]] #1: needs exactly one of frame, timecode, shot (has frame, shot)",
        f"{toml}: [[ref]] #2: keyframe is only for shot references (a frame or timecode is the keyframe already)",
        f"{tmp_path / 'missing.png'}: no such file (named in refs.toml [[ref]] #3)",
        f"{toml}: [[ref]] #3: keyframe 30 is not in shot 1 (frames 12-23)",
        f'{toml}: [[ref]] #4: needs image = "<file>"',
        f"{toml}: [[ref]] #4: frame must be a whole number >= 0, got -1",
    }


def test_missing_folder(tmp_path: Path, info: ReelInfo, shots: ShotList) -> None:
    refs = read_refs(tmp_path / "nope", info, shots)
    assert refs.problems == (Problem(str(tmp_path / "nope"), "no such folder"),)
    with pytest.raises(RefsProblems, match=r"nope/: 1 problem\n  .*nope: no such folder"):
        refs.raise_problems()
