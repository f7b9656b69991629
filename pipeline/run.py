"""`postprod run` as plain stages: prepare → colorize each shot → assemble.

The same stages run in one process (:func:`run_reel`) or as Prefect tasks spread over a farm
(``flows/``); between them only the work folder passes (``pipeline.workdir``), and each stage
takes the loaded :class:`~pipeline.keyframes.Plan`:

- :func:`check_run_inputs`: what can be checked in about a second, from the reel's header
  and the refs folder's files, before anything starts (the Prefect engine's server included):
  the reel, the refs folder's own problems, the output (codec, suffix, frame size, audio, what
  may be replaced: :mod:`pipeline.files`), the work folder (not in use by another run).
- :func:`prepare_run`: probe, then one decode pass of the reel that gives both the shots and
  the reel's grey at working resolution (stored in the work folder:
  :func:`pipeline.workdir.lightness_path`), the refs folder checked (every problem at once),
  the keyframe plan, written to the work folder. Nothing heavy runs before it passes.
- :func:`colorize_shot`: keyframes colorized, colour propagated through the shot from the
  stored lightness (``pipeline.engine``), then the shot decoded once for its full-resolution
  luma and written as a segment named by its content key, so a finished shot is never
  recomputed: the segment *is* the cache. The segment is in the output codec when that is
  intra-only (ProRes, FFV1), else lossless FFV1 (:func:`pipeline.workdir.segment_codec`).
- :func:`assemble`: the segments joined in order into the studio's codec with the source's
  frame rate, timecode and audio: by copying their packets (no decode, no encode) for an
  intra-only codec, shots left grey getting a segment of the source's luma with neutral
  chroma; else by decoding the FFV1 segments (the source, for grey shots) and encoding once.

Memory is bounded by one shot at working resolution (:attr:`RunSettings.work_size`) plus a
few full-resolution frames, whatever the reel's length.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from pipeline.color import luma_table, work_grey
from pipeline.confidence import ConfidenceRecorder, confidence_path
from pipeline.errors import PostprodError
from pipeline.files import atomic_output, check_destination
from pipeline.jobs import compute_threads, pin_threads, shot_jobs
from pipeline.keyframes import Plan, ShotPlan, plan_keyframes, write_plan
from pipeline.media.decode import Frame, iter_frames
from pipeline.media.encode import REMUX_CODECS, ReelWriter, check_output
from pipeline.media.probe import ReelInfo, probe, probe_header
from pipeline.progress import SILENT, Progress
from pipeline.refs import RefSet, read_refs
from pipeline.review import record_run, write_review
from pipeline.settings import RunSettings
from pipeline.shots import ShotList, detect_shots, write_json
from pipeline.workdir import (
    SHOTS_NAME,
    default_workdir,
    lightness_path,
    lock_workdir,
    plan_path,
    segment_codec,
    segment_path,
    workdir_owner,
)

__all__ = [
    "RunSettings",
    "ShotStopped",
    "assemble",
    "check_run_inputs",
    "colorize_shot",
    "colorize_wave",
    "prepare_run",
    "run_reel",
    "shot_waves",
]


def _check_refs_folder(refs: Path | None, settings: RunSettings) -> None:
    if refs is None:
        if settings.missing != "grey":
            raise PostprodError(None, "no refs folder given (use --refs DIR, or --missing-refs grey)")
    elif not Path(refs).is_dir():
        raise PostprodError(refs, "refs folder not found" if not Path(refs).exists() else "is not a folder")


def check_run_inputs(
    reel: Path, refs: Path | None, out: Path, *, workdir: Path | None, settings: RunSettings, force: bool = False
) -> Path:
    """Raise :class:`PostprodError` for any problem a run would meet that is known before any
    work: a missing or unreadable reel (its header only is read), a missing refs folder, an
    output the codec, the reel's frame size or audio, or the replace rule refuse
    (:func:`pipeline.media.encode.check_output`), a work folder that is not one, holds an input
    or is in use by another run, and the refs folder's own problems (names, refs.toml, files
    outside the folder, images). Takes about a second whatever the reel's length when all is
    well; when the refs folder has a problem, the reel is probed and cut into shots too, so that
    every problem is listed at once (frames, shots and timecodes against the reel included), as
    ``postprod plan`` lists them. Returns the work folder (:func:`pipeline.workdir.default_workdir`
    when ``workdir`` is None).
    """
    header = probe_header(Path(reel))  # first: the default work folder's name reads the reel
    _check_refs_folder(refs, settings)
    workdir = Path(workdir) if workdir else default_workdir(reel)
    check_destination(workdir, inputs=(reel, refs), kind="folder")
    check_output(
        Path(out),
        settings.codec,
        width=header.width,
        height=header.height,
        bit_depth=header.bit_depth,
        audio=header.audio,
        force=force,
        inputs=(reel, refs, workdir),
    )
    owner = workdir_owner(workdir)
    if owner is not None:
        raise PostprodError(
            workdir, f"work folder in use by another run ({owner}); wait for it to end or use another --workdir"
        )
    if refs is not None and read_refs(Path(refs), header, None).problems:
        # every problem at once, as postprod plan lists them: the checks against the shots too
        info = probe(Path(reel))
        read_refs(Path(refs), info, detect_shots(Path(reel))).raise_problems()
    return workdir


def work_size_of(info: ReelInfo, settings: RunSettings) -> tuple[int, int]:
    """(h, w) of the working resolution: the short side at most ``settings.work_size``."""
    from model.transfer import working_size

    return working_size(info.height, info.width, settings.work_size)


def analyse_reel(reel: Path, info: ReelInfo, dest: Path, size: tuple[int, int]) -> ShotList:
    """One decode pass of ``reel``: its shots (:func:`pipeline.shots.detect_shots`) and its grey
    at working resolution ``size`` (h, w), written to ``dest`` (``.npy``, (frames, h, w) float32,
    :func:`pipeline.color.work_grey`) atomically; returns the shots."""
    table = luma_table(info.bit_depth, info.luma_range)
    with atomic_output(dest, force=True) as tmp:
        store = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(info.frames, *size))
        seen = 0

        def record(frame: Frame) -> None:
            nonlocal seen
            if frame.index < info.frames:
                store[frame.index] = work_grey(frame.luma, table, size)
            seen = max(seen, frame.index + 1)

        shots = detect_shots(reel, on_frame=record)
        if seen != info.frames:
            raise PostprodError(reel, f"decoded {seen} frames, the probe counted {info.frames}")
        store.flush()
    return shots


def shot_grey(plan: Plan, shot: ShotPlan, workdir: Path, info: ReelInfo, size: tuple[int, int]) -> np.ndarray:
    """(n, h, w) float32 grey in [0, 1] of ``shot`` at working resolution ``size``: read from the
    work folder's lightness file (:func:`analyse_reel`), or decoded from the reel when there is
    none for this size (a shot retried at a lower working resolution)."""
    path = lightness_path(workdir, plan.reel, size)
    if path.exists():
        return np.array(np.load(path, mmap_mode="r")[shot.start : shot.end])
    table = luma_table(info.bit_depth, info.luma_range)
    return np.stack([work_grey(f.luma, table, size) for f in iter_frames(plan.reel, shot.start, shot.end)])


def prepare_run(reel: Path, refs: Path | None, workdir: Path, settings: RunSettings) -> Plan:
    """Probe, detect shots and store the working-resolution grey in one decode pass
    (:func:`analyse_reel`), check the refs folder and plan keyframes; writes ``plan.json``,
    ``shots.json`` and the lightness file into ``workdir`` and returns the plan.

    Raises :class:`PostprodError` (every refs problem at once) before any colorization.
    """
    reel, workdir = Path(reel).resolve(), Path(workdir)
    _check_refs_folder(refs, settings)
    info = probe(reel)
    size = work_size_of(info, settings)
    lightness = lightness_path(workdir, reel, size)
    lightness.parent.mkdir(parents=True, exist_ok=True)
    # a resumed run has the lightness already (named by the reel's content and the size)
    shots = detect_shots(reel) if lightness.exists() else analyse_reel(reel, info, lightness, size)
    if refs is None:
        refset = RefSet(folder=Path("."), refs=(), problems=())
    else:
        refs = Path(refs).resolve()
        refset = read_refs(refs, info, shots)
        refset.raise_problems()
    plan = plan_keyframes(info, shots, refset, missing=settings.missing)
    write_json(shots, workdir / SHOTS_NAME, force=True)
    write_plan(plan, plan_path(workdir), force=True)
    return plan


def shot_waves(plan: Plan) -> list[list[int]]:
    """Shots grouped so that each wave only needs shots of earlier waves.

    Shots coloured from their own references (or left grey) come first; shots coloured from
    neighbouring shots' frames need those shots' segments, so they come second.
    """
    first = [s.index for s in plan.shots if s.source != "neighbours"]
    second = [s.index for s in plan.shots if s.source == "neighbours"]
    return [w for w in (first, second) if w]


class ShotStopped(Exception):
    """A shot stopped before its end because the run is stopping (``stop`` of :func:`colorize_shot`)."""


def colorize_shot(
    plan: Plan,
    shot_index: int,
    workdir: Path,
    settings: RunSettings,
    *,
    progress: Progress = SILENT,
    stop: threading.Event | None = None,
) -> Path | None:
    """Colorize shot ``shot_index`` into its segment; None for a shot left grey.

    The shot's lightness comes from the work folder (:func:`shot_grey`); the reel is decoded
    once, for the full-resolution luma written with the chroma. An existing segment is returned
    untouched (it was written atomically, so it is complete). ``stop``: when set (another shot
    of the run failed, or the run was interrupted), the shot raises :class:`ShotStopped` at its
    next frame and writes nothing.
    """
    shot = plan.shots[shot_index]
    if shot.source == "grey":
        return None
    dest = segment_path(workdir, plan, shot_index, settings)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    from pipeline.engine import ShotColourer  # torch: imported by the stage that needs it, not by the checks

    info = probe(plan.reel)
    engine = ShotColourer(info, settings)

    def check() -> None:
        if stop is not None and stop.is_set():
            raise ShotStopped(f"shot {shot_index} stopped")

    def step(done: int, total: int) -> None:
        check()
        progress.step(shot_index, done, total)

    progress.shot(shot_index, shot.end - shot.start)
    keys = {k.frame: engine.keyframe_ab(plan, k, workdir) for k in shot.keyframes}
    artist = {k.frame: k.image for k in shot.keyframes if k.kind == "coloured" and k.image is not None}
    grey = shot_grey(plan, shot, workdir, info, engine.work)
    coloured = engine.propagate(grey, shot, keys, on_step=step)
    record = ConfidenceRecorder(shot.start)
    with ReelWriter(dest, info, segment_codec(settings.codec), copy_audio=False) as writer:
        layout = writer.chroma_layout
        for frame, out in zip(iter_frames(plan.reel, shot.start, shot.end), coloured, strict=True):
            check()
            record.add(out.confidence)
            image = artist.get(frame.index)
            if image is None:
                writer.write(frame.luma, engine.full_chroma(frame, grey[frame.index - shot.start], out.ab, layout))
            else:
                writer.write(frame.luma, engine.artist_chroma(frame, image))
        record.save(confidence_path(dest))  # before the segment appears: a segment always has its record
    progress.shot_done(shot_index)
    return dest


def grey_segment(plan: Plan, shot_index: int, workdir: Path, settings: RunSettings) -> Path:
    """The segment of a shot left grey, for an output joined by remuxing: the source's luma
    with neutral chroma in the output codec, named by its content key like any segment (an
    existing one is reused)."""
    shot = plan.shots[shot_index]
    dest = segment_path(workdir, plan, shot_index, settings)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with ReelWriter(dest, probe(plan.reel), segment_codec(settings.codec), copy_audio=False) as writer:
        for f in iter_frames(plan.reel, shot.start, shot.end):
            writer.write(f.luma, None)
    return dest


def assemble(
    plan: Plan,
    segments: dict[int, Path | None],
    out: Path,
    settings: RunSettings,
    *,
    workdir: Path,
    force: bool = False,
    progress: Progress = SILENT,
    inputs: Iterable[Path | None] = (),
) -> Path:
    """Join the shots in order into ``out`` with the source's rate, timecode and audio.

    ``segments``: shot index -> its segment, None for a shot left grey. For an intra-only
    output codec (:data:`~pipeline.media.encode.REMUX_CODECS`) the segments' packets are copied
    (:meth:`ReelWriter.append`), a grey shot's from :func:`grey_segment` (written into
    ``workdir``); otherwise the FFV1 segments (the source, for grey shots) are decoded and
    encoded. ``inputs``: the run's inputs besides the reel (refs folder, work folder), never replaced.
    """
    missing = [s.index for s in plan.shots if s.index not in segments]
    if missing:
        raise PostprodError(out, f"cannot assemble: shots {missing} have no result")
    info = probe(plan.reel)
    progress.assemble(plan.frames)
    if settings.codec in REMUX_CODECS:
        parts = [segments[s.index] or grey_segment(plan, s.index, workdir, settings) for s in plan.shots]
        with ReelWriter(Path(out), info, settings.codec, force=force, inputs=inputs, template=parts[0]) as writer:
            for part in parts:
                writer.append(part, on_frame=lambda: progress.assembled(1))
        return Path(out)
    with ReelWriter(Path(out), info, settings.codec, force=force, inputs=inputs) as writer:
        for shot in plan.shots:
            seg = segments[shot.index]
            frames = iter_frames(plan.reel, shot.start, shot.end) if seg is None else iter_frames(seg, chroma=True)
            for f in frames:
                writer.write(f.luma, f.chroma)
                progress.assembled(1)
    return Path(out)


def colorize_wave(
    plan: Plan,
    wave: list[int],
    workdir: Path,
    settings: RunSettings,
    shots_at_once: int = 1,
    *,
    progress: Progress = SILENT,
) -> dict[int, Path | None]:
    """The shots of ``wave`` (independent of one another) by :func:`colorize_shot`, up to
    ``shots_at_once`` at once in threads of this process (sharing its models), longest shot
    first so that the last ones to finish are short; shot index -> segment (None: left grey).

    The first shot to fail stops the others at their next frame (nothing half-written: each
    segment appears only when complete) and its error is raised; so is an interrupt (Ctrl-C),
    once the shots in flight have stopped."""
    if shots_at_once <= 1 or len(wave) <= 1:
        return {i: colorize_shot(plan, i, workdir, settings, progress=progress) for i in wave}
    order = sorted(wave, key=lambda i: plan.shots[i].start - plan.shots[i].end)  # longest first
    stop = threading.Event()
    done: dict[int, Path | None] = {}
    import torch

    threads = torch.get_num_threads()
    with ThreadPoolExecutor(shots_at_once, "postprod-shot", initializer=pin_threads, initargs=(threads,)) as pool:
        futures = {
            pool.submit(colorize_shot, plan, i, workdir, settings, progress=progress, stop=stop): i for i in order
        }
        try:
            for future in as_completed(futures):
                done[futures[future]] = future.result()
        except BaseException:
            stop.set()
            for future in futures:
                future.cancel()
            raise
    return {i: done[i] for i in wave}


def run_reel(
    reel: Path,
    refs: Path | None,
    out: Path,
    *,
    workdir: Path | None = None,
    settings: RunSettings = RunSettings(),
    force: bool = False,
    progress: Progress = SILENT,
    jobs: int | None = None,
) -> Path:
    """The whole job in this process: inputs checked (:func:`check_run_inputs`), then, holding
    the work folder's lock, prepare, every shot wave by wave (``jobs`` shots at once, None:
    :func:`pipeline.jobs.shot_jobs` for the device; see :func:`colorize_wave`), assemble; then
    the run's record (``last-run.json``: shots redone and reused) and review page
    (``review.html``) in the work folder. ``progress`` hears every stage
    (:class:`pipeline.progress.Progress`)."""
    workdir = check_run_inputs(reel, refs, out, workdir=workdir, settings=settings, force=force)
    with lock_workdir(workdir):
        plan = prepare_run(reel, refs, workdir, settings)
        todo = [
            s for s in plan.shots if s.source != "grey" and not segment_path(workdir, plan, s.index, settings).exists()
        ]
        progress.reel(len(todo), sum(s.end - s.start for s in todo))
        segments: dict[int, Path | None] = {}
        redo = {s.index for s in todo}
        reused = [s.index for s in plan.shots if s.source != "grey" and s.index not in redo]
        from pipeline.colorize import resolve_device  # torch: after the checks

        plan_jobs = shot_jobs(resolve_device(settings.device), jobs)
        with compute_threads(plan_jobs):
            for wave in shot_waves(plan):
                segments.update(colorize_wave(plan, wave, workdir, settings, plan_jobs.shots, progress=progress))
        result = assemble(
            plan, segments, out, settings, workdir=workdir, force=force, progress=progress, inputs=(refs, workdir)
        )
        record_run(plan, workdir, settings, out, reused=reused)
        write_review(workdir)
        progress.done()
        return result
