"""The refs folder: an artist's colour references for one reel, parsed and checked up front.

File names (N = 0-based frame of the reel, K = 0-based shot as ``postprod shots`` prints it,
``<ext>`` one of png, jpg, jpeg, tif, tiff, any case):

- ``frame-<N>.<ext>``: a reference anchored at frame N (of the shot containing N);
- ``shot-<K>.<ext>``: an exemplar for shot K, its keyframe chosen later
  (:func:`pipeline.keyframes.plan_keyframes`);
- ``<stem>.<name>.mask.<ext>`` + ``<stem>.<name>.refmask.<ext>`` [+ ``<stem>.<name>.<ext>``]:
  object ``name`` of the reference ``<stem>`` (``frame-<N>`` or ``shot-<K>``): the mask marks it
  on the keyframe, the refmask on the object's image, which is ``<stem>.<name>.<ext>`` when
  present, else the stem's own reference;
- ``refs.toml`` (optional) declares references explicitly, also by timecode (docs/refs.md).

Numbers are ASCII digits, leading zeros allowed; one file per reference (``shot-1.png`` and
``shot-01.png`` are the same reference: a problem). Dotfiles, ``*.md``, ``*.txt`` and
sub-folders are ignored; any other file is a problem.

Confinement: every file the folder names, by its own name or in refs.toml, must be inside the
folder after symbolic links are resolved; an absolute path, a ``..`` escape or a link leading
out is a problem, and such a file is never opened (a refs folder is not a way to read other
files of the machine).

:func:`read_refs` reads every image and mask once to check it (no video decoding) and
collects *every* problem; :meth:`RefSet.raise_problems` raises them together as one
:class:`RefsProblems`.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import PostprodError
from pipeline.images import read_colour, read_mask
from pipeline.media.probe import ReelHeader, ReelInfo
from pipeline.media.timecode import frames_per_day, is_drop_frame_rate, timecode_to_frames
from pipeline.shots import ShotList
from pipeline.shots.output import timecode as reel_timecode

REF_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
IGNORED_SUFFIXES = (".md", ".txt")
TOML_NAME = "refs.toml"

_NAME = re.compile(
    r"(?P<stem>(?P<kind>frame|shot)-(?P<number>[0-9]+))(?:\.(?P<object>[A-Za-z0-9_-]+))?"
    r"(?:\.(?P<role>mask|refmask))?\.(?:png|jpe?g|tiff?)",
    re.IGNORECASE | re.ASCII,
)
_OBJECT_NAME = re.compile(r"[A-Za-z0-9_-]+")
_ROLES = ("mask", "refmask")
_EXPECTED = (
    "not a reference name (expected frame-<N>.<ext>, shot-<K>.<ext>, <stem>.<object>.<ext>, "
    "<stem>.<object>.mask.<ext> or <stem>.<object>.refmask.<ext>; ext: png, jpg, jpeg, tif, tiff)"
)
_REF_KEYS = {"image", "frame", "timecode", "shot", "keyframe", "object"}
_OBJECT_KEYS = {"name", "image", "mask", "refmask"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the refs folder: ``path`` is the file (or folder) it concerns."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


class RefsProblems(PostprodError):
    """Every problem of a refs folder at once: ``str`` is "refs/: N problems" then one
    indented "file: problem" line each, by file; ``problems`` holds them in that order."""

    def __init__(self, folder: Path, problems: Sequence[Problem]) -> None:
        self.problems = tuple(sorted(problems, key=lambda p: p.path))
        n = len(self.problems)
        lines = "".join(f"\n  {p}" for p in self.problems)
        super().__init__(f"{folder}{os.sep}", f"{n} problem{'' if n == 1 else 's'}{lines}")


@dataclass(frozen=True)
class ObjectRef:
    """Object-level guidance: ``mask`` marks the object on the keyframe ((H, W) of the reel),
    ``refmask`` marks it on ``image`` (the object's colour reference, same size as the refmask)."""

    name: str
    image: Path
    mask: Path
    refmask: Path


@dataclass(frozen=True)
class Reference:
    """One checked colour reference.

    ``size``: (height, width) of ``image`` in pixels. ``shot``: index of the shot it guides.
    ``frame``: the reel frame it is anchored at (``frame-N``, or refs.toml ``frame``/``timecode``/
    ``keyframe``), None when the keyframe is to be chosen. ``origin``: how it was declared
    (file name or "refs.toml [[ref]] #i"), for messages.
    """

    image: Path
    size: tuple[int, int]
    shot: int
    frame: int | None
    objects: tuple[ObjectRef, ...] = ()
    origin: str = ""


@dataclass(frozen=True)
class RefSet:
    """The references of a refs folder and what is wrong with it (``problems``, empty when fine)."""

    folder: Path
    refs: tuple[Reference, ...]
    problems: tuple[Problem, ...] = field(default=())

    def for_shot(self, index: int) -> tuple[Reference, ...]:
        """References that guide shot ``index``."""
        return tuple(r for r in self.refs if r.shot == index)

    def raise_problems(self, extra: Iterable[Problem] = ()) -> None:
        """Raise :class:`RefsProblems` with ``problems`` + ``extra`` if there is any."""
        problems = (*self.problems, *extra)
        if problems:
            raise RefsProblems(self.folder, problems)


@dataclass
class _Declared:
    """A reference as declared (by file name or refs.toml), before it is checked against the reel.

    ``where``: the file that messages about the declaration name; ``prefix``: what to put
    before those messages ("[[ref]] #2: " for refs.toml). ``keyframe``: frame or timecode.
    """

    where: Path
    prefix: str
    image: Path | None
    frame: int | None = None
    timecode: str | None = None
    shot: int | None = None
    keyframe: int | str | None = None
    objects: list[ObjectRef] = field(default_factory=list)

    @property
    def origin(self) -> str:
        return f"{self.where.name} {self.prefix.rstrip(': ')}".strip()


def frame_of_timecode(tc: str, shots: ShotList) -> int:
    """Reel frame (0-based, may be past the end) of reel timecode ``tc``.

    Timecodes count from the reel's start timecode (00:00:00:00 when it has none) and must use
    the reel's drop-frame mode (";" before the frames at 30000/1001 drop-frame reels).
    Raises ``ValueError`` for a malformed timecode or the wrong mode.
    """
    label = timecode_to_frames(tc, shots.fps)  # malformed first: its message is the clearest
    start = shots.start_timecode
    reel_drop = bool(re.search(r"[;.,]", start)) if start else is_drop_frame_rate(shots.fps)
    if bool(re.search(r"[;.,]", tc)) != reel_drop:
        mode = "drop-frame (HH:MM:SS;FF)" if reel_drop else "non-drop-frame (HH:MM:SS:FF)"
        raise ValueError(f"timecode {tc!r} is in the wrong mode: the reel's timecode is {mode}")
    first = timecode_to_frames(start, shots.fps) if start else 0
    return (label - first) % frames_per_day(shots.fps, reel_drop)


def read_refs(folder: Path, reel: ReelInfo | ReelHeader, shots: ShotList | None) -> RefSet:
    """Parse and check the refs folder of a reel; never decodes video.

    ``reel`` gives the frame size masks must have; ``shots`` the frame count, the shots and
    the timecode. Every problem (unknown names, files outside the folder, an unparsable
    refs.toml, frames, shots or timecodes outside the reel, unreadable, grey, too small or too
    large references, masks of the wrong size, empty masks, masks without their partner) is
    collected in :attr:`RefSet.problems`; the references that have none are in
    :attr:`RefSet.refs`. Each image is read once. ``shots=None``: only what needs no shot list
    (everything but frames, shots and timecodes against the reel) and no references returned:
    the check ``postprod run`` makes before any work.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return RefSet(folder, (), (Problem(str(folder), "is not a folder" if folder.exists() else "no such folder"),))
    problems: list[Problem] = []
    declared, claimed = _read_toml(folder, problems)
    declared += _declared_by_names(folder, claimed, problems)
    sizes = _image_sizes(declared, problems)
    if shots is None:
        for d in declared:
            for o in d.objects:
                _masks_ok(o, reel, sizes, problems)
        return RefSet(folder, (), tuple(problems))
    refs = [ref for d in declared if (ref := _check(d, reel, shots, sizes, problems)) is not None]
    return RefSet(folder, tuple(refs), tuple(problems))


# --- refs.toml ---------------------------------------------------------------------------


def _outside(folder: Path, path: Path) -> str | None:
    """Why ``path`` (a file the refs folder names) is not inside ``folder`` after resolving
    symbolic links and ``..``; None when it is. Nothing is opened."""
    real, home = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    if real != home and real.is_relative_to(home):
        return None
    how = f"a symbolic link to {os.readlink(path)}" if path.is_symlink() else f"it resolves to {real}"
    return f"outside the refs folder ({how}); not read"


def _confined(folder: Path, name: str, what: str, bad: Callable[[str], None]) -> Path | None:
    """``folder / name`` for a file refs.toml names, or None (problem recorded) when ``name`` is
    absolute or leads outside the folder."""
    if Path(name).is_absolute():
        bad(f"{what} {name!r} is an absolute path, outside the refs folder (paths are relative to it); not read")
        return None
    path = folder / name
    why = _outside(folder, path)
    if why is not None:
        bad(f"{what} {name!r} is {why}")
        return None
    return path


def _read_toml(folder: Path, problems: list[Problem]) -> tuple[list[_Declared], set[Path]]:
    """References declared in refs.toml, and the (resolved) files it names."""
    path = folder / TOML_NAME
    if not path.is_file():
        return [], set()
    why = _outside(folder, path)
    if why is not None:
        problems.append(Problem(str(path), why))
        return [], set()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        problems.append(Problem(str(path), f"not valid TOML ({err})"))
        return [], set()
    for key in sorted(set(data) - {"ref"}):
        problems.append(Problem(str(path), f"unknown key {key!r} (only [[ref]] tables are allowed)"))
    entries = data.get("ref", [])
    if not isinstance(entries, list):
        problems.append(Problem(str(path), "'ref' must be an array of tables: write [[ref]]"))
        return [], set()
    declared = [
        d
        for i, entry in enumerate(entries, start=1)
        if (d := _toml_entry(entry, folder, _Declared(path, f"[[ref]] #{i}: ", None), problems))
    ]
    claimed = {
        p.resolve()
        for d in declared
        for p in (d.image, *(f for o in d.objects for f in (o.image, o.mask, o.refmask)))
        if p
    }
    return [d for d in declared if d.image is not None], claimed


def _toml_entry(entry: Any, folder: Path, d: _Declared, problems: list[Problem]) -> _Declared | None:
    """Fill ``d`` from one [[ref]] table (``d.image`` None when it has none); None when it
    is not a table. Problems are recorded."""

    def bad(problem: str) -> None:
        problems.append(Problem(str(d.where), d.prefix + problem))

    if not isinstance(entry, dict):
        bad("must be a table")
        return None
    for key in sorted(set(entry) - _REF_KEYS):
        bad(f"unknown key {key!r} (allowed: {', '.join(sorted(_REF_KEYS))})")
    image = entry.get("image")
    if isinstance(image, str) and image:
        d.image = _confined(folder, image, "image", bad)
    else:
        bad('needs image = "<file>"')
    anchors = [k for k in ("frame", "timecode", "shot") if k in entry]
    if len(anchors) != 1:
        bad("needs exactly one of frame, timecode, shot" + (f" (has {', '.join(anchors)})" if anchors else ""))
    elif anchors[0] == "timecode":
        if isinstance(entry["timecode"], str):
            d.timecode = entry["timecode"]
        else:
            bad(f'timecode must be a string like "01:00:05:00", got {entry["timecode"]!r}')
    elif _is_count(entry[anchors[0]]):
        setattr(d, anchors[0], entry[anchors[0]])
    else:
        bad(f"{anchors[0]} must be a whole number >= 0, got {entry[anchors[0]]!r}")
    if "keyframe" in entry:
        key = entry["keyframe"]
        if "shot" not in entry:
            bad("keyframe is only for shot references (a frame or timecode is the keyframe already)")
        elif isinstance(key, str) or _is_count(key):
            d.keyframe = key
        else:
            bad(f"keyframe must be a frame number or a timecode string, got {key!r}")
    objects = entry.get("object", [])
    if not isinstance(objects, list):
        bad("'object' must be an array of tables: write [[ref.object]]")
        objects = []
    for j, obj in enumerate(objects, start=1):
        if not isinstance(obj, dict):
            bad(f"object #{j} must be a table")
            continue
        for key in sorted(set(obj) - _OBJECT_KEYS):
            bad(f"object #{j}: unknown key {key!r} (allowed: {', '.join(sorted(_OBJECT_KEYS))})")
        name, own = obj.get("name"), obj.get("image", image)
        files = [obj.get(k) for k in ("mask", "refmask")]
        if not isinstance(name, str) or not _OBJECT_NAME.fullmatch(name) or name.lower() in _ROLES:
            bad(f"object #{j}: name must be letters, digits, '-' or '_' (not mask/refmask), got {name!r}")
        elif not all(isinstance(f, str) and f for f in files):
            bad(f'object {name!r}: needs mask = "<file>" and refmask = "<file>"')
        elif not (isinstance(own, str) and own):
            bad(f"object {name!r}: image must be a file name, got {own!r}")
        elif own == image and d.image is None:
            continue  # the reference's own image is refused already (reported above)
        else:
            found = [
                _confined(folder, str(f), f"object {name!r}: {key}", bad)
                for key, f in (("image", own), ("mask", files[0]), ("refmask", files[1]))
            ]
            if all(found):
                own_path, mask_path, refmask_path = (f for f in found if f is not None)
                d.objects.append(ObjectRef(name, own_path, mask_path, refmask_path))
    return d


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# --- file names --------------------------------------------------------------------------


def _declared_by_names(folder: Path, claimed: set[Path], problems: list[Problem]) -> list[_Declared]:
    """References declared by the names of the files in ``folder``, except those refs.toml names.
    Stems are compared by number (``shot-1`` and ``shot-01`` are one reference)."""
    stems: dict[str, dict[tuple[str | None, str | None], list[Path]]] = {}
    for path in sorted(folder.iterdir()):
        name = path.name
        if (
            path.is_dir()
            or name.startswith(".")
            or name == TOML_NAME
            or path.suffix.lower() in IGNORED_SUFFIXES
            or path.resolve() in claimed
        ):
            continue
        m = _NAME.fullmatch(name)
        if m is None:
            problems.append(Problem(str(path), _EXPECTED))
            continue
        why = _outside(folder, path)
        if why is not None:
            problems.append(Problem(str(path), why))
            continue
        obj, role = m["object"], m["role"] and m["role"].lower()
        if obj is not None and obj.lower() in _ROLES:
            problems.append(
                Problem(
                    str(path), f"a {obj.lower()} needs an object name: {m['stem']}.<object>.{obj.lower()}{path.suffix}"
                )
            )
            continue
        stem = f"{m['kind'].lower()}-{int(m['number'])}"
        stems.setdefault(stem, {}).setdefault((obj, role), []).append(path)
    return [d for stem, files in stems.items() if (d := _stem_reference(stem, files, problems))]


def _stem_reference(
    stem: str, files: dict[tuple[str | None, str | None], list[Path]], problems: list[Problem]
) -> _Declared | None:
    """The reference ``<stem>.<ext>`` with its objects, from the files named ``<stem>...``."""
    for paths in files.values():
        if len(paths) > 1:
            problems.append(
                Problem(str(paths[0]), "more than one file for the same reference: " + ", ".join(p.name for p in paths))
            )
    main = files.get((None, None), [None])[0]
    objects: list[ObjectRef] = []
    for name in sorted({obj for obj, _ in files if obj is not None}):
        own, mask, refmask = (files.get((name, role), [None])[0] for role in (None, "mask", "refmask"))
        if mask is None or refmask is None:
            lacking = " and no ".join(
                f"{stem}.{name}.{role}.<ext>" for role, p in (("mask", mask), ("refmask", refmask)) if p is None
            )
            problems.append(Problem(str(mask or refmask or own), f"object {name!r} has no partner {lacking}"))
        elif (image := own or main) is not None:
            objects.append(ObjectRef(name, image, mask, refmask))
        else:
            problems.append(Problem(str(mask), f"object {name!r} has no reference image: add {stem}.<ext>"))
    if main is None:
        if objects:  # objects with their own images, but nothing for the rest of the frame
            problems.append(
                Problem(str(objects[0].image), f"object references need the main reference {stem}.<ext> beside them")
            )
        return None
    kind, number = stem.lower().split("-")
    if kind == "frame":
        return _Declared(main, "", main, frame=int(number), objects=objects)
    return _Declared(main, "", main, shot=int(number), objects=objects)


# --- checks against the reel -------------------------------------------------------------


def _image_sizes(declared: list[_Declared], problems: list[Problem]) -> dict[Path, tuple[int, int] | None]:
    """(height, width) of every colour image declared, each read once; None (problem recorded)
    when it cannot be read or is grey."""
    sizes: dict[Path, tuple[int, int] | None] = {}
    for d in declared:
        for path in (d.image, *(o.image for o in d.objects)):
            if path is None or path in sizes:
                continue
            try:
                sizes[path] = read_colour(path).size
            except PostprodError as err:
                named = f" (named in {d.origin})" if d.prefix else ""
                problems.append(Problem(err.path or str(path), err.problem + named))
                sizes[path] = None
    return sizes


def _check(
    d: _Declared,
    reel: ReelInfo | ReelHeader,
    shots: ShotList,
    sizes: dict[Path, tuple[int, int] | None],
    problems: list[Problem],
) -> Reference | None:
    """Check one declared reference against the reel (ranges, mask sizes); None if unusable."""

    def bad(problem: str) -> None:
        problems.append(Problem(str(d.where), d.prefix + problem))

    last = shots.frames - 1
    span = f"frames 0-{last}, {reel_timecode(shots, 0)}-{reel_timecode(shots, last)}"
    frame = _frame(d.frame if d.timecode is None else d.timecode, shots, span, bad)
    shot = None if frame is None else next(s.index for s in shots.shots if s.start <= frame < s.end)
    if d.shot is not None:
        n = len(shots.shots)
        if d.shot < n:
            shot = d.shot
        else:
            bad(f"shot {d.shot} does not exist: the reel has {n} shot{'' if n == 1 else 's'} (0-{n - 1})")
    if d.keyframe is not None and shot is not None:
        frame = _frame(d.keyframe, shots, span, bad)
        s = shots.shots[shot]
        if frame is not None and not s.start <= frame < s.end:
            bad(f"keyframe {frame} is not in shot {shot} (frames {s.start}-{s.end - 1})")
            shot = None
    objects_ok = [_masks_ok(o, reel, sizes, problems) for o in d.objects]
    size = sizes.get(d.image) if d.image is not None else None
    if shot is None or size is None or d.image is None or not all(objects_ok):
        return None
    return Reference(
        image=d.image,
        size=size,
        shot=shot,
        frame=frame,
        objects=tuple(d.objects),
        origin=d.origin,
    )


def _frame(anchor: int | str | None, shots: ShotList, span: str, bad: Callable[[str], None]) -> int | None:
    """Frame number of a frame number or reel timecode, None (problem recorded) outside the reel."""
    if anchor is None:
        return None
    if isinstance(anchor, str):
        try:
            frame = frame_of_timecode(anchor, shots)
        except ValueError as err:
            bad(str(err))
            return None
        where = f"timecode {anchor}"
    else:
        frame, where = anchor, f"frame {anchor}"
    if frame >= shots.frames:
        bad(f"{where} is outside the reel ({span})")
        return None
    return frame


def _masks_ok(
    obj: ObjectRef, reel: ReelInfo | ReelHeader, sizes: dict[Path, tuple[int, int] | None], problems: list[Problem]
) -> bool:
    """Read an object's masks: the mask at the reel's frame size, the refmask at its image's
    size (unchecked when the image itself is unusable); False after recording problems."""
    checks = [(obj.mask, (reel.height, reel.width), reel.path)]
    image_size = sizes.get(obj.image)
    if image_size is not None:
        checks.append((obj.refmask, image_size, obj.image))
    ok = image_size is not None
    for mask, size, of in checks:
        try:
            read_mask(mask, size, of=of)
        except PostprodError as err:
            problems.append(Problem(err.path or str(mask), err.problem))
            ok = False
    return ok
