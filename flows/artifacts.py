"""What operators see of a reel's run in the Prefect UI (Artifacts page, and the flow run's page).

Per run: a progress artifact updated as shots finish, a Markdown report (shots, their refs and
keyframes, time, failures, the contact sheet) and a table of shots. Keys are
``<reel-slug>-progress|report|shots`` (lowercase letters, digits and dashes, as Prefect requires),
so the Artifacts page keeps each reel's history under one key.

Prefect stores no files: the contact sheet PNG stays in the work folder and the report links
to it, by URL when the operator serves that storage over HTTP (``POSTPROD_URL_BASE`` serving the
folder ``POSTPROD_URL_ROOT``), else by ``file://`` path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
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
    """One row per shot: frames (end exclusive), timecode in, refs, keyframes, status, seconds,
    working size (px), worker (host:pid) and error."""
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
                "seconds": None if done is None else done.seconds,
                "work px": None if done is None else done.work_size,
                "worker": None if done is None else f"{done.host}:{done.pid}",
                "error": failures.get(shot.index, ""),
            }
        )
    return rows


@dataclass(frozen=True)
class Report:
    """A finished (or stopped) run as the Markdown report shows it. ``out``: the output, None
    when it was not written; ``sheet``: link to the contact sheet, None when there is none."""

    reel: Path
    out: Path | None
    workdir: Path
    seconds: float
    rows: list[dict[str, Any]]
    sheet: str | None


def report_markdown(report: Report) -> str:
    """The run's Markdown report: summary, failures, contact sheet link and the shots table."""
    failed = [r for r in report.rows if r["status"] == "failed"]
    counts: dict[str, int] = {}
    for r in report.rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines = [
        f"# {report.reel.name}",
        "",
        f"- reel: `{report.reel}`",
        f"- output: `{report.out}`" if report.out else "- output: **not written** (shots failed)",
        f"- work folder: `{report.workdir}`",
        f"- time: {report.seconds:.1f} s",
        "- shots: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
        "",
    ]
    if failed:
        lines += [
            "## Failed shots",
            "",
            *(f"- shot {r['shot']} (frames {r['frames']}): {r['error']}" for r in failed),
            "",
            "Rerun the same command (or the same deployment parameters): finished shots are "
            "reused, only these are redone.",
            "",
        ]
    if report.sheet:
        lines += [f"[Contact sheet: first keyframe of each shot, before / after]({report.sheet})", ""]
    columns = ["shot", "frames", "tc in", "source", "refs", "keyframes", "status", "seconds", "work px", "worker"]
    lines += ["## Shots", "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += [
        "| " + " | ".join("" if r[c] is None else str(r[c]).replace("|", "/") for c in columns) + " |"
        for r in report.rows
    ]
    return "\n".join(lines) + "\n"


def publish_report(report: Report) -> None:
    """Create the Markdown report and the shots table (and the contact sheet as an image
    artifact when it has an http(s) URL) on the current flow run."""
    reel = report.reel
    create_markdown_artifact(
        report_markdown(report), key=artifact_key(reel, "report"), description=f"colorize {reel.name}"
    )
    create_table_artifact(report.rows, key=artifact_key(reel, "shots"), description=f"shots of {reel.name}")
    if report.sheet and report.sheet.startswith(("http://", "https://")):
        create_image_artifact(
            report.sheet, key=artifact_key(reel, "contact-sheet"), description=f"contact sheet of {reel.name}"
        )


class ShotProgress:
    """The run's progress artifact (percent of shots finished, failed ones included)."""

    def __init__(self, reel: Path, total: int) -> None:
        self.total, self.done = max(total, 1), 0
        # called from sync code: Prefect's sync/async function returns the value itself
        self.id = cast(
            UUID,
            create_progress_artifact(
                0.0, key=artifact_key(reel, "progress"), description=f"shots of {Path(reel).name} finished"
            ),
        )

    def advance(self, n: int = 1) -> float:
        """Count ``n`` more shots finished; returns the new percentage."""
        self.done += n
        percent = round(100.0 * self.done / self.total, 1)
        update_progress_artifact(self.id, percent)
        return percent
