"""What a run reports while it works: the :class:`Progress` protocol the stages call.

``pipeline.run`` calls it; drawing it (a terminal bar, log lines) is the CLI's business
(``cli.progress``). Units are frames of the reel; a shot's propagation reports each step of
each of its two passes (:data:`pipeline.propagate.StepCallback`: ``total`` = 2 x the shot's
length), so half a frame a step. Several shots may be in flight at once
(``pipeline.run.colorize_wave``), each reporting from its own thread: a receiver that keeps
state must hold a lock.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Receiver of a run's progress, in the order the stages call it."""

    def reel(self, shots: int, frames: int) -> None:
        """The run will colour ``shots`` shots, ``frames`` frames in all (finished shots excluded)."""

    def shot(self, index: int, frames: int) -> None:
        """Shot ``index`` (``frames`` long) starts: its keyframes are colorized before the first step."""

    def step(self, index: int, done: int, total: int) -> None:
        """Shot ``index``'s propagation: ``done`` of ``total`` steps (two passes of its frames)."""

    def shot_done(self, index: int) -> None:
        """Shot ``index`` is written (its segment is complete)."""

    def assemble(self, frames: int) -> None:
        """The output is being assembled from the segments: ``frames`` frames."""

    def assembled(self, frames: int) -> None:
        """``frames`` more frames of the output are written."""

    def done(self) -> None:
        """The run has ended (the output is in place)."""


class Silent:
    """A :class:`Progress` that shows nothing (the default of the stages, and of farm workers)."""

    def reel(self, shots: int, frames: int) -> None:
        del shots, frames

    def shot(self, index: int, frames: int) -> None:
        del index, frames

    def step(self, index: int, done: int, total: int) -> None:
        del index, done, total

    def shot_done(self, index: int) -> None:
        del index

    def assemble(self, frames: int) -> None:
        del frames

    def assembled(self, frames: int) -> None:
        del frames

    def done(self) -> None:
        pass


SILENT = Silent()
