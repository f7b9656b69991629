"""The ``colorize-reel`` flow: prepare → colorize the shots wave by wave → assemble.

Tasks pass file paths, never pictures. Shots run as :mod:`flows.shot` tasks in this process,
as many at once as the machine has GPUs, holding as many slots of the ``gpu`` limit for all of
them; or, with ``shot_deployment`` set, as ``colorize-shot`` deployment runs of a few shots each
that the farm's GPU workers pull from the ``gpu`` pool (each shot holding one slot while it
computes), a few runs per GPU in flight at a time, shots of a lost worker submitted again
(:class:`_FarmShots`).

A run whose shots all succeed writes the output (atomically). A run with failed shots still
finishes every other shot, reports the failures and raises :class:`ReelIncomplete`: **no output
is written** (not even a partial one). Rerunning the same command reuses every finished
segment and redoes only the failed or unfinished shots.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast
from uuid import UUID

from prefect import flow, get_run_logger, tags, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun, StateType, WorkerStatus
from prefect.client.schemas.sorting import FlowRunSort
from prefect.deployments import run_deployment
from prefect.futures import PrefectFuture, as_completed
from prefect.states import Crashed

from flows.artifacts import Report, ShotProgress, file_link, publish_report, shot_rows
from flows.settings import (
    ensure_gpu_limit,
    gpu_count,
    gpu_slots,
    quiet_console,
    quiet_embedded_server_exit,
    start_embedded_server,
)
from flows.shot import ShotOutcome, one_line, outcome_of, read_outcome, shot_task
from pipeline import review, run
from pipeline.errors import PostprodError
from pipeline.jobs import compute_threads, shot_jobs
from pipeline.keyframes import Plan
from pipeline.review import CONTACT_SHEET
from pipeline.settings import RunSettings
from pipeline.workdir import PLAN_NAME, load_plan, lock_workdir, segment_path, shot_key

POLL_SECONDS = 2.0
"""How often the reel's flow looks at its shots' flow runs on a farm."""

OnDone = Callable[[int, ShotOutcome | None], None]
"""Called as each shot finishes: its index and outcome (None when it failed)."""


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


@task(name="prepare", cache_policy=NO_CACHE, persist_result=False)
def prepare(reel: Path, refs: Path | None, workdir: Path, settings: RunSettings) -> Path:
    """Probe, cut shots, check refs and plan keyframes (``pipeline.run.prepare_run``); returns
    ``workdir/plan.json``. Fails before any heavy work."""
    run.prepare_run(reel, refs, workdir, settings)
    return Path(workdir) / PLAN_NAME


@task(name="assemble", cache_policy=NO_CACHE, persist_result=False)
def assemble(plan_path: Path, segments: dict[int, Path | None], out: Path, settings: RunSettings, force: bool) -> Path:
    """The segments joined in order into ``out``, audio copied, atomically (``pipeline.run.assemble``)."""
    workdir = Path(plan_path).parent
    return run.assemble(load_plan(plan_path), segments, out, settings, workdir=workdir, force=force, inputs=(workdir,))


@task(name="contact-sheet", cache_policy=NO_CACHE, persist_result=False)
def contact_sheet(plan_path: Path, segments: dict[int, Path | None], dest: Path) -> Path:
    """PNG, one row per shot: its first keyframe grey, then coloured (grey when not coloured)."""
    return review.contact_sheet(load_plan(plan_path), segments, dest)


def _local_wave(
    wave: list[int], slots: int, plan_path: Path, workdir: Path, settings: RunSettings, on_done: OnDone
) -> tuple[dict[int, ShotOutcome], dict[int, str]]:
    """Shots of ``wave`` as tasks of this flow, at most ``slots`` in flight, longest first; the
    caller holds this process's slots of the ``gpu`` limit."""
    outcomes: dict[int, ShotOutcome] = {}
    failures: dict[int, str] = {}
    shots = load_plan(plan_path).shots
    pending: list[int] = sorted(wave, key=lambda i: shots[i].start - shots[i].end)
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
            failures[i] = one_line(state.result(raise_on_failure=False))
        on_done(i, outcomes.get(i))
    return outcomes, failures


WORKER_LABEL = "prefect.worker.name"
"""The label a Prefect worker puts on each flow run it starts."""
MAX_SHOT_RUNS = 3
"""Flow runs a farm shot may take: a shot whose worker was lost (or whose run crashed) is
submitted again until it has had this many."""
MAX_SHOTS_PER_RUN = 16
"""The most shots one ``colorize-shot`` flow run takes (see :func:`shots_per_run_for`)."""
HELD = frozenset({StateType.PENDING, StateType.RUNNING})
"""States of a run a worker has taken (and would hold when it dies)."""


def shots_per_run_for(shots: int, slots: int) -> int:
    """Shots per ``colorize-shot`` flow run for a wave of ``shots`` on a farm of ``slots`` GPUs:
    enough for every GPU to get four runs (so the wave's end stays balanced), at most
    :data:`MAX_SHOTS_PER_RUN` (so a lost run's unfinished shots are few), at least 1. Each run
    starts a process on its worker (seconds of imports and API calls): batching pays it once
    for several shots, which matters for short shots and features of thousands of them."""
    return max(1, min(MAX_SHOTS_PER_RUN, shots // (4 * max(slots, 1))))


def batches(shots: list[int], size: int) -> list[list[int]]:
    """``shots`` in order, cut into lists of ``size`` (the last one shorter)."""
    return [shots[k : k + size] for k in range(0, len(shots), max(size, 1))]


def lost_worker(flow_run: FlowRun, offline: set[str]) -> str | None:
    """The worker that holds ``flow_run`` (Pending or Running, labelled by its worker) when
    that worker is in ``offline`` (the server marked it offline: it missed its heartbeats),
    else None."""
    worker = (flow_run.labels or {}).get(WORKER_LABEL)
    if flow_run.state_type in HELD and isinstance(worker, str) and worker in offline:
        return worker
    return None


def offline_workers(client: SyncPrefectClient, pool: str) -> set[str]:
    """Names of the workers of work pool ``pool`` that the server marks offline."""
    workers = client.read_workers_for_work_pool(pool, offset=0, limit=200)  # the most the server returns
    return {w.name for w in workers if w.status == WorkerStatus.OFFLINE}


@dataclass
class _FarmShots:
    """Shots of one wave as ``colorize-shot`` deployment runs (children of the reel's flow run)
    of ``size`` shots each, at most ``window`` runs in flight: the server never holds thousands of
    scheduled runs for one reel, and every GPU has a run queued behind the one it computes."""

    deployment: str
    reel: Path
    plan_path: Path
    workdir: Path
    settings: RunSettings
    window: int
    size: int
    on_done: OnDone
    plan: Plan = field(init=False)
    runs: dict[UUID, list[int]] = field(default_factory=dict)
    """in-flight flow run -> its shots"""
    count: dict[int, int] = field(default_factory=dict)
    """shot -> flow runs submitted for it"""
    outcomes: dict[int, ShotOutcome] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.plan = load_plan(self.plan_path)

    def submit(self, shots: list[int]) -> None:
        for i in shots:
            self.count[i] = self.count.get(i, 0) + 1
        n = max(self.count[i] for i in shots)
        name = f"colorize-{self.reel.stem}-" + (
            f"shot-{shots[0]}" if len(shots) == 1 else f"shots-{shots[0]}-{shots[-1]}"
        )
        # called from sync code: Prefect's sync/async function returns the FlowRun itself
        flow_run = cast(
            FlowRun,
            run_deployment(
                self.deployment,
                timeout=0,
                tags=[reel_tag(self.reel)],
                flow_run_name=name + (f"-run-{n}" if n > 1 else ""),
                parameters={
                    "plan_path": str(self.plan_path),
                    "shots": shots,
                    "workdir": str(self.workdir),
                    "settings": self.settings.to_dict(),
                },
            ),
        )
        self.runs[flow_run.id] = list(shots)

    def _outcome(self, i: int, flow_run: FlowRun) -> ShotOutcome | None:
        """Shot ``i``'s outcome left by ``flow_run`` (its worker and runs filled in), None if none."""
        try:
            outcome = read_outcome(self.workdir, i, shot_key(self.plan, i, self.settings))
        except PostprodError:
            return None
        worker = (flow_run.labels or {}).get(WORKER_LABEL)
        return replace(outcome, worker=worker if isinstance(worker, str) else None, runs=self.count[i])

    def finish(self, flow_run: FlowRun, lost: str | None = None) -> None:
        """``flow_run`` is over: each of its shots gets its outcome, else (when the run was
        ``lost`` or crashed) goes again, else fails with the run's error."""
        logger = get_run_logger()
        state = flow_run.state
        crashed = lost or (f"run {flow_run.name} crashed" if flow_run.state_type == StateType.CRASHED else None)
        again = []
        for i in self.runs.pop(flow_run.id):
            outcome = self._outcome(i, flow_run)
            if outcome is not None:
                self.outcomes[i] = outcome
            elif crashed is None:
                why = f"{state.name}: {state.message or ''}" if state else "no state"
                self.failures[i] = one_line(why if state and not state.is_completed() else f"shot {i} left no outcome")
            elif self.count[i] < MAX_SHOT_RUNS:
                again.append(i)
                continue
            else:
                self.failures[i] = one_line(f"{crashed} ({self.count[i]} runs, not submitted again)")
            self.on_done(i, self.outcomes.get(i))
        if again:
            logger.warning("shot(s) %s: %s; submitted again", ", ".join(map(str, again)), crashed)
            self.submit(again)

    def run(self, wave: list[int], poll_seconds: float) -> tuple[dict[int, ShotOutcome], dict[int, str]]:
        """Submit, watch and resubmit until every shot of ``wave`` has an outcome or a failure.

        A run whose worker the server marks offline is set Crashed here (the dead worker
        cannot), and its shots without an outcome are submitted again; so are those of a run
        that ended Crashed (its process died: the worker saw it). A Failed run fails its shots
        without outcome (each task already retried). A shot leaves at most one segment, under
        its content key, however many runs it took."""
        pending = batches(wave, self.size)
        with get_client(sync_client=True) as client:
            while pending or self.runs:
                while pending and len(self.runs) < self.window:
                    self.submit(pending.pop(0))
                time.sleep(poll_seconds)
                # sort and limit given: with fastapi 0.154 the server refuses the client's explicit nulls
                current = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(self.runs))),
                    sort=FlowRunSort.ID_DESC,
                    limit=len(self.runs),
                )
                pools = {r.work_pool_name for r in current if r.state_type in HELD and r.work_pool_name}
                offline = {w for pool in pools for w in offline_workers(client, pool)}
                for flow_run in current:
                    worker = lost_worker(flow_run, offline)
                    if worker is not None:
                        why = f"worker {worker} lost with run {flow_run.name}"
                        client.set_flow_run_state(flow_run.id, Crashed(message=why), force=True)
                        self.finish(flow_run, lost=why)
                    elif flow_run.state is not None and flow_run.state.is_final():
                        self.finish(flow_run)
        return self.outcomes, self.failures


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
    shots_per_run: int | None = None,
    jobs: int | None = None,
) -> Path:
    """Colorize ``reel`` from the refs folder ``refs`` into ``out`` (codec from ``settings``).

        ``workdir``: plan, segments and Prefect's shot cache (default ``pipeline.workdir.default_workdir``);
        on a farm it must be on storage every worker mounts at the same path. ``shot_deployment``
        (e.g. ``colorize-shot/colorize-shot``): run the shots as runs of that deployment instead of in
        this process, ``shots_per_run`` shots per run (default :func:`shots_per_run_for`); else ``jobs``
    shots at once in this process (default: ``pipeline.jobs.shot_jobs`` for the device). Returns
        ``out``; raises :class:`ReelIncomplete` (nothing written) when shots failed,
        :class:`PostprodError` for bad inputs before any shot runs (:func:`pipeline.run.check_run_inputs`,
        then the plan) or a work folder in use by another run (its ``run.lock`` is held while the flow runs).
    """
    reel, out = Path(reel).resolve(), Path(out).resolve()
    workdir = run.check_run_inputs(reel, refs, out, workdir=workdir, settings=settings, force=force).resolve()
    with lock_workdir(workdir):
        return _colorize_locked(
            reel, out, refs, workdir, settings, force, shot_deployment, poll_seconds, shots_per_run, jobs
        )


def _colorize_locked(
    reel: Path,
    out: Path,
    refs: Path | None,
    workdir: Path,
    settings: RunSettings,
    force: bool,
    shot_deployment: str | None,
    poll_seconds: float,
    shots_per_run: int | None,
    jobs: int | None,
) -> Path:
    """The body of :func:`colorize_reel`, its inputs checked and the work folder locked."""
    logger = get_run_logger()
    started = time.perf_counter()
    plan_file = prepare(reel, refs, workdir, settings)
    plan = load_plan(plan_file)
    limit = ensure_gpu_limit()
    # in this process: this machine's GPUs (never more than the whole limit), held for all shots,
    # and the shots coloured at once (on a CPU, one per core: pipeline.jobs)
    slots = min(gpu_count(), limit)
    from pipeline.colorize import resolve_device  # torch: once the plan is made

    local_jobs = shot_jobs(resolve_device(settings.device), jobs)
    progress = ShotProgress(reel, len(plan.shots), frames=plan.frames)
    # on a farm: shot runs in flight at once, two per GPU of the farm (one computing, one queued)
    window = max(2 * limit, 2)
    logger.info(
        "%s: %d shots in %s; work folder %s",
        reel.name,
        len(plan.shots),
        f"deployment {shot_deployment} ({window} in flight)"
        if shot_deployment
        else f"this process ({slots} GPU slot(s), {local_jobs.shots} shot(s) at once)",
        workdir,
    )

    def on_done(i: int, outcome: ShotOutcome | None) -> None:
        shot = plan.shots[i]
        progress.advance(frames=shot.end - shot.start if outcome is not None else 0)

    def run_wave(todo: list[int]) -> tuple[dict[int, ShotOutcome], dict[int, str]]:
        if shot_deployment:
            size = shots_per_run or shots_per_run_for(len(todo), limit)
            farm = _FarmShots(shot_deployment, reel, plan_file, workdir, settings, window, size, on_done)
            return farm.run(todo, poll_seconds)
        return _local_wave(todo, local_jobs.shots, plan_file, workdir, settings, on_done)

    outcomes: dict[int, ShotOutcome] = {}
    failures: dict[int, str] = {}
    reused = [
        s.index for s in plan.shots if s.source != "grey" and segment_path(workdir, plan, s.index, settings).exists()
    ]
    with nullcontext() if shot_deployment else gpu_slots(slots), compute_threads(local_jobs):
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
        logger.warning("no contact sheet: %s", one_line(err))
        sheet = None
    written = page = None
    try:
        if failures:
            raise ReelIncomplete(out, failures)
        written = assemble(plan_file, segments, out, settings, force)
        review.record_run(plan, workdir, settings, out, reused=reused)
        try:
            page = review.write_review(workdir)
        except Exception as err:  # the output is written: a review page that cannot be made is a warning
            logger.warning("no review page: %s", one_line(err))
        return written
    finally:
        try:
            guessed = review.shot_summaries(plan, workdir, settings)
        except Exception as err:  # the report still goes out, without the confidence table
            logger.warning("no confidence table: %s", one_line(err))
            guessed = []
        publish_report(
            Report(
                reel=reel,
                out=written,
                workdir=workdir,
                seconds=time.perf_counter() - started,
                rows=shot_rows(plan, outcomes, failures),
                sheet=file_link(sheet) if sheet else None,
                frames=plan.frames,
                review=file_link(page) if page else None,
                confidence=guessed,
            )
        )


def run_flow(
    reel: Path,
    refs: Path | None,
    out: Path,
    workdir: Path | None = None,
    settings: RunSettings = RunSettings(),
    force: bool = False,
    jobs: int | None = None,
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
                jobs=jobs,
            )
        finally:
            quiet_embedded_server_exit()
