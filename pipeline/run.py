"""`postprod run` as plain stages: prepare → colorize each shot → assemble.

Each stage takes and returns file paths, so the same functions run in one process
(:func:`run_reel`) or as Prefect tasks spread over a farm (``flows/``):

- :func:`prepare_run`: probe, shots, the refs folder checked (every problem at once), the
  keyframe plan; writes ``plan.json`` in the work folder. Nothing heavy runs before it passes.
- :func:`colorize_shot`: keyframes colorized, colour propagated through the shot, and the shot
  written as a lossless segment (FFV1: the source's luma codes bit for bit + the new chroma)
  under ``segments/`` with a content key in its name, so a finished shot is never recomputed:
  the segment *is* the cache.
- :func:`assemble`: the segments (and the source, for shots left grey) re-encoded in order
  into the studio's codec with the source's frame rate, timecode and audio.

Memory is bounded by one shot at working resolution (:class:`RunSettings.work_size`) plus a
few full-resolution frames, whatever the reel's length.
"""
from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PostprodError
from pipeline.files import check_writable_destination
from pipeline.keyframes import Keyframe, Plan, ShotPlan, plan_keyframes, read_plan, write_plan
from pipeline.media.decode import Frame, iter_frames
from pipeline.media.encode import CODECS, ReelWriter
from pipeline.media.probe import ReelInfo, probe
from pipeline.refs import read_refs
from pipeline.shots import detect_shots, write_json

PLAN_NAME = "plan.json"
SEGMENTS = "segments"
SEGMENT_CODEC = "ffv1"
# Part of every shot key: raise it with any change to the colour maths that changes pixels, so a
# work folder left by an older postprod is recomputed, not reused (2: artist keyframes at full size).
COLOUR_VERSION = 2


@dataclass(frozen=True)
class RunSettings:
    """What a run does beyond its inputs; JSON-safe, part of every shot's cache key.

    codec: output codec (prores|ffv1|h264|tiff|png). device: auto|cpu|cuda.
    missing: policy for shots without references (nearest|error|grey).
    work_size: short side in px of the working resolution for colorization and propagation.
    method: keyframe colorizer from exemplars (``pipeline.colorize.METHODS``: net|transfer);
        coloured keyframes are taken as they are whatever the method.
    """

    codec: str = "prores"
    device: str = "auto"
    missing: str = "nearest"
    work_size: int = 256
    method: str = "net"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSettings:
        return cls(**d)

    def replace(self, **changes: Any) -> RunSettings:
        return replace(self, **changes)


Progress = Callable[[str, int], "ProgressBar"]


class ProgressBar:
    """A stage's progress on stderr (frames and frames/s), silent when stderr is not a terminal."""

    def __init__(self, label: str, total: int) -> None:
        import click

        self._bar = click.progressbar(length=total, label=label, file=sys.stderr,
                                      show_pos=True, show_eta=True) if sys.stderr.isatty() else None
        if self._bar is not None:
            self._bar.__enter__()

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


# --- prepare ------------------------------------------------------------------------------

def default_workdir(reel: Path) -> Path:
    """``./postprod-work/<reel stem>-<fingerprint[:12]>``: one folder per reel content."""
    return Path("postprod-work") / f"{Path(reel).stem}-{reel_fingerprint(reel)[:12]}"


def reel_fingerprint(reel: Path) -> str:
    """sha256 hex of the reel's size and its first and last MiB: cheap, and changes with any re-export."""
    reel = Path(reel)
    size = reel.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with reel.open("rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), 2)
            h.update(f.read())
    return h.hexdigest()


def prepare_run(reel: Path, refs: Path | None, workdir: Path, settings: RunSettings) -> Path:
    """Probe, detect shots, check the refs folder and plan keyframes; returns ``workdir/plan.json``.

    Raises :class:`PostprodError` (every refs problem at once) before any colorization.
    """
    reel, workdir = Path(reel).resolve(), Path(workdir)
    if settings.codec not in CODECS:
        raise PostprodError(None, f"unknown codec {settings.codec!r} (choose from {', '.join(CODECS)})")
    info = probe(reel)
    shots = detect_shots(reel)
    if refs is None:
        if settings.missing != "grey":
            raise PostprodError(None, "no refs folder given (use --refs DIR, or --missing-refs grey)")
        from pipeline.refs import RefSet

        refset = RefSet(folder=Path("."), refs=(), problems=())
    else:
        refs = Path(refs).resolve()
        if not refs.is_dir():
            raise PostprodError(refs, "refs folder not found")
        refset = read_refs(refs, info, shots)
        refset.raise_problems()
    plan = plan_keyframes(info, shots, refset, missing=settings.missing)  # type: ignore[arg-type]
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(shots, workdir / "shots.json", force=True)
    write_plan(plan, workdir / PLAN_NAME, force=True)
    return workdir / PLAN_NAME


def load_plan(plan_path: Path) -> Plan:
    return read_plan(Path(plan_path))


def shot_waves(plan: Plan) -> list[list[int]]:
    """Shots grouped so that each wave only needs shots of earlier waves.

    Shots coloured from their own references (or left grey) come first; shots coloured from
    neighbouring shots' frames need those shots' segments, so they come second.
    """
    first = [s.index for s in plan.shots if s.source != "neighbours"]
    second = [s.index for s in plan.shots if s.source == "neighbours"]
    return [w for w in (first, second) if w]


# --- cache keys ---------------------------------------------------------------------------

def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=1)
def _weights_hash() -> str:
    """sha256 over the bundled weights files (names and contents), once per process."""
    from model.weights import WEIGHTS_DIR

    h = hashlib.sha256()
    for p in sorted(WEIGHTS_DIR.glob("*.pt")):
        h.update(p.name.encode())
        h.update(_file_hash(p).encode())
    return h.hexdigest()


def shot_key(plan_path: Path, shot_index: int, settings: RunSettings) -> str:
    """A 16-hex content key for one shot's result: the reel's fingerprint, the shot's frame
    range and keyframes, the hashes of every reference image and mask it uses (and of the
    neighbouring shots' keys it borrows colour from), the model weights and the settings
    that change pixels (not the output codec), and :data:`COLOUR_VERSION`."""
    plan = load_plan(plan_path)
    shot = plan.shots[shot_index]
    h = hashlib.sha256(f"colour {COLOUR_VERSION}".encode())
    h.update(reel_fingerprint(plan.reel).encode())
    h.update(json.dumps(shot.to_dict(), sort_keys=True).encode())
    for k in shot.keyframes:
        for p in [k.image, *[q for o in k.objects for q in (o.image, o.mask, o.refmask)]]:
            if p is not None:
                h.update(_file_hash(p).encode())
    for n in shot.neighbours:
        h.update(shot_key(plan_path, n, settings).encode())
    h.update(_weights_hash().encode())
    pixels = {k: v for k, v in settings.to_dict().items() if k != "codec"}
    h.update(json.dumps(pixels, sort_keys=True).encode())
    return h.hexdigest()[:16]


def segment_path(plan_path: Path, shot_index: int, workdir: Path, settings: RunSettings) -> Path:
    return Path(workdir) / SEGMENTS / f"shot-{shot_index:04d}-{shot_key(plan_path, shot_index, settings)}.mkv"


# --- colorize one shot --------------------------------------------------------------------

def colorize_shot(plan_path: Path, shot_index: int, workdir: Path, settings: RunSettings, *,
                  progress: Progress = ProgressBar) -> Path | None:
    """Colorize shot ``shot_index`` into its lossless segment; None for a shot left grey.

    An existing segment is returned untouched (it was written atomically, so it is complete).
    """
    plan = load_plan(plan_path)
    shot = plan.shots[shot_index]
    if shot.source == "grey":
        return None
    dest = segment_path(plan_path, shot_index, workdir, settings)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    info = probe(plan.reel)
    engine = _ShotEngine(info, settings)
    keys = {k.frame: engine.keyframe_ab(plan, shot, k, plan_path, workdir) for k in shot.keyframes}
    artist = {k.frame: k.image for k in shot.keyframes if k.kind == "coloured"}
    bar = progress(f"shot {shot_index}: colour", shot.end - shot.start)
    try:
        chroma = engine.propagate(plan.reel, shot, keys, on_frame=lambda: bar.update(1))
        with ReelWriter(dest, info, SEGMENT_CODEC, copy_audio=False) as writer:
            for frame, ab in zip(iter_frames(plan.reel, shot.start, shot.end), chroma):
                image = artist.get(frame.index)
                writer.write(frame.luma, engine.full_chroma(frame, ab) if image is None
                             else engine.artist_chroma(frame, image))
    finally:
        bar.close()
    return dest


class _ShotEngine:
    """Colour maths for one shot: keyframe chroma, propagation, full-resolution chroma."""

    def __init__(self, info: ReelInfo, settings: RunSettings) -> None:
        from pipeline.colorize import resolve_device

        self.info = info
        self.settings = settings
        self.device = resolve_device(settings.device)
        h, w = info.height, info.width
        s = settings.work_size / min(h, w)
        self.work = (max(8, round(h * min(s, 1.0))), max(8, round(w * min(s, 1.0))))  # (h, w)

    def grey(self, frame: Frame) -> np.ndarray:
        """(H, W) float32 grey in [0, 1] from the frame's luma codes."""
        from pipeline.color import codes_to_luma

        return codes_to_luma(frame.luma, frame.bit_depth, self.info.luma_range)

    def keyframe_ab(self, plan: Plan, shot: ShotPlan, key: Keyframe, plan_path: Path, workdir: Path) -> np.ndarray:
        """(2, h, w) float32 Lab ab of the keyframe at working resolution."""
        from pipeline.colorize import Exemplar, colorize_still
        from pipeline.images import read_colour, read_mask

        if key.kind == "coloured":  # its chroma is taken as is; its lightness comes from the source
            return _resize(_rgb_to_ab(read_colour(key.image).pixels), self.work)
        grey = self.grey(next(iter_frames(plan.reel, key.frame, key.frame + 1)))
        # The keyframe's main exemplar (a reference image, or a neighbouring shot's coloured
        # frame) takes the objects drawn on it; an object with its own image is its own exemplar.
        main = (read_colour(key.image).pixels if key.image is not None
                else self._segment_rgb(plan_path, workdir, key.ref_frame, plan))
        by_image: dict[Path | None, list[tuple[np.ndarray, np.ndarray]]] = {key.image: []}
        for o in key.objects:
            ref_size = read_colour(o.image).size
            pair = (read_mask(o.mask, grey.shape, of=plan.reel), read_mask(o.refmask, ref_size, of=o.image))
            by_image.setdefault(o.image, []).append(pair)
        exemplars = [Exemplar(rgb=main, masks=tuple(by_image.pop(key.image)))]
        exemplars += [Exemplar(rgb=read_colour(img).pixels, masks=tuple(pairs)) for img, pairs in by_image.items()]
        ab = colorize_still(grey, exemplars, method=self.settings.method, device=str(self.device))
        return _resize(ab, self.work)

    def _segment_rgb(self, plan_path: Path, workdir: Path, frame_index: int | None, plan: Plan) -> np.ndarray:
        from pipeline.color import rgb_from_luma_chroma

        owner = next(s for s in plan.shots if s.start <= frame_index < s.end)
        seg = segment_path(plan_path, owner.index, workdir, self.settings)
        if not seg.exists():
            raise PostprodError(seg, f"shot {owner.index} must be coloured before shot frames borrow from it")
        f = next(iter_frames(seg, frame_index - owner.start, frame_index - owner.start + 1, chroma=True))
        return rgb_from_luma_chroma(f.luma, f.chroma, f.bit_depth, self.info.luma_range, self.info.matrix)

    def propagate(self, reel: Path, shot: ShotPlan, keys: dict[int, np.ndarray],
                  on_frame: Callable[[], None]) -> Iterator[np.ndarray]:
        """Yield each frame's (2, h, w) ab at working resolution, in order (``pipeline.propagate``)."""
        from pipeline.propagate import PropagationSettings, propagate_shot

        lightness = (_lightness(_resize(self.grey(f)[None], self.work)[0])
                     for f in iter_frames(reel, shot.start, shot.end))
        for ab in propagate_shot(lightness, {k - shot.start: v for k, v in keys.items()},
                                 length=shot.end - shot.start, device=str(self.device),
                                 settings=PropagationSettings(work_size=self.settings.work_size)):
            on_frame()
            yield ab

    def artist_chroma(self, frame: Frame, image: Path) -> np.ndarray:
        """An artist-coloured keyframe's own chroma at full resolution: (2, H, W) Cb, Cr in [-0.5, 0.5].

        The reference is this very frame coloured (reel-sized, its luminance matching), so its
        Cb, Cr go out as painted, fine detail included, with the source's luma; only made legal
        for that luma, as every output frame is.
        """
        from pipeline.color import chroma_from_rgb, legal_chroma
        from pipeline.images import read_colour

        chroma = chroma_from_rgb(read_colour(image).pixels, self.info.matrix)
        return legal_chroma(self.grey(frame), chroma, self.info.matrix)

    def full_chroma(self, frame: Frame, ab: np.ndarray) -> np.ndarray:
        """Working-resolution ab + the frame's luma -> (2, H, W) Cb, Cr in [-0.5, 0.5] at full size.

        Lab -> R'G'B' -> Cb, Cr at working resolution (cheap), then guided upsampling by the
        full-resolution luma, so chroma edges follow the source's detail, then limited to what
        that luma can show (``pipeline.color.legal_chroma``: black and white stay neutral).
        """
        import torch

        from model.color import lab_to_rgb, rgb_to_lab
        from pipeline.color import chroma_from_rgb, guided_upsample, legal_chroma

        grey = self.grey(frame)
        small = torch.from_numpy(_resize(grey[None], ab.shape[1:]))[None]
        l_small = rgb_to_lab(small.expand(1, 3, -1, -1))[:, :1]
        lab = torch.cat([l_small, torch.from_numpy(np.ascontiguousarray(ab, dtype=np.float32))[None]], dim=1)
        rgb = lab_to_rgb(lab)[0].permute(1, 2, 0).numpy()
        return legal_chroma(grey, guided_upsample(chroma_from_rgb(rgb, self.info.matrix), grey), self.info.matrix)


def _lightness(grey: np.ndarray) -> np.ndarray:
    """(h, w) grey in [0, 1] (sRGB-encoded) -> (h, w) float32 Lab L in [0, 100]."""
    import torch

    from model.color import rgb_to_lab

    return rgb_to_lab(torch.from_numpy(np.ascontiguousarray(grey))[None, None].expand(1, 3, -1, -1))[0, 0].numpy()


def _rgb_to_ab(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB in [0, 1] -> (2, H, W) Lab ab (the reference's own chroma, used as is)."""
    import torch

    from model.color import rgb_to_lab

    lab = rgb_to_lab(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float())
    return lab[0, 1:].numpy()


def _resize(chw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, H, W) float -> (C, h, w) with area averaging (bilinear when enlarging)."""
    import cv2

    h, w = size
    if chw.shape[1:] == (h, w):
        return chw.astype(np.float32)
    interp = cv2.INTER_AREA if h < chw.shape[1] else cv2.INTER_LINEAR
    return np.stack([cv2.resize(c.astype(np.float32), (w, h), interpolation=interp) for c in chw])


# --- assemble -----------------------------------------------------------------------------

def assemble(plan_path: Path, segments: dict[int, Path | None], out: Path, settings: RunSettings, *,
             force: bool = False, progress: Progress = ProgressBar) -> Path:
    """Re-encode the shots in order into ``out`` with the source's rate, timecode and audio.

    ``segments``: shot index -> its segment, None for a shot left grey (taken from the source).
    """
    plan = load_plan(plan_path)
    missing = [s.index for s in plan.shots if s.index not in segments]
    if missing:
        raise PostprodError(out, f"cannot assemble: shots {missing} have no result")
    info = probe(plan.reel)
    bar = progress("encode", plan.frames)
    try:
        with ReelWriter(Path(out), info, settings.codec, force=force) as writer:
            for shot in plan.shots:
                seg = segments[shot.index]
                frames = (iter_frames(plan.reel, shot.start, shot.end) if seg is None
                          else iter_frames(seg, chroma=True))
                for f in frames:
                    writer.write(f.luma, f.chroma)
                    bar.update(1)
    finally:
        bar.close()
    return Path(out)


# --- the whole run ------------------------------------------------------------------------

def run_reel(reel: Path, refs: Path | None, out: Path, *, workdir: Path | None = None,
             settings: RunSettings = RunSettings(), force: bool = False) -> Path:
    """The whole job in this process: prepare, every shot wave by wave, assemble."""
    check_writable_destination(Path(out), force=force, sources=(Path(reel),))
    workdir = Path(workdir) if workdir else default_workdir(reel)
    plan_path = prepare_run(reel, refs, workdir, settings)
    plan = load_plan(plan_path)
    segments: dict[int, Path | None] = {}
    for wave in shot_waves(plan):
        for i in wave:
            segments[i] = colorize_shot(plan_path, i, workdir, settings)
    return assemble(plan_path, segments, out, settings, force=force)


# --- for operators ------------------------------------------------------------------------

def contact_sheet(plan_path: Path, segments: dict[int, Path | None], dest: Path, *, height: int = 135) -> Path:
    """A PNG with one row per shot: its first keyframe (or first frame) grey, then coloured.

    ``height``: thumbnail height in px. Written atomically, replacing ``dest``.
    """
    import cv2

    from pipeline.color import rgb_from_luma_chroma
    from pipeline.images import write_rgb

    plan = load_plan(plan_path)
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
