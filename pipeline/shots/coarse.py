"""Coarse-to-fine shot detection: look at every few frames, decode densely only where a boundary may be.

Decoding is most of the cost of shot detection, and in an intra-only reel (ProRes, DNxHD, MJPEG,
...: :func:`~pipeline.media.decode.is_intra_only`) a frame that is not decoded costs nothing.
:func:`detect_transitions_coarse` decodes each frame at most once, in three rounds:

1. samples: every ``step``-th frame and the last one;
2. gaps: the frames between two consecutive samples if the samples differ (:func:`frame_distance`
   >= half the CutDetector's ``min_score``) or either is blank (a fade may be under way);
3. dense: every gap of round 2 that holds a frame difference >= ``min_score`` or a blank frame,
   and every gap under a possible dissolve (two samples at most a dissolve window apart whose
   thumbnails differ in structure, 1 - NCC >= half the DissolveDetector's ``min_change``, with a
   sample between them that a blend of the two fits clearly better than either alone, as in a
   cross-fade and unlike a cut or motion), plus :data:`CONTEXT` frames either side of it.

If round 2 would decode more than :data:`DENSE_SHARE` of the remaining frames (fast motion
everywhere), all of them are decoded instead, and the result is the dense path's.
The detectors of :func:`~pipeline.shots.detectors.detect_transitions` then run over each dense
stretch; a boundary is kept only inside a gap of round 3 (a stretch's context frames only inform
the decisions), and the kept ones are merged over the whole reel, minimum shot length included.

Round 2's test is exact: a cut at frame i needs frame_distance(i - 1, i) >= ``min_score`` and a
fade boundary a blank frame at i or i - 1, so a gap with neither holds no cut or fade. Round 1 and
the dissolve test are not proofs. Round 1 misses a cut only if the samples either side of it differ
by less than ``min_score`` / 2 while the frames at the cut differ by ``min_score`` or more: as
frame_distance is a metric, the picture must then change by more than ``min_score`` / 2 within
the step around the cut (fast motion). It also misses a blank run longer than the flash limit but
shorter than ``step`` between two samples of the same picture (the dense path reports a fade).
On every bench reel both paths give the same boundaries (``bench/README.md``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from pipeline.shots.detectors import (
    CutDetector,
    DissolveDetector,
    FadeDetector,
    ShotSettings,
    Transition,
    least_squares,
    merge_transitions,
    run_detectors,
)
from pipeline.shots.features import FrameFeatures, compute_features, frame_distance

Reader = Callable[[Sequence[range]], Iterable[tuple[int, np.ndarray]]]
"""Decodes frames of a reel: given increasing, disjoint ranges of frame indices, yields (index, (H, W) luma)
for exactly those frames, in order (e.g. :func:`~pipeline.media.decode.iter_frame_ranges`)."""

CONTEXT = CutDetector().window + 1
"""Frames decoded either side of a gap of round 3: the scores the CutDetector compares a cut with
(``window`` either side) need one more frame before them."""


DENSE_SHARE = 0.5
"""When round 2 would decode more than this share of the frames that are not samples, every frame
is decoded instead (in one pass, samples reused): then the result is the dense path's exactly."""


def _blank(f: FrameFeatures, coverage: float) -> bool:
    return max(f.dark_fraction, f.bright_fraction) >= coverage


def _ncc_change(a: np.ndarray, b: np.ndarray) -> float:
    """1 - normalised cross-correlation of two thumbnails, in [0, 2]; 0 when either is flat."""
    a, b = a - a.mean(), b - b.mean()
    norm = float(np.sqrt((a @ a) * (b @ b)))
    return 1.0 - float(a @ b) / norm if norm > 1e-12 else 0.0


def _blend_errors(first: np.ndarray, middle: np.ndarray, last: np.ndarray) -> tuple[float, float]:
    """RMS residual of ``middle`` fitted by ``a * first + b * last + c`` and by the better end alone
    (``a * end + c``), both relative to the RMS difference of the ends (as DissolveDetector measures)."""
    ones = np.ones_like(first)
    scale = max(float(np.sqrt(np.mean((last - first) ** 2))), 1e-6)

    def error(x: np.ndarray) -> float:
        residual = least_squares(x, middle[:, None])[1]
        return float(np.sqrt(np.mean(residual * residual))) / scale

    both = error(np.stack([first, last, ones], axis=1))
    alone = min(error(np.stack([end, ones], axis=1)) for end in (first, last))
    return both, alone


def possible_dissolves(samples: Sequence[FrameFeatures], dissolve: DissolveDetector) -> set[int]:
    """Gaps (k: between samples k and k + 1) that may lie under a dissolve.

    Args:
        samples: features of increasing frames, a few frames apart.
        dissolve: the detector whose limits apply (window length, ``min_change``, residuals).
    """
    span = 2 * max(dissolve.half_widths)
    thumbs = [f.thumb.ravel().astype(np.float64) for f in samples]
    found: set[int] = set()
    for x in range(len(samples)):
        for y in range(x + 2, len(samples)):
            # the windows DissolveDetector fits are at most `span` frames long; sample pairs may straddle one
            if samples[y].index - samples[x].index > span + 2 * (samples[x + 1].index - samples[x].index):
                break
            if _ncc_change(thumbs[x], thumbs[y]) < dissolve.min_change / 2:
                continue
            both, alone = _blend_errors(thumbs[x], thumbs[(x + y) // 2], thumbs[y])
            if both <= 2 * dissolve.max_residual and alone >= both + dissolve.min_one_end_residual / 3:
                found.update(range(x, y))
    return found


def _stretches(gaps: Iterable[tuple[int, int]], frames: int) -> list[range]:
    """Merged frame ranges covering each gap (first, last sample) with CONTEXT frames either side."""
    out: list[range] = []
    for first, last in sorted(gaps):
        lo, hi = max(0, first - CONTEXT), min(frames, last + CONTEXT + 1)
        if out and lo <= out[-1].stop:
            out[-1] = range(out[-1].start, max(out[-1].stop, hi))
        else:
            out.append(range(lo, hi))
    return out


def _missing(stretches: Sequence[range], have: dict[int, FrameFeatures]) -> list[range]:
    """The frames of ``stretches`` not in ``have``, as increasing, disjoint ranges."""
    out: list[range] = []
    for stretch in stretches:
        for i in stretch:
            if i in have:
                continue
            if out and out[-1].stop == i:
                out[-1] = range(out[-1].start, i + 1)
            else:
                out.append(range(i, i + 1))
    return out


def detect_transitions_coarse(
    read: Reader,
    frames: int,
    *,
    step: int,
    bit_depth: int = 8,
    limited_range: bool = False,
    settings: ShotSettings = ShotSettings(),
) -> list[Transition]:
    """The transitions :func:`~pipeline.shots.detectors.detect_transitions` finds, decoding fewer frames.

    Args:
        read: decodes the frames asked for (see :data:`Reader`).
        frames: number of frames in the reel.
        step: frames between samples of round 1 (>= 2).
        bit_depth: significant bits per luma sample.
        limited_range: codes are limited ("tv") range.
        settings: detector tuning, as for the dense path.

    Returns:
        The merged transitions, sorted by frame.
    """
    if step < 2:
        raise ValueError(f"step must be at least 2, got {step}")
    detectors = settings.detectors()
    cut = next(d for d in detectors if isinstance(d, CutDetector))
    fade = next((d for d in detectors if isinstance(d, FadeDetector)), None)
    dissolve = next((d for d in detectors if isinstance(d, DissolveDetector)), None)
    coverage = fade.coverage if fade else 1.01  # without fades, nothing counts as blank
    have: dict[int, FrameFeatures] = {}

    def decode(ranges: Sequence[range]) -> Iterator[FrameFeatures]:
        for i, luma in read(ranges):
            have[i] = compute_features(i, luma, bit_depth, limited_range)
            yield have[i]

    # round 1: samples
    grid = [range(0, frames, step)] + ([range(frames - 1, frames)] if (frames - 1) % step else [])
    samples = list(decode(grid))
    pairs = list(itertools.pairwise(samples))
    maybe = [
        k
        for k, (a, b) in enumerate(pairs)
        if frame_distance(a, b) >= cut.min_score / 2 or _blank(a, coverage) or _blank(b, coverage)
    ]
    sure = possible_dissolves(samples, dissolve) if dissolve else set()
    todo = [k for k in maybe if k not in sure]
    between = [range(pairs[k][0].index + 1, pairs[k][1].index) for k in todo]
    if sum(len(r) for r in between) > DENSE_SHARE * (frames - len(samples)):
        # fast motion everywhere: the rounds would decode nearly every frame anyway, in three passes
        gaps = [(0, frames - 1)]
    else:
        # round 2: the frames between samples that differ; keep the gaps that may hold a cut or fade
        list(decode(between))
        for k in todo:
            gap = [have[i] for i in range(pairs[k][0].index, pairs[k][1].index + 1)]
            if (
                any(_blank(f, coverage) for f in gap)
                or max(frame_distance(a, b) for a, b in itertools.pairwise(gap)) >= cut.min_score
            ):
                sure.add(k)
        gaps = [(pairs[k][0].index, pairs[k][1].index) for k in sure]
    # round 3: the detectors over each such gap and its context
    core = np.zeros(frames, dtype=bool)  # frames where a boundary may be kept
    for first, last in gaps:
        core[first + 1 : last + 1] = True
    stretches = _stretches(gaps, frames)
    dense = decode(_missing(stretches, have))

    def stretch_features(stretch: range) -> Iterator[FrameFeatures]:
        for i in stretch:
            f = have[i] if i in have else next(dense, None)
            if f is None or f.index != i:
                raise ValueError(f"the reader did not give frame {i} when asked for it")
            yield f

    found = [t for stretch in stretches for t in run_detectors(stretch_features(stretch), settings)[0]]
    return merge_transitions(
        [t for t in found if 0 <= t.frame < frames and core[t.frame]], frames, settings.min_shot_len
    )
