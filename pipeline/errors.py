"""User-facing errors: one line that names the file and the problem."""

from __future__ import annotations

from os import PathLike


class PostprodError(Exception):
    """A problem with an input or output that the user can fix.

    The CLI prints ``str(err)`` on one line and exits non-zero, without a traceback
    unless ``--debug`` is given.
    """

    def __init__(self, path: str | PathLike[str] | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
