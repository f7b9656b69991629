"""The work folder of a run: what is in it, what each file's name means, when a result is reused.

Layout of ``<workdir>/`` (one per reel content, :func:`default_workdir`)::

    plan.json                 the keyframe plan (:func:`pipeline.keyframes.write_plan`)
    shots.json                the shots (:func:`pipeline.shots.write_json`)
    lightness/<reel>-<w>x<h>-f32.npy
                              the reel's grey at working resolution, (frames, h, w) float32 in [0, 1]
                              (:func:`pipeline.color.work_grey`), from prepare's one decode pass
                              (:func:`lightness_path`); colorization reads it instead of decoding
    segments/shot-<i>-<key>.mkv|mov
                              shot i coloured: the source's luma codes + chroma in the output
                              codec when that is intra-only (:data:`~pipeline.media.encode.REMUX_CODECS`,
                              joined by remuxing), else lossless FFV1 (:func:`segment_codec`);
                              ``key`` is :func:`shot_key`, so the segment *is* the cache
    confidence/shot-<i>-<key>.npz
                              where shot i's colour is guessed, per frame (``pipeline.confidence``)
    last-run.json             the last run's command, settings and shots redone / reused
    review.html               the review page of the last run (``pipeline.review``)
    contact-sheet.png         first keyframe of each shot, before / after (Prefect runs, ``pipeline.review``)
    suggested/                grey frames suggested for an artist to colour (``pipeline.suggest``)
    run.lock                  held by the run using the folder (:func:`lock_workdir`)

A segment is written atomically, so one that exists is complete and is reused as it is; one
whose inputs changed has another key, another name, and is recomputed. The key covers the
reel's content, the shot's frames and keyframes, every reference image and mask the shot uses, by
content, not by name or folder (and the keys of the shots it borrows colour from), the model weights,
the settings that change pixels, the segment's codec and :data:`COLOUR_VERSION`.

Hashes are memoised per process by the file's identity (path, size, modification time), so
asking for a key again, or for the keys of many shots of one reel, reads each file once.

One run at a time: ``run.lock`` is held (``flock``) by the run using the folder and names it
(host, process id, start time); a second run on the same folder refuses, naming the first. The
kernel releases the lock when its process ends however it ends, so a killed run never leaves
the folder locked; on a file system without ``flock`` the record decides, and a record left by
a process of this host that no longer runs is taken over. The file stays (empty when free).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from pipeline.errors import PostprodError
from pipeline.files import pid_alive
from pipeline.keyframes import Plan, read_plan
from pipeline.media.encode import CODECS, REMUX_CODECS, CodecName
from pipeline.settings import RunSettings

PLAN_NAME = "plan.json"
LOCK_NAME = "run.lock"
SHOTS_NAME = "shots.json"
SEGMENTS = "segments"
LIGHTNESS = "lightness"
CONFIDENCE = "confidence"
LAST_RUN_NAME = "last-run.json"
REVIEW_NAME = "review.html"
SUGGESTED = "suggested"
COLOUR_VERSION = 4
"""Part of every shot key: raised with any change to the colour maths that changes pixels, so a
work folder left by an older postprod is recomputed, not reused."""
WORK_ROOT = Path("postprod-work")
"""Where :func:`default_workdir` puts work folders, relative to the current folder."""


def plan_path(workdir: Path) -> Path:
    """``<workdir>/plan.json``."""
    return Path(workdir) / PLAN_NAME


def load_plan(path: Path) -> Plan:
    """The plan at ``path`` (``plan.json``, or a work folder holding one); parsed once per
    process while the file is unchanged. :class:`~pipeline.errors.PostprodError` if it is not one."""
    path = Path(path)
    if path.is_dir():
        path = plan_path(path)
    return _load_plan(path.resolve(), *_identity(path))


@lru_cache(maxsize=8)
def _load_plan(path: Path, size: int, mtime_ns: int) -> Plan:
    del size, mtime_ns  # part of the cache key only
    return read_plan(path)


def _identity(path: Path) -> tuple[int, int]:
    """(size, mtime_ns) of ``path``; (-1, -1) when it does not exist (the reader reports it)."""
    try:
        st = os.stat(path)
    except OSError:
        return -1, -1
    return st.st_size, st.st_mtime_ns


def default_workdir(reel: Path) -> Path:
    """``./postprod-work/<reel stem>-<fingerprint[:12]>``: one folder per reel content."""
    return WORK_ROOT / f"{Path(reel).stem}-{reel_fingerprint(reel)[:12]}"


def reel_fingerprint(reel: Path) -> str:
    """sha256 hex of the reel's size and its first and last MiB: cheap, and changes with any
    re-export. Memoised per process while the file is unchanged."""
    path = Path(reel).resolve()
    return _reel_fingerprint(path, *_identity(path))


@lru_cache(maxsize=64)
def _reel_fingerprint(reel: Path, size: int, mtime_ns: int) -> str:
    del mtime_ns
    h = hashlib.sha256(str(size).encode())
    with reel.open("rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), 2)
            h.update(f.read())
    return h.hexdigest()


def file_hash(path: Path) -> str:
    """sha256 hex of a whole file; memoised per process while the file is unchanged."""
    p = Path(path).resolve()
    return _file_hash(p, *_identity(p))


@lru_cache(maxsize=4096)
def _file_hash(path: Path, size: int, mtime_ns: int) -> str:
    del size, mtime_ns
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=1)
def weights_hash() -> str:
    """sha256 over the bundled weights files (names and contents), once per process."""
    from model.weights import WEIGHTS_DIR

    h = hashlib.sha256()
    for p in sorted(WEIGHTS_DIR.glob("*.pt")):
        h.update(p.name.encode())
        h.update(file_hash(p).encode())
    return h.hexdigest()


def shot_key(plan: Plan, shot_index: int, settings: RunSettings) -> str:
    """A 16-hex content key for one shot's result.

    Covers the reel's fingerprint, the shot's frame range and keyframes, the hashes of every
    reference image and mask it uses, the keys of the neighbouring shots it borrows colour
    from, the model weights, the settings that change pixels (:meth:`RunSettings.pixel_settings`:
    all but the output codec), the segment's codec (:func:`segment_codec`) and :data:`COLOUR_VERSION`.
    """
    shot = plan.shots[shot_index]
    h = hashlib.sha256(f"colour {COLOUR_VERSION}".encode())
    h.update(reel_fingerprint(plan.reel).encode())
    h.update(json.dumps(_by_content(shot.to_dict()), sort_keys=True).encode())
    for n in shot.neighbours:
        h.update(shot_key(plan, n, settings).encode())
    h.update(weights_hash().encode())
    h.update(json.dumps(settings.pixel_settings(), sort_keys=True).encode())
    h.update(segment_codec(settings.codec).encode())
    return h.hexdigest()[:16]


def segment_codec(codec: CodecName) -> CodecName:
    """The codec a shot's segment is written in for output ``codec``: the output codec itself
    when segments are joined by remuxing (intra-only: ProRes, FFV1), else lossless FFV1, which
    :func:`pipeline.run.assemble` re-encodes (H.264's long GOP, image sequences)."""
    return codec if codec in REMUX_CODECS else "ffv1"


def _by_content(shot: dict) -> dict:
    """A shot plan's dict with every reference file (image, mask, refmask) replaced by its hash."""
    keys = []
    for k in shot["keyframes"]:
        objects = [{n: v if n == "name" else file_hash(Path(v)) for n, v in o.items()} for o in k["objects"]]
        image = None if k["image"] is None else file_hash(Path(k["image"]))
        keys.append({**k, "image": image, "objects": objects})
    return {**shot, "keyframes": keys}


def segment_path(workdir: Path, plan: Plan, shot_index: int, settings: RunSettings) -> Path:
    """``<workdir>/segments/shot-<i:04d>-<shot_key>.mkv|mov``: where shot ``shot_index``'s result
    lives, in :func:`segment_codec`'s codec (the key covers it; the suffix is its container's)."""
    suffix = CODECS[segment_codec(settings.codec)].suffixes[0]
    return Path(workdir) / SEGMENTS / f"shot-{shot_index:04d}-{shot_key(plan, shot_index, settings)}{suffix}"


def lightness_path(workdir: Path, reel: Path, size: tuple[int, int]) -> Path:
    """``<workdir>/lightness/<fingerprint[:16]>-<w>x<h>-f32.npy``: the reel's grey at working
    resolution ``size`` (h, w), written once by :func:`pipeline.run.prepare_run`."""
    h, w = size
    return Path(workdir) / LIGHTNESS / f"{reel_fingerprint(reel)[:16]}-{w}x{h}-f32.npy"


# --- one run at a time ---------------------------------------------------------------------

_NO_FLOCK = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})


def _owner_record(fd: int) -> dict:
    """The run recorded in an open ``run.lock`` ({} when empty or unreadable)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(owner: dict) -> str:
    started = owner.get("started")
    since = f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}" if started else ""
    return f"process {owner.get('pid', '?')} on {owner.get('host', '?')}{since}"


def _record_alive(owner: dict) -> bool:
    """Whether the recorded run may still be running: another host's always may."""
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    return owner.get("host") != socket.gethostname() or pid_alive(pid)


def _try_lock(fd: int) -> str | None:
    """Take the lock on ``fd``; None when taken, else the running owner's description."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _describe(_owner_record(fd))
    except OSError as err:
        if err.errno not in _NO_FLOCK:
            raise
        owner = _owner_record(fd)  # no flock on this file system: the record decides
        if owner.get("pid") != os.getpid() and _record_alive(owner):
            return _describe(owner)
    return None


def workdir_owner(workdir: Path) -> str | None:
    """The run holding ``workdir`` ("process 123 on host since ..."), or None when it is free."""
    path = Path(workdir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise PostprodError(path, f"cannot open the work folder's lock ({err.strerror})") from err
    try:
        return _try_lock(fd)  # closing the descriptor releases what was taken
    finally:
        os.close(fd)


@contextmanager
def lock_workdir(workdir: Path) -> Iterator[None]:
    """Hold ``<workdir>/run.lock`` while the block runs (the folder is created if needed).

    Raises :class:`PostprodError` naming the work folder and the run holding it. The lock is
    released when the block ends, and by the kernel when the process dies.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise PostprodError(path, f"cannot create the work folder's lock ({err.strerror})") from err
    try:
        owner = _try_lock(fd)
        if owner is not None:
            raise PostprodError(
                workdir, f"work folder in use by another run ({owner}); wait for it to end or use another --workdir"
            )
        record = {"host": socket.gethostname(), "pid": os.getpid(), "started": round(time.time())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)
