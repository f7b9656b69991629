"""Make the README's before/after picture from the bundled demo (and DAVIS for the ground truth).

    python examples/make_figure.py [--davis ../shared/data/davis] [--out docs/images/demo-before-after.jpg]

Panels, left to right: grey frame 48 of the demo reel (camel, shot 2) · the exemplar
``shot-2.png`` · colorized from it without masks · with the animal masks · the true colour frame.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from make_demo import load  # the demo's own frame loader (same resize)
from PIL import Image

from pipeline.color import codes_to_luma
from pipeline.colorize import Exemplar, colorize_still, compose_rgb
from pipeline.images import read_colour, read_mask
from pipeline.media.decode import iter_frames
from pipeline.media.probe import probe

FRAME = 48  # first frame of shot 2 (camel 00000)


def main() -> None:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--davis", type=Path, default=here.parents[1] / "shared" / "data" / "davis")
    parser.add_argument("--out", type=Path, default=here.parent / "docs" / "images" / "demo-before-after.jpg")
    args = parser.parse_args()
    demo = here / "demo"
    reel, refs = demo / "reel.mov", demo / "refs"
    info = probe(reel)
    frame = next(iter_frames(reel, FRAME, FRAME + 1))
    grey = codes_to_luma(frame.luma, frame.bit_depth, info.luma_range)
    ref = read_colour(refs / "shot-2.png").pixels
    masks = (
        (
            read_mask(refs / "shot-2.animal.mask.png", grey.shape, of=reel),
            read_mask(refs / "shot-2.animal.refmask.png", ref.shape[:2], of=refs / "shot-2.png"),
        ),
    )
    plain = compose_rgb(grey, colorize_still(grey, [Exemplar(ref)], device="cpu"))
    masked = compose_rgb(grey, colorize_still(grey, [Exemplar(ref, masks)], device="cpu"))
    truth = np.asarray(load(args.davis, "camel", "frames", 0), dtype=np.float32) / 255
    panels = [np.repeat(grey[..., None], 3, -1), ref, plain, masked, truth]
    height = grey.shape[0]
    resized = [
        np.asarray(
            Image.fromarray((p * 255).round().astype(np.uint8)).resize(
                (round(p.shape[1] * height / p.shape[0]), height), Image.Resampling.LANCZOS
            )
        )
        for p in panels
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(resized, axis=1)).save(args.out, quality=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
