"""Where a shot's colour is guessed: its per-frame confidence, kept in the work folder.

While a shot is coloured, :class:`ConfidenceRecorder` takes each frame's propagation confidence
(:class:`pipeline.propagate.PropagatedFrame`: (h, w) float32 in [0, 1], 1 on keyframes) and keeps,
per frame, the share of *guessed* pixels (confidence below :data:`pipeline.propagate.UNSURE`: their
colour is mostly the attention term's guess, step e of ``pipeline.propagate``), the mean
confidence and an 8-bit confidence map at most :data:`MAP_SIZE` px on its short side. The record
is one compressed ``.npz`` per shot, ``<workdir>/confidence/<segment stem>.npz``
(:func:`confidence_path`), so it is named by the same content key as the segment it describes.

It costs one area resize of the working-resolution map and two means per frame (well under a
millisecond against the seconds a frame's propagation takes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import PostprodError
from pipeline.files import atomic_output
from pipeline.workdir import CONFIDENCE

UNSURE = 0.5
"""A confidence (path or flow check, ``pipeline.propagate`` steps b, d, e) below this counts as
unsure: such a pixel's colour is mostly the attention term's guess."""

MAP_SIZE = 48
"""Short side (px) of the kept confidence maps (the working resolution's, if smaller)."""


@dataclass(frozen=True)
class ShotConfidence:
    """The confidence record of one shot, frames ``start`` .. ``start + n - 1`` of the reel.

    guessed: (n,) float32 in [0, 1], share of each frame's pixels with confidence < UNSURE.
    mean: (n,) float32 in [0, 1], each frame's mean confidence.
    maps: (n, h, w) uint8, confidence x 255 at a reduced size of the working resolution's aspect.
    """

    start: int
    guessed: np.ndarray
    mean: np.ndarray
    maps: np.ndarray

    @property
    def frames(self) -> int:
        return int(self.guessed.shape[0])

    def worst(self) -> int:
        """Reel frame with the largest guessed share (the lowest mean confidence on ties)."""
        order = np.lexsort((self.mean, -self.guessed))
        return self.start + int(order[0])


def map_size(h: int, w: int) -> tuple[int, int]:
    """(h, w) of a kept map for an (h, w) working-resolution map: short side <= MAP_SIZE."""
    scale = min(1.0, MAP_SIZE / min(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


class ConfidenceRecorder:
    """Collects the per-frame confidence of one shot starting at reel frame ``start``."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.guessed: list[float] = []
        self.mean: list[float] = []
        self.maps: list[np.ndarray] = []

    def add(self, confidence: np.ndarray) -> None:
        """Record the next frame's confidence, (h, w) float32 in [0, 1]."""
        conf = np.asarray(confidence, dtype=np.float32)
        self.guessed.append(float((conf < UNSURE).mean()))
        self.mean.append(float(conf.mean()))
        h, w = map_size(*conf.shape)
        small = cv2.resize(conf, (w, h), interpolation=cv2.INTER_AREA)
        self.maps.append(np.clip(np.rint(small * 255.0), 0, 255).astype(np.uint8))

    def record(self) -> ShotConfidence:
        maps = np.stack(self.maps) if self.maps else np.zeros((0, 1, 1), np.uint8)
        return ShotConfidence(self.start, np.asarray(self.guessed, np.float32), np.asarray(self.mean, np.float32), maps)

    def save(self, dest: Path) -> Path:
        """Write the record to ``dest`` atomically (:func:`write_confidence`)."""
        return write_confidence(self.record(), dest)


def confidence_path(segment: Path) -> Path:
    """``<workdir>/confidence/<segment stem>.npz``: the record of the shot whose segment is ``segment``."""
    segment = Path(segment)
    return segment.parent.parent / CONFIDENCE / f"{segment.stem}.npz"


def write_confidence(record: ShotConfidence, dest: Path) -> Path:
    """Write ``record`` as a compressed ``.npz`` at ``dest``, atomically, replacing a previous one."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(dest, force=True) as tmp, tmp.open("wb") as f:
        np.savez_compressed(f, start=np.int64(record.start), guessed=record.guessed, mean=record.mean, maps=record.maps)
    return dest


def read_confidence(path: Path) -> ShotConfidence:
    """Read a record written by :func:`write_confidence`; :class:`PostprodError` if it is not one."""
    try:
        with np.load(Path(path)) as data:
            return ShotConfidence(
                int(data["start"]),
                data["guessed"].astype(np.float32),
                data["mean"].astype(np.float32),
                data["maps"].astype(np.uint8),
            )
    except FileNotFoundError as err:
        raise PostprodError(path, "no such file") from err
    except (OSError, ValueError, KeyError) as err:
        raise PostprodError(path, f"not a confidence record ({type(err).__name__}: {err})") from err
