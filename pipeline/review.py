"""What a person looks at after a run: the contact sheet of the shots, before and after."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.color import rgb_from_luma_chroma
from pipeline.images import write_rgb
from pipeline.keyframes import Plan
from pipeline.media.decode import iter_frames
from pipeline.media.probe import probe

CONTACT_SHEET = "contact-sheet.png"
"""The contact sheet's name in the work folder."""


def contact_sheet(plan: Plan, segments: dict[int, Path | None], dest: Path, *, height: int = 135) -> Path:
    """A PNG with one row per shot: its first keyframe (or first frame) grey, then coloured.

    ``segments``: shot index -> its segment (None or absent: the shot is shown grey twice).
    ``height``: thumbnail height in px. Written atomically, replacing ``dest``.
    """
    info = probe(plan.reel)
    width = max(2, round(height * info.width / info.height))
    rows = []
    for shot in plan.shots:
        frame = shot.keyframes[0].frame if shot.keyframes else shot.start
        seg = segments.get(shot.index)
        src = next(iter_frames(plan.reel, frame, frame + 1))
        before = rgb_from_luma_chroma(src.luma, None, src.bit_depth, info.luma_range, info.matrix)
        after = before
        if seg is not None:
            f = next(iter_frames(seg, frame - shot.start, frame - shot.start + 1, chroma=True))
            after = rgb_from_luma_chroma(f.luma, f.chroma, f.bit_depth, info.luma_range, info.matrix)
        rows.append(np.hstack([cv2.resize(x, (width, height), interpolation=cv2.INTER_AREA) for x in (before, after)]))
    write_rgb(dest, np.vstack(rows), bit_depth=8, force=True)
    return Path(dest)
