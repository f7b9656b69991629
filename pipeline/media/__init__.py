"""Media I/O with PyAV: probe a reel, decode it frame-exactly, write it back, SMPTE timecode."""

from __future__ import annotations

from pipeline.media.decode import CorruptFrameWarning, Frame, iter_frames
from pipeline.media.probe import AudioInfo, ReelInfo, probe
from pipeline.media.timecode import frames_to_timecode, timecode_to_frames

__all__ = [
    "AudioInfo",
    "CorruptFrameWarning",
    "Frame",
    "ReelInfo",
    "frames_to_timecode",
    "iter_frames",
    "probe",
    "timecode_to_frames",
]
