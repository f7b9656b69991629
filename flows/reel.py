"""The ``colorize-reel`` flow: prepare → colorize the shots wave by wave → assemble.

Tasks pass file paths, never pictures. Shots run as :mod:`flows.shot` tasks in this process,
as many at once as the machine has GPUs, holding as many slots of the ``gpu`` limit for all of
them; or, with ``shot_deployment`` set, as ``colorize-shot`` deployment runs that the farm's GPU
workers pull from the ``gpu`` pool (each holding one slot while it computes).

A run whose shots all succeed writes the output (atomically). A run with failed shots still
finishes every other shot, reports the failures and raises :class:`ReelIncomplete`: **no output
is written** (not even a partial one). Rerunning the same command reuses every finished
segment and redoes only the failed or unfinished shots.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import cast
from uuid import UUID

from prefect import flow, get_run_logger, tags, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import FlowRunSort
from prefect.deployments import run_deployment
from prefect.futures import PrefectFuture, as_completed

from flows.artifacts import Report, ShotProgress, file_link, publish_report, shot_rows
from flows.settings import (
    ensure_gpu_limit,
    gpu_count,
    gpu_slots,
    quiet_console,
    quiet_embedded_server_exit,
    start_embedded_server,
)
from flows.shot import ShotOutcome, outcome_of, read_outcome, shot_task
from pipeline import review, run
from pipeline.errors import PostprodError
from pipeline.keyframes import Plan
from pipeline.review import CONTACT_SHEET
from pipeline.settings import RunSettings
from pipeline.workdir import PLAN_NAME, load_plan, lock_workdir, shot_key

POLL_SECONDS = 2.0
"""How often the reel's flow looks at its shots' flow runs on a farm."""

OnDone = Callable[[int], None]


class ReelIncomplete(PostprodError):
    """Shots failed, so the output was not written. ``failures``: shot index -> one-line error."""

    def __init__(self, out: Path, failures: dict[int, str]) -> None:
        self.failures = dict(sorted(failures.items()))
        detail = "; ".join(f"shot {i}: {e}" for i, e in self.failures.items())
        super().__init__(
            out,
            f"not written: {len(self.failures)} shot(s) failed ({detail}); rerun the same command to redo only those",
        )


def reel_tag(reel: Path) -> str:
    """The tag of every flow run of one reel (``reel:<stem>``), for filtering in the UI and for ingest."""
    return f"reel:{Path(reel).stem}"


def _one_line(err: BaseException | str) -> str:
    text = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    return (text.strip().splitlines() or [""])[0]


@task(name="prepare", cache_policy=NO_CACHE, persist_result=False)
def prepare(reel: Path, refs: Path | None, workdir: Path, settings: RunSettings) -> Path:
    """Probe, cut shots, check refs and plan keyframes (``pipeline.run.prepare_run``); returns
    ``workdir/plan.json``. Fails before any heavy work."""
    run.prepare_run(reel, refs, workdir, settings)
    return Path(workdir) / PLAN_NAME


@task(name="assemble", cache_policy=NO_CACHE, persist_result=False)
def assemble(plan_path: Path, segments: dict[int, Path | None], out: Path, settings: RunSettings, force: bool) -> Path:
    """The segments (the source for grey shots) encoded in order into ``out``, audio copied, atomically."""
    return run.assemble(load_plan(plan_path), segments, out, settings, force=force, inputs=(Path(plan_path).parent,))


@task(name="contact-sheet", cache_policy=NO_CACHE, persist_result=False)
def contact_sheet(plan_path: Path, segments: dict[int, Path | None], dest: Path) -> Path:
    """PNG, one row per shot: its first keyframe grey, then coloured (grey when not coloured)."""
    return review.contact_sheet(load_plan(plan_path), segments, dest)


def _local_wave(
    wave: list[int], slots: int, plan_path: Path, workdir: Path, settings: RunSettings, on_done: OnDone
) -> tuple[dict[int, ShotOutcome], dict[int, str]]:
    """Shots of ``wave`` as tasks of this flow, at most ``slots`` in flight; the caller holds
    that many slots of the ``gpu`` limit."""
    outcomes: dict[int, ShotOutcome] = {}
    failures: dict[int, str] = {}
    pending: list[int] = list(wave)
    running: dict[PrefectFuture, int] = {}
    while pending or running:
        while pending and len(running) < slots:
            i = pending.pop(0)
            future: PrefectFuture = shot_task(plan_path, i, workdir, settings).submit(
                plan_path, i, workdir, settings, gpu_slot=False
            )
            running[future] = i
        future = next(as_completed(list(running)))
        i = running.pop(future)
        future.wait()  # sets the future's final state (a done future may still report the last one seen)
        state = future.state
        if state.is_completed():
            outcomes[i] = outcome_of(state)
        else:
            failures[i] = _one_line(state.result(raise_on_failure=False))
        on_done(i)
    return outcomes, failures


def _farm_wave(
    wave: list[int],
    deployment: str,
    reel: Path,
    plan_path: Path,
    workdir: Path,
    settings: RunSettings,
    poll_seconds: float,
    on_done: OnDone,
) -> tuple[dict[int, ShotOutcome], dict[int, str]]:
    """Shots of ``wave`` as ``colorize-shot`` deployment runs (children of this flow run); waits
    for all of them, reading each finished shot's outcome from the shared work folder."""
    plan = load_plan(plan_path)
    outcomes: dict[int, ShotOutcome] = {}
    failures: dict[int, str] = {}
    runs: dict[UUID, int] = {}
    for i in wave:
        # called from sync code: Prefect's sync/async function returns the FlowRun itself
        flow_run = cast(
            FlowRun,
            run_deployment(
                deployment,
                timeout=0,
                tags=[reel_tag(reel)],
                flow_run_name=f"colorize-{reel.stem}-shot-{i}",
                parameters={
                    "plan_path": str(plan_path),
                    "shot_index": i,
                    "workdir": str(workdir),
                    "settings": settings.to_dict(),
                },
            ),
        )
        runs[flow_run.id] = i
    with get_client(sync_client=True) as client:
        while runs:
            time.sleep(poll_seconds)
            # sort and limit given: with fastapi 0.154 the server refuses the client's explicit nulls
            for flow_run in client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(runs))),
                sort=FlowRunSort.ID_DESC,
                limit=len(runs),
            ):
                if flow_run.state is None or not flow_run.state.is_final():
                    continue
                i = runs.pop(flow_run.id)
                if not flow_run.state.is_completed():
                    failures[i] = _one_line(f"{flow_run.state.name}: {flow_run.state.message or ''}")
                else:
                    try:
                        outcomes[i] = read_outcome(workdir, i, shot_key(plan, i, settings))
                    except PostprodError as err:
                        failures[i] = _one_line(err)
                on_done(i)
    return outcomes, failures


def _blocked(plan: Plan, wave: list[int], failures: dict[int, str]) -> dict[int, str]:
    """Shots of ``wave`` that borrow colour from a failed shot, with why they are not run."""
    blocked = {}
    for i in wave:
        bad = [n for n in plan.shots[i].neighbours if n in failures]
        if bad:
            blocked[i] = f"takes its colours from failed shot(s) {', '.join(map(str, bad))}"
    return blocked


@flow(name="colorize-reel", flow_run_name="colorize-{reel.stem}")
def colorize_reel(
    reel: Path,
    out: Path,
    refs: Path | None = None,
    workdir: Path | None = None,
    settings: RunSettings = RunSettings(),
    force: bool = False,
    shot_deployment: str | None = None,
    poll_seconds: float = POLL_SECONDS,
) -> Path:
    """Colorize ``reel`` from the refs folder ``refs`` into ``out`` (codec from ``settings``).

    ``workdir``: plan, segments and Prefect's shot cache (default ``pipeline.workdir.default_workdir``);
    on a farm it must be on storage every worker mounts at the same path. ``shot_deployment``
    (e.g. ``colorize-shot/colorize-shot``): run each shot as a run of that deployment instead
    of in this process. Returns ``out``; raises :class:`ReelIncomplete` (nothing written) when
    shots failed, :class:`PostprodError` for bad inputs before any shot runs
    (:func:`pipeline.run.check_run_inputs`, then the plan) or a work folder in use by another run
    (its ``run.lock`` is held while the flow runs).
    """
    reel, out = Path(reel).resolve(), Path(out).resolve()
    workdir = run.check_run_inputs(reel, refs, out, workdir=workdir, settings=settings, force=force).resolve()
    with lock_workdir(workdir):
        return _colorize_locked(reel, out, refs, workdir, settings, force, shot_deployment, poll_seconds)


def _colorize_locked(
    reel: Path,
    out: Path,
    refs: Path | None,
    workdir: Path,
    settings: RunSettings,
    force: bool,
    shot_deployment: str | None,
    poll_seconds: float,
) -> Path:
    """The body of :func:`colorize_reel`, its inputs checked and the work folder locked."""
    logger = get_run_logger()
    started = time.perf_counter()
    plan_file = prepare(reel, refs, workdir, settings)
    plan = load_plan(plan_file)
    limit = ensure_gpu_limit()
    # in this process: this machine's GPUs (never more than the whole limit), held for all shots
    slots = min(gpu_count(), limit)
    progress = ShotProgress(reel, len(plan.shots))
    logger.info(
        "%s: %d shots in %s; work folder %s",
        reel.name,
        len(plan.shots),
        f"deployment {shot_deployment}" if shot_deployment else f"this process ({slots} GPU slot(s))",
        workdir,
    )

    def run_wave(todo: list[int]) -> tuple[dict[int, ShotOutcome], dict[int, str]]:
        def on_done(_: int) -> None:
            progress.advance()

        if shot_deployment:
            return _farm_wave(todo, shot_deployment, reel, plan_file, workdir, settings, poll_seconds, on_done)
        return _local_wave(todo, slots, plan_file, workdir, settings, on_done)

    outcomes: dict[int, ShotOutcome] = {}
    failures: dict[int, str] = {}
    with nullcontext() if shot_deployment else gpu_slots(slots):
        for wave in run.shot_waves(plan):
            blocked = _blocked(plan, wave, failures)
            failures.update(blocked)
            progress.advance(len(blocked))
            done, failed = run_wave([i for i in wave if i not in blocked])
            outcomes.update(done)
            failures.update(failed)
    for i, err in sorted(failures.items()):
        logger.error("shot %d failed: %s", i, err)
    segments = {i: o.segment_file(workdir) for i, o in outcomes.items()}
    sheet: Path | None = workdir / CONTACT_SHEET
    try:
        contact_sheet(plan_file, segments, workdir / CONTACT_SHEET)
    except Exception as err:  # the report still goes out, without its picture
        logger.warning("no contact sheet: %s", _one_line(err))
        sheet = None
    written = None
    try:
        if failures:
            raise ReelIncomplete(out, failures)
        written = assemble(plan_file, segments, out, settings, force)
        return written
    finally:
        publish_report(
            Report(
                reel=reel,
                out=written,
                workdir=workdir,
                seconds=time.perf_counter() - started,
                rows=shot_rows(plan, outcomes, failures),
                sheet=file_link(sheet) if sheet else None,
            )
        )


def run_flow(
    reel: Path,
    refs: Path | None,
    out: Path,
    workdir: Path | None = None,
    settings: RunSettings = RunSettings(),
    force: bool = False,
) -> Path:
    """``postprod run --engine prefect``: the ``colorize-reel`` flow in this process, on the server
    at ``PREFECT_API_URL`` if set, else on Prefect's embedded server (SQLite in ``PREFECT_HOME``).
    Prefect's console logging is kept to warnings (see :func:`flows.settings.quiet_console`); the
    embedded server dies with this process (:func:`flows.settings.start_embedded_server`)."""
    with quiet_console(), tags(reel_tag(reel)):
        try:
            start_embedded_server()
            return colorize_reel(
                reel=Path(reel),
                out=Path(out),
                refs=None if refs is None else Path(refs),
                workdir=None if workdir is None else Path(workdir),
                settings=settings,
                force=force,
            )
        finally:
            quiet_embedded_server_exit()
