"""What operators see of a reel's run in the Prefect UI (Artifacts page, and the flow run's page).

Per run: a progress artifact updated as shots finish (shots done / total, frames/s, ETA), a
Markdown report one page long whatever the reel (summary, failures, shots rerun after a lost
worker, shots per worker, the contact sheet, the review page, where colour is guessed and the
suggested frames; the shots themselves for short reels), a table of where colour is guessed per
shot (``<reel-slug>-confidence``) and a table of shots (every shot: refs, keyframes, status,
seconds, working size, worker, flow runs). Keys are
``<reel-slug>-progress|report|shots`` (lowercase letters, digits and dashes, as Prefect requires),
so the Artifacts page keeps each reel's history under one key.

Prefect stores no files: the contact sheet PNG stays in the work folder and the report links
to it, by URL when the operator serves that storage over HTTP (``POSTPROD_URL_BASE`` serving the
folder ``POSTPROD_URL_ROOT``), else by ``file://`` path.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect.artifacts import (
    create_image_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from flows.shot import ShotOutcome
from pipeline.keyframes import Plan, ShotPlan

URL_BASE_VAR = "POSTPROD_URL_BASE"
URL_ROOT_VAR = "POSTPROD_URL_ROOT"


def artifact_key(reel: Path, kind: str) -> str:
    """``<reel stem>-<kind>`` with every run of other characters than ``[a-z0-9]`` made one dash."""
    slug = re.sub(r"[^a-z0-9]+", "-", f"{Path(reel).stem}-{kind}".lower()).strip("-")
    return slug or kind


def file_link(path: Path, environ: Mapping[str, str] | None = None) -> str:
    """A link to ``path``: ``$POSTPROD_URL_BASE/<path relative to $POSTPROD_URL_ROOT>`` when both
    are set and ``path`` is under that root, else a ``file://`` URI."""
    environ = os.environ if environ is None else environ
    path = Path(path).resolve()
    base, root = environ.get(URL_BASE_VAR), environ.get(URL_ROOT_VAR)
    if base and root and path.is_relative_to(Path(root).resolve()):
        return f"{base.rstrip('/')}/{path.relative_to(Path(root).resolve()).as_posix()}"
    return path.as_uri()


def _refs(shot: ShotPlan) -> str:
    names = [k.image.name if k.image is not None else f"frame {k.ref_frame}" for k in shot.keyframes]
    names += [f"{o.name}: {o.image.name}" for k in shot.keyframes for o in k.objects]
    if shot.neighbours:
        names.append("from shots " + ", ".join(str(n) for n in shot.neighbours))
    return "; ".join(dict.fromkeys(names)) or "-"


def _status(outcome: ShotOutcome | None, failure: str | None) -> str:
    if failure is not None:
        return "failed"
    if outcome is None:
        return "not run"
    if outcome.segment is None:
        return "grey"
    return "cached" if outcome.cached else "reused" if outcome.reused else "coloured"


def shot_rows(plan: Plan, outcomes: Mapping[int, ShotOutcome], failures: Mapping[int, str]) -> list[dict[str, Any]]:
    """One row per shot: frames (end exclusive), timecode in, refs, keyframes, status, the
    outcome's cells (:meth:`flows.shot.ShotOutcome.row`: seconds, working size, worker, flow
    runs; empty for a shot without outcome) and error."""
    rows = []
    for shot in plan.shots:
        done = outcomes.get(shot.index)
        rows.append(
            {
                "shot": shot.index,
                "frames": f"{shot.start}-{shot.end}",
                "tc in": plan.timecode(shot.start),
                "source": shot.source,
                "refs": _refs(shot),
                "keyframes": ", ".join(f"{k.frame} ({k.kind}, {k.how})" for k in shot.keyframes) or "-",
                "status": _status(done, failures.get(shot.index)),
                **(dict.fromkeys(ShotOutcome.COLUMNS) if done is None else done.row()),
                "error": failures.get(shot.index, ""),
            }
        )
    return rows


MARKDOWN_SHOTS = 30
"""Reels with at most this many shots list them in the Markdown report too; longer ones only in
the shots table artifact (sortable, paginated by the UI)."""
MARKDOWN_LINES = 20
"""At most this many failed or rerun shots are listed one per line in the report."""
CONFIDENCE_COLUMNS = ("shot", "frames", "guessed %", "worst frame", "worst guessed %", "suggested")
"""Columns of the report's table of where colour is guessed (:func:`pipeline.review.shot_summaries`)."""
SHOT_COLUMNS = ("shot", "frames", "tc in", "source", "refs", "keyframes", "status", *ShotOutcome.COLUMNS)
"""Columns of the report's Markdown shots table (the table artifact has every column)."""


@dataclass(frozen=True)
class Report:
    """A finished (or stopped) run as the Markdown report shows it. ``out``: the output, None
    when it was not written; ``sheet``: link to the contact sheet, None when there is none;
    ``frames``: frames of the reel; ``review``: link to the review page (``review.html``), None
    when there is none; ``confidence``: per shot where colour is guessed and the suggested frames
    (:func:`pipeline.review.shot_summaries`)."""

    reel: Path
    out: Path | None
    workdir: Path
    seconds: float
    rows: list[dict[str, Any]]
    sheet: str | None
    frames: int = 0
    review: str | None = None
    confidence: list[dict[str, Any]] = field(default_factory=list)


def _capped(lines: list[str], what: str, table_key: str) -> list[str]:
    extra = len(lines) - MARKDOWN_LINES
    more = [f"- ... and {extra} more {what}: see the table `{table_key}`"] if extra > 0 else []
    return lines[:MARKDOWN_LINES] + more


def _table(columns: tuple[str, ...], rows: list[dict[str, Any]]) -> list[str]:
    cell = lambda v: "" if v is None else str(v).replace("|", "/")  # noqa: E731
    return [
        "| " + " | ".join(columns) + " |",
        "|" + " --- |" * len(columns),
        *("| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows),
    ]


def worker_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per worker (as the shots table names it): shots it coloured and their seconds, in total."""
    by: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.get("worker") is None:
            continue
        w = by.setdefault(r["worker"], {"worker": r["worker"], "shots": 0, "seconds": 0.0})
        w["shots"] += 1
        w["seconds"] = round(w["seconds"] + (r.get("seconds") or 0.0), 1)
    return sorted(by.values(), key=lambda w: w["worker"])


def report_markdown(report: Report) -> str:
    """The run's Markdown report, a page long whatever the reel: summary, failed shots, shots
    rerun after a lost worker, shots per worker, contact sheet link, and the shots table for
    reels of at most :data:`MARKDOWN_SHOTS` shots (longer ones: the table artifact)."""
    table_key = artifact_key(report.reel, "shots")
    failed = [r for r in report.rows if r["status"] == "failed"]
    rerun = [r for r in report.rows if (r.get("runs") or 1) > 1]
    counts: dict[str, int] = {}
    for r in report.rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    rate = f" ({report.frames / report.seconds:.1f} frames/s)" if report.frames and report.seconds > 0 else ""
    lines = [
        f"# {report.reel.name}",
        "",
        f"- reel: `{report.reel}`",
        f"- output: `{report.out}`" if report.out else "- output: **not written** (shots failed)",
        f"- work folder: `{report.workdir}`",
        f"- time: {report.seconds:.1f} s{rate}",
        f"- shots: {len(report.rows)}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
        "",
    ]
    if failed:
        lines += [
            "## Failed shots",
            "",
            *_capped([f"- shot {r['shot']} (frames {r['frames']}): {r['error']}" for r in failed], "failed", table_key),
            "",
            "Rerun the same command (or the same deployment parameters): finished shots are "
            "reused, only these are redone.",
            "",
        ]
    if rerun:
        rerun_lines = [f"- shot {r['shot']}: {r['runs']} flow runs, coloured by {r['worker']}" for r in rerun]
        lines += ["## Shots rerun after a lost worker", "", *_capped(rerun_lines, "rerun", table_key), ""]
    workers = worker_rows(report.rows)
    if len(workers) > 1:
        lines += ["## Workers", "", *_table(("worker", "shots", "seconds"), workers), ""]
    if report.sheet:
        lines += [f"[Contact sheet: first keyframe of each shot, before / after]({report.sheet})", ""]
    if report.review:
        lines += [f"[Review page: per shot thumbnails, where colour is guessed, suggested frames]({report.review})", ""]
    if report.confidence and len(report.confidence) <= MARKDOWN_SHOTS:
        lines += ["## Where colour is guessed", "", *_table(CONFIDENCE_COLUMNS, report.confidence), ""]
    elif report.confidence:
        lines += [
            f"Where colour is guessed, per shot: the table artifact `{artifact_key(report.reel, 'confidence')}`.",
            "",
        ]
    if len(report.rows) <= MARKDOWN_SHOTS:
        lines += ["## Shots", "", *_table(SHOT_COLUMNS, report.rows)]
    else:
        lines += [f"Every shot (refs, keyframes, status, time, worker): the table artifact `{table_key}`."]
    return "\n".join(lines) + "\n"


def publish_report(report: Report) -> None:
    """Create the Markdown report and the shots table (and the contact sheet as an image
    artifact when it has an http(s) URL) on the current flow run."""
    reel = report.reel
    create_markdown_artifact(
        report_markdown(report), key=artifact_key(reel, "report"), description=f"colorize {reel.name}"
    )
    create_table_artifact(report.rows, key=artifact_key(reel, "shots"), description=f"shots of {reel.name}")
    if report.confidence:
        create_table_artifact(
            report.confidence,
            key=artifact_key(reel, "confidence"),
            description=f"{reel.name}: share of each shot guessed, suggested frames to colour",
        )
    if report.sheet and report.sheet.startswith(("http://", "https://")):
        create_image_artifact(
            report.sheet, key=artifact_key(reel, "contact-sheet"), description=f"contact sheet of {reel.name}"
        )


def progress_line(done: int, total: int, frames_done: int, frames_total: int, seconds: float) -> str:
    """``"12/300 shots, 41.3 frames/s, ETA 6 min"``: shots finished (failed ones included) of all,
    the frames coloured per second of wall time so far, and the time the remaining frames take at
    that rate (``ETA -`` before the first frames are done)."""
    rate = frames_done / seconds if seconds > 0 and frames_done else 0.0
    left = max(frames_total - frames_done, 0)
    if done >= total:
        eta = "done"
    elif rate <= 0:
        eta = "ETA -"
    else:
        s = left / rate
        eta = f"ETA {s:.0f} s" if s < 90 else f"ETA {s / 60:.0f} min" if s < 5400 else f"ETA {s / 3600:.1f} h"
    return f"{done}/{total} shots, {rate:.1f} frames/s, {eta}"


class ShotProgress:
    """The run's one progress artifact: percent of shots finished (failed ones included), its
    description :func:`progress_line` (shots done / total, frames/s, ETA). Updated as shots
    finish, at most every ``every`` seconds (and always for the last shot), so a long reel does
    not write an update per shot."""

    def __init__(self, reel: Path, total: int, frames: int = 0, every: float = 2.0) -> None:
        self.total, self.done = max(total, 1), 0
        self.frames_total, self.frames_done = frames, 0
        self.every = every
        self.started = time.monotonic()
        self.updated = float("-inf")
        self.name = Path(reel).name
        # called from sync code: Prefect's sync/async function returns the value itself
        self.id = cast(
            UUID,
            create_progress_artifact(
                0.0, key=artifact_key(reel, "progress"), description=f"{self.name}: {self.line()}"
            ),
        )

    def line(self) -> str:
        return progress_line(
            self.done, self.total, self.frames_done, self.frames_total, time.monotonic() - self.started
        )

    def advance(self, n: int = 1, frames: int = 0) -> float:
        """Count ``n`` more shots finished, ``frames`` more frames coloured; returns the new percentage."""
        self.done += n
        self.frames_done += frames
        percent = round(100.0 * min(self.done, self.total) / self.total, 1)
        now = time.monotonic()
        if self.done >= self.total or now - self.updated >= self.every:
            update_progress_artifact(self.id, percent, description=f"{self.name}: {self.line()}")
            self.updated = now
        return percent
