"""A run's progress on stderr (:class:`pipeline.progress.Progress`): one reel-level line on a
terminal, one log line per shot otherwise.

On a terminal the line is redrawn (at most 4 times a second) as the frames are coloured::

    shot 3/12 (propagating)  240/1200 frames  4.1 frames/s  ETA 3m55s

frames/s and the ETA are over the reel so far (keyframe colorization and writing included,
so the ETA is the time left, not a best case). Without a terminal (a log, a farm job's
output) each shot gives one line when it is written, and the assembly one at its end::

    postprod: shot 3: 120 frames in 29.1 s (4.1 frames/s)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def _duration(seconds: float) -> str:
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class ReelProgress:
    """:class:`pipeline.progress.Progress` drawn on ``stream`` (default stderr); ``tty`` (default:
    whether the stream is a terminal) chooses the redrawn line or the log lines; ``clock``
    gives seconds (tests pass a fake one)."""

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
        self._shot: tuple[int, int, float] | None = None  # index, frames, start time
        self._shot_count = 0
        self._steps = 0
        self._state = ""
        self._drawn = 0.0
        self._assembly: tuple[int, int, float] | None = None  # frames, written, start

    # --- Progress -----------------------------------------------------------------------

    def reel(self, shots: int, frames: int) -> None:
        self.shots, self.frames = shots, frames
        self.started = self.clock()

    def shot(self, index: int, frames: int) -> None:
        if self.started is None:
            self.started = self.clock()
        self._shot = (index, frames, self.clock())
        self._shot_count += 1
        self._steps = 0
        self._state = "keyframes"
        self._draw(force=True)

    def step(self, done: int, total: int) -> None:
        self._steps = done
        self._state = "propagating"
        self._draw(force=self._steps == total)

    def shot_done(self, index: int) -> None:
        if self._shot is None:
            return
        _, frames, start = self._shot
        self.done_frames += frames
        self._shot = None
        seconds = self.clock() - start
        if self.tty:
            self._draw(force=True)
        else:
            self._line(f"shot {index}: {frames} frames in {seconds:.1f} s ({frames / max(seconds, 1e-9):.1f} frames/s)")

    def assemble(self, frames: int) -> None:
        self._assembly = (frames, 0, self.clock())
        self._state = "assembling"
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
        return self.done_frames + (self._steps / 2 if self._shot is not None else 0.0)

    def status(self) -> str:
        """The terminal line."""
        now = self.clock()
        if self._assembly is not None:
            total, written, start = self._assembly
            rate = written / max(now - start, 1e-9)
            return f"assembling  {written}/{total} frames  {rate:.1f} frames/s"
        done = self.coloured()
        where = f"shot {self._shot_count}/{self.shots} ({self._state})" if self._shot is not None else "between shots"
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
