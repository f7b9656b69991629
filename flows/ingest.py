"""The ``ingest`` flow: scan a drop folder and submit one ``colorize-reel`` run per new reel.

Folder convention (docs/operators.md)::

    <ingest>/<name>.<mov|mkv|mp4|mxf>   the grey reel
    <ingest>/<name>.refs/               its refs folder (docs/refs.md); without it the reel waits,
                                        unless the deployment's settings say missing="grey"
    <ingest>/out/<name>.<codec suffix>  the output (``out_dir``), written by the reel's run
    <ingest>/.work/<name>-<fp>/         its work folder (``work_root``; on shared storage)

Dotfiles are ignored (copy as ``.name.mov`` then rename), and so is anything modified less than
``settle_seconds`` ago (a copy still in progress).

Prefect's flow runs of the reel deployment tagged ``reel:<name>`` say where a reel is (reel
names must be unique in a folder): it is **done** when its output exists or one of them
completed (an output moved away after delivery is not redone), **in progress** while one is
not finished (scheduled, late, pending, running, paused, cancelling). A reel whose runs all
failed, crashed or were cancelled is resubmitted at the next scan (only its unfinished shots are
redone) until it has ``max_attempts`` of them; then it waits for an operator (rerun it from the
UI, or delete its failed runs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.deployments import run_deployment

from flows.reel import reel_tag
from pipeline.media.encode import CODECS, CodecName
from pipeline.settings import RunSettings
from pipeline.workdir import default_workdir, reel_fingerprint

REEL_SUFFIXES = (".mov", ".mkv", ".mp4", ".mxf")
REFS_SUFFIX = ".refs"
REEL_DEPLOYMENT = "colorize-reel/colorize-reel"
STOPPED = frozenset({StateType.FAILED, StateType.CRASHED, StateType.CANCELLED})
"""Final states of a run that did not write its output."""


@dataclass(frozen=True)
class IngestItem:
    """A reel found in the ingest folder: ``refs`` is its refs folder, None when it has none."""

    name: str
    reel: Path
    refs: Path | None


def _settled(path: Path, now: float, settle_seconds: float) -> bool:
    """``path`` (a folder: everything in it) was last modified at least ``settle_seconds`` ago."""
    times = (
        [path.stat().st_mtime, *(p.stat().st_mtime for p in path.rglob("*"))]
        if path.is_dir()
        else [path.stat().st_mtime]
    )
    return now - max(times) >= settle_seconds


def scan_ingest(folder: Path, *, settle_seconds: float = 60.0, now: float | None = None) -> list[IngestItem]:
    """The settled reels of ``folder`` (top level, by name), each with its settled refs folder
    or None; ``now``: the time to compare modification times with (default: now)."""
    now = time.time() if now is None else now
    items = []
    for reel in sorted(Path(folder).iterdir()):
        if reel.name.startswith(".") or not reel.is_file() or reel.suffix.lower() not in REEL_SUFFIXES:
            continue
        if not _settled(reel, now, settle_seconds):
            continue
        refs = reel.with_name(reel.stem + REFS_SUFFIX)
        if refs.is_dir() and not _settled(refs, now, settle_seconds):
            continue  # the artist's folder is still being copied: wait for all of it
        items.append(IngestItem(reel.stem, reel, refs if refs.is_dir() else None))
    return items


def output_path(out_dir: Path, name: str, codec: CodecName) -> Path:
    """``<out_dir>/<name><first suffix of codec>`` (a folder for image sequences)."""
    return Path(out_dir) / f"{name}{CODECS[codec].suffixes[0]}"


def reel_runs(reel: Path, deployment: str) -> list[FlowRun]:
    """Flow runs of ``deployment`` (``<flow>/<deployment>``) tagged for ``reel``."""
    flow_name, _, deployment_name = deployment.partition("/")
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[reel_tag(reel)])),
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment_name])),
            # sort and limit given: with fastapi 0.154 the server refuses the client's explicit nulls
            sort=FlowRunSort.ID_DESC,
            limit=200,
        )


def reel_status(out: Path, runs: list[FlowRun], max_attempts: int) -> str:
    """ "done", "in progress", "gave up" (``max_attempts`` stopped runs) or "new" (submit it)."""
    if out.exists() or any(r.state_type == StateType.COMPLETED for r in runs):
        return "done"
    if any(r.state_type not in STOPPED for r in runs):
        return "in progress"
    return "gave up" if len(runs) >= max_attempts else "new"


@flow(name="ingest")
def ingest(
    folder: Path,
    out_dir: Path | None = None,
    work_root: Path | None = None,
    settings: RunSettings = RunSettings(),
    deployment: str = REEL_DEPLOYMENT,
    shot_deployment: str | None = None,
    settle_seconds: float = 60.0,
    max_attempts: int = 3,
) -> list[str]:
    """Submit a ``deployment`` run for each new reel of ``folder``; returns the names submitted.

    ``out_dir`` (default ``<folder>/out``) and ``work_root`` (default ``<folder>/.work``) must be
    on storage the workers share; ``shot_deployment`` is passed on (None: shots run in the reel's
    own flow run).
    """
    logger = get_run_logger()
    folder = Path(folder).resolve()
    out_dir = Path(out_dir or folder / "out").resolve()
    work_root = Path(work_root or folder / ".work").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    submitted = []
    for item in scan_ingest(folder, settle_seconds=settle_seconds):
        out = output_path(out_dir, item.name, settings.codec)
        if item.refs is None and settings.missing != "grey":
            logger.info("%s: waiting for its refs folder %s%s", item.reel.name, item.name, REFS_SUFFIX)
            continue
        runs = reel_runs(item.reel, deployment)
        status = reel_status(out, runs, max_attempts)
        if status == "gave up":
            logger.warning(
                "%s: %d runs failed; not resubmitted (see the runs tagged %s)",
                item.reel.name,
                len(runs),
                reel_tag(item.reel),
            )
        if status != "new":
            continue
        # called from sync code: Prefect's sync/async function returns the FlowRun itself
        flow_run = cast(
            FlowRun,
            run_deployment(
                deployment,
                timeout=0,
                as_subflow=False,
                tags=[reel_tag(item.reel)],
                flow_run_name=f"colorize-{item.name}",
                # two overlapping scans cannot submit the same attempt twice
                idempotency_key=f"{item.name}-{reel_fingerprint(item.reel)[:16]}-{len(runs)}",
                parameters={
                    "reel": str(item.reel),
                    "refs": None if item.refs is None else str(item.refs),
                    "out": str(out),
                    "workdir": str(work_root / default_workdir(item.reel).name),
                    "settings": settings.to_dict(),
                    "shot_deployment": shot_deployment,
                },
            ),
        )
        logger.info("%s: submitted %s (attempt %d)", item.reel.name, flow_run.name, len(runs) + 1)
        submitted.append(item.name)
    return submitted
