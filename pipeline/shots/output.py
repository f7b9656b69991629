"""Writers for shot lists: JSON, CSV and CMX3600 EDL, each written atomically.

Frame ranges are 0-based with ``end`` exclusive everywhere; timecodes count from the reel's start
timecode (00:00:00:00 when it has none) and keep its drop-frame mode (drop-frame by default at
30000/1001 and 60000/1001). An end timecode is that of the first frame *after* the shot, as an
EDL's out-points are.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path

from pipeline.errors import PostprodError
from pipeline.files import atomic_output
from pipeline.media.timecode import add_frames, frames_to_timecode
from pipeline.shots.detectors import ShotList

CSV_COLUMNS = ("index", "start", "end", "frames", "start_tc", "end_tc")
EDL_MAX_EVENTS = 999  # CMX3600 event numbers have three digits
EDL_REEL = "AX"  # "auxiliary source": the usual tape name for a file, named by the FROM CLIP NAME comment


def timecode(result: ShotList, frame: int) -> str:
    """Timecode of 0-based ``frame`` of the reel, counted from its start timecode."""
    if result.start_timecode:
        return add_frames(result.start_timecode, frame, result.fps)
    return frames_to_timecode(frame, result.fps)


def write_json(result: ShotList, path: Path, *, force: bool = False, inputs: Iterable[Path | None] = ()) -> None:
    """Write ``result.to_dict()`` as indented JSON. ``inputs``: the command's inputs besides the
    reel, never replaced (:mod:`pipeline.files`); the same for every writer here."""
    with atomic_output(Path(path), force=force, inputs=(result.reel, *inputs)) as tmp:
        tmp.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")


def write_csv(result: ShotList, path: Path, *, force: bool = False, inputs: Iterable[Path | None] = ()) -> None:
    """Write one row per shot: index,start,end,frames,start_tc,end_tc (end and end_tc exclusive)."""
    with (
        atomic_output(Path(path), force=force, inputs=(result.reel, *inputs)) as tmp,
        tmp.open("w", newline="", encoding="utf-8") as f,
    ):
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for s in result.shots:
            writer.writerow((s.index, s.start, s.end, s.frames, timecode(result, s.start), timecode(result, s.end)))


def edl_text(result: ShotList) -> str:
    """The CMX3600 EDL of a shot list: one cut event per shot, source and record timecodes equal.

    Every event is a cut ("C"): the EDL logs where each shot lies on the reel; how a shot begins
    (fade, dissolve) is given in a comment line, since a CMX3600 dissolve needs two sources.
    """
    if len(result.shots) > EDL_MAX_EVENTS:
        raise PostprodError(
            result.reel,
            f"{len(result.shots)} shots do not fit in a CMX3600 EDL "
            f"(at most {EDL_MAX_EVENTS} events); write CSV or JSON instead",
        )
    drop = ";" in timecode(result, 0)
    lines = [f"TITLE: {result.reel.stem}", f"FCM: {'DROP FRAME' if drop else 'NON-DROP FRAME'}", ""]
    for s in result.shots:
        tc_in, tc_out = timecode(result, s.start), timecode(result, s.end)
        lines.append(f"{s.index + 1:03d}  {EDL_REEL:<8} V     C        {tc_in} {tc_out} {tc_in} {tc_out}")
        lines.append(f"* FROM CLIP NAME: {result.reel.name}")
        if s.begins in ("fade", "dissolve"):
            lines.append(f"* SHOT BEGINS WITH: {s.begins.upper()}")
        lines.append("")
    return "\n".join(lines)


def write_edl(result: ShotList, path: Path, *, force: bool = False, inputs: Iterable[Path | None] = ()) -> None:
    """Write :func:`edl_text` to ``path``."""
    text = edl_text(result)  # before opening the output: a too-long list leaves nothing behind
    with atomic_output(Path(path), force=force, inputs=(result.reel, *inputs)) as tmp:
        tmp.write_text(text, encoding="utf-8")
