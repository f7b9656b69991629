"""What a run does beyond its inputs: :class:`RunSettings`, JSON-safe, part of every shot's key."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, get_args

from pipeline.keyframes import MissingRefs
from pipeline.media.encode import CodecName

Method = Literal["net", "transfer"]
"""Exemplar colorizers: "net", the trained network (``model.net``, weights
``model/weights/colornet.pt``); "transfer", the training-free super-attention transfer
(``model.transfer``, thesis ch. 4)."""
METHODS: tuple[Method, ...] = get_args(Method)
DEFAULT_METHOD: Method = "net"
Device = Literal["auto", "cpu", "cuda"]
"""Where torch runs: "auto" is CUDA when available, else the CPU."""
DEVICES: tuple[Device, ...] = get_args(Device)

MIN_WORK_SIZE = 64
MAX_WORK_SIZE = 2160


@dataclass(frozen=True)
class RunSettings:
    """The choices of one ``postprod run``.

    codec: output codec (:data:`pipeline.media.encode.CodecName`).
    device: where the models run (:data:`Device`).
    missing: what shots without references get (:data:`pipeline.keyframes.MissingRefs`).
    work_size: short side in px of the working resolution of colorization and propagation,
        :data:`MIN_WORK_SIZE` .. :data:`MAX_WORK_SIZE`.
    method: the keyframe colorizer from exemplars (:data:`Method`); artist-
        coloured keyframes are taken as they are whatever the method.
    """

    codec: CodecName = "prores"
    device: Device = "auto"
    missing: MissingRefs = "nearest"
    work_size: int = 256
    method: Method = "net"

    def __post_init__(self) -> None:
        for name, kind in (("codec", CodecName), ("device", Device), ("missing", MissingRefs), ("method", Method)):
            if getattr(self, name) not in get_args(kind):
                raise ValueError(f"{name} must be one of {', '.join(get_args(kind))}, got {getattr(self, name)!r}")
        if not isinstance(self.work_size, int) or not MIN_WORK_SIZE <= self.work_size <= MAX_WORK_SIZE:
            raise ValueError(
                f"work_size must be a whole number of px in {MIN_WORK_SIZE}..{MAX_WORK_SIZE}, got {self.work_size!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSettings:
        """Inverse of :meth:`to_dict`; ``ValueError`` for unknown keys or values."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown run settings {', '.join(sorted(unknown))}")
        return cls(**d)

    def replace(self, **changes: Any) -> RunSettings:
        return replace(self, **changes)

    def pixel_settings(self) -> dict[str, Any]:
        """The settings that change the colours (all but the output codec), for cache keys."""
        return {k: v for k, v in self.to_dict().items() if k != "codec"}
