"""How many shots one process colours at once, and the threads each gets.

The shots of a wave (``pipeline.run.shot_waves``) do not depend on one another, so a process
may colour several at once, each in its own thread, sharing the loaded models. On a CPU this is
how the cores are best used: the colour work of a frame is many small torch and OpenCV
operations, and one shot per core at one thread each spends less CPU time than one shot with
every core splitting each operation (figures in bench/README.md, "Reels end to end"). On a GPU
one shot at a time is the default: a shot keeps the device busy, and two would share its memory.

:func:`shot_jobs` decides; :func:`compute_threads` applies the thread counts for the duration
of a run (torch's intra-op threads and OpenCV's are process-wide); :func:`one_torch_thread`
lowers torch's to one around work that runs faster so on a CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MAX_AUTO_JOBS = 4
"""Shots at once on a CPU when the number is not given: each holds a shot's working state
(a few hundred MB at 854x480), so more would cost memory for little gain."""


@dataclass(frozen=True)
class Jobs:
    """``shots`` coloured at once, ``threads`` torch/OpenCV threads for the process (shared by
    the shots in flight, so ``shots`` x per-shot use stays within the machine's cores)."""

    shots: int
    threads: int


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, as a container or ``taskset`` limits it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def shot_jobs(device: torch.device, jobs: int | None = None, cores: int | None = None) -> Jobs:
    """Shots at once and threads on ``device`` for ``jobs`` (None: automatic) on ``cores`` cores
    (default :func:`available_cores`).

    CPU: ``jobs`` shots (default: one per core, at most :data:`MAX_AUTO_JOBS`), the cores
    divided among them (at least one thread each). GPU: ``jobs`` shots (default 1) on the
    device, every core for the host-side work."""
    if jobs is not None and (not isinstance(jobs, int) or jobs < 1):
        raise ValueError(f"jobs must be a whole number >= 1, got {jobs!r}")
    cores = available_cores() if cores is None else cores
    if device.type != "cpu":
        return Jobs(shots=jobs or 1, threads=cores)
    shots = jobs or min(cores, MAX_AUTO_JOBS)
    return Jobs(shots=shots, threads=max(1, cores // shots))


@contextmanager
def compute_threads(jobs: Jobs) -> Iterator[None]:
    """torch's intra-op threads and OpenCV's set to ``jobs.threads`` inside the block, restored
    after it."""
    import cv2
    import torch

    torch_before, cv_before = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(jobs.threads)
    cv2.setNumThreads(jobs.threads)
    try:
        yield
    finally:
        torch.set_num_threads(torch_before)
        cv2.setNumThreads(cv_before)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch at one intra-op thread inside the block, in the calling thread (full-resolution
    chroma on a CPU: many small operations on large planes, faster on one thread than split,
    bench/README.md). A thread that has set its own count (:func:`pin_threads`) keeps it while
    another is in this block."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def pin_threads(threads: int) -> None:
    """Give the calling thread its own torch thread count (a thread that never set one follows
    the last count set by any thread): the initializer of the threads that colour shots."""
    import torch

    torch.set_num_threads(threads)


__all__ = [
    "MAX_AUTO_JOBS",
    "Jobs",
    "available_cores",
    "compute_threads",
    "one_torch_thread",
    "pin_threads",
    "shot_jobs",
]
