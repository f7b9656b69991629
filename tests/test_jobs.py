"""Shots coloured at once in one process (``pipeline.jobs``, ``pipeline.run.colorize_wave``)."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import run
from pipeline.errors import PostprodError
from pipeline.jobs import MAX_AUTO_JOBS, Jobs, compute_threads, shot_jobs
from pipeline.keyframes import Plan
from pipeline.media.decode import iter_frames
from pipeline.settings import RunSettings

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    ("device", "jobs", "cores", "expected"),
    [
        (CPU, None, 1, Jobs(1, 1)),
        (CPU, None, 2, Jobs(2, 1)),
        (CPU, None, 16, Jobs(MAX_AUTO_JOBS, 16 // MAX_AUTO_JOBS)),
        (CPU, 3, 2, Jobs(3, 1)),  # more shots than cores: each still gets a thread
        (CPU, 1, 8, Jobs(1, 8)),
        (CUDA, None, 16, Jobs(1, 16)),
        (CUDA, 2, 16, Jobs(2, 16)),
    ],
)
def test_shots_at_once_and_threads(device: torch.device, jobs: int | None, cores: int, expected: Jobs) -> None:
    assert shot_jobs(device, jobs, cores) == expected


@pytest.mark.parametrize("jobs", [0, -1, 1.5])
def test_jobs_must_be_a_positive_whole_number(jobs: object) -> None:
    with pytest.raises(ValueError, match="jobs must be"):
        shot_jobs(CPU, jobs, 4)  # type: ignore[arg-type]


def test_threads_are_set_inside_the_block_and_restored() -> None:
    import cv2

    before = (torch.get_num_threads(), cv2.getNumThreads())
    with compute_threads(Jobs(2, 1)):
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (1, 1)
    assert (torch.get_num_threads(), cv2.getNumThreads()) == before


@pytest.fixture(scope="module")
def three_shots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 3-shot synthetic reel (10, 10 and 10 frames) with an exemplar for every shot: (reel, refs)."""
    from pipeline.media import synth

    d = tmp_path_factory.mktemp("three")
    return synth.write_cut_reel(d / "reel.mkv", 3, 10), synth.write_shot_refs(d / "refs", (0, 1, 2))


def _chroma(segment: Path | None) -> np.ndarray:
    assert segment is not None
    return np.stack([f.chroma for f in iter_frames(segment, chroma=True)])


def test_shots_coloured_at_once_equal_shots_coloured_one_by_one(tmp_path: Path, three_shots: tuple[Path, Path]) -> None:
    # the same thread count both ways, so any difference comes from shots sharing the process
    reel, refs = three_shots
    settings = RunSettings(codec="ffv1", device="cpu", work_size=64, method="transfer")
    results = []
    for at_once in (1, 3):
        work = tmp_path / f"work{at_once}"
        plan = run.prepare_run(reel, refs, work, settings)
        with compute_threads(Jobs(at_once, 1)):
            segments = run.colorize_wave(plan, [0, 1, 2], work, settings, at_once)
        assert sorted(segments) == [0, 1, 2]
        results.append([_chroma(segments[i]) for i in range(3)])
    for one, together in zip(*results, strict=True):
        assert np.array_equal(one, together)


def test_first_failure_stops_the_other_shots_and_is_raised(
    monkeypatch: pytest.MonkeyPatch, three_shots: tuple[Path, Path], tmp_path: Path
) -> None:
    reel, refs = three_shots
    settings = RunSettings(codec="ffv1", device="cpu", work_size=64)
    plan = run.prepare_run(reel, refs, tmp_path / "work", settings)
    stopped: list[int] = []
    started = threading.Barrier(2, timeout=10)

    def fake(
        plan: Plan, i: int, workdir: Path, settings: RunSettings, *, progress: object, stop: threading.Event
    ) -> Path:
        started.wait()  # both shots in flight before the failure
        if i == 0:
            raise PostprodError(plan.reel, "shot 0 failed")
        for _ in range(1000):  # a long shot, checking its stop event each frame
            if stop.is_set():
                stopped.append(i)
                raise run.ShotStopped(f"shot {i} stopped")
            time.sleep(0.01)
        raise AssertionError("never stopped")

    monkeypatch.setattr(run, "colorize_shot", fake)
    begin = time.monotonic()
    with pytest.raises(PostprodError, match="shot 0 failed"):
        run.colorize_wave(plan, [0, 1], tmp_path / "work", settings, 2)
    assert stopped == [1] and time.monotonic() - begin < 5


def test_a_stop_leaves_no_segment_and_no_partial(three_shots: tuple[Path, Path], tmp_path: Path) -> None:
    reel, refs = three_shots
    settings = RunSettings(codec="ffv1", device="cpu", work_size=64, method="transfer")
    work = tmp_path / "work"
    plan = run.prepare_run(reel, refs, work, settings)
    stop = threading.Event()
    stop.set()
    with pytest.raises(run.ShotStopped):
        run.colorize_shot(plan, 0, work, settings, stop=stop)
    segments = work / "segments"
    assert not segments.exists() or list(segments.iterdir()) == []


def test_the_terminal_line_shows_the_shots_in_flight() -> None:
    from cli.progress import ReelProgress

    now = [0.0]
    bar = ReelProgress(io.StringIO(), tty=True, clock=lambda: now[0])
    bar.reel(3, 30)
    bar.shot(4, 10)
    bar.shot(7, 10)
    now[0] = 10.0
    bar.step(4, 10, 20)  # half of shot 4: 5 frames
    bar.step(7, 4, 20)  # a fifth of shot 7: 2 frames
    assert bar.status() == "shots 1-2/3 (propagating)  7/30 frames  0.7 frames/s  ETA 33s"
    bar.shot_done(4)
    assert bar.status().startswith("shot 2/3 (propagating)  12/30 frames")


def test_one_torch_thread_leaves_other_shot_threads_alone() -> None:
    from pipeline.jobs import one_torch_thread, pin_threads

    seen: dict[str, int] = {}
    inside, leave = threading.Event(), threading.Event()

    def toggler() -> None:
        pin_threads(2)
        with one_torch_thread():
            seen["inside"] = torch.get_num_threads()
            inside.set()
            leave.wait(10)
        seen["after"] = torch.get_num_threads()

    def neighbour() -> None:
        pin_threads(2)
        inside.wait(10)
        seen["neighbour"] = torch.get_num_threads()
        leave.set()

    threads = [threading.Thread(target=toggler), threading.Thread(target=neighbour)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"inside": 1, "neighbour": 2, "after": 2}
