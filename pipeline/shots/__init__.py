"""Shot detection for black-and-white reels: luma-only detectors, shot lists and their writers."""

from pipeline.shots.coarse import detect_transitions_coarse
from pipeline.shots.detect import detect_shots
from pipeline.shots.detectors import (
    CutDetector,
    Detector,
    DissolveDetector,
    FadeDetector,
    Shot,
    ShotList,
    ShotSettings,
    Transition,
    detect_transitions,
    merge_transitions,
    shots_from_transitions,
)
from pipeline.shots.features import FrameFeatures, compute_features, frame_distance
from pipeline.shots.output import write_csv, write_edl, write_json

__all__ = [
    "CutDetector",
    "Detector",
    "DissolveDetector",
    "FadeDetector",
    "FrameFeatures",
    "Shot",
    "ShotList",
    "ShotSettings",
    "Transition",
    "compute_features",
    "detect_shots",
    "detect_transitions",
    "detect_transitions_coarse",
    "frame_distance",
    "merge_transitions",
    "shots_from_transitions",
    "write_csv",
    "write_edl",
    "write_json",
]
