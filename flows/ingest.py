"""The ``ingest`` flow: scan a drop folder and submit one ``colorize-reel`` run per reel and content.

Folder convention (docs/operators.md)::

    <ingest>/<name>.<mov|mkv|mp4|mxf>   the grey reel
    <ingest>/<name>.refs/               its refs folder (docs/refs.md); without it the reel waits,
                                        unless the deployment's settings say missing="grey"
    <ingest>/<name>.retry               touched by an operator: run a failed reel again
    <ingest>/out/<name>.<codec suffix>  the output (``out_dir``), written by the reel's run
    <ingest>/.work/<name>-<fp>/         its work folder (``work_root``; on shared storage)

A reel is taken when it is complete: dotfiles are ignored (copy as ``.name.mov`` then rename),
and so is a reel or refs folder modified less than ``settle_seconds`` ago, or whose files'
sizes or modification times differ between two looks ``recheck_seconds`` apart (a copy still
going on, also one that keeps the source's modification times).

**Exactly one run per reel and content.** The reel's *content key* (:func:`content_key`) hashes
its fingerprint, every refs file and the ``.retry`` file's modification time; it is the
submitted run's idempotency key, so two scans that overlap submit one run (the server returns
the first one to the second), and the ``ingest`` deployment itself allows one scan at a time.
Prefect's flow runs of the reel deployment tagged ``reel:<name>`` say where a reel is
(:func:`reel_status`): **done** when its output exists or its run for this content completed
(an output moved away after delivery is not redone); **in progress** while any of its runs is
not finished (scheduled, late, pending, running, paused, cancelling: also an operator's
*Retry* of a failed run from the UI); **failed** when its run for this content failed, crashed
or was cancelled: not submitted again until its files change (new reel, new or changed refs)
or an operator touches ``<name>.retry``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

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
from pipeline.workdir import default_workdir, file_hash, reel_fingerprint

REEL_SUFFIXES = (".mov", ".mkv", ".mp4", ".mxf")
REFS_SUFFIX = ".refs"
RETRY_SUFFIX = ".retry"
REEL_DEPLOYMENT = "colorize-reel/colorize-reel"
STOPPED = frozenset({StateType.FAILED, StateType.CRASHED, StateType.CANCELLED})
"""Final states of a run that did not write its output."""
FINAL = STOPPED | {StateType.COMPLETED}


@dataclass(frozen=True)
class IngestItem:
    """A reel found in the ingest folder: ``refs`` is its refs folder, None when it has none;
    ``retry`` its ``.retry`` file, None when there is none."""

    name: str
    reel: Path
    refs: Path | None
    retry: Path | None = None


Look = dict[Path, tuple[int, int]]
"""(size, mtime_ns) of files, by path."""


def _files(path: Path) -> list[Path]:
    return [path] if path.is_file() else [path, *sorted(path.rglob("*"))]


def _look(paths: list[Path]) -> Look:
    """(size, mtime_ns) of every file of ``paths`` (folders: everything in them)."""
    found: Look = {}
    for path in paths:
        for p in _files(path):
            st = p.stat()
            found[p] = (st.st_size, st.st_mtime_ns)
    return found


def _settled(path: Path, now: float, settle_seconds: float) -> bool:
    """``path`` (a folder: everything in it) was last modified at least ``settle_seconds`` ago."""
    return now - max(p.stat().st_mtime for p in _files(path)) >= settle_seconds


def scan_ingest(
    folder: Path, *, settle_seconds: float = 60.0, recheck_seconds: float = 0.0, now: float | None = None
) -> list[IngestItem]:
    """The complete reels of ``folder`` (top level, by name), each with its refs folder or None.

    Complete: the reel (and its refs folder, if any) was last modified ``settle_seconds`` ago
    or more (compared with ``now``, default: now) and, with ``recheck_seconds`` > 0, no file of
    them changed size or modification time between a look before and one after waiting that long.
    """
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
        retry = reel.with_name(reel.stem + RETRY_SUFFIX)
        items.append(IngestItem(reel.stem, reel, refs if refs.is_dir() else None, retry if retry.is_file() else None))
    if recheck_seconds <= 0 or not items:
        return items
    parts = {i.name: [i.reel, *([i.refs] if i.refs else [])] for i in items}
    before = {name: _look(paths) for name, paths in parts.items()}
    time.sleep(recheck_seconds)
    return [i for i in items if _look(parts[i.name]) == before[i.name]]


def content_key(item: IngestItem) -> str:
    """16 hex digits naming what a run of ``item`` colours: the reel's fingerprint, the refs
    folder's files (relative names and contents) and the ``.retry`` file's modification time."""
    h = hashlib.sha256(reel_fingerprint(item.reel).encode())
    if item.refs is not None:
        for p in sorted(item.refs.rglob("*")):
            if p.is_file():
                h.update(f"\0{p.relative_to(item.refs).as_posix()}\0{file_hash(p)}".encode())
    if item.retry is not None:
        h.update(f"\0retry {item.retry.stat().st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def idempotency_key(item: IngestItem) -> str:
    """The idempotency key of ``item``'s run: ``<name>-<content key>``."""
    return f"{item.name}-{content_key(item)}"


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


Status = Literal["done", "in progress", "failed", "new"]


def reel_status(out: Path, runs: list[FlowRun], key: str) -> Status:
    """Where a reel stands (module docstring), from its output ``out``, its ``runs`` and the
    idempotency key ``key`` of its current content: "new" means submit it."""
    mine = [r for r in runs if r.idempotency_key == key]
    if out.exists() or any(r.state_type == StateType.COMPLETED for r in mine):
        return "done"
    if any(r.state_type not in FINAL for r in runs):
        return "in progress"
    if any(r.state_type in STOPPED for r in mine):
        return "failed"
    return "new"


@flow(name="ingest")
def ingest(
    folder: Path,
    out_dir: Path | None = None,
    work_root: Path | None = None,
    settings: RunSettings = RunSettings(),
    deployment: str = REEL_DEPLOYMENT,
    shot_deployment: str | None = None,
    settle_seconds: float = 60.0,
    recheck_seconds: float = 5.0,
) -> list[str]:
    """Submit a ``deployment`` run for each new reel (or reel with new content) of ``folder``;
    returns their names (a run an overlapping scan submitted first is returned too: the server
    holds one).

    ``out_dir`` (default ``<folder>/out``) and ``work_root`` (default ``<folder>/.work``) must be
    on storage the workers share; ``shot_deployment`` is passed on (None: shots run in the reel's
    own flow run). ``settle_seconds``, ``recheck_seconds``: see :func:`scan_ingest`.
    """
    logger = get_run_logger()
    folder = Path(folder).resolve()
    out_dir = Path(out_dir or folder / "out").resolve()
    work_root = Path(work_root or folder / ".work").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    submitted = []
    for item in scan_ingest(folder, settle_seconds=settle_seconds, recheck_seconds=recheck_seconds):
        out = output_path(out_dir, item.name, settings.codec)
        if item.refs is None and settings.missing != "grey":
            logger.info("%s: waiting for its refs folder %s%s", item.reel.name, item.name, REFS_SUFFIX)
            continue
        key = idempotency_key(item)
        status = reel_status(out, reel_runs(item.reel, deployment), key)
        if status == "failed":
            logger.warning(
                "%s: its run failed (runs tagged %s); not submitted again until its files change or %s%s is touched",
                item.reel.name,
                reel_tag(item.reel),
                item.name,
                RETRY_SUFFIX,
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
                idempotency_key=key,  # overlapping scans submit one run
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
        logger.info("%s: submitted %s (content %s)", item.reel.name, flow_run.name, key)
        submitted.append(item.name)
    return submitted
