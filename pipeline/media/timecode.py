"""SMPTE timecode for an exact frame rate, with drop-frame for 30000/1001 and 60000/1001.

Timecode counts frames at the *nominal* rate (24 for 24000/1001, 30 for 30000/1001).
Drop-frame timecode (";" before the frames) skips the labels ;00 and ;01 (;00..;03 at 60000/1001)
at the start of every minute except minutes 00, 10, 20, ... so that it tracks the clock.
Timecode wraps at 24 hours, like a VTR's.
"""

from __future__ import annotations

import re
from fractions import Fraction

DROP_FRAME_RATES = (Fraction(30000, 1001), Fraction(60000, 1001))
_PATTERN = re.compile(r"^(\d{1,2}):(\d{2}):(\d{2})([:;.,])(\d{2,3})$")


def nominal_rate(fps: Fraction) -> int:
    """Frames per timecode second: the rate rounded to an integer (24000/1001 -> 24)."""
    fps = Fraction(fps)
    if fps <= 0:
        raise ValueError(f"frame rate must be positive, got {fps}")
    return max(1, round(fps))


def is_drop_frame_rate(fps: Fraction) -> bool:
    """True for the NTSC rates that use drop-frame timecode (30000/1001, 60000/1001)."""
    return Fraction(fps) in DROP_FRAME_RATES


def _dropped_per_minute(fps: Fraction) -> int:
    return nominal_rate(fps) // 15  # 2 at 29.97, 4 at 59.94


def frames_per_day(fps: Fraction, drop_frame: bool) -> int:
    """Number of timecode labels in 24 hours at this rate."""
    per_hour = nominal_rate(fps) * 3600
    if drop_frame:
        per_hour -= _dropped_per_minute(fps) * 54  # 54 of the 60 minutes drop
    return per_hour * 24


def _check_drop(fps: Fraction, drop_frame: bool) -> None:
    if drop_frame and not is_drop_frame_rate(fps):
        raise ValueError(f"drop-frame timecode exists only at 30000/1001 and 60000/1001, not {fps}")


def frames_to_timecode(frame: int, fps: Fraction, drop_frame: bool | None = None) -> str:
    """Frame number (0 = 00:00:00:00) -> "HH:MM:SS:FF" ("HH:MM:SS;FF" when drop-frame).

    ``drop_frame`` None: drop-frame exactly for 30000/1001 and 60000/1001. Frame numbers past
    24 hours wrap; negative ones raise ``ValueError``.
    """
    fps = Fraction(fps)
    drop = is_drop_frame_rate(fps) if drop_frame is None else drop_frame
    _check_drop(fps, drop)
    if frame < 0:
        raise ValueError(f"frame number must be >= 0, got {frame}")
    base = nominal_rate(fps)
    frame %= frames_per_day(fps, drop)
    if drop:
        d = _dropped_per_minute(fps)
        per_10min = base * 600 - 9 * d
        per_min = base * 60 - d
        tens, rem = divmod(frame, per_10min)
        # Re-insert the skipped labels: 9 drops per full 10 minutes, then one per started minute.
        frame += 9 * d * tens + (d * ((rem - d) // per_min) if rem > d else 0)
    ff = frame % base
    seconds = frame // base
    sep = ";" if drop else ":"
    width = len(str(base - 1)) if base > 100 else 2
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}{sep}{ff:0{width}d}"


def timecode_to_frames(tc: str, fps: Fraction) -> int:
    """ "HH:MM:SS:FF" or drop-frame "HH:MM:SS;FF" (also "." or ",") -> frame number.

    Raises ``ValueError`` for a malformed timecode, fields out of range, a drop-frame label
    at a rate without drop-frame, or a label that drop-frame skips (e.g. 00:01:00;00).
    """
    m = _PATTERN.match(tc.strip())
    if not m:
        raise ValueError(f"not a timecode: {tc!r} (expected HH:MM:SS:FF or HH:MM:SS;FF)")
    hh, mm, ss, sep, ff = int(m[1]), int(m[2]), int(m[3]), m[4], int(m[5])
    fps = Fraction(fps)
    drop = sep in ";.,"
    _check_drop(fps, drop)
    base = nominal_rate(fps)
    if mm > 59 or ss > 59 or ff >= base or hh > 23:
        raise ValueError(f"timecode {tc!r} has a field out of range at {fps} fps")
    minutes = hh * 60 + mm
    frames = (minutes * 60 + ss) * base + ff
    if drop:
        d = _dropped_per_minute(fps)
        if ss == 0 and ff < d and mm % 10 != 0:
            raise ValueError(
                f"timecode {tc!r} does not exist in drop-frame (labels ;00-;{d - 1:02d} "
                "are skipped at the start of minutes not divisible by 10)"
            )
        frames -= d * (minutes - minutes // 10)
    return frames


def add_frames(tc: str, frames: int, fps: Fraction) -> str:
    """Timecode ``frames`` later (earlier if negative), same drop-frame mode, wrapping at 24 h."""
    drop = bool(re.search(r"[;.,]", tc))
    total = frames_per_day(fps, drop)
    return frames_to_timecode((timecode_to_frames(tc, fps) + frames) % total, fps, drop)
