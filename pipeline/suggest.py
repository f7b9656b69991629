"""Which frames an artist should colour next: ranked from where the colour is guessed.

Input: the keyframe plan and, per shot, the confidence record of its last colouring
(:mod:`pipeline.confidence`). Per frame t of a shot, the *uncertainty* is u_t = 1 - mean
confidence (0 on keyframes; high where the propagation lost its path and the attention term
guesses, see ``pipeline.propagate`` steps b and e).

Ranking (greedy coverage, in the spirit of facility location): a new coloured keyframe at f
starts sweeps both ways up to the neighbouring keyframes a < f < b (``pipeline.propagate`` step 1),
so it can only help frames in (a, b), and it helps a frame less the farther it is: frame t's
uncertainty becomes u_t (1 - w), w = exp(-|t - f| / tau), tau = :data:`REACH` x (b - a) (a and b:
the shot's ends when there is no keyframe on that side). The *gain* of f is sum_t u_t w over
(a, b): large guessed areas far from every keyframe gain most. The best frame is picked, the
uncertainties are reduced as if it were coloured, f becomes a keyframe (splitting its segment),
and the next pick is made, so picks spread out instead of clustering on one bad stretch. Frames
within :data:`MIN_GAP` of a keyframe are never suggested. ``per_shot=K`` picks K frames in every
shot; ``budget=N`` picks N frames over the reel, always the best gain of any shot next.

Shots left grey count as wholly uncertain; a shot whose record is missing (a work folder left
by an older postprod) as uncertain in proportion to the distance from its keyframes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
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
    """Greedy state of one shot: residual uncertainty and keyframes (shot-local frames)."""

    def __init__(self, shot: ShotPlan, record: ShotConfidence | None) -> None:
        self.shot = shot
        self.u, self.guessed = _uncertainty(shot, record)
        self.keys = sorted({k.frame - shot.start for k in shot.keyframes})

    def _window(self, f: int) -> tuple[int, int, np.ndarray]:
        """(a, b, w): the frames a < t < b a keyframe at f reaches, and its weights over them."""
        n = len(self.u)
        a = max((k for k in self.keys if k < f), default=-1)
        b = min((k for k in self.keys if k > f), default=n)
        tau = max(1.0, REACH * (b - a))
        t = np.arange(a + 1, b)
        return a, b, np.exp(-np.abs(t - f) / tau)

    def best(self) -> tuple[float, int] | None:
        """(gain, shot-local frame) of the best next pick, None when no frame may be picked."""
        best: tuple[float, int] | None = None
        for f in range(len(self.u)):
            if any(abs(f - k) < MIN_GAP for k in self.keys):
                continue
            a, b, w = self._window(f)
            gain = float(self.u[a + 1 : b] @ w)
            if best is None or gain > best[0] + 1e-9:
                best = (gain, f)
        return best

    def take(self, gain: float, f: int) -> Suggestion:
        """Colour frame f (in the model): reduce the uncertainty it reaches, make it a keyframe."""
        distance = min((abs(f - k) for k in self.keys), default=len(self.u))
        a, b, w = self._window(f)
        guessed = float(self.guessed[f]) if np.isfinite(self.guessed[f]) else float(self.u[f])
        self.u[a + 1 : b] *= 1.0 - w
        self.u[f] = 0.0
        self.keys = sorted([*self.keys, f])
        return Suggestion(self.shot.start + f, self.shot.index, gain, guessed, int(distance))


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
    picks: list[Suggestion] = []
    if per_shot is not None:
        for state in states:
            for _ in range(per_shot):
                best = state.best()
                if best is None:
                    break
                picks.append(state.take(*best))
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
            picks.append(states[i].take(*best))
            bests[i] = states[i].best()
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
