"""The keyframe plan: which frames of each shot are colorized first, and from what.

Built by :func:`plan_keyframes` from a checked :class:`~pipeline.refs.RefSet`, after every
problem of the refs folder (and of the missing-refs policy) has been raised, decoding only:

- the anchored frames whose reference has the reel's size, for the luminance-match test: a
  reference whose luma correlates with frame N's at ``>= COLOURED_MIN_CORRELATION`` is an
  artist-**coloured** keyframe (its chroma is used as is), otherwise an **exemplar**;
- the frames of a shot with a ``shot-K`` reference, once, streamed, to choose its keyframe:
  the frame with the best :func:`match_score`.

All comparisons are on luma thumbnails ``THUMB_HEIGHT`` lines high (the reel's aspect; a
reference of another aspect is stretched), decoded at reduced size. A plan is JSON-safe
(:meth:`Plan.to_dict` / :meth:`Plan.from_dict`, :func:`write_plan` / :func:`read_plan`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, get_args

import cv2
import numpy as np

from pipeline.color import Matrix, codes_to_luma, rgb_to_ycbcr
from pipeline.errors import PostprodError
from pipeline.files import atomic_output
from pipeline.images import read_colour
from pipeline.media.decode import iter_frames
from pipeline.media.probe import ReelInfo
from pipeline.refs import ObjectRef, Problem, Reference, RefSet, RefsProblems
from pipeline.shots import Shot, ShotList
from pipeline.shots.output import timecode as reel_timecode

THUMB_HEIGHT = 64
"""Lines of the luma thumbnails all comparisons use (fewer for smaller reels)."""
COLOURED_MIN_CORRELATION = 0.95
"""Pearson correlation of the luma thumbnails of a reel-sized reference and its frame from
which the reference is an artist-coloured keyframe. Measured on the 12 DAVIS sequences
(docs/refs.md): true colour frames 0.999-1.000, the same with saturation x1.6 >= 0.971;
the colour frame 1 frame later: median 0.93, 5 frames later median 0.78, another sequence <= 0.32."""
HIST_BINS = 32
HIST_WEIGHT = 0.5
"""Weight of the luma-histogram intersection in :func:`match_score`."""
PLAN_VERSION = 1

KeyframeKind = Literal["coloured", "exemplar"]
Chosen = Literal["anchored", "best-match", "first-frame", "neighbour"]
ShotSource = Literal["refs", "neighbours", "grey"]
MissingRefs = Literal["nearest", "error", "grey"]
FrameSource = Callable[[int, int], Iterator[tuple[int, np.ndarray]]]
"""``decode(start, stop)`` yields ``(frame index, luma)`` for frames start..stop-1 of the reel,
luma (h, w) float32 in [0, 1] at any reduced size of the reel's aspect."""


@dataclass(frozen=True)
class Keyframe:
    """A frame colorized first, then propagated through its shot.

    ``kind``: "coloured" (``image`` is this frame coloured by an artist: take its chroma as is)
    or "exemplar" (colorize the frame from ``image``). ``image``: the colour reference file, or
    None when ``ref_frame`` is set: then the exemplar is that reel frame once it is coloured
    (a neighbouring shot's). ``how``: how the frame was chosen: "anchored" (named by the refs),
    "best-match" (the shot's frame most like ``image``), "first-frame" (a shot reference with
    object masks: masks are drawn on the shot's first frame), "neighbour". ``score``: the luma
    correlation (anchored, reel-sized references) or :func:`match_score` (best-match) measured,
    None when none was.
    """

    frame: int
    kind: KeyframeKind
    image: Path | None
    objects: tuple[ObjectRef, ...] = ()
    how: Chosen = "anchored"
    ref_frame: int | None = None
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "frame": self.frame,
            "kind": self.kind,
            "image": _str(self.image),
            "how": self.how,
            "ref_frame": self.ref_frame,
            "score": self.score,
            "objects": [
                {"name": o.name, "image": str(o.image), "mask": str(o.mask), "refmask": str(o.refmask)}
                for o in self.objects
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Keyframe:
        objects = tuple(
            ObjectRef(o["name"], Path(o["image"]), Path(o["mask"]), Path(o["refmask"])) for o in d["objects"]
        )
        return cls(
            frame=int(d["frame"]),
            kind=_choice(d["kind"], KeyframeKind),
            image=None if d["image"] is None else Path(d["image"]),
            objects=objects,
            how=_choice(d["how"], Chosen),
            ref_frame=d["ref_frame"],
            score=d["score"],
        )


@dataclass(frozen=True)
class ShotPlan:
    """Shot ``index``, frames ``start`` .. ``end - 1``: its ``keyframes`` (by frame) and where its
    colour comes from: "refs", "neighbours" (``neighbours``: the shots whose coloured frames are
    its exemplars, nearest first) or "grey" (left grey, no keyframes)."""

    index: int
    start: int
    end: int
    keyframes: tuple[Keyframe, ...]
    source: ShotSource
    neighbours: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "start": self.start,
            "end": self.end,
            "source": self.source,
            "neighbours": list(self.neighbours),
            "keyframes": [k.to_dict() for k in self.keyframes],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShotPlan:
        return cls(
            index=int(d["index"]),
            start=int(d["start"]),
            end=int(d["end"]),
            keyframes=tuple(Keyframe.from_dict(k) for k in d["keyframes"]),
            source=_choice(d["source"], ShotSource),
            neighbours=tuple(int(n) for n in d["neighbours"]),
        )


@dataclass(frozen=True)
class Plan:
    """The keyframe plan of a reel: ``frames`` frames at exactly ``fps``, start timecode
    ``start_timecode`` (None: 00:00:00:00), one :class:`ShotPlan` per shot in order.
    ``refs``: the refs folder; ``missing``: the missing-refs policy it was made with. Paths
    are kept as given (relative ones are relative to the folder the plan was made in)."""

    reel: Path
    frames: int
    fps: Fraction
    shots: tuple[ShotPlan, ...]
    start_timecode: str | None = None
    refs: Path | None = None
    missing: MissingRefs = "nearest"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: fps as "num/den", paths as strings, shots' ``end`` exclusive."""
        return {
            "version": PLAN_VERSION,
            "reel": str(self.reel),
            "frames": self.frames,
            "fps": f"{self.fps.numerator}/{self.fps.denominator}",
            "start_timecode": self.start_timecode,
            "refs": _str(self.refs),
            "missing": self.missing,
            "shots": [s.to_dict() for s in self.shots],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        """Inverse of :meth:`to_dict`; ``ValueError``/``KeyError`` for anything else."""
        if d.get("version") != PLAN_VERSION:
            raise ValueError(f"plan version {d.get('version')!r}, expected {PLAN_VERSION}")
        return cls(
            reel=Path(d["reel"]),
            frames=int(d["frames"]),
            fps=Fraction(d["fps"]),
            shots=tuple(ShotPlan.from_dict(s) for s in d["shots"]),
            start_timecode=d["start_timecode"],
            refs=None if d["refs"] is None else Path(d["refs"]),
            missing=_choice(d["missing"], MissingRefs),
        )

    def timecode(self, frame: int) -> str:
        """Timecode of reel frame ``frame`` (from the start timecode, in its drop-frame mode)."""
        return reel_timecode(ShotList(self.reel, self.fps, self.frames, self.start_timecode), frame)

    def describe(self) -> str:
        """A readable table: per shot its frames (last one included) and timecodes, where its
        colour comes from, then one line per keyframe and per object."""
        refs = f", refs {self.refs}" if self.refs else ""
        lines = [
            f"{self.reel}: {self.frames} frames at {self.fps.numerator}/{self.fps.denominator} fps, "
            f"{len(self.shots)} shot{'' if len(self.shots) == 1 else 's'}{refs}",
            f"{'shot':>4}  {'frames':<13} {'timecode':<25} source",
        ]
        for s in self.shots:
            via = f" (from shot {', '.join(map(str, s.neighbours))})" if s.neighbours else ""
            lines.append(
                f"{s.index:>4}  {f'{s.start}-{s.end - 1}':<13} "
                f"{f'{self.timecode(s.start)}-{self.timecode(s.end - 1)}':<25} {s.source}{via}"
            )
            for k in s.keyframes:
                ref = k.image.name if k.image else f"frame {k.ref_frame} once coloured"
                measure = "correlation" if k.how == "anchored" else "score"
                score = "" if k.score is None else f", {measure} {k.score:.3f}"
                lines.append(
                    f"{'':>6}keyframe {k.frame} ({self.timecode(k.frame)}): {k.kind} from {ref} [{k.how}{score}]"
                )
                lines += [
                    f"{'':>8}object {o.name}: {o.image.name}, mask {o.mask.name}, refmask {o.refmask.name}"
                    for o in k.objects
                ]
        return "\n".join(lines)


def _name(path: Path | None) -> str:
    return "-" if path is None else path.name


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _choice(value: Any, kind: Any) -> Any:
    if value not in get_args(kind):
        raise ValueError(f"{value!r} is not one of {get_args(kind)}")
    return value


def write_plan(plan: Plan, path: Path, *, force: bool = False, inputs: Iterable[Path | None] = ()) -> None:
    """Write ``plan.to_dict()`` as indented JSON, atomically (never over the reel or ``inputs``,
    :mod:`pipeline.files`)."""
    with atomic_output(Path(path), force=force, inputs=(plan.reel, *inputs)) as tmp:
        tmp.write_text(json.dumps(plan.to_dict(), indent=2) + "\n", encoding="utf-8")


def read_plan(path: Path) -> Plan:
    """Read a plan written by :func:`write_plan`; :class:`PostprodError` if it is not one."""
    try:
        return Plan.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except FileNotFoundError as err:
        raise PostprodError(path, "no such file") from err
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PostprodError(path, f"not a keyframe plan ({type(err).__name__}: {err})") from err


# --- luma comparisons --------------------------------------------------------------------


def thumb_size(width: int, height: int) -> tuple[int, int]:
    """(h, w) of the comparison thumbnails of a ``width`` x ``height`` reel: ``THUMB_HEIGHT``
    lines (the reel's height if smaller), the reel's aspect."""
    h = min(THUMB_HEIGHT, height)
    return h, max(1, round(h * width / height))


def luma_thumbnail(luma: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) float luma in [0, 1] -> ``size`` (h, w) float32, area-averaged (stretched if the
    aspect differs)."""
    return cv2.resize(np.asarray(luma, dtype=np.float32), (size[1], size[0]), interpolation=cv2.INTER_AREA)


def luma_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation in [-1, 1] of two same-shape luma arrays; 0 if either is flat."""
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    norm = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / norm) if norm > 1e-12 else 0.0


def histogram_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection in [0, 1] of the ``HIST_BINS``-bin histograms of two lumas in [0, 1]."""
    ha, hb = (np.histogram(x, bins=HIST_BINS, range=(0.0, 1.0))[0] / x.size for x in (a, b))
    return float(np.minimum(ha, hb).sum())


def match_score(reference: np.ndarray, frame: np.ndarray) -> float:
    """How well a frame matches a reference, both (h, w) luma thumbnails in [0, 1]: Pearson
    correlation + ``HIST_WEIGHT`` x histogram intersection, in [-1, 1.5], higher is better.
    Correlation finds the same picture; the histogram keeps a say for exemplars that show
    the scene from elsewhere (similar tones, different layout)."""
    return luma_correlation(reference, frame) + HIST_WEIGHT * histogram_similarity(reference, frame)


def reference_thumbnail(path: Path, matrix: Matrix, size: tuple[int, int]) -> np.ndarray:
    """Luma (Y' of the reel's matrix, "bt601"/"bt709") of a colour reference as an (h, w)
    float32 thumbnail in [0, 1]."""
    return luma_thumbnail(rgb_to_ycbcr(read_colour(path).pixels, matrix)[0], size)


def reel_luma(info: ReelInfo, *, max_height: int = THUMB_HEIGHT) -> FrameSource:
    """The default :data:`FrameSource`: frames of ``info.path`` decoded at most ``max_height``
    lines high (swscale), luma normalised to [0, 1] from the reel's range."""

    def decode(start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        for f in iter_frames(info.path, start, stop, max_height=max_height):
            yield f.index, codes_to_luma(f.luma, f.bit_depth, info.luma_range)

    return decode


# --- the plan ----------------------------------------------------------------------------


def missing_ref_problems(shots: ShotList, refs: RefSet, missing: MissingRefs) -> list[Problem]:
    """What the missing-refs policy makes a problem: with "error" every shot without a
    reference; with "nearest" a reel where no shot has one (nothing to borrow colours from)."""
    covered = {r.shot for r in refs.refs}
    if missing == "error":
        return [
            Problem(
                str(refs.folder),
                f"shot {s.index} (frames {s.start}-{s.end - 1}) has no reference "
                f"(add shot-{s.index}.<ext>, or use --missing-refs nearest or grey)",
            )
            for s in shots.shots
            if s.index not in covered
        ]
    if missing == "nearest" and not covered and not refs.problems:
        return [
            Problem(
                str(refs.folder),
                "no shot has a reference, so --missing-refs nearest has no coloured "
                "shot to take colours from (add references or use --missing-refs grey)",
            )
        ]
    return []


def plan_keyframes(
    info: ReelInfo,
    shots: ShotList,
    refs: RefSet,
    *,
    missing: MissingRefs = "nearest",
    decode: FrameSource | None = None,
) -> Plan:
    """Plan the keyframes of every shot of a reel.

    Raises :class:`~pipeline.refs.RefsProblems` with every problem of ``refs`` and of the
    ``missing`` policy before decoding anything; then, after the little decoding described in
    the module docstring, if two coloured keyframes (or a coloured keyframe and an exemplar
    anchored there) share a frame. ``missing``, for shots without a reference: "nearest" (the
    nearest shots with references before and after it lend their coloured frames: the last
    frame of the one before is the exemplar of this shot's first frame, the first frame of the
    one after the exemplar of its last frame), "grey" (left grey), "error". ``decode``: where
    frames come from (default :func:`reel_luma`).
    """
    if missing not in get_args(MissingRefs):
        raise ValueError(f"missing must be one of {get_args(MissingRefs)}, got {missing!r}")
    refs.raise_problems(missing_ref_problems(shots, refs, missing))
    size = thumb_size(info.width, info.height)
    decode = decode or reel_luma(info, max_height=size[0])
    keys: list[tuple[Reference, Keyframe]] = []
    anchored: dict[int, list[Reference]] = {}
    for ref in refs.refs:
        if ref.frame is not None:
            anchored.setdefault(ref.frame, []).append(ref)
    for frame in sorted(anchored):
        keys += _classify(frame, anchored[frame], info, size, decode)
    problems = _clashes(keys)
    if problems:
        raise RefsProblems(refs.folder, problems)
    coloured = {k.frame for _, k in keys if k.kind == "coloured"}
    keys += [
        (r, Keyframe(shots.shots[r.shot].start, "exemplar", r.image, r.objects, "first-frame"))
        for r in refs.refs
        if r.frame is None and r.objects
    ]
    automatic = [r for r in refs.refs if r.frame is None and not r.objects]
    for shot in sorted({r.shot for r in automatic}):
        keys += _best_matches(
            shots.shots[shot], [r for r in automatic if r.shot == shot], coloured, info.matrix, size, decode
        )
    by_shot: dict[int, list[Keyframe]] = {}
    for ref, key in keys:
        by_shot.setdefault(ref.shot, []).append(key)
    return Plan(
        reel=info.path,
        frames=shots.frames,
        fps=shots.fps,
        start_timecode=shots.start_timecode,
        refs=refs.folder,
        missing=missing,
        shots=tuple(_shot_plan(s, by_shot, shots.shots, missing) for s in shots.shots),
    )


def _classify(
    frame: int, group: list[Reference], info: ReelInfo, size: tuple[int, int], decode: FrameSource
) -> list[tuple[Reference, Keyframe]]:
    """Keyframes of the references anchored at ``frame``: coloured when the reference has the
    reel's size and its luma correlates with the frame's at >= COLOURED_MIN_CORRELATION."""
    reel_sized = [r for r in group if r.size == (info.height, info.width)]
    thumb = None
    if reel_sized:  # decode only for a reference that may be this very frame coloured
        for index, luma in decode(frame, frame + 1):
            if index == frame:
                thumb = luma_thumbnail(luma, size)
    out = []
    for ref in group:
        score = (
            luma_correlation(reference_thumbnail(ref.image, info.matrix, size), thumb)
            if thumb is not None and ref in reel_sized
            else None
        )
        kind: KeyframeKind = "coloured" if score is not None and score >= COLOURED_MIN_CORRELATION else "exemplar"
        out.append((ref, Keyframe(frame, kind, ref.image, ref.objects, "anchored", score=score)))
    return out


def _clashes(keys: list[tuple[Reference, Keyframe]]) -> list[Problem]:
    """A frame may have one coloured keyframe and then no exemplar anchored at it."""
    problems = []
    for frame in sorted({k.frame for _, k in keys}):
        here = [k for _, k in keys if k.frame == frame]
        coloured = [k for k in here if k.kind == "coloured"]
        if not coloured:
            continue
        first = _name(coloured[0].image)
        problems += [
            Problem(str(k.image), f"is a second coloured keyframe for frame {frame} (so is {first})")
            for k in coloured[1:]
        ]
        problems += [
            Problem(str(k.image), f"is an exemplar anchored at frame {frame}, which {first} colours already")
            for k in here
            if k.kind == "exemplar"
        ]
    return problems


def _best_matches(
    shot: Shot, group: list[Reference], coloured: set[int], matrix: Matrix, size: tuple[int, int], decode: FrameSource
) -> list[tuple[Reference, Keyframe]]:
    """For each reference of ``group`` the frame of ``shot`` that matches it best (not a
    coloured keyframe; the earliest on ties), decoding the shot once, one frame at a time."""
    thumbs = [reference_thumbnail(r.image, matrix, size) for r in group]
    best: list[tuple[float, int | None]] = [(-np.inf, None)] * len(group)
    for index, luma in decode(shot.start, shot.end):
        if index in coloured or not shot.start <= index < shot.end:
            continue
        frame = luma_thumbnail(luma, size)
        for j, thumb in enumerate(thumbs):
            score = match_score(thumb, frame)
            if score > best[j][0]:
                best[j] = (score, index)
    return [
        (
            r,
            Keyframe(
                shot.start if f is None else f, "exemplar", r.image, how="best-match", score=None if f is None else s
            ),
        )
        for r, (s, f) in zip(group, best, strict=True)
    ]


def _shot_plan(
    shot: Shot, by_shot: dict[int, list[Keyframe]], shots: tuple[Shot, ...], missing: MissingRefs
) -> ShotPlan:
    """The plan of one shot: its own keyframes, else per ``missing`` neighbours' frames or grey."""
    own = sorted(by_shot.get(shot.index, []), key=lambda k: (k.frame, str(k.image)))
    if own:
        return ShotPlan(shot.index, shot.start, shot.end, tuple(own), "refs")
    before = max((i for i in by_shot if i < shot.index), default=None)
    after = min((i for i in by_shot if i > shot.index), default=None)
    if missing != "nearest" or (before is None and after is None):
        return ShotPlan(shot.index, shot.start, shot.end, (), "grey")
    keys: list[Keyframe] = []
    gaps: list[tuple[int, int]] = []  # (frames between the two frames, neighbour shot)
    if before is not None:
        lender = shots[before].end - 1
        keys.append(Keyframe(shot.start, "exemplar", None, how="neighbour", ref_frame=lender))
        gaps.append((shot.start - lender, before))
    if after is not None:
        lender = shots[after].start
        keys.append(Keyframe(shot.end - 1, "exemplar", None, how="neighbour", ref_frame=lender))
        gaps.append((lender - (shot.end - 1), after))
    return ShotPlan(shot.index, shot.start, shot.end, tuple(keys), "neighbours", tuple(i for _, i in sorted(gaps)))
