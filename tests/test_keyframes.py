"""The keyframe plan (pipeline.keyframes) and `postprod plan`.

A small synthetic reel (3 shots of 10 frames, each shot a different smooth texture panning
2 px a frame) gives exact "colour versions" of its frames; the shot lists are made by hand so
the plan is tested apart from shot detection. The CLI tests run on the bundled demo.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from cli.main import main
from pipeline.color import rgb_to_ycbcr, ycbcr_to_rgb
from pipeline.errors import PostprodError
from pipeline.keyframes import (
    COLOURED_MIN_CORRELATION,
    Keyframe,
    ObjectRef,
    Plan,
    histogram_similarity,
    luma_correlation,
    luma_thumbnail,
    plan_keyframes,
    read_plan,
    reel_luma,
    thumb_size,
    write_plan,
)
from pipeline.media.probe import ReelInfo, probe
from pipeline.media.synth import write_grey_reel
from pipeline.refs import RefsProblems, read_refs
from pipeline.shots import Shot, ShotList

H, W, PER_SHOT, FPS = 72, 128, 10, Fraction(24000, 1001)
REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "demo"


def texture(seed: int) -> np.ndarray:
    """(H + 40, W + 40) float32 in [0.1, 0.9]: smooth random blobs, a different picture per seed."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.random((H + 40, W + 40), dtype=np.float32), (0, 0), 4)
    return 0.1 + 0.8 * (noise - noise.min()) / (noise.max() - noise.min())


@pytest.fixture(scope="module")
def reel(tmp_path_factory: pytest.TempPathFactory) -> tuple[ReelInfo, list[np.ndarray]]:
    """The reel's probe and its 30 grey frames ((H, W) float32 in [0, 1], as encoded)."""
    greys = [texture(shot)[2 * i : 2 * i + H, 2 * i : 2 * i + W] for shot in range(3) for i in range(PER_SHOT)]
    greys = [np.round(g * 255) / 255 for g in greys]
    path = tmp_path_factory.mktemp("keyframes") / "reel.mp4"
    write_grey_reel(path, ((g * 255).astype(np.uint8) for g in greys), FPS, crf=12)
    return probe(path), greys


def shot_list(info: ReelInfo, bounds: tuple[int, ...] = (0, 10, 20, 30)) -> ShotList:
    return ShotList(
        info.path,
        FPS,
        30,
        None,
        tuple(Shot(i, a, b, "start" if i == 0 else "cut") for i, (a, b) in enumerate(zip(bounds, bounds[1:]))),
    )


def colour_version(grey: np.ndarray, matrix: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """An artist's colouring of a grey frame: its luma, smooth chroma; BGR uint8, resized to (h, w)."""
    yy, xx = np.mgrid[0 : grey.shape[0], 0 : grey.shape[1]]
    chroma = np.stack([0.08 * np.sin(xx / 20), 0.08 * np.cos(yy / 15)]).astype(np.float32)
    rgb = ycbcr_to_rgb(grey, chroma, matrix)  # type: ignore[arg-type]
    bgr = cv2.cvtColor(np.round(rgb * 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
    return bgr if size is None else cv2.resize(bgr, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def unrelated(seed: int = 99) -> np.ndarray:
    """A colour picture of the reel's size that is none of its frames (BGR uint8)."""
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (H, W, 3), dtype=np.uint8), (0, 0), 3)


def write_mask(path: Path, size: tuple[int, int] = (H, W)) -> None:
    m = np.zeros(size, dtype=np.uint8)
    m[size[0] // 4 : size[0] // 2, size[1] // 4 : size[1] // 2] = 255
    cv2.imwrite(str(path), m)


class Recording:
    """A frame source that records what is asked of it (and can refuse to decode at all)."""

    def __init__(self, info: ReelInfo, allowed: bool = True) -> None:
        self.source, self.allowed, self.calls = reel_luma(info), allowed, []

    def __call__(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        if not self.allowed:
            raise AssertionError(f"decoded frames {start}..{stop - 1} before reporting the problems")
        self.calls.append((start, stop))
        return self.source(start, stop)


def test_comparison_helpers() -> None:
    a = texture(1)[:H, :W]
    assert luma_correlation(a, a) == pytest.approx(1.0)
    assert luma_correlation(a, 1 - a) == pytest.approx(-1.0)
    assert luma_correlation(a, np.full_like(a, 0.5)) == 0.0  # flat: no correlation, not NaN
    assert histogram_similarity(a, a) == pytest.approx(1.0)
    assert histogram_similarity(np.zeros((4, 4)), np.ones((4, 4))) == 0.0
    assert thumb_size(1920, 1080) == (64, 114)
    assert thumb_size(100, 40) == (40, 100)
    assert luma_thumbnail(a, (8, 16)).shape == (8, 16)


def test_coloured_keyframe_or_exemplar(tmp_path: Path, reel) -> None:
    info, greys = reel
    cv2.imwrite(str(tmp_path / "frame-13.png"), colour_version(greys[13], info.matrix))  # frame 13, coloured
    cv2.imwrite(str(tmp_path / "frame-25.png"), unrelated())  # right size, another picture
    cv2.imwrite(str(tmp_path / "frame-5.png"), colour_version(greys[5], info.matrix, size=(36, 64)))  # not reel size
    shots = shot_list(info)
    decode = Recording(info)
    plan = plan_keyframes(info, shots, read_refs(tmp_path, info, shots), decode=decode)
    keys = {k.frame: k for s in plan.shots for k in s.keyframes}
    assert keys[13].kind == "coloured" and keys[13].score >= COLOURED_MIN_CORRELATION
    assert keys[25].kind == "exemplar" and keys[25].score < COLOURED_MIN_CORRELATION
    assert keys[5].kind == "exemplar" and keys[5].score is None  # another size: no luminance test
    assert {k.how for k in keys.values()} == {"anchored"}
    assert decode.calls == [(13, 14), (25, 26)]  # one frame each, none for the small image
    assert [s.source for s in plan.shots] == ["refs", "refs", "refs"]


def test_automatic_keyframe_is_the_matching_frame(tmp_path: Path, reel) -> None:
    info, greys = reel
    cv2.imwrite(str(tmp_path / "shot-1.png"), colour_version(greys[16], info.matrix))
    cv2.imwrite(str(tmp_path / "shot-2.jpg"), colour_version(greys[27], info.matrix, size=(54, 96)))  # smaller
    shots = shot_list(info)
    decode = Recording(info)
    plan = plan_keyframes(info, shots, read_refs(tmp_path, info, shots), missing="grey", decode=decode)
    assert [(k.frame, k.kind, k.how, k.image.name) for s in plan.shots for k in s.keyframes] == [
        (16, "exemplar", "best-match", "shot-1.png"),
        (27, "exemplar", "best-match", "shot-2.jpg"),
    ]
    assert decode.calls == [(10, 20), (20, 30)]  # each shot once, nothing else
    assert plan.shots[0].source == "grey" and plan.shots[0].keyframes == ()


def test_automatic_choice_skips_coloured_frames(tmp_path: Path, reel) -> None:
    info, greys = reel
    cv2.imwrite(str(tmp_path / "frame-16.png"), colour_version(greys[16], info.matrix))
    cv2.imwrite(str(tmp_path / "shot-1.png"), colour_version(greys[16], info.matrix))
    shots = shot_list(info)
    plan = plan_keyframes(info, shots, read_refs(tmp_path, info, shots), missing="grey")
    keys = [(k.frame, k.kind) for k in plan.shots[1].keyframes]
    assert keys[0] == (16, "coloured") and len(keys) == 2
    assert keys[1][1] == "exemplar" and keys[1][0] in (15, 17)  # the next best: a neighbouring frame


def test_objects_key_the_first_frame(tmp_path: Path, reel) -> None:
    info, greys = reel
    cv2.imwrite(str(tmp_path / "shot-2.png"), unrelated())
    write_mask(tmp_path / "shot-2.car.mask.png")
    write_mask(tmp_path / "shot-2.car.refmask.png")
    cv2.imwrite(str(tmp_path / "shot-2.dog.png"), unrelated(7)[:40, :60])
    write_mask(tmp_path / "shot-2.dog.mask.png")
    write_mask(tmp_path / "shot-2.dog.refmask.png", size=(40, 60))
    shots = shot_list(info)
    plan = plan_keyframes(info, shots, read_refs(tmp_path, info, shots), decode=Recording(info, allowed=False))
    (key,) = plan.shots[2].keyframes
    assert (key.frame, key.kind, key.how) == (20, "exemplar", "first-frame")  # where the masks are drawn
    assert key.objects == (
        ObjectRef(
            "car", tmp_path / "shot-2.png", tmp_path / "shot-2.car.mask.png", tmp_path / "shot-2.car.refmask.png"
        ),
        ObjectRef(
            "dog", tmp_path / "shot-2.dog.png", tmp_path / "shot-2.dog.mask.png", tmp_path / "shot-2.dog.refmask.png"
        ),
    )


@pytest.fixture
def two_refs(tmp_path: Path, reel) -> tuple[ReelInfo, ShotList, Path]:
    """4 shots (0-7, 8-14, 15-21, 22-29); references (small: no decoding) in shots 0 and 3 only."""
    info, greys = reel
    cv2.imwrite(str(tmp_path / "frame-3.png"), colour_version(greys[3], info.matrix, size=(36, 64)))
    cv2.imwrite(str(tmp_path / "frame-25.png"), colour_version(greys[25], info.matrix, size=(36, 64)))
    return info, shot_list(info, (0, 8, 15, 22, 30)), tmp_path


def test_missing_refs_nearest(two_refs) -> None:
    info, shots, folder = two_refs
    plan = plan_keyframes(info, shots, read_refs(folder, info, shots), decode=Recording(info, allowed=False))
    assert [s.source for s in plan.shots] == ["refs", "neighbours", "neighbours", "refs"]
    one, two = plan.shots[1], plan.shots[2]
    # shot 0's last frame colours shot 1's first, shot 3's first frame its last; nearest listed first
    assert one.keyframes == (
        Keyframe(8, "exemplar", None, how="neighbour", ref_frame=7),
        Keyframe(14, "exemplar", None, how="neighbour", ref_frame=22),
    )
    assert one.neighbours == (0, 3) and two.neighbours == (3, 0)
    assert [(k.frame, k.ref_frame) for k in two.keyframes] == [(15, 7), (21, 22)]


def test_missing_refs_grey_and_error(two_refs) -> None:
    info, shots, folder = two_refs
    refs = read_refs(folder, info, shots)
    plan = plan_keyframes(info, shots, refs, missing="grey", decode=Recording(info, allowed=False))
    assert [(s.source, len(s.keyframes)) for s in plan.shots] == [("refs", 1), ("grey", 0), ("grey", 0), ("refs", 1)]
    with pytest.raises(RefsProblems) as caught:
        plan_keyframes(info, shots, refs, missing="error", decode=Recording(info, allowed=False))
    lines = str(caught.value).splitlines()
    assert lines[0] == f"{folder}/: 2 problems"
    assert "shot 1 (frames 8-14) has no reference" in lines[1] and "shot 2 (frames 15-21) has no reference" in lines[2]


def test_no_reference_at_all(tmp_path: Path, reel) -> None:
    info, _ = reel
    shots = shot_list(info)
    refs = read_refs(tmp_path, info, shots)
    with pytest.raises(RefsProblems, match="no shot has a reference"):
        plan_keyframes(info, shots, refs, decode=Recording(info, allowed=False))
    plan = plan_keyframes(info, shots, refs, missing="grey", decode=Recording(info, allowed=False))
    assert {s.source for s in plan.shots} == {"grey"}


def test_two_coloured_keyframes_for_one_frame(tmp_path: Path, reel) -> None:
    info, greys = reel
    cv2.imwrite(str(tmp_path / "frame-13.png"), colour_version(greys[13], info.matrix))
    cv2.imwrite(str(tmp_path / "again.jpg"), colour_version(greys[13], info.matrix))
    cv2.imwrite(str(tmp_path / "other.png"), unrelated())  # an exemplar anchored at the same frame
    # one file name per frame (frame-13 and frame-013 would be one reference twice): the others by refs.toml
    (tmp_path / "refs.toml").write_text(
        '[[ref]]\nimage = "again.jpg"\nframe = 13\n\n[[ref]]\nimage = "other.png"\ntimecode = "00:00:00:13"\n'
    )
    shots = shot_list(info)
    with pytest.raises(RefsProblems) as caught:
        plan_keyframes(info, shots, read_refs(tmp_path, info, shots), missing="grey")
    text = str(caught.value)
    assert text.splitlines()[0] == f"{tmp_path}/: 2 problems"
    assert f"{tmp_path / 'frame-13.png'}: is a second coloured keyframe for frame 13 (so is again.jpg)" in text
    assert f"{tmp_path / 'other.png'}: is an exemplar anchored at frame 13, which again.jpg colours" in text


def test_plan_json_round_trip(two_refs, tmp_path_factory: pytest.TempPathFactory) -> None:
    info, shots, folder = two_refs
    plan = plan_keyframes(info, shots, read_refs(folder, info, shots))
    out = tmp_path_factory.mktemp("plan") / "plan.json"
    write_plan(plan, out)
    data = json.loads(out.read_text())
    assert data["fps"] == "24000/1001" and data["shots"][1]["neighbours"] == [0, 3]
    assert read_plan(out) == plan
    with pytest.raises(PostprodError, match="already exists"):
        write_plan(plan, out)
    out.write_text('{"version": 7}')
    with pytest.raises(PostprodError, match="not a keyframe plan"):
        read_plan(out)


def test_threshold_separates_davis_pairs(shared_data: Path) -> None:
    """The coloured-keyframe threshold on real pictures: every true colour frame (also with its
    saturation raised x1.6, as a heavy-handed artist might) passes, another sequence never does."""
    davis = shared_data / "davis"
    sequences = sorted(p.name for p in davis.iterdir() if (p / "frames").is_dir())
    if not sequences:
        pytest.skip(f"no DAVIS sequences in {davis}")
    size = thumb_size(854, 480)

    def luma(bgr: np.ndarray) -> np.ndarray:
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255
        return luma_thumbnail(rgb_to_ycbcr(rgb, "bt601")[0], size)

    pictures = [cv2.imread(str(davis / s / "frames" / "00010.jpg")) for s in sequences]
    for k, bgr in enumerate(pictures):
        grey = luma_thumbnail(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255, size)
        hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV).astype(np.float32)
        hsv[..., 1] = np.minimum(hsv[..., 1] * 1.6, 255)
        saturated = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)
        assert luma_correlation(luma(bgr), grey) >= COLOURED_MIN_CORRELATION, sequences[k]
        assert luma_correlation(luma(saturated), grey) >= COLOURED_MIN_CORRELATION, sequences[k]
        other = pictures[(k + 1) % len(pictures)]
        assert luma_correlation(luma(other), grey) < COLOURED_MIN_CORRELATION, sequences[k]


# --- postprod plan -------------------------------------------------------------------------


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``postprod ARGS`` through :func:`cli.main.main`: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["postprod", *args])
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def demo() -> Path:
    if not (DEMO / "reel.mov").is_file():
        pytest.skip(f"demo reel not found at {DEMO}")
    return DEMO


def test_cli_plan_on_the_demo(demo: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "plan",
        "--reel",
        str(demo / "reel.mov"),
        "--refs",
        str(demo / "refs"),
        "--json",
        str(tmp_path / "plan.json"),
    )
    assert code == 0, err
    assert "3 shots" in out
    assert "keyframe 0 (01:00:00:00): coloured from frame-0.png [anchored" in out
    assert "exemplar from shot-1.png [best-match" in out
    assert "keyframe 48 (01:00:02:00): exemplar from shot-2.png [first-frame]" in out
    assert "object animal: shot-2.png, mask shot-2.animal.mask.png, refmask shot-2.animal.refmask.png" in out
    plan = read_plan(tmp_path / "plan.json")
    assert isinstance(plan, Plan) and [s.source for s in plan.shots] == ["refs", "refs", "refs"]
    assert [(s.start, s.end) for s in plan.shots] == [(0, 24), (24, 48), (48, 72)]


def test_cli_plan_lists_every_problem(demo: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    refs = tmp_path / "refs"
    shutil.copytree(demo / "refs", refs)
    (refs / "shot-2.animal.refmask.png").unlink()  # a mask without its partner
    shutil.copy(refs / "shot-1.png", refs / "frame-999.png")  # past the end
    shutil.copy(refs / "shot-1.png", refs / "shot-9.png")  # no such shot
    (refs / "frame-one.png").write_bytes(b"")  # not a name
    code, out, err = run_cli(monkeypatch, capsys, "plan", "--reel", str(demo / "reel.mov"), "--refs", str(refs))
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert lines[0] == f"postprod: error: {refs}/: 4 problems"
    assert len(lines) == 5 and "Traceback" not in err
    for name in ("shot-2.animal.mask.png", "frame-999.png", "shot-9.png", "frame-one.png"):
        assert sum(line.startswith(f"  {refs / name}: ") for line in lines) == 1, name


def test_cli_plan_missing_refs_error(demo: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    refs = tmp_path / "refs"
    refs.mkdir()
    shutil.copy(demo / "refs" / "frame-0.png", refs)
    args = ("plan", "--reel", str(demo / "reel.mov"), "--refs", str(refs))
    code, out, err = run_cli(monkeypatch, capsys, *args, "--missing-refs", "error")
    assert code == 2 and f"{refs}/: 2 problems" in err
    assert "shot 1 (frames 24-47) has no reference" in err and "shot 2 (frames 48-71) has no reference" in err
    code, out, err = run_cli(monkeypatch, capsys, *args)  # nearest, the default
    assert code == 0, err
    assert "neighbours (from shot 0)" in out and "exemplar from frame 23 once coloured [neighbour]" in out
