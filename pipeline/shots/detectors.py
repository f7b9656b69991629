"""Shot-boundary detectors for black-and-white footage, working on luma features only.

Design (after PySceneDetect): per-frame features are computed once (:mod:`.features`) and handed
to small streaming detectors that share the :class:`Detector` protocol. Each detector reports
:class:`Transition` s, possibly a few frames late (they look ahead); :func:`merge_transitions`
resolves overlaps and the minimum shot length; :func:`~pipeline.shots.detect.detect_shots` runs
it all on a reel.

Where the boundary frame goes (the first frame of the new shot):

- hard cut: the first frame of the incoming picture;
- fade through black or white (fade-out then fade-in, a cut to black then a fade-in, ...):
  the middle of the run of blank frames (``(first + last + 1) // 2``), so the blank frames are
  shared between both shots; a blank leader (trailer) becomes its own shot ending at the first
  (starting at the last) blank frame, if it is at least the minimum shot length;
- dissolve: the first frame in which the incoming picture outweighs the outgoing one (blend
  weight >= 0.5), i.e. the middle of the dissolve.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from pipeline.shots.features import FrameFeatures, compute_features, frame_distance

TransitionKind = Literal["cut", "fade", "dissolve"]
_PRIORITY: dict[str, int] = {"fade": 3, "dissolve": 2, "cut": 1}  # strongest evidence first when merging


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of shot found by a detector.

    Attributes:
        kind: "cut", "fade" (through black or white frames) or "dissolve".
        frame: the first frame of the new shot.
        start: first frame of the transition (== ``frame`` for a cut).
        end: one past its last frame (== ``frame`` for a cut).
        score: detector-specific strength, larger is surer; used to rank conflicting transitions.
    """

    kind: TransitionKind
    frame: int
    start: int
    end: int
    score: float


class Detector(Protocol):
    """A streaming detector: feed every frame's features in order, then flush once."""

    def process(self, features: FrameFeatures) -> list[Transition]:
        """Take the next frame; return the transitions that are now certain (maybe earlier frames)."""
        ...

    def flush(self) -> list[Transition]:
        """End of reel: return the transitions still pending."""
        ...


class CutDetector:
    """Hard cuts: a frame difference that stands out from the differences around it.

    The score of frame i is :func:`frame_distance` (frame i-1, frame i). Frame i starts a new shot
    when ``score >= min_score`` and ``score >= threshold * (median + MAD)`` of the scores within
    ``window`` frames on either side (so fast motion raises the bar, static shots lower it), it is
    the local maximum, and it is not a flash: if the picture comes back within ``flash_frames``
    (some frame before the spike and some frame after it, at most ``flash_frames + 1`` apart, are
    closer than ``flash_return`` x score), the spike was a flash, a damaged or black frame or a
    splice blip, not a cut.
    """

    def __init__(
        self,
        *,
        threshold: float = 2.0,
        min_score: float = 0.1,
        window: int = 8,
        flash_frames: int = 2,
        flash_return: float = 0.5,
    ) -> None:
        if window < flash_frames:
            raise ValueError("window must be at least flash_frames (the detector's lookahead)")
        self.threshold, self.min_score, self.window = threshold, min_score, window
        self.flash_frames, self.flash_return = flash_frames, flash_return
        self._frames: deque[FrameFeatures] = deque(maxlen=window + flash_frames + 2)
        self._scores: deque[tuple[int, float]] = deque(maxlen=2 * window + 1)

    def process(self, features: FrameFeatures) -> list[Transition]:
        if self._frames:
            self._scores.append((features.index, frame_distance(self._frames[-1], features)))
        self._frames.append(features)
        return self._decide(features.index - self.window)

    def flush(self) -> list[Transition]:
        if not self._frames:
            return []
        last = self._frames[-1].index
        out = [t for i in range(last - self.window + 1, last + 1) for t in self._decide(i)]
        self._frames.clear()
        self._scores.clear()
        return out

    def _decide(self, i: int) -> list[Transition]:
        scores = dict(self._scores)
        if i not in scores or scores[i] < self.min_score:
            return []
        s = scores[i]
        near = np.array([v for j, v in scores.items() if j != i and abs(j - i) <= self.window])
        if near.size:
            med = float(np.median(near))
            mad = 1.4826 * float(np.median(np.abs(near - med)))
            # ties go to the earlier frame
            if s < self.threshold * (med + mad) or s <= scores.get(i - 1, 0.0) or s < scores.get(i + 1, 0.0):
                return []
        frames = {f.index: f for f in self._frames}
        span = self.flash_frames + 1
        for p in range(i - span, i):
            for q in range(i, p + span + 1):
                if (
                    (p, q) != (i - 1, i)
                    and p in frames
                    and q in frames
                    and frame_distance(frames[p], frames[q]) < self.flash_return * s
                ):
                    return []
        return [Transition("cut", i, i, i, s)]


def _tone(f: FrameFeatures, coverage: float) -> int:
    """-1 for a black frame, +1 for a white one, 0 otherwise (``coverage`` = share of pixels needed)."""
    return -1 if f.dark_fraction >= coverage else (1 if f.bright_fraction >= coverage else 0)


class FadeDetector:
    """Fades to/from black or white: runs of blank frames (nearly all pixels black, or white).

    A run longer than ``flash_frames`` is a transition with its boundary in the middle of the run;
    shorter runs (a flash, a black splice frame) are left to :class:`CutDetector`, which cuts only
    if the picture differs on either side. A run at the start (end) of the reel is a leader
    (trailer): it ends (starts) its own shot.
    """

    def __init__(self, *, coverage: float = 0.95, flash_frames: int = 2) -> None:
        self.coverage, self.flash_frames = coverage, flash_frames
        self._run: tuple[int, int, int] | None = None  # (tone, first, last) of the current blank run

    def process(self, features: FrameFeatures) -> list[Transition]:
        tone = _tone(features, self.coverage)
        if tone and self._run is not None and self._run[0] == tone:
            self._run = (tone, self._run[1], features.index)
            return []
        out = self._close_run(next_frame=features.index)
        self._run = (tone, features.index, features.index) if tone else None
        return out

    def flush(self) -> list[Transition]:
        out = []
        if self._run is not None and self._run[1] > 0:  # a trailer: the last shot starts at the blank run
            _, first, last = self._run
            out.append(Transition("fade", first, first, last + 1, float(last + 1 - first)))
        self._run = None
        return out

    def _close_run(self, next_frame: int) -> list[Transition]:
        """The blank run (if any) ended just before ``next_frame``: a transition or not?"""
        if self._run is None:
            return []
        _, first, last = self._run
        self._run = None
        length = last + 1 - first
        if first == 0:  # a leader: the first picture starts a shot
            return [Transition("fade", next_frame, first, last + 1, float(length))]
        if length > self.flash_frames:
            return [Transition("fade", (first + last + 1) // 2, first, last + 1, float(length))]
        return []


@dataclass(frozen=True, slots=True, eq=False)
class _Thumb:
    """A frame's thumbnail prepared once for the dissolve fits."""

    index: int
    blank: bool
    vec: np.ndarray  # (P,) float64 luma in [0, 1]
    unit: np.ndarray  # (P,) zero-mean, unit-norm (zeros for a flat thumbnail): NCC is a dot product
    std: float

    @classmethod
    def of(cls, f: FrameFeatures, coverage: float) -> _Thumb:
        vec = f.thumb.ravel().astype(np.float64)
        centred = vec - vec.mean()
        norm = float(np.sqrt(centred @ centred))
        unit = centred / norm if norm > 1e-9 else np.zeros_like(centred)
        return cls(f.index, _tone(f, coverage) != 0, vec, unit, norm / np.sqrt(vec.size))


def least_squares(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fit the columns of y (P, n) by x (P, k) @ coef; return (coef (k, n), residuals (P, n)).

    Normal equations: k <= 3 and P ~ 600, far cheaper than ``np.linalg.lstsq``'s SVD here.
    """
    coef = np.linalg.solve(x.T @ x + 1e-9 * np.eye(x.shape[1]), x.T @ y)
    return coef, y - x @ coef


@dataclass(frozen=True, slots=True)
class _DissolveFit:
    first: int  # window end frames (outgoing / incoming picture)
    last: int
    boundary: int
    score: float


class DissolveDetector:
    """Dissolves: stretches where every frame is a blend of the frames at both ends.

    For windows of ``2w`` frames (w in ``half_widths``) whose end frames differ in structure
    (1 - NCC of their thumbnails >= ``min_change``, so a brightness drift does not count), the
    frames inside are fitted by least squares as ``a_t * first + b_t * last + c_t``. A dissolve
    fits almost exactly (RMS residual <= ``max_residual`` x the RMS difference of the ends), with
    the blend weight ``b_t / (a_t + b_t)`` rising steadily from 0 to 1; camera or object motion
    does not (the middle frame is a moved picture, not a double exposure), at least once the ends
    differ as much as ``min_change`` asks (a slow pan over soft detail is close to a blend of
    nearby frames). A fade of one picture to a frame that is not quite blank (a title over black)
    fits with one end alone (residual below ``min_one_end_residual``) and is not a dissolve. The
    weights must also sum to 1 (within ``max_gain_error``), as a cross-fade's do.
    Overlapping windows are merged; the boundary is where the weight crosses 0.5 in the window
    whose ends differ most.

    Limitation: the pictures must not change much by motion *during* the dissolve (a static or
    slow camera, as in most dissolves); one over fast motion looks like motion and is missed.
    """

    def __init__(
        self,
        *,
        half_widths: tuple[int, ...] = (5, 10, 15),
        min_change: float = 0.5,
        max_residual: float = 0.12,
        min_one_end_residual: float = 0.15,
        max_gain_error: float = 0.2,
        max_step: float = 0.35,
        coverage: float = 0.95,
        min_contrast: float = 0.02,
    ) -> None:
        self.half_widths, self.min_change, self.max_residual = half_widths, min_change, max_residual
        self.min_one_end_residual, self.max_gain_error, self.max_step = min_one_end_residual, max_gain_error, max_step
        self.coverage, self.min_contrast = coverage, min_contrast
        self._frames: deque[_Thumb] = deque(maxlen=2 * max(half_widths) + 1)
        self._fits: list[_DissolveFit] = []

    def process(self, features: FrameFeatures) -> list[Transition]:
        self._frames.append(_Thumb.of(features, self.coverage))
        frames = list(self._frames)
        for w in self.half_widths:
            if len(frames) >= 2 * w + 1:
                fit = self._fit(frames[-2 * w - 1 :])
                if fit is not None:
                    self._fits.append(fit)
        # a group of overlapping fits is final once no later window can reach back into it
        return self._emit(before=features.index - 2 * max(self.half_widths))

    def flush(self) -> list[Transition]:
        out = self._emit(before=None)
        self._frames.clear()
        return out

    def _fit(self, window: list[_Thumb]) -> _DissolveFit | None:
        a, b = window[0], window[-1]
        if a.blank or b.blank:
            return None  # to or from a blank frame is a fade, the FadeDetector's job
        if min(a.std, b.std) < self.min_contrast:
            return None
        change = 1.0 - float(a.unit @ b.unit)  # 1 - NCC: blind to brightness and contrast changes
        if change < self.min_change:
            return None
        ta, tb = a.vec, b.vec
        ones = np.ones_like(ta)
        ends = np.stack([ta, tb, ones], axis=1)  # (P, 3)
        scale = max(float(np.sqrt(np.mean((tb - ta) ** 2))), 1e-6)  # RMS difference of the ends

        def error(residual: np.ndarray) -> float:
            return float(np.sqrt(np.mean(residual * residual))) / scale

        if error(least_squares(ends, window[len(window) // 2].vec[:, None])[1]) > self.max_residual:
            return None  # cheap early exit: motion fails on the middle frame already
        y = np.stack([f.vec for f in window[1:-1]], axis=1)  # (P, n)
        coef, residual = least_squares(ends, y)  # (3, n)
        fit_error = error(residual)
        if fit_error > self.max_residual:
            return None
        # a fade of one picture (to a dark or bright frame that still shows a title) fits with one end alone
        if min(error(least_squares(np.stack([t, ones], axis=1), y)[1]) for t in (ta, tb)) < self.min_one_end_residual:
            return None
        total = coef[0] + coef[1]
        if np.abs(total - 1.0).max() > self.max_gain_error:
            # a cross-fade's weights sum to one; fitting a moved picture (full contrast) with a blend
            # of two decorrelated ones (less contrast) needs weights summing to more
            return None
        weight = np.concatenate([[0.0], coef[1] / total, [1.0]])
        steps = np.diff(weight)
        if steps.max() > self.max_step or steps.min() < -self.max_step / 2:
            return None  # a jump is a cut; a step back is not a steady blend
        crossing = int(np.argmax(weight >= 0.5))
        # the window whose ends differ most spans the whole dissolve: its crossing is the true middle
        return _DissolveFit(a.index, b.index, window[crossing].index, change - fit_error)

    def _emit(self, before: int | None) -> list[Transition]:
        """Report each group of overlapping fits that ends before frame ``before`` (all if None)."""
        groups: list[list[_DissolveFit]] = []
        for fit in sorted(self._fits, key=lambda f: f.first):
            if groups and fit.first <= max(g.last for g in groups[-1]):
                groups[-1].append(fit)
            else:
                groups.append([fit])
        out: list[Transition] = []
        self._fits = []
        for group in groups:
            end = max(g.last for g in group)
            if before is not None and end >= before:
                self._fits += group
                continue
            best = max(group, key=lambda g: g.score)
            out.append(Transition("dissolve", best.boundary, min(g.first for g in group) + 1, end, best.score))
        return out


@dataclass(frozen=True, slots=True)
class ShotSettings:
    """Tuning of :func:`detect_transitions` (frames are frames of the reel)."""

    min_shot_len: int = 10
    """Shortest shot kept, in frames: a closer boundary is dropped (the weaker one)."""
    cut_threshold: float = 2.0
    """A cut's frame difference must reach this many times the local median + MAD."""
    fades: bool = True
    dissolves: bool = True
    coarse_step: int = 5
    """Intra-only reels: decode every coarse_step-th frame first, the rest only where a boundary may
    be (:mod:`pipeline.shots.coarse`); 1 decodes every frame. Long-GOP reels always decode every frame."""

    def detectors(self) -> list[Detector]:
        """Fresh detectors for one reel."""
        found: list[Detector] = [CutDetector(threshold=self.cut_threshold)]
        if self.fades:
            found.append(FadeDetector())
        if self.dissolves:
            found.append(DissolveDetector())
        return found


def merge_transitions(transitions: Iterable[Transition], frames: int, min_shot_len: int) -> list[Transition]:
    """Resolve what several detectors found into one sorted list of boundaries.

    A transition whose boundary lies inside (or touches) a stronger kind's span is the same event
    seen twice and is dropped (fade > dissolve > cut: a cut to black then a fade-in is one fade).
    Then, strongest first, a boundary is kept only if every shot stays ``min_shot_len`` frames
    long, the first and last shot included.
    """
    found = sorted(transitions, key=lambda t: (-_PRIORITY[t.kind], -t.score, t.frame))
    distinct: list[Transition] = []
    for t in found:
        if not any(_PRIORITY[k.kind] > _PRIORITY[t.kind] and k.start - 1 <= t.frame <= k.end + 1 for k in distinct):
            distinct.append(t)
    kept: list[Transition] = []
    for t in distinct:
        if t.frame < min_shot_len or frames - t.frame < min_shot_len:
            continue
        if all(abs(t.frame - k.frame) >= min_shot_len for k in kept):
            kept.append(t)
    return sorted(kept, key=lambda t: t.frame)


def detect_transitions(
    lumas: Iterable[np.ndarray],
    *,
    bit_depth: int = 8,
    limited_range: bool = False,
    settings: ShotSettings = ShotSettings(),
) -> tuple[list[Transition], int]:
    """Find shot boundaries in a sequence of luma frames.

    Args:
        lumas: frames in order, each (H, W) uint8, or uint16 with ``bit_depth``-bit code values;
            any size (features are taken at ANALYSIS_HEIGHT lines).
        bit_depth: significant bits per sample.
        limited_range: codes are limited ("tv") range, black at 16 << (bit_depth - 8).
        settings: detector tuning.

    Returns:
        (the merged transitions sorted by frame, the number of frames seen).
    """
    features = (compute_features(index, luma, bit_depth, limited_range) for index, luma in enumerate(lumas))
    found, frames = run_detectors(features, settings)
    return merge_transitions(found, frames, settings.min_shot_len), frames


def run_detectors(features: Iterable[FrameFeatures], settings: ShotSettings) -> tuple[list[Transition], int]:
    """Feed consecutive frames' features to fresh detectors, then flush them.

    Returns:
        (every transition reported, unmerged; one past the last frame index seen, 0 if none).
    """
    detectors = settings.detectors()
    found: list[Transition] = []
    end = 0
    for f in features:
        for detector in detectors:
            found += detector.process(f)
        end = f.index + 1
    for detector in detectors:
        found += detector.flush()
    return found, end


@dataclass(frozen=True, slots=True)
class Shot:
    """One shot: frames ``start`` (inclusive) to ``end`` (exclusive), 0-based in the reel.

    ``begins`` is how it starts: "start" (first shot of the reel), "cut", "fade" or "dissolve".
    """

    index: int
    start: int
    end: int
    begins: Literal["start", "cut", "fade", "dissolve"] = "cut"

    @property
    def frames(self) -> int:
        """Length in frames."""
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class ShotList:
    """The shots of one reel, with what is needed to write timecodes.

    Attributes:
        reel: the reel's path.
        fps: exact frame rate (e.g. Fraction(24000, 1001)).
        frames: number of frames in the reel (decoded).
        start_timecode: timecode of frame 0 ("HH:MM:SS:FF", ";" before FF if drop-frame), if any.
        shots: consecutive shots covering frames 0..frames.
    """

    reel: Path
    fps: Fraction
    frames: int
    start_timecode: str | None
    shots: tuple[Shot, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: {"fps": "24000/1001", "frames": N, "shots": [{"index": 0, "start": 0, "end": 80}, ...]}.

        ``end`` is exclusive; extra keys: "reel", "start_timecode" and each shot's "begins".
        """
        return {
            "reel": str(self.reel),
            "fps": str(self.fps),
            "frames": self.frames,
            "start_timecode": self.start_timecode,
            "shots": [{"index": s.index, "start": s.start, "end": s.end, "begins": s.begins} for s in self.shots],
        }


def shots_from_transitions(transitions: Iterable[Transition], frames: int) -> tuple[Shot, ...]:
    """Consecutive shots covering frames [0, frames) split at the transitions' boundaries."""
    cuts = sorted((t for t in transitions if 0 < t.frame < frames), key=lambda t: t.frame)
    starts = [0] + [t.frame for t in cuts]
    begins: list[Literal["start", "cut", "fade", "dissolve"]] = ["start", *(t.kind for t in cuts)]
    ends = [*starts[1:], frames]
    return tuple(Shot(i, s, e, b) for i, (s, e, b) in enumerate(zip(starts, ends, begins, strict=True)))
