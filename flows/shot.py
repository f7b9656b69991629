"""Shots: the cached, GPU-slotted ``colorize-shot`` task, and the ``colorize-shot`` flow a farm
runs for a batch of shots (``run_deployment`` from :func:`flows.reel.colorize_reel`).

Caching. The shot's segment file (``pipeline.workdir.segment_path``: a content key in its name) is
the durable cache; Prefect's cache agrees with it: the task's cache key is
``pipeline.workdir.shot_key`` and its result records live in ``<workdir>/prefect-cache/``, beside the
segments, so every worker sharing the work folder shares them. A cached result is only trusted
while its segment exists: :func:`shot_task` refreshes the cache of a shot whose segment is gone.

GPU slots. The ``gpu`` global concurrency limit counts the GPUs in use among everything that
shares the Prefect server. A shot run in a ``colorize-shot`` flow run (a farm) holds one slot
while it computes; a reel whose shots run in its own process holds that machine's slots for all its
shots instead (:func:`flows.reel.colorize_reel`): on a SQLite server every acquisition races the
server's other writes and is retried ~2 s later (Prefect issue #18934), once per reel is cheap.
Runs on the embedded server take no slots (see :func:`flows.settings.gpu_slots`).

Failures. Transient errors are retried with exponential backoff; a user error
(:class:`~pipeline.errors.PostprodError`, bad weights) is not. A CUDA out-of-memory error retries
the shot at a lower working resolution (:func:`oom_work_sizes`); the segment made that way is
filed under the requested settings' key, so neighbouring shots and later runs find it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar, cast

from prefect import flow, get_run_logger, task
from prefect.states import State
from prefect.tasks import Task, exponential_backoff

from flows.settings import ensure_gpu_limit, gpu_slots
from pipeline import run
from pipeline.errors import PostprodError
from pipeline.files import atomic_output
from pipeline.keyframes import Plan
from pipeline.settings import MIN_WORK_SIZE, RunSettings
from pipeline.workdir import load_plan, segment_path, shot_key

CACHE_DIR = "prefect-cache"
"""Prefect's result records of the shots, under the work folder."""
OUTCOMES_DIR = "outcomes"
"""One ``shot-<i>.json`` :class:`ShotOutcome` per shot run as a flow, under the work folder."""
OOM_SCALES = (0.75, 0.5)
"""Working resolutions tried after a CUDA out-of-memory error, as fractions of the requested one."""


@dataclass(frozen=True)
class ShotOutcome:
    """What colorizing one shot gave. ``segment``: the segment's path relative to the work folder,
    None for a shot left grey. ``key``: ``pipeline.workdir.shot_key`` under the requested settings.
    ``work_size``: working resolution used (px; lower than requested after out-of-memory).
    ``seconds``: wall time of the computation. ``reused``: the segment was already on disk.
    ``host``/``pid``/``ppid``: the process that computed it (``ppid``: its worker, on a farm).
    ``cached``: Prefect answered from its cache (the task did not run this time).
    ``worker``: the Prefect worker whose flow run computed it (farm; None in the reel's own
    process). ``runs``: flow runs it took (more than 1 when a worker was lost with it).

    Every field after ``ppid`` has a default, so outcomes written before a field existed still
    load (:meth:`from_dict` also ignores fields it does not know); a new optional per-shot
    figure is one more such field and one more cell in :meth:`row`."""

    index: int
    key: str
    segment: str | None
    work_size: int
    seconds: float
    reused: bool
    host: str
    pid: int
    ppid: int
    cached: bool = False
    worker: str | None = None
    runs: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShotOutcome:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    COLUMNS: ClassVar[tuple[str, ...]] = ("seconds", "work px", "worker", "runs")
    """The shots table's columns that come from the outcome, in :meth:`row`'s order."""

    def row(self) -> dict[str, Any]:
        """This outcome's cells of the shots table (:data:`COLUMNS`): seconds, working size
        (px), worker (Prefect worker name, else host:pid) and flow runs."""
        cells = (self.seconds, self.work_size, self.worker or f"{self.host}:{self.pid}", self.runs)
        return dict(zip(self.COLUMNS, cells, strict=True))

    def segment_file(self, workdir: Path) -> Path | None:
        """The segment's absolute path under ``workdir`` (None for a grey shot)."""
        return None if self.segment is None else Path(workdir) / self.segment


def oom_work_sizes(work_size: int) -> list[int]:
    """Working resolutions to try in order: ``work_size``, then :data:`OOM_SCALES` of it (>= :data:`MIN_WORK_SIZE`)."""
    lower = [round(work_size * s) for s in OOM_SCALES]
    return [work_size, *(s for s in lower if MIN_WORK_SIZE <= s < work_size)]


def compute_shot(
    plan: Plan, shot_index: int, workdir: Path, settings: RunSettings, *, gpu_slot: bool = True
) -> ShotOutcome:
    """Colorize one shot with ``pipeline.run.colorize_shot``, at lower working resolutions after
    CUDA out-of-memory errors; with ``gpu_slot``, holding a slot of the ``gpu`` limit while it
    computes (else the caller holds one). A shot left grey, or whose segment is already on disk,
    needs no slot and no computation."""
    workdir = Path(workdir)
    started = time.perf_counter()
    dest = segment_path(workdir, plan, shot_index, settings)
    grey = plan.shots[shot_index].source == "grey"
    reused = not grey and dest.exists()
    used = settings.work_size
    if not grey and not reused:
        with gpu_slots(1) if gpu_slot else nullcontext():
            segment, used = _colorize_fitting_memory(plan, shot_index, workdir, settings)
        if used != settings.work_size:
            os.replace(segment, dest)  # filed under the requested key: see the module docstring
    return ShotOutcome(
        index=shot_index,
        key=shot_key(plan, shot_index, settings),
        segment=None if grey else str(dest.relative_to(workdir)),
        work_size=used,
        seconds=round(time.perf_counter() - started, 3),
        reused=reused,
        host=socket.gethostname(),
        pid=os.getpid(),
        ppid=os.getppid(),
    )


def _colorize_fitting_memory(plan: Plan, shot_index: int, workdir: Path, settings: RunSettings) -> tuple[Path, int]:
    """``pipeline.run.colorize_shot`` at each of :func:`oom_work_sizes` until one fits in GPU
    memory; returns the segment and the working size used. The last size's error propagates."""
    import torch

    def colorize(size: int) -> tuple[Path, int]:
        segment = run.colorize_shot(plan, shot_index, workdir, settings.replace(work_size=size))
        if segment is None:
            raise PostprodError(workdir, f"shot {shot_index} has colour sources but no segment was made")
        return Path(segment), size

    *first, last = oom_work_sizes(settings.work_size)
    for size in first:
        try:
            return colorize(size)
        except torch.cuda.OutOfMemoryError:
            get_run_logger().warning("shot %d: CUDA out of memory at work size %d px, retrying lower", shot_index, size)
            torch.cuda.empty_cache()
    return colorize(last)


def _shot_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    del context
    return shot_key(load_plan(parameters["plan_path"]), parameters["shot_index"], parameters["settings"])


def _is_transient(task: Task, task_run: Any, state: Any) -> bool:
    """Retry condition: everything but user errors and out-of-memory (handled in :func:`compute_shot`)."""
    import torch

    from model.weights import WeightsError

    del task, task_run
    err = state.result(raise_on_failure=False)
    return not isinstance(err, (PostprodError, WeightsError, torch.cuda.OutOfMemoryError))


@task(
    name="colorize-shot",
    task_run_name="shot-{shot_index}",
    cache_key_fn=_shot_cache_key,
    persist_result=True,
    result_serializer="json",
    retries=2,
    retry_delay_seconds=exponential_backoff(10),
    retry_jitter_factor=0.2,
    retry_condition_fn=_is_transient,
)
def colorize_shot_task(
    plan_path: Path, shot_index: int, workdir: Path, settings: RunSettings, gpu_slot: bool = True
) -> dict[str, Any]:
    """Colorize shot ``shot_index`` of the plan at ``plan_path`` into ``workdir/segments/``
    (``gpu_slot``: see :func:`compute_shot`); returns its :class:`ShotOutcome` as a dict (JSON:
    it is the cached result)."""
    return compute_shot(load_plan(plan_path), shot_index, workdir, settings, gpu_slot=gpu_slot).to_dict()


def shot_task(plan_path: Path, shot_index: int, workdir: Path, settings: RunSettings) -> Task:
    """:func:`colorize_shot_task` set up for this work folder: result records in
    ``workdir/prefect-cache``, and the cache refreshed when the shot's segment is missing (a
    cached result naming a deleted file is not trusted)."""
    plan = load_plan(plan_path)
    grey = plan.shots[shot_index].source == "grey"
    missing = not grey and not segment_path(workdir, plan, shot_index, settings).exists()
    return colorize_shot_task.with_options(result_storage=Path(workdir).resolve() / CACHE_DIR, refresh_cache=missing)


def outcome_path(workdir: Path, shot_index: int) -> Path:
    """Where the ``colorize-shot`` flow leaves shot ``shot_index``'s :class:`ShotOutcome`."""
    return Path(workdir) / OUTCOMES_DIR / f"shot-{shot_index:04d}.json"


def write_outcome(workdir: Path, outcome: ShotOutcome) -> Path:
    """Write ``outcome`` as JSON (atomically, replacing an older one); returns its path."""
    dest = outcome_path(workdir, outcome.index)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(dest, force=True) as tmp:
        tmp.write_text(json.dumps(outcome.to_dict(), indent=2))
    return dest


def read_outcome(workdir: Path, shot_index: int, key: str) -> ShotOutcome:
    """The outcome a ``colorize-shot`` flow run left for shot ``shot_index``; raises
    :class:`PostprodError` if there is none for content ``key`` or its segment is gone."""
    path = outcome_path(workdir, shot_index)
    if not path.is_file():
        raise PostprodError(path, f"shot {shot_index} finished but left no outcome")
    outcome = ShotOutcome.from_dict(json.loads(path.read_text()))
    if outcome.key != key:
        raise PostprodError(path, f"outcome is for content key {outcome.key}, expected {key}")
    segment = outcome.segment_file(workdir)
    if segment is not None and not segment.is_file():
        raise PostprodError(segment, f"segment of shot {shot_index} is missing")
    return outcome


def outcome_of(state: State) -> ShotOutcome:
    """The :class:`ShotOutcome` of a completed shot task's final state, ``cached`` set from it;
    raises what the task raised if it failed."""
    return replace(ShotOutcome.from_dict(state.result()), cached=state.name == "Cached")


def one_line(err: BaseException | str) -> str:
    """The first line of an error (``Type: message``) or of a text."""
    text = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    return (text.strip().splitlines() or [""])[0]


@flow(name="colorize-shot")
def colorize_shot_flow(
    plan_path: Path, shots: list[int], workdir: Path, settings: RunSettings = RunSettings()
) -> list[dict[str, Any]]:
    """Shots ``shots`` of the plan, in order, as one flow run: a farm's unit of work, N GPU
    workers pulling them from the ``gpu`` pool. Several shots per run pay the start of one
    flow-run process (Prefect, torch and the pipeline imported, the API calls of a flow run)
    for all of them. Each shot is its own cached task run holding one GPU slot while it
    computes, and leaves its :class:`ShotOutcome` in ``workdir/outcomes/`` as soon as it is done,
    so a run lost halfway keeps the shots it finished. A failed shot does not stop the others;
    the run then fails, naming the failed shots. The plan and work folder must be on storage all
    workers share (same path everywhere)."""
    ensure_gpu_limit()
    plan_path, workdir = Path(plan_path), Path(workdir)
    done: list[dict[str, Any]] = []
    failures: dict[int, str] = {}
    for i in shots:
        # called from sync code: the task returns its final State itself
        state = cast(
            State, shot_task(plan_path, i, workdir, settings)(plan_path, i, workdir, settings, return_state=True)
        )
        try:
            outcome = outcome_of(state)
        except Exception as err:  # the shot's own error, after its retries: the other shots go on
            failures[i] = one_line(err)
            continue
        write_outcome(workdir, outcome)
        done.append(outcome.to_dict())
    if failures:
        raise PostprodError(workdir, "; ".join(f"shot {i}: {e}" for i, e in failures.items()))
    return done
