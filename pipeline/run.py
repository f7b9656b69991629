"""`postprod run` as plain stages: prepare → colorize each shot → assemble.

The same stages run in one process (:func:`run_reel`) or as Prefect tasks spread over a farm
(``flows/``); between them only the work folder passes (``pipeline.workdir``), and each stage
takes the loaded :class:`~pipeline.keyframes.Plan`:

- :func:`check_run_inputs`: what can be checked in about a second, from the reel's header
  and the refs folder's files, before anything starts (the Prefect engine's server included):
  the reel, the refs folder's own problems, the output (codec, suffix, frame size, audio, what
  may be replaced: :mod:`pipeline.files`), the work folder (not in use by another run).
- :func:`prepare_run`: probe, shots, the refs folder checked (every problem at once), the
  keyframe plan, written to the work folder. Nothing heavy runs before it passes.
- :func:`colorize_shot`: keyframes colorized, colour propagated through the shot
  (``pipeline.engine``), the shot written as a lossless segment named by its content key, so
  a finished shot is never recomputed: the segment *is* the cache.
- :func:`assemble`: the segments (and the source, for shots left grey) encoded in order into
  the studio's codec with the source's frame rate, timecode and audio.

Memory is bounded by one shot at working resolution (:attr:`RunSettings.work_size`) plus a
few full-resolution frames, whatever the reel's length.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pipeline.confidence import ConfidenceRecorder, confidence_path
from pipeline.errors import PostprodError
from pipeline.files import check_destination
from pipeline.keyframes import Plan, plan_keyframes, write_plan
from pipeline.media.decode import iter_frames
from pipeline.media.encode import ReelWriter, check_output
from pipeline.media.probe import probe, probe_header
from pipeline.progress import Progress, ProgressBar
from pipeline.refs import RefSet, read_refs
from pipeline.review import record_run, write_review
from pipeline.settings import RunSettings
from pipeline.shots import detect_shots, write_json
from pipeline.workdir import (
    SEGMENT_CODEC,
    SHOTS_NAME,
    default_workdir,
    lock_workdir,
    plan_path,
    segment_path,
    workdir_owner,
)

__all__ = [
    "RunSettings",
    "assemble",
    "check_run_inputs",
    "colorize_shot",
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


def prepare_run(reel: Path, refs: Path | None, workdir: Path, settings: RunSettings) -> Plan:
    """Probe, detect shots, check the refs folder and plan keyframes; writes ``plan.json`` and
    ``shots.json`` into ``workdir`` and returns the plan.

    Raises :class:`PostprodError` (every refs problem at once) before any colorization.
    """
    reel, workdir = Path(reel).resolve(), Path(workdir)
    _check_refs_folder(refs, settings)
    info = probe(reel)
    shots = detect_shots(reel)
    if refs is None:
        refset = RefSet(folder=Path("."), refs=(), problems=())
    else:
        refs = Path(refs).resolve()
        refset = read_refs(refs, info, shots)
        refset.raise_problems()
    plan = plan_keyframes(info, shots, refset, missing=settings.missing)
    workdir.mkdir(parents=True, exist_ok=True)
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


def colorize_shot(
    plan: Plan, shot_index: int, workdir: Path, settings: RunSettings, *, progress: Progress = ProgressBar
) -> Path | None:
    """Colorize shot ``shot_index`` into its lossless segment; None for a shot left grey.

    An existing segment is returned untouched (it was written atomically, so it is complete).
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
    keys = {k.frame: engine.keyframe_ab(plan, k, workdir) for k in shot.keyframes}
    artist = {k.frame: k.image for k in shot.keyframes if k.kind == "coloured" and k.image is not None}
    bar = progress(f"shot {shot_index}: colour", 2 * (shot.end - shot.start))
    record = ConfidenceRecorder(shot.start)
    try:
        coloured = engine.propagate(plan.reel, shot, keys, on_step=lambda _done, _total: bar.update(1))
        with ReelWriter(dest, info, SEGMENT_CODEC, copy_audio=False) as writer:
            for frame, out in zip(iter_frames(plan.reel, shot.start, shot.end), coloured, strict=True):
                record.add(out.confidence)
                image = artist.get(frame.index)
                writer.write(
                    frame.luma,
                    engine.full_chroma(frame, out.ab) if image is None else engine.artist_chroma(frame, image),
                )
            record.save(confidence_path(dest))  # before the segment appears: a segment always has its record
    finally:
        bar.close()
    return dest


def assemble(
    plan: Plan,
    segments: dict[int, Path | None],
    out: Path,
    settings: RunSettings,
    *,
    force: bool = False,
    progress: Progress = ProgressBar,
    inputs: Iterable[Path | None] = (),
) -> Path:
    """Encode the shots in order into ``out`` with the source's rate, timecode and audio.

    ``segments``: shot index -> its segment, None for a shot left grey (taken from the source).
    ``inputs``: the run's inputs besides the reel (refs folder, work folder), never replaced.
    """
    missing = [s.index for s in plan.shots if s.index not in segments]
    if missing:
        raise PostprodError(out, f"cannot assemble: shots {missing} have no result")
    info = probe(plan.reel)
    bar = progress("encode", plan.frames)
    try:
        with ReelWriter(Path(out), info, settings.codec, force=force, inputs=inputs) as writer:
            for shot in plan.shots:
                seg = segments[shot.index]
                frames = iter_frames(plan.reel, shot.start, shot.end) if seg is None else iter_frames(seg, chroma=True)
                for f in frames:
                    writer.write(f.luma, f.chroma)
                    bar.update(1)
    finally:
        bar.close()
    return Path(out)


def run_reel(
    reel: Path,
    refs: Path | None,
    out: Path,
    *,
    workdir: Path | None = None,
    settings: RunSettings = RunSettings(),
    force: bool = False,
) -> Path:
    """The whole job in this process: inputs checked (:func:`check_run_inputs`), then, holding
    the work folder's lock, prepare, every shot wave by wave, assemble; then the run's record
    (``last-run.json``: shots redone and reused) and review page (``review.html``) in the work folder."""
    workdir = check_run_inputs(reel, refs, out, workdir=workdir, settings=settings, force=force)
    with lock_workdir(workdir):
        plan = prepare_run(reel, refs, workdir, settings)
        segments: dict[int, Path | None] = {}
        reused = [
            s.index
            for s in plan.shots
            if s.source != "grey" and segment_path(workdir, plan, s.index, settings).exists()
        ]
        for wave in shot_waves(plan):
            for i in wave:
                segments[i] = colorize_shot(plan, i, workdir, settings)
        written = assemble(plan, segments, out, settings, force=force, inputs=(refs, workdir))
        record_run(plan, workdir, settings, out, reused=reused)
        write_review(workdir)
        return written
