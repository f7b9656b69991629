"""Progress of a run's stages on the terminal: frames done, frames/s, ETA."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class ProgressBar:
    """A stage's progress on stderr (frames and frames/s), silent when stderr is not a terminal."""

    def __init__(self, label: str, total: int) -> None:
        import click

        self._bar: Any = (
            click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True, show_eta=True)
            if sys.stderr.isatty()
            else None
        )
        if self._bar is not None:
            self._bar.__enter__()

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


Progress = Callable[[str, int], ProgressBar]
"""``progress(label, total)``: a new bar for a stage of ``total`` frames."""
