"""Safe outputs: write under a temporary name beside the destination, rename on success."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import PostprodError


def check_writable_destination(dest: Path, *, force: bool = False, sources: tuple[Path, ...] = ()) -> None:
    """Raise :class:`PostprodError` unless ``dest`` may be created (or replaced with ``force``)."""
    dest = Path(dest)
    for src in sources:
        if src.exists() and dest.exists() and dest.resolve() == Path(src).resolve():
            raise PostprodError(dest, "output would overwrite the source; choose another output path")
    if dest.exists() and not force:
        raise PostprodError(dest, "output already exists (use --force to replace it)")
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.is_dir():
        raise PostprodError(dest, f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise PostprodError(dest, f"output folder {parent} is not writable")


@contextmanager
def atomic_output(
    dest: Path, *, force: bool = False, is_dir: bool = False, sources: tuple[Path, ...] = ()
) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; move it to ``dest`` only if the block succeeds.

    The temporary name keeps ``dest``'s suffix so muxers still guess the format from it.
    On any exception the partial output is deleted and ``dest`` is left as it was.
    """
    dest = Path(dest)
    check_writable_destination(dest, force=force, sources=sources)
    tmp = dest.with_name(f".{dest.stem}.partial-{os.getpid()}{dest.suffix}")
    if is_dir:
        tmp.mkdir()
    try:
        yield tmp
        if dest.exists() and force:
            shutil.rmtree(dest) if dest.is_dir() and not dest.is_symlink() else dest.unlink()
        os.replace(tmp, dest)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise
