"""The colour engine of one shot: keyframe chroma, propagation, full-resolution chroma.

:class:`ShotColourer` holds what stays the same across the shots of a reel (the reel's
description, the settings, the device and the working resolution); the models come from
``pipeline.colorize``'s per-process cache (:func:`~pipeline.colorize.shared_vgg16`,
:func:`~pipeline.colorize.shared_colornet`), so they are loaded once whatever the number of
keyframes and shots.

Colour spaces: keyframes and propagation work in CIE Lab at the working resolution (short side
``settings.work_size``); output chroma is the reel's Y'CbCr Cb, Cr at full resolution, in
[-0.5, 0.5], made legal for the source's luma (``pipeline.color.legal_chroma``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from pipeline.color import (
    chroma_from_rgb,
    codes_to_luma,
    lab_from_rgb,
    legal_chroma,
    lightness_from_grey,
    rgb_from_luma_chroma,
)
from pipeline.colorize import Exemplar, colorize_still, resolve_device
from pipeline.errors import PostprodError
from pipeline.images import read_colour, read_mask, resize_planes
from pipeline.jobs import one_torch_thread
from pipeline.keyframes import Keyframe, Plan, ShotPlan
from pipeline.media.decode import Frame, iter_frames
from pipeline.media.probe import ReelInfo
from pipeline.propagate import PropagatedFrame, StepCallback
from pipeline.settings import RunSettings
from pipeline.workdir import segment_path


class ShotColourer:
    """Colour maths for the shots of one reel (``info``) under ``settings``."""

    def __init__(self, info: ReelInfo, settings: RunSettings) -> None:
        from model.transfer import working_size

        self.info = info
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.work = working_size(info.height, info.width, settings.work_size)  # (h, w)

    def grey(self, frame: Frame) -> np.ndarray:
        """(H, W) float32 grey in [0, 1] from the frame's luma codes."""
        return codes_to_luma(frame.luma, frame.bit_depth, self.info.luma_range)

    def keyframe_ab(self, plan: Plan, key: Keyframe, workdir: Path) -> np.ndarray:
        """(2, h, w) float32 Lab ab of the keyframe at working resolution.

        A coloured keyframe's chroma is taken as is (its lightness comes from the source). An
        exemplar keyframe is colorized (``settings.method``) from its main exemplar (a reference
        image, or a neighbouring shot's coloured frame read from its segment in ``workdir``),
        which takes the objects drawn on it; an object with its own image is its own exemplar.
        """
        if key.kind == "coloured":
            assert key.image is not None
            return resize_planes(lab_from_rgb(read_colour(key.image).pixels)[1:], self.work)
        grey = self.grey(next(iter_frames(plan.reel, key.frame, key.frame + 1)))
        main = (
            read_colour(key.image).pixels if key.image is not None else self._borrowed_rgb(plan, workdir, key.ref_frame)
        )
        by_image: dict[Path | None, list[tuple[np.ndarray, np.ndarray]]] = {key.image: []}
        for o in key.objects:
            ref_size = read_colour(o.image).size
            pair = (read_mask(o.mask, grey.shape, of=plan.reel), read_mask(o.refmask, ref_size, of=o.image))
            by_image.setdefault(o.image, []).append(pair)
        exemplars = [Exemplar(rgb=main, masks=tuple(by_image.pop(key.image)))]
        exemplars += [
            Exemplar(rgb=read_colour(img).pixels, masks=tuple(pairs))
            for img, pairs in by_image.items()
            if img is not None
        ]
        ab = colorize_still(grey, exemplars, method=self.settings.method, device=self.device)
        return resize_planes(ab, self.work)

    def _borrowed_rgb(self, plan: Plan, workdir: Path, frame_index: int | None) -> np.ndarray:
        """(H, W, 3) RGB of reel frame ``frame_index`` as its (already coloured) shot's segment has it."""
        assert frame_index is not None
        owner = next(s for s in plan.shots if s.start <= frame_index < s.end)
        seg = segment_path(workdir, plan, owner.index, self.settings)
        if not seg.exists():
            raise PostprodError(seg, f"shot {owner.index} must be coloured before shot frames borrow from it")
        f = next(iter_frames(seg, frame_index - owner.start, frame_index - owner.start + 1, chroma=True))
        return rgb_from_luma_chroma(f.luma, f.chroma, f.bit_depth, self.info.luma_range, self.info.matrix)

    def propagate(
        self, grey: np.ndarray, shot: ShotPlan, keys: dict[int, np.ndarray], on_step: StepCallback | None = None
    ) -> Iterator[PropagatedFrame]:
        """Yield each frame's ab and confidence at working resolution, in order (``pipeline.propagate``).

        ``grey``: (n, h, w) float32 the shot's grey in [0, 1] at working resolution
        (:func:`pipeline.color.work_grey`, as the work folder stores it); ``keys``: reel
        frame -> (2, h, w) ab of the shot's keyframes; ``on_step``: progress
        (:data:`pipeline.propagate.StepCallback`)."""
        from pipeline.colorize import shared_vgg16
        from pipeline.propagate import PropagationSettings, attention_colorizer, propagate_shot

        settings = PropagationSettings(work_size=self.settings.work_size)
        colorizer = (
            attention_colorizer(
                device=str(self.device),
                work_size=settings.attention_size,
                features=shared_vgg16(self.device),
                position_sigma=settings.attention_position_sigma,
            )
            if settings.attention_every > 0
            else None
        )
        lightness = (lightness_from_grey(np.asarray(g, dtype=np.float32)) for g in grey)
        yield from propagate_shot(
            lightness,
            {k - shot.start: v for k, v in keys.items()},
            length=shot.end - shot.start,
            colorizer=colorizer,
            settings=settings,
            device=str(self.device),
            on_step=on_step,
        )

    def artist_chroma(self, frame: Frame, image: Path) -> np.ndarray:
        """An artist-coloured keyframe's own chroma at full resolution: (2, H, W) Cb, Cr in [-0.5, 0.5].

        The reference is this very frame coloured (reel-sized, its luminance matching), so its
        Cb, Cr go out as painted, fine detail included, with the source's luma; only made legal
        for that luma, as every output frame is.
        """
        chroma = chroma_from_rgb(read_colour(image).pixels, self.info.matrix)
        return legal_chroma(self.grey(frame), chroma, self.info.matrix)

    def full_chroma(self, frame: Frame, grey: np.ndarray, ab: object, layout: tuple[int, int, int]) -> np.ndarray:
        """Working-resolution ab + the frame's luma -> the writer's chroma codes, on :attr:`device`.

        ``grey``: (h, w) float32 the frame's working-resolution grey (as the propagation
        read it); ``ab``: (2, h, w) float32 CIE ab (numpy or torch); ``layout``: the writer's
        :attr:`~pipeline.media.encode.ReelWriter.chroma_layout` (sx, sy, depth). Lab -> R'G'B'
        -> Cb, Cr at working resolution, guided upsampling by the full-resolution luma (chroma
        edges follow the source's detail), limited to what that luma can show (black and white
        stay neutral), subsampled and quantised: :func:`pipeline.color.full_chroma_codes`. The
        luma goes to the device once, the codes come back once: (2, H', W') int32, for
        :meth:`~pipeline.media.encode.ReelWriter.write`.
        """
        import torch

        from pipeline.color import full_chroma_codes

        luma = frame.luma
        if luma.dtype != np.uint8:  # torch has no arithmetic on uint16
            luma = luma.view(np.int16) if frame.bit_depth < 16 else luma.astype(np.int32)
        sx, sy, depth = layout
        # one thread on a CPU: measured faster (bench/README.md)
        with one_torch_thread() if self.device.type == "cpu" else nullcontext(), torch.inference_mode():
            codes = full_chroma_codes(
                torch.from_numpy(luma).to(self.device),
                torch.from_numpy(np.ascontiguousarray(grey, dtype=np.float32)).to(self.device),
                torch.as_tensor(ab).to(self.device),
                bit_depth=frame.bit_depth,
                color_range=self.info.luma_range,
                matrix=self.info.matrix,
                out_depth=depth,
                subsampling=(sx, sy),
            )
            return codes.cpu().numpy()
