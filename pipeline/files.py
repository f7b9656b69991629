"""Safe outputs: the one rule for what postprod may create, replace or delete, and atomic writes.

Every output of every command goes through :func:`check_destination` (before any work) and
:func:`atomic_output` (which checks again, writes under a temporary name beside the destination
and renames on success). The rule:

- **Created**: a destination that does not exist, in an existing, writable folder.
- **Replaced** (only with ``force``): a *regular file* (``kind="file"``: a reel, an image, a
  JSON/CSV/EDL file), or an *image sequence postprod wrote* (``kind="sequence"``): a folder
  ``<name>/`` holding its sidecar ``<name>.json`` (keys ``pattern``, e.g. ``<name>.%06d.png``,
  ``frames`` and ``audio``: a file name or null, see :mod:`pipeline.media.encode`) and nothing
  but the files that sidecar names. Replacing a sequence deletes exactly those files, then the
  folder, which is then empty.
- **Never replaced or deleted**, with or without ``force``: an input of the command (the reel,
  the refs folder, reference images, masks, the work folder), a folder that holds one, a path
  inside an input folder; a folder holding any file postprod did not write; a symbolic link
  (a ``kind="folder"`` destination, written into and kept, may be a link to a folder);
  ``.``, ``..``, the current folder or one above it, ``/``, the home folder; an empty name.
  Paths are compared after resolving symbolic links and ``..`` (``victim/../victim``, a link
  to the source's folder are the same folder).

A refusal is a :class:`~pipeline.errors.PostprodError` naming the path and why (the CLI: one
line, exit code 2). A temporary is named ``.<stem>.partial-<pid>-<host><suffix>``
(:func:`partial_name`); one left by a process of this host that no longer runs (killed with
SIGKILL, a crashed machine) is removed by the next write into that folder
(:func:`remove_stale_partials`). A full file system (``ENOSPC``, or ``EDQUOT``: quota) while
writing is reported as one line naming the file system and the file; nothing is left at the
destination.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pipeline.errors import PostprodError

OutputKind = Literal["file", "sequence", "folder"]
"""What a destination is: ``file`` a single file; ``sequence`` an image-sequence folder (replaced
as a whole); ``folder`` a folder postprod writes its own named files into and keeps (the
``train`` checkpoint folder)."""

_FULL = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded"}


def host_tag() -> str:
    """8 hex digits naming this machine (sha256 of its host name), part of temporary names so that
    hosts sharing a folder never take each other's temporaries for stale ones."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def partial_name(dest: Path) -> Path:
    """The temporary beside ``dest`` this process writes: ``.<stem>.partial-<pid>-<host><suffix>``
    (the suffix kept so muxers still guess the format from it)."""
    dest = Path(dest)
    return dest.with_name(f".{dest.stem}.partial-{os.getpid()}-{host_tag()}{dest.suffix}")


_PARTIAL = re.compile(r"\..*\.partial-(?P<pid>[0-9]+)-(?P<host>[0-9a-f]{8})(?:\.[^.]*)?")


def pid_alive(pid: int) -> bool:
    """True if process ``pid`` runs on this machine (or cannot be signalled: someone else's)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(folder: Path) -> list[Path]:
    """Delete the temporaries (:func:`partial_name`) in ``folder`` left by processes of this host
    that no longer run; returns what was removed. Nothing else is touched: not other names, not
    temporaries of running processes or of other hosts."""
    removed: list[Path] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    tag = host_tag()
    for name in names:
        m = _PARTIAL.fullmatch(name)
        if m is None or m["host"] != tag or pid_alive(int(m["pid"])):
            continue
        path = Path(folder) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def sequence_files(folder: Path) -> frozenset[str] | None:
    """The names of the files of the image sequence postprod wrote as ``folder`` (its sidecar
    ``<folder name>.json``, the frames its ``pattern`` and ``frames`` name, its ``audio``); None
    when ``folder`` is not one (no sidecar, or one that is not postprod's)."""
    folder = Path(folder)
    sidecar = folder / f"{folder.name}.json"
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    pattern, frames, audio = meta.get("pattern"), meta.get("frames"), meta.get("audio")
    if not (
        isinstance(pattern, str)
        and re.fullmatch(re.escape(folder.name) + r"\.%06d\.(?:png|tif)", pattern)
        and isinstance(frames, int)
        and frames >= 0
        and (audio is None or audio == f"{folder.name}.mka")
    ):
        return None
    names = {sidecar.name, *(pattern % i for i in range(frames))}
    if audio:
        names.add(audio)
    return frozenset(names)


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _inside(path: Path, folder: Path) -> bool:
    return path != folder and path.is_relative_to(folder)


def _refuse_special(dest: Path, real: Path) -> None:
    """Names that are never an output: empty, ``.``/``..``, ``/``, home, the current folder or one above it."""
    if str(dest) in ("", "."):
        raise PostprodError(dest, "is the current folder, not an output name; give a new file or folder name")
    if real == Path(real.anchor):
        raise PostprodError(dest, "is the root folder, not an output name")
    if real == _real(Path.home()):
        raise PostprodError(dest, "is the home folder, not an output name")
    cwd = _real(Path.cwd())
    if real == cwd:
        raise PostprodError(dest, "is the current folder, not an output name; give a new file or folder name")
    if _inside(cwd, real):
        raise PostprodError(dest, f"is {real}, a folder holding the current one, not an output name")


def _refuse_inputs(dest: Path, real: Path, inputs: Iterable[Path | None], kind: OutputKind) -> None:
    """An input of the command, a folder holding one, or a path inside an input folder."""
    for inp in inputs:
        if inp is None or not str(inp):
            continue
        inp_real = _real(Path(inp))
        if real == inp_real:
            if kind == "folder":
                raise PostprodError(dest, f"is {inp}, an input of this command; choose another folder")
            alias = "" if Path(inp) == dest else f" ({inp})"
            raise PostprodError(
                dest, f"is an input of this command{alias}: the output would overwrite it; choose another path"
            )
        if _inside(inp_real, real):
            raise PostprodError(
                dest, f"is a folder holding {inp}, an input of this command; postprod never replaces it"
            )
        if _inside(real, inp_real) and inp_real.is_dir():
            raise PostprodError(dest, f"is inside {inp}, an input folder of this command; choose a path outside it")


def _check_replaceable(dest: Path, kind: OutputKind) -> None:
    """``dest`` exists and ``force`` is given: refuse what postprod may not replace."""
    if dest.is_symlink():
        raise PostprodError(
            dest,
            f"is a symbolic link (to {os.readlink(dest)}); postprod replaces only files it wrote: remove it "
            "or choose another path",
        )
    if kind == "file":
        if dest.is_dir():
            raise PostprodError(dest, "is a folder; --force replaces only a single output file")
        if not dest.is_file():
            raise PostprodError(dest, "is not a regular file; postprod replaces only a single output file")
    elif kind == "sequence":
        if not dest.is_dir():
            raise PostprodError(dest, "is a file; an image sequence is a folder: choose another path")
        members = sequence_files(dest)
        present = sorted(os.listdir(dest))
        foreign = [n for n in present if members is None or n not in members or not (dest / n).is_file()]
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            what = (
                "is not an image sequence postprod wrote" if members is None else "holds files postprod did not write"
            )
            raise PostprodError(dest, f"{what} ({shown}); --force replaces only postprod's own sequence folders")


def check_destination(
    dest: Path, *, force: bool = False, inputs: Iterable[Path | None] = (), kind: OutputKind = "file"
) -> None:
    """Raise :class:`PostprodError` unless ``dest`` may be created, or replaced with ``force``,
    under the module's rule. ``inputs``: every file and folder the command reads (None entries
    are skipped). ``kind="folder"``: an existing folder is fine without ``force`` (files are
    written into it by name), a missing one is created with its parents."""
    dest = Path(dest)
    real = _real(dest)
    _refuse_special(dest, real)
    _refuse_inputs(dest, real, inputs, kind)
    if os.path.lexists(dest):
        if kind == "folder":  # kept and written into (a link to a folder is fine): it only has to be one
            if not dest.is_dir():
                raise PostprodError(dest, "is a file, not a folder")
        elif not force:
            raise PostprodError(dest, "output already exists (use --force to replace it)")
        else:
            _check_replaceable(dest, kind)
    parent = dest.parent
    if kind == "folder":  # created with its parents: the nearest existing one must be a folder
        while not os.path.lexists(parent) and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise PostprodError(dest, f"{parent} is not a folder")
    elif not parent.is_dir():
        raise PostprodError(dest, f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise PostprodError(dest, f"output folder {parent} is not writable")


def mount_point(path: Path) -> Path:
    """The mount point of the file system holding ``path`` (its nearest existing folder)."""
    p = _real(Path(path))
    while not p.exists():
        p = p.parent
    while not os.path.ismount(p):
        p = p.parent
    return p


def full_disk_error(err: OSError, dest: Path) -> PostprodError | None:
    """The one-line error for a full file system (``ENOSPC``) or quota (``EDQUOT``) met while
    writing ``dest``; None for any other error."""
    what = _FULL.get(err.errno or 0)
    if what is None:
        return None
    return PostprodError(None, f"{what} on {mount_point(Path(dest).parent)} while writing {dest}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink()


def _replace(tmp: Path, dest: Path, kind: OutputKind) -> None:
    """Move the finished ``tmp`` to ``dest``; an existing sequence ``dest`` loses only its own files."""
    if kind == "sequence" and dest.is_dir() and not dest.is_symlink():
        _check_replaceable(dest, kind)  # again: the folder may have changed while we worked
        for name in sequence_files(dest) or ():
            (dest / name).unlink(missing_ok=True)
        try:
            dest.rmdir()
        except OSError as err:
            raise PostprodError(
                dest,
                f"a file appeared in it while it was being replaced ({err.strerror}); the new one was not moved in",
            ) from err
    os.replace(tmp, dest)


@contextmanager
def atomic_output(
    dest: Path, *, force: bool = False, kind: OutputKind = "file", inputs: Iterable[Path | None] = ()
) -> Iterator[Path]:
    """Yield a temporary path beside ``dest`` (a folder for ``kind="sequence"``); move it to
    ``dest`` only if the block succeeds.

    Checks ``dest`` first (:func:`check_destination`) and removes stale temporaries of the
    folder (:func:`remove_stale_partials`). On any exception (an interruption too) the
    temporary is deleted and ``dest`` is left as it was; a full disk becomes the one-line
    :func:`full_disk_error`.
    """
    dest = Path(dest)
    inputs = tuple(inputs)
    check_destination(dest, force=force, inputs=inputs, kind=kind)
    remove_stale_partials(dest.parent)
    tmp = partial_name(dest)
    try:
        if kind == "sequence":
            tmp.mkdir()
        yield tmp
        check_destination(dest, force=force, inputs=inputs, kind=kind)
        _replace(tmp, dest, kind)
    except OSError as err:
        _remove(tmp)
        full = full_disk_error(err, dest)
        if full is not None:
            raise full from err
        raise
    except BaseException:
        _remove(tmp)
        raise
