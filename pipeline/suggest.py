"""Which frames an artist should colour next: ranked from where the colour is guessed.

Input: the keyframe plan and, per shot, the confidence record of its last colouring
(:mod:`pipeline.confidence`). Per frame t of a shot, the *uncertainty* is u_t = 1 - mean
confidence (0 on keyframes; high where the propagation lost its path and the attention term
guesses, see ``pipeline.propagate`` steps b and e).

Ranking (coverage, in the spirit of facility location): a new coloured keyframe at f starts
sweeps both ways up to the neighbouring keyframes a < f < b (``pipeline.propagate`` step 1), so it
can only help frames in (a, b), and it helps a frame less the farther it is: frame t's uncertainty
becomes u_t (1 - w), w = exp(-|t - f| / tau), tau = :data:`REACH` x (b - a) (a and b: the shot's
ends when there is no keyframe on that side). The *gain* of a set of picks is the uncertainty they
remove, each pick's window bounded by its neighbours among keyframes and picks: large guessed
areas far from every keyframe gain most. Picks are made greedily (the best marginal gain next, so
they spread out instead of clustering on one bad stretch), then improved as a set by local search
(each pick moved to its best frame with the others fixed, until none moves: the greedy first pick
sits where one pick is best, not where it is best beside a second). Frames within
:data:`MIN_GAP` of a keyframe or of another pick are never suggested. ``per_shot=K`` picks K frames
in every shot; ``budget=N`` picks N frames over the reel, always the best marginal gain of any shot
next, then each shot's picks are improved as a set. A suggestion's ``gain`` is what its shot's
set would lose without it.

Shots left grey count as wholly uncertain; a shot whose record is missing (a work folder left
by an older postprod) as uncertain in proportion to the distance from its keyframes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.color import rgb_from_luma_chroma
from pipeline.confidence import ShotConfidence, confidence_path, read_confidence
from pipeline.errors import PostprodError
from pipeline.files import atomic_output, check_destination
from pipeline.images import encode_image
from pipeline.keyframes import Plan, ShotPlan
from pipeline.media.decode import iter_frames
from pipeline.media.probe import probe
from pipeline.settings import RunSettings
from pipeline.workdir import segment_path

REACH = 1 / 3
"""tau / (b - a): how far, as a share of its segment, a new keyframe's help reaches."""
MIN_GAP = 2
"""Frames next to a keyframe (closer than this) are never suggested."""
LIST_NAME = "suggestions.txt"
LIST_HEADER = "# postprod suggest: frames to colour (save each coloured, same name, into the refs folder)"


@dataclass(frozen=True)
class Suggestion:
    """A reel frame worth colouring: ``gain`` (frames' worth of uncertainty it removes, as ranked),
    ``guessed`` (share of that frame guessed now), ``distance`` (frames to the nearest keyframe),
    ``rank`` (1 = best)."""

    frame: int
    shot: int
    gain: float
    guessed: float
    distance: int
    rank: int = 0

    @property
    def name(self) -> str:
        """``frame-<N>.png``: the name the refs folder takes as frame N coloured."""
        return f"frame-{self.frame}.png"

    def reason(self, plan: Plan) -> str:
        """One line: where the frame is and why it was picked."""
        return (
            f"{self.name}: shot {self.shot}, {plan.timecode(self.frame)}: {100 * self.guessed:.0f} % of the frame "
            f"guessed, {self.distance} frames from the nearest keyframe, gain {self.gain:.1f}"
        )


def shot_records(plan: Plan, workdir: Path, settings: RunSettings) -> dict[int, ShotConfidence | None]:
    """Per coloured shot of ``plan``: its confidence record in ``workdir`` for ``settings``, None when
    the shot has a segment but no record or no segment yet. Grey shots are left out."""
    out: dict[int, ShotConfidence | None] = {}
    for shot in plan.shots:
        if shot.source == "grey":
            continue
        path = confidence_path(segment_path(workdir, plan, shot.index, settings))
        out[shot.index] = read_confidence(path) if path.exists() else None
    return out


def _uncertainty(shot: ShotPlan, record: ShotConfidence | None) -> tuple[np.ndarray, np.ndarray]:
    """(u, guessed), both (n,) float64 per frame of ``shot``."""
    n = shot.end - shot.start
    keys = sorted({k.frame - shot.start for k in shot.keyframes})
    if record is not None and record.frames == n:
        return 1.0 - record.mean.astype(np.float64), record.guessed.astype(np.float64)
    if shot.source == "grey" or not keys:
        return np.ones(n), np.ones(n)
    t = np.arange(n)
    d = np.min(np.abs(t[:, None] - np.asarray(keys)[None, :]), axis=1)
    u = np.minimum(1.0, d / max(1, n // 2))
    return u, np.full(n, np.nan)


class _ShotState:
    """Ranking state of one shot: uncertainty, keyframes and picks (shot-local frames)."""

    def __init__(self, shot: ShotPlan, record: ShotConfidence | None) -> None:
        self.shot = shot
        self.u, self.guessed = _uncertainty(shot, record)
        self.keys = sorted({k.frame - shot.start for k in shot.keyframes})
        self.picks: list[int] = []

    def gain(self, picks: Sequence[int]) -> float:
        """The modelled gain of colouring ``picks`` (frames' worth of uncertainty removed): each
        pick f reaches the frames between its neighbours a < f < b among keyframes and picks,
        with weight w = exp(-|t - f| / tau), tau = REACH x (b - a); frame t keeps u_t prod(1 - w)."""
        n = len(self.u)
        marks = sorted({*self.keys, *picks})
        keep = np.ones(n)
        for f in picks:
            i = marks.index(f)
            a = marks[i - 1] if i > 0 else -1
            b = marks[i + 1] if i + 1 < len(marks) else n
            tau = max(1.0, REACH * (b - a))
            keep[a + 1 : b] *= 1.0 - np.exp(-np.abs(np.arange(a + 1, b) - f) / tau)
        return float(self.u @ (1.0 - keep))

    def _allowed(self, others: Sequence[int]) -> list[int]:
        """Frames that may be picked beside keyframes and ``others``: MIN_GAP from each."""
        taken = [*self.keys, *others]
        return [f for f in range(len(self.u)) if all(abs(f - k) >= MIN_GAP for k in taken)]

    def best(self) -> tuple[float, int] | None:
        """(marginal gain, shot-local frame) of the best next pick, None when none may be picked."""
        now = self.gain(self.picks)
        best: tuple[float, int] | None = None
        for f in self._allowed(self.picks):
            gain = self.gain([*self.picks, f]) - now
            if best is None or gain > best[0] + 1e-9:
                best = (gain, f)
        return best

    def take(self, f: int) -> None:
        """Add frame f to the picks."""
        self.picks.append(f)

    def refine(self, rounds: int = 20) -> None:
        """Local search on the picks as a set: move each pick to the frame that maximises
        :meth:`gain` with the others fixed, until no move helps (the greedy order places early
        picks for fewer picks than are finally made)."""
        for _ in range(rounds):
            moved = False
            for i in range(len(self.picks)):
                others = self.picks[:i] + self.picks[i + 1 :]
                now = self.gain(self.picks)
                for f in self._allowed(others):
                    trial = self.gain([*others, f])
                    if trial > now + 1e-9:
                        now, self.picks[i], moved = trial, f, True
            if not moved:
                return

    def suggestions(self) -> list[Suggestion]:
        """The picks, each with its share of the gain (what the set loses without it)."""
        total = self.gain(self.picks)
        out = []
        for f in self.picks:
            others = [p for p in self.picks if p != f]
            distance = min((abs(f - k) for k in self.keys), default=len(self.u))
            guessed = float(self.guessed[f]) if np.isfinite(self.guessed[f]) else float(self.u[f])
            out.append(Suggestion(self.shot.start + f, self.shot.index, total - self.gain(others), guessed, distance))
        return out


def rank(
    plan: Plan,
    records: Mapping[int, ShotConfidence | None],
    *,
    per_shot: int | None = None,
    budget: int | None = None,
) -> list[Suggestion]:
    """The suggested frames, best first (``rank`` 1, 2, ...): ``per_shot`` in every shot, or
    ``budget`` over the reel (exactly one of the two). ``records``: :func:`shot_records`."""
    if (per_shot is None) == (budget is None):
        raise ValueError("give exactly one of per_shot and budget")
    states = [_ShotState(s, records.get(s.index)) for s in plan.shots]
    if per_shot is not None:
        for state in states:
            for _ in range(per_shot):
                best = state.best()
                if best is None:
                    break
                state.take(best[1])
    else:
        assert budget is not None
        bests = {i: st.best() for i, st in enumerate(states)}
        for _ in range(budget):
            candidates = [(b[0], i) for i, b in bests.items() if b is not None]
            if not candidates:
                break
            _, i = max(candidates)
            best = bests[i]
            assert best is not None
            states[i].take(best[1])
            bests[i] = states[i].best()
    picks = []
    for state in states:
        state.refine()
        picks += state.suggestions()
    ordered = sorted(picks, key=lambda s: -s.gain)
    return [Suggestion(s.frame, s.shot, s.gain, s.guessed, s.distance, r) for r, s in enumerate(ordered, 1)]


def grey_frame_png(plan: Plan, frame: int) -> bytes:
    """Reel frame ``frame`` as an 8-bit grey RGB PNG at the reel's size (what the artist colours)."""
    info = probe(plan.reel)
    f = next(iter_frames(plan.reel, frame, frame + 1))
    rgb = rgb_from_luma_chroma(f.luma, None, f.bit_depth, info.luma_range, info.matrix)
    return encode_image(rgb, ".png")


def write_suggestions(
    plan: Plan, suggestions: Iterable[Suggestion], folder: Path, *, inputs: Iterable[Path | None] = ()
) -> list[str]:
    """Write each suggestion's grey frame ``frame-<N>.png`` and the list ``suggestions.txt`` into
    ``folder`` (created if needed); returns the printed lines (one reason per frame).

    Never replaces a file postprod did not write: a ``frame-<N>.png`` already there is kept (it
    may be the artist's colouring of it) unless it is byte for byte the grey frame; a
    ``suggestions.txt`` that does not start with this module's header line is refused.
    ``inputs`` (the reel, the refs folder, the work folder's inputs) may not hold ``folder``.
    """
    folder = Path(folder)
    check_destination(folder, kind="folder", inputs=(plan.reel, plan.refs, *inputs))
    folder.mkdir(parents=True, exist_ok=True)
    listing = folder / LIST_NAME
    if listing.exists() and not listing.read_text(encoding="utf-8", errors="replace").startswith(LIST_HEADER):
        raise PostprodError(listing, "was not written by postprod suggest; choose another --out folder")
    lines = []
    for s in suggestions:
        dest = folder / s.name
        png = grey_frame_png(plan, s.frame)
        if dest.exists():
            same = hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(png).digest()
            note = "" if same else " (kept the file already there)"
        else:
            with atomic_output(dest) as tmp:
                tmp.write_bytes(png)
            note = ""
        lines.append(f"{s.rank:>3}. {s.reason(plan)}{note}")
    with atomic_output(listing, force=True) as tmp:
        tmp.write_text("\n".join([LIST_HEADER, *lines]) + "\n", encoding="utf-8")
    return lines
