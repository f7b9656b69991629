"""The artist loop: confidence records, suggestions, the review page (rendered by headless
Chromium), the run's last lines, and reruns that redo only the shots whose references changed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from cli.main import EXIT_USER_ERROR, main
from pipeline.confidence import ConfidenceRecorder, confidence_path, read_confidence
from pipeline.images import read_rgb, write_rgb
from pipeline.keyframes import Keyframe, Plan, ShotPlan, luma_correlation
from pipeline.media import synth
from pipeline.media.decode import iter_frames
from pipeline.propagate import UNSURE
from pipeline.review import read_run
from pipeline.run import RunSettings, run_reel
from pipeline.suggest import LIST_HEADER, MIN_GAP, rank
from pipeline.workdir import LAST_RUN_NAME, REVIEW_NAME, SEGMENTS, load_plan

SETTINGS = RunSettings(codec="ffv1", device="cpu", work_size=64)
SHOT_LENGTH = 10


Postprod = Callable[..., tuple[int, str, str]]


@pytest.fixture
def postprod(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Postprod:
    """``postprod(*args)``: the console entry point in this process; (exit code, stdout, stderr)."""

    def call(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["postprod", *args])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call


# --- confidence records and the ranking (no colouring) ---------------------------------------


def test_confidence_record_keeps_guessed_share_mean_and_a_small_map(tmp_path: Path) -> None:
    rec = ConfidenceRecorder(start=40)
    conf = np.ones((64, 96), np.float32)
    conf[:, :24] = 0.2  # a quarter of the frame guessed
    rec.add(np.ones((64, 96), np.float32))
    rec.add(conf)
    dest = rec.save(tmp_path / "confidence" / "shot-0003-abc.npz")
    back = read_confidence(dest)
    assert back.start == 40 and back.frames == 2
    assert back.guessed.tolist() == pytest.approx([0.0, 0.25])
    assert back.mean[1] == pytest.approx(0.8, abs=1e-6)
    assert back.maps.dtype == np.uint8 and min(back.maps.shape[1:]) <= 64 and back.maps[1, :, 0].max() < 255 * UNSURE
    assert back.worst() == 41
    assert confidence_path(tmp_path / SEGMENTS / "shot-0003-abc.mkv") == dest
    assert not [p for p in dest.parent.iterdir() if ".partial-" in p.name]


def _plan(lengths: list[int]) -> Plan:
    from fractions import Fraction

    shots, start = [], 0
    for i, n in enumerate(lengths):
        shots.append(ShotPlan(i, start, start + n, (Keyframe(start, "coloured", Path(f"frame-{start}.png")),), "refs"))
        start += n
    return Plan(reel=Path("reel.mkv"), frames=start, fps=Fraction(24), shots=tuple(shots))


def _records(plan: Plan, uncertainties: list[np.ndarray]) -> dict:
    from pipeline.confidence import ShotConfidence

    return {
        s.index: ShotConfidence(
            s.start, (u > 0.5).astype(np.float32), (1 - u).astype(np.float32), np.zeros((len(u), 1, 1), np.uint8)
        )
        for s, u in zip(plan.shots, uncertainties, strict=True)
    }


def test_suggestions_go_where_colour_is_guessed_and_spread_out() -> None:
    plan = _plan([60, 60])
    u0 = np.zeros(60)
    u0[40:55] = 1.0  # something new comes in late in shot 0
    u1 = np.linspace(0, 1, 60)  # shot 1 drifts steadily
    picks = rank(plan, _records(plan, [u0, u1]), per_shot=2)
    first0 = next(s for s in picks if s.shot == 0)
    assert 40 <= first0.frame < 55 and first0.guessed == 1.0
    assert all(36 <= s.frame < 60 for s in picks if s.shot == 0)  # both on the stretch that is guessed
    frames = sorted(s.frame - 60 for s in picks if s.shot == 1)
    assert len(frames) == 2 and frames[1] - frames[0] >= 12 and frames[0] >= MIN_GAP  # spread over the drift
    assert [s.rank for s in picks] == [1, 2, 3, 4] and picks[0].gain >= picks[-1].gain


def test_two_picks_are_placed_as_a_pair_not_one_after_the_other() -> None:
    """Greedy alone puts the first pick where one pick is best and the second in what is left;
    the local search moves them to where two are best (within 2 % of every pair tried)."""
    from itertools import combinations

    from pipeline.suggest import _ShotState

    plan = _plan([48])
    u = np.minimum(1.0, np.arange(48) / 30.0)  # drift from the first frame, then guessed
    state = _ShotState(plan.shots[0], _records(plan, [u])[0])
    for _ in range(2):
        best = state.best()
        assert best is not None
        state.take(best[1])
    greedy = state.gain(state.picks)
    state.refine()
    pairs = [list(p) for p in combinations(range(MIN_GAP, 48), 2) if p[1] - p[0] >= MIN_GAP]
    best_pair = max(state.gain(p) for p in pairs)
    assert state.gain(state.picks) > greedy and state.gain(state.picks) >= 0.98 * best_pair
    frames = sorted(s.frame for s in rank(plan, _records(plan, [u]), per_shot=2))
    assert frames == sorted(state.picks)


def test_a_reel_budget_goes_to_the_shots_that_need_it() -> None:
    plan = _plan([50, 50, 50])
    picks = rank(plan, _records(plan, [np.zeros(50), np.linspace(0, 1, 50), np.zeros(50)]), budget=2)
    assert [s.shot for s in picks] == [1, 1]
    with pytest.raises(ValueError):
        rank(plan, {}, per_shot=1, budget=1)


# --- a reel run end to end ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def reel3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-shot grey FFV1 reel, 10 frames a shot, 96x64."""
    folder = tmp_path_factory.mktemp("artist")
    return synth.write_cut_reel(folder / "reel.mkv", 3, SHOT_LENGTH)


def _refs(folder: Path, shots: tuple[int, ...], seed: int = 3) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    return synth.write_shot_refs(folder, shots, seed=seed)


def _artist_frame(reel: Path, frame: int, dest: Path) -> Path:
    """Frame ``frame`` of ``reel`` tinted, as an artist's colouring of it (its luma kept)."""
    f = next(iter_frames(reel, frame, frame + 1))
    grey = f.luma.astype(np.float32)[..., None] / 255.0
    return write_rgb(dest, np.clip(grey * np.array([1.0, 0.85, 0.6], np.float32), 0, 1), force=True)


@pytest.fixture(scope="module")
def finished(reel3: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(refs, output, work folder) of a CLI run with refs for shots 0 and 2 (1 borrows), --suggest 1."""
    folder = tmp_path_factory.mktemp("finished")
    refs = _refs(folder / "refs", (0, 2))
    out, work = folder / "out.mkv", folder / "work"
    args = ["run", "--reel", str(reel3), "--refs", str(refs), "--out", str(out), "--codec", "ffv1"]
    args += ["--workdir", str(work), "--device", "cpu", "--work-size", "64", "--engine", "local", "--suggest", "1"]
    proc = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-4] == "redid shots: 0, 1, 2; reused shots: none; left grey: none"
    assert lines[-3] == f"{out}: colorized {reel3}"
    assert lines[-2] == f"work folder: {work}"
    assert lines[-1] == f"review page: {work / REVIEW_NAME}"
    assert len([line for line in lines if re.match(r"\s*\d+\. frame-\d+\.png: shot \d", line)]) == 3
    return refs, out, work


def test_every_coloured_shot_has_its_confidence_record(finished: tuple[Path, Path, Path]) -> None:
    _, _, work = finished
    plan = load_plan(work)
    for seg in sorted((work / SEGMENTS).glob("*.mkv")):
        rec = read_confidence(confidence_path(seg))
        shot = plan.shots[int(seg.stem.split("-")[1])]
        assert rec.start == shot.start and rec.frames == shot.end - shot.start
        assert np.all((rec.guessed >= 0) & (rec.guessed <= 1))
        key = next(k.frame for k in shot.keyframes) - shot.start
        assert rec.mean[key] == pytest.approx(1.0)  # 1 on a keyframe
    assert read_run(work).redone == (0, 1, 2)


def test_suggest_writes_grey_frames_and_reasons_and_never_overwrites_an_artists_file(
    finished: tuple[Path, Path, Path],
    tmp_path: Path,
    postprod: Postprod,
) -> None:
    refs, _, work = finished
    dest = tmp_path / "to-colour"
    code, out, err = postprod("suggest", "--workdir", str(work), "--per-shot", "2", "--out", str(dest))
    assert code == 0, err
    plan = load_plan(work)
    frames = sorted(int(p.stem.split("-")[1]) for p in dest.glob("frame-*.png"))
    assert len(frames) == 6
    keys = {k.frame for s in plan.shots for k in s.keyframes}
    for n in frames:
        rgb = read_rgb(dest / f"frame-{n}.png")
        assert rgb.shape == (64, 96, 3) and np.array_equal(rgb[..., 0], rgb[..., 2])  # grey, reel-sized
        truth = next(iter_frames(plan.reel, n, n + 1)).luma
        assert luma_correlation(rgb[..., 0], truth.astype(np.float32)) > 0.999  # that very frame
        assert all(abs(n - k) >= MIN_GAP for k in keys)
    listing = (dest / "suggestions.txt").read_text().splitlines()
    assert listing[0] == LIST_HEADER and len(listing) == 7 and "guessed" in listing[1]
    assert f"save them, same names, into {refs}" in out

    coloured = _artist_frame(plan.reel, frames[0], dest / f"frame-{frames[0]}.png")  # the artist at work
    before = coloured.read_bytes()
    code, out, err = postprod("suggest", "--workdir", str(work), "--per-shot", "2", "--out", str(dest))
    assert code == 0 and coloured.read_bytes() == before and "kept the file already there" in out

    code, out, err = postprod("suggest", "--workdir", str(work), "--out", str(refs))
    assert code == EXIT_USER_ERROR and len(err.strip().splitlines()) == 1 and str(refs) in err
    assert not list(refs.glob("frame-*.png"))  # nothing written into the refs folder
    code, out, err = postprod("suggest", "--workdir", str(tmp_path / "nowhere"))
    assert code == EXIT_USER_ERROR and "no such work folder" in err


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium not installed (apt-get install chromium; .ci/run installs it)")
    return exe


def test_review_page_renders_in_chromium_with_every_shots_parts(
    finished: tuple[Path, Path, Path],
    tmp_path: Path,
    postprod: Postprod,
) -> None:
    exe = _chromium()
    _, out_file, work = finished
    page = tmp_path / "review.html"
    code, out, err = postprod("review", "--workdir", str(work), "--out", str(page))
    assert code == 0, err
    assert page.read_text() == (work / REVIEW_NAME).read_text()  # the run wrote the same page
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run([exe, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr
    html = dom.stdout
    plan = load_plan(work)
    for shot in plan.shots:
        section = html.split(f'id="shot-{shot.index}"', 1)[1].split("</section>", 1)[0]
        assert section.count('class="grey"') >= 3 and section.count('class="colour"') >= 3
        assert 'class="confidence-strip"' in section and section.count('class="bar"') == shot.end - shot.start
        assert 'class="heatmap"' in section and 'class="ref"' in section
        assert section.count('class="suggestion"') == 1
    assert f"--out {out_file}" in html and 'id="rerun"' in html and not re.search(r'(src|href)="(?!data:)', html)
    shot_png = tmp_path / "review.png"
    subprocess.run(
        [exe, *flags, f"--screenshot={shot_png}", "--window-size=1000,1400", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pixels = cv2.imread(str(shot_png))
    assert pixels is not None and pixels.shape[:2] == (1400, 1000)
    assert pixels.std() > 20 and (pixels.std(axis=2) > 30).mean() > 0.02  # not blank: coloured thumbnails drawn


def test_review_refuses_to_replace_a_file_without_force(
    finished: tuple[Path, Path, Path],
    tmp_path: Path,
    postprod: Postprod,
) -> None:
    _, _, work = finished
    page = tmp_path / "mine.html"
    page.write_text("my notes")
    code, _, err = postprod("review", "--workdir", str(work), "--out", str(page))
    assert code == EXIT_USER_ERROR and "--force" in err and page.read_text() == "my notes"


# --- reruns redo exactly the shots whose references changed --------------------------------------


def test_rerun_redoes_only_the_shots_whose_refs_changed_and_matches_a_fresh_run(reel3: Path, tmp_path: Path) -> None:
    refs, out, work = tmp_path / "refs", tmp_path / "out.mkv", tmp_path / "work"

    def run(folder: Path = refs) -> tuple[tuple[int, ...], tuple[int, ...]]:
        run_reel(reel3, folder, out, workdir=work, settings=SETTINGS, force=True)
        record = json.loads((work / LAST_RUN_NAME).read_text())
        return tuple(record["redone"]), tuple(record["reused"])

    _refs(refs, (0, 1, 2))
    assert run() == ((0, 1, 2), ())
    shutil.copy(_refs(tmp_path / "other", (2,), seed=9) / "shot-2.png", refs / "shot-2.png")  # replaced
    assert run() == ((2,), (0, 1))
    (refs / "shot-1.png").unlink()  # removed: shot 1 now borrows from shots 0 and 2
    assert run() == ((1,), (0, 2))
    _artist_frame(reel3, 4, refs / "frame-4.png")  # added to shot 0: so shot 1's borrowed colour changes too
    assert run() == ((0, 1), (2,))
    assert any(k.kind == "coloured" for k in load_plan(work).shots[0].keyframes)
    moved = tmp_path / "moved-refs"
    shutil.copytree(refs, moved)
    assert run(moved) == ((), (0, 1, 2))  # the key is the references' content, not their folder

    fresh = tmp_path / "fresh.mkv"
    run_reel(reel3, refs, fresh, workdir=tmp_path / "fresh-work", settings=SETTINGS)
    assert out.read_bytes() == fresh.read_bytes()  # FFV1: the same frames as a fresh run with the final refs


def test_the_prefect_report_links_the_review_page_and_tables_where_colour_is_guessed(
    finished: tuple[Path, Path, Path],
) -> None:
    from flows.artifacts import Report, report_markdown
    from pipeline.review import shot_summaries

    _, out, work = finished
    summary = shot_summaries(load_plan(work), work, SETTINGS)
    assert [r["shot"] for r in summary] == [0, 1, 2]
    assert all(0 <= r["guessed %"] <= 100 and r["suggested"] != "-" for r in summary)
    page = (work / REVIEW_NAME).resolve().as_uri()
    text = report_markdown(
        Report(Path("/r/a.mov"), out, work, 10.0, [], None, frames=30, review=page, confidence=summary)
    )
    assert f"[Review page: per shot thumbnails, where colour is guessed, suggested frames]({page})" in text
    r = summary[1]
    cells = [r["shot"], r["frames"], r["guessed %"], r["worst frame"], r["worst guessed %"], r["suggested"]]
    assert "| " + " | ".join(map(str, cells)) + " |" in text


def test_the_artist_bench_gives_the_oracle_the_frames_of_each_row() -> None:
    from bench.bench_artist import even_frames, keyframes_for
    from bench.toolkit import ReelShot

    assert even_frames(90, 1) == [0, 45] and even_frames(90, 2) == [0, 30, 60]
    shots = [ReelShot("a", 0, (Path("0.jpg"),) * 40), ReelShot("b", 40, (Path("0.jpg"),) * 60)]
    assert keyframes_for("first", shots, {}) == {0, 40}
    assert keyframes_for("first+last", shots, {}) == {0, 39, 40, 99}
    assert keyframes_for("first+1even", shots, {}) == {0, 20, 40, 70}
    assert keyframes_for("first+2suggested", shots, {2: {31, 33, 77, 90}}) == {0, 31, 33, 40, 77, 90}
