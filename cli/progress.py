"""A run's progress on stderr (:class:`pipeline.progress.Progress`): one reel-level line on a
terminal, one log line per shot otherwise.

On a terminal the line is redrawn (at most 4 times a second) as the frames are coloured::

    shot 3/12 (propagating)  240/1200 frames  4.1 frames/s  ETA 3m55s
    shots 3-4/12 (propagating)  240/1200 frames  4.1 frames/s  ETA 3m55s   (two in flight)

frames/s and the ETA are over the reel so far (keyframe colorization and writing included,
so the ETA is the time left, not a best case). Without a terminal (a log, a farm job's
output) each shot gives one line when it is written, and the assembly one at its end::

    postprod: shot 3: 120 frames in 29.1 s (4.1 frames/s)
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO


def _duration(seconds: float) -> str:
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


@dataclass
class _InFlight:
    """A shot being coloured: its number in the run (1, 2, ...), frames, start time, steps done."""

    number: int
    frames: int
    start: float
    steps: int = 0
    state: str = "keyframes"


class ReelProgress:
    """:class:`pipeline.progress.Progress` drawn on ``stream`` (default stderr); ``tty`` (default:
    whether the stream is a terminal) chooses the redrawn line or the log lines; ``clock``
    gives seconds (tests pass a fake one). Safe to call from the threads of shots coloured at
    once."""

    def __init__(
        self, stream: TextIO | None = None, *, tty: bool | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.clock = clock
        self.shots = 0
        self.frames = 0
        self.done_frames = 0.0  # finished shots' frames
        self.started: float | None = None
        self._shots: dict[int, _InFlight] = {}  # shot index -> in flight
        self._shot_count = 0
        self._lock = threading.RLock()
        self._drawn = 0.0
        self._assembly: tuple[int, int, float] | None = None  # frames, written, start

    # --- Progress -----------------------------------------------------------------------

    def reel(self, shots: int, frames: int) -> None:
        self.shots, self.frames = shots, frames
        self.started = self.clock()

    def shot(self, index: int, frames: int) -> None:
        with self._lock:
            if self.started is None:
                self.started = self.clock()
            self._shot_count += 1
            self._shots[index] = _InFlight(self._shot_count, frames, self.clock())
            self._draw(force=True)

    def step(self, index: int, done: int, total: int) -> None:
        with self._lock:
            shot = self._shots.get(index)
            if shot is None:
                return
            shot.steps, shot.state = done, "propagating"
            self._draw(force=done == total)

    def shot_done(self, index: int) -> None:
        with self._lock:
            shot = self._shots.pop(index, None)
            if shot is None:
                return
            self.done_frames += shot.frames
            seconds = self.clock() - shot.start
            if self.tty:
                self._draw(force=True)
            else:
                rate = shot.frames / max(seconds, 1e-9)
                self._line(f"shot {index}: {shot.frames} frames in {seconds:.1f} s ({rate:.1f} frames/s)")

    def assemble(self, frames: int) -> None:
        self._assembly = (frames, 0, self.clock())
        self._draw(force=True)

    def assembled(self, frames: int) -> None:
        if self._assembly is None:
            return
        total, written, start = self._assembly
        self._assembly = (total, written + frames, start)
        self._draw(force=written + frames == total)

    def done(self) -> None:
        if self._assembly is not None:
            total, _, start = self._assembly
            seconds = self.clock() - start
            if self.tty:
                self._draw(force=True)
                self.stream.write("\n")
                self.stream.flush()
            else:
                self._line(f"assembled {total} frames in {seconds:.1f} s")

    # --- drawing ------------------------------------------------------------------------

    def coloured(self) -> float:
        """Frames coloured so far: finished shots, plus half a frame per propagation step."""
        with self._lock:
            return self.done_frames + sum(s.steps for s in self._shots.values()) / 2

    def status(self) -> str:
        """The terminal line."""
        now = self.clock()
        if self._assembly is not None:
            total, written, start = self._assembly
            rate = written / max(now - start, 1e-9)
            return f"assembling  {written}/{total} frames  {rate:.1f} frames/s"
        done = self.coloured()
        with self._lock:
            flying = sorted(self._shots.values(), key=lambda s: s.number)
        if not flying:
            where = "between shots"
        else:
            numbers = f"{flying[0].number}" if len(flying) == 1 else f"{flying[0].number}-{flying[-1].number}"
            state = "propagating" if any(s.state == "propagating" for s in flying) else "keyframes"
            where = f"shot{'s' if len(flying) > 1 else ''} {numbers}/{self.shots} ({state})"
        text = f"{where}  {int(done)}/{self.frames} frames"
        elapsed = now - (self.started if self.started is not None else now)
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            text += f"  {rate:.1f} frames/s  ETA {_duration((self.frames - done) / rate)}"
        return text

    def _draw(self, *, force: bool = False) -> None:
        if not self.tty:
            return
        now = self.clock()
        if not force and now - self._drawn < 0.25:
            return
        self._drawn = now
        self.stream.write("\r\x1b[K" + self.status())
        self.stream.flush()

    def _line(self, text: str) -> None:
        self.stream.write(f"postprod: {text}\n")
        self.stream.flush()
