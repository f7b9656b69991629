"""Shot detection (pipeline.shots): synthetic luma sequences, a small grey DAVIS reel, writers, CLI."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SHARED_DATA

from cli.main import cli
from pipeline.errors import PostprodError
from pipeline.media.synth import write_grey_reel
from pipeline.shots import (
    CutDetector,
    Shot,
    ShotList,
    ShotSettings,
    Transition,
    compute_features,
    detect_shots,
    detect_transitions,
    detect_transitions_coarse,
    merge_transitions,
    shots_from_transitions,
    write_csv,
    write_edl,
    write_json,
)

H, W = 96, 160


def texture(seed: int, margin: int) -> np.ndarray:
    """(H + margin, W + margin) float32 in [0.15, 0.85]: smooth random blobs, a different picture per seed."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.random((H + margin, W + margin), dtype=np.float32), (0, 0), 5)
    noise = (noise - noise.min()) / (noise.max() - noise.min())
    return 0.15 + 0.7 * noise


def shot(seed: int, n: int, *, pan: float = 1.0) -> list[np.ndarray]:
    """``n`` float32 (H, W) frames in [0, 1] of one picture panning ``pan`` px per frame (half that down), grainy."""
    tex = texture(seed, margin=int(np.ceil(n * pan)) + 2)
    rng = np.random.default_rng(seed + 1000)
    return [
        np.clip(
            cv2.warpAffine(tex, np.float32([[1, 0, -i * pan], [0, 1, -i * pan / 2]]), (W, H))
            + rng.normal(0, 0.01, (H, W)).astype(np.float32),
            0,
            1,
        )
        for i in range(n)
    ]


def to_u8(frames: list[np.ndarray]) -> list[np.ndarray]:
    return [np.round(f * 255).astype(np.uint8) for f in frames]


def found(frames: list[np.ndarray], **settings: object) -> list[tuple[int, str]]:
    transitions, count = detect_transitions(to_u8(frames), settings=ShotSettings(**settings))
    assert count == len(frames)
    return [(t.frame, t.kind) for t in transitions]


# --- synthetic sequences ---------------------------------------------------------------------


def test_hard_cut() -> None:
    assert found(shot(1, 30) + shot(2, 30)) == [(30, "cut")]


@pytest.mark.parametrize("level", [0.0, 1.0], ids=["black", "white"])
def test_fade_out_and_in_cuts_once_in_the_middle_of_the_blank_frames(level: float) -> None:
    a, b = shot(1, 40, pan=0.5), shot(2, 40, pan=0.5)
    out = [(1 - k / 10) * a[29 + k] + k / 10 * level for k in range(1, 11)]  # 30..39, 39 is blank
    blank = [np.full((H, W), level, np.float32)] * 5  # 40..44
    into = [(1 - k / 10) * level + k / 10 * b[k - 1] for k in range(0, 10)]  # 45 is blank too
    frames = a[:30] + out + blank + into + b[10:]
    result = found(frames)
    assert len(result) == 1 and result[0][1] == "fade"
    first_blank, last_blank = 39, 45
    assert abs(result[0][0] - (first_blank + last_blank + 1) // 2) <= 1


def test_dissolve_cuts_where_the_new_picture_takes_over() -> None:
    # a slow camera (0.1 px/frame): a dissolve over fast motion looks like motion (documented limit)
    a, b = shot(1, 51, pan=0.1), shot(2, 50, pan=0.1)
    mix = [(1 - k / 21) * a[30 + k] + k / 21 * b[k] for k in range(1, 21)]  # frames 30..49
    frames = a[:30] + mix + b[21:]
    result = found(frames)
    assert len(result) == 1 and result[0][1] == "dissolve"
    assert abs(result[0][0] - 40) <= 1  # weight 0.5 between frames 39 and 40


@pytest.mark.parametrize("flash", ["white", "overexposed", "other-picture"])
def test_a_single_odd_frame_does_not_cut(flash: str) -> None:
    frames = shot(1, 60)
    frames[30] = {
        "white": np.ones((H, W), np.float32),
        "overexposed": np.clip(frames[30] * 0.4 + 0.7, 0, 1),
        "other-picture": shot(7, 1)[0],
    }[flash]
    assert found(frames) == []


def test_slow_pan_with_brightness_drift_does_not_cut() -> None:
    frames = [f * g for f, g in zip(shot(3, 120, pan=0.5), np.linspace(0.6, 1.15, 120))]
    assert found(frames) == []


def test_minimum_shot_length_drops_the_weaker_boundary() -> None:
    frames = shot(1, 30) + shot(2, 5) + shot(3, 30)
    assert [f for f, _ in found(frames, min_shot_len=3)] == [30, 35]
    assert len(found(frames, min_shot_len=10)) == 1


def test_ten_bit_limited_range_gives_the_same_cuts() -> None:
    frames = shot(1, 30) + shot(2, 30)
    ten_bit = [np.round(64 + f * 876).astype(np.uint16) for f in frames]
    transitions, _ = detect_transitions(ten_bit, bit_depth=10, limited_range=True)
    assert [(t.frame, t.kind) for t in transitions] == [(30, "cut")]
    # limited-range 10-bit black (64) and white (940) are blank frames once read as such
    black = compute_features(0, np.full((H, W), 64, np.uint16), bit_depth=10, limited_range=True)
    white = compute_features(0, np.full((H, W), 940, np.uint16), bit_depth=10, limited_range=True)
    assert black.dark_fraction == 1.0 and white.bright_fraction == 1.0


def test_cut_detector_streams_with_lookahead() -> None:
    detector = CutDetector(window=8)
    frames = to_u8(shot(1, 20) + shot(2, 12))
    early = [t for i, f in enumerate(frames) for t in detector.process(compute_features(i, f))]
    late = detector.flush()
    assert [t.frame for t in early + late] == [20]
    assert detector.flush() == []


def test_merge_absorbs_a_cut_inside_a_fade_and_keeps_shots_long_enough() -> None:
    fade = Transition("fade", 195, 180, 211, 31.0)
    cut_into_black = Transition("cut", 180, 180, 180, 0.9)
    too_close = Transition("cut", 200, 200, 200, 0.5)
    near_start = Transition("cut", 3, 3, 3, 0.9)
    later = Transition("cut", 300, 300, 300, 0.4)
    merged = merge_transitions([later, too_close, cut_into_black, fade, near_start], frames=400, min_shot_len=10)
    assert merged == [fade, later]


def test_shots_cover_the_reel_with_exclusive_ends() -> None:
    shots = shots_from_transitions([Transition("dissolve", 70, 60, 80, 1.0), Transition("cut", 30, 30, 30, 1.0)], 100)
    assert shots == (Shot(0, 0, 30, "start"), Shot(1, 30, 70, "cut"), Shot(2, 70, 100, "dissolve"))
    assert sum(s.frames for s in shots) == 100


# --- coarse-to-fine (intra-only reels) ------------------------------------------------------------


def edited_reel() -> list[np.ndarray]:
    """300 float32 frames: a cut at 70, a fade through black (blank 140-145), a 20-frame dissolve
    (215-234, boundary at 225), a white flash at 260 (no boundary); slow pans in between."""
    # slow pans: a dissolve over fast motion looks like motion (a documented limit of the detector)
    a, b, c, d = (shot(seed, n, pan=0.1) for seed, n in ((1, 70), (2, 70), (3, 91), (4, 86)))
    out = [(1 - k / 10) * b[60 + k] for k in range(10)]  # 130..139
    into = [k / 10 * c[k] for k in range(10)]  # 145..154, 145 black
    mix = [(1 - k / 21) * c[70 + k] + k / 21 * d[k] for k in range(1, 21)]  # 215..234
    frames = a + b[:60] + out + [np.zeros((H, W), np.float32)] * 5 + into + c[10:70] + mix + d[21:86]
    frames[260] = np.ones((H, W), np.float32)
    return frames


def test_coarse_to_fine_finds_what_the_dense_path_finds_decoding_less() -> None:
    frames = to_u8(edited_reel())
    asked: list[int] = []

    def read(ranges: list[range]):
        for r in ranges:
            for i in r:
                asked.append(i)
                yield i, frames[i]

    dense, count = detect_transitions(frames)
    assert [(t.frame, t.kind) for t in dense] == [(70, "cut"), (143, "fade"), (225, "dissolve")]
    assert detect_transitions_coarse(read, count, step=5) == dense
    assert len(asked) == len(set(asked)) < 0.75 * count  # each frame decoded at most once, most not at all
    for step in (3, 8):
        assert detect_transitions_coarse(read, count, step=step) == dense


def test_coarse_to_fine_decodes_every_frame_once_when_everything_moves() -> None:
    frames = to_u8(shot(1, 60, pan=6.0) + shot(2, 60, pan=6.0))  # 6 px a frame: samples always differ
    calls: list[list[range]] = []
    asked: list[int] = []

    def read(ranges: list[range]):
        calls.append(list(ranges))
        for r in ranges:
            for i in r:
                asked.append(i)
                yield i, frames[i]

    dense, count = detect_transitions(frames)
    assert [t.frame for t in dense] == [60]
    assert detect_transitions_coarse(read, count, step=5) == dense
    assert len(calls) == 2 and sorted(asked) == list(range(count))  # the samples, then all the rest at once


@pytest.mark.parametrize("flash", ["white", "other-picture"])
def test_coarse_to_fine_keeps_a_flash_on_a_sample_frame_out(flash: str) -> None:
    frames = shot(1, 60)
    frames[30] = np.ones((H, W), np.float32) if flash == "white" else shot(7, 1)[0]  # 30: a sample at step 5
    frames = to_u8(frames)
    read = lambda ranges: ((i, frames[i]) for r in ranges for i in r)  # noqa: E731
    assert detect_transitions_coarse(read, len(frames), step=5) == detect_transitions(frames)[0] == []


# --- a real (grey DAVIS) reel through the decoder -------------------------------------------

DAVIS = SHARED_DATA / "davis"
DAVIS_SEQUENCES = ("blackswan", "car-shadow", "dog")
FRAMES_PER_SEQUENCE = 15


@pytest.fixture(scope="module")
def davis_reel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not all((DAVIS / s / "frames").is_dir() for s in DAVIS_SEQUENCES):
        pytest.skip(f"DAVIS sequences {DAVIS_SEQUENCES} not found under {DAVIS} (../shared/data/davis)")
    frames = []
    for seq in DAVIS_SEQUENCES:
        for path in sorted((DAVIS / seq / "frames").glob("*.jpg"))[:FRAMES_PER_SEQUENCE]:
            grey = cv2.imread(str(path), cv2.IMREAD_REDUCED_GRAYSCALE_2)  # 427x240
            frames.append(grey[:, : grey.shape[1] // 2 * 2])
    reel = tmp_path_factory.mktemp("davis") / "davis-grey.mp4"
    write_grey_reel(reel, frames, Fraction(24))
    return reel


def test_detect_shots_finds_the_cuts_of_a_grey_davis_reel(davis_reel: Path) -> None:
    result = detect_shots(davis_reel, settings=ShotSettings(min_shot_len=8))
    assert result.frames == 3 * FRAMES_PER_SEQUENCE and result.fps == 24
    starts = [s.start for s in result.shots[1:]]
    assert len(starts) == 2
    for got, want in zip(starts, (15, 30)):
        assert abs(got - want) <= 1
    assert result.shots[-1].end == result.frames


@pytest.fixture(scope="module")
def intra_reel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The edited reel of 300 frames as MJPEG (every frame a keyframe): detect_shots goes coarse-to-fine."""
    reel = tmp_path_factory.mktemp("intra") / "edited.mov"
    write_grey_reel(reel, to_u8(edited_reel()), Fraction(24), codec="mjpeg")
    return reel


def test_detect_shots_goes_coarse_to_fine_on_an_intra_only_reel(intra_reel: Path) -> None:
    coarse = detect_shots(intra_reel)
    dense = detect_shots(intra_reel, settings=ShotSettings(coarse_step=1))
    assert coarse == dense
    assert [(s.start, s.begins) for s in coarse.shots] == [(0, "start"), (70, "cut"), (143, "fade"), (225, "dissolve")]
    assert coarse.frames == 300 and coarse.shots[-1].end == 300


def test_detect_shots_shares_its_decode_pass(intra_reel: Path) -> None:
    """With ``on_frame`` every frame is handed over once, in order, as decoded exactly (not in
    analysis mode), and the shots are those of dense detection."""
    from pipeline.media.decode import iter_frame_ranges

    seen = []
    shared = detect_shots(intra_reel, on_frame=seen.append)
    assert shared == detect_shots(intra_reel, settings=ShotSettings(coarse_step=1))
    assert [f.index for f in seen] == list(range(300))
    for f, g in zip(seen[::50], iter_frame_ranges(intra_reel, [range(0, 300, 50)]), strict=True):
        assert np.array_equal(f.luma, g.luma)


# --- writers ----------------------------------------------------------------------------------


def ntsc_shots(tmp_path: Path) -> ShotList:
    """29.97 fps, drop-frame start timecode; the second shot starts at frame 1800 (one minute in)."""
    return ShotList(
        tmp_path / "reel.mov",
        Fraction(30000, 1001),
        2000,
        "01:00:00;00",
        (Shot(0, 0, 1800, "start"), Shot(1, 1800, 2000, "fade")),
    )


def test_json_has_the_agreed_keys(tmp_path: Path) -> None:
    write_json(ntsc_shots(tmp_path), tmp_path / "shots.json")
    data = json.loads((tmp_path / "shots.json").read_text())
    assert data["fps"] == "30000/1001" and data["frames"] == 2000
    assert [{k: s[k] for k in ("index", "start", "end")} for s in data["shots"]] == [
        {"index": 0, "start": 0, "end": 1800},
        {"index": 1, "start": 1800, "end": 2000},
    ]


def test_csv_columns_and_drop_frame_timecodes(tmp_path: Path) -> None:
    write_csv(ntsc_shots(tmp_path), tmp_path / "shots.csv")
    rows = list(csv.reader((tmp_path / "shots.csv").open()))
    assert rows[0] == ["index", "start", "end", "frames", "start_tc", "end_tc"]
    # 1800 frames at 29.97 DF from 01:00:00;00: the labels ;00 and ;01 of minute 1 are skipped
    assert rows[1] == ["0", "0", "1800", "1800", "01:00:00;00", "01:01:00;02"]
    assert rows[2] == ["1", "1800", "2000", "200", "01:01:00;02", "01:01:06;22"]


EDL_EVENT = re.compile(r"^(\d{3})  (\S{1,8}) +V +C +(\d\d:\d\d:\d\d[:;]\d\d) (\S+) (\S+) (\S+)$")


def test_edl_is_cmx3600_with_reel_timecodes(tmp_path: Path) -> None:
    write_edl(ntsc_shots(tmp_path), tmp_path / "shots.edl")
    lines = (tmp_path / "shots.edl").read_text().splitlines()
    assert lines[0] == "TITLE: reel" and lines[1] == "FCM: DROP FRAME"
    events = [EDL_EVENT.match(line) for line in lines if line[:1].isdigit()]
    assert all(events) and len(events) == 2
    assert [e.groups()[2:] for e in events] == [
        ("01:00:00;00", "01:01:00;02", "01:00:00;00", "01:01:00;02"),
        ("01:01:00;02", "01:01:06;22", "01:01:00;02", "01:01:06;22"),
    ]
    assert "* FROM CLIP NAME: reel.mov" in lines


def test_edl_without_start_timecode_is_non_drop_from_zero(tmp_path: Path) -> None:
    result = ShotList(tmp_path / "r.mp4", Fraction(25), 60, None, (Shot(0, 0, 35, "start"), Shot(1, 35, 60)))
    write_edl(result, tmp_path / "r.edl")
    lines = (tmp_path / "r.edl").read_text().splitlines()
    assert lines[1] == "FCM: NON-DROP FRAME"
    assert [EDL_EVENT.match(line).group(3) for line in lines if line[:1].isdigit()] == ["00:00:00:00", "00:00:01:10"]


def test_writers_refuse_to_overwrite_without_force(tmp_path: Path) -> None:
    result = ntsc_shots(tmp_path)
    dest = tmp_path / "shots.json"
    dest.write_text("keep me")
    with pytest.raises(PostprodError, match="already exists"):
        write_json(result, dest)
    assert dest.read_text() == "keep me"
    write_json(result, dest, force=True)
    assert json.loads(dest.read_text())["frames"] == 2000


# --- CLI ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_reel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 frames at 24 fps, a hard cut at 24."""
    reel = tmp_path_factory.mktemp("cli") / "small.mp4"
    write_grey_reel(reel, to_u8(shot(1, 24) + shot(2, 24)), Fraction(24))
    return reel


def test_cli_shots_writes_all_formats(small_reel: Path, tmp_path: Path) -> None:
    out = {ext: tmp_path / f"s.{ext}" for ext in ("json", "csv", "edl")}
    res = CliRunner().invoke(
        cli,
        [
            "shots",
            str(small_reel),
            "--json",
            str(out["json"]),
            "--csv",
            str(out["csv"]),
            "--edl",
            str(out["edl"]),
            "--min-shot-len",
            "8",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "2 shots in 48 frames" in res.output
    assert [(s["start"], s["end"]) for s in json.loads(out["json"].read_text())["shots"]] == [(0, 24), (24, 48)]
    assert len(out["csv"].read_text().splitlines()) == 3
    assert sum(1 for line in out["edl"].read_text().splitlines() if EDL_EVENT.match(line)) == 2


def test_cli_shots_prints_json_and_fails_in_one_line(small_reel: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["shots", str(small_reel)])
    assert res.exit_code == 0 and json.loads(res.output)["frames"] == 48
    existing = tmp_path / "taken.json"
    existing.write_text("{}")
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "shots", str(small_reel), "--json", str(existing)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"postprod: error: {existing}: output already exists (use --force to replace it)"
    ]
    assert existing.read_text() == "{}"
