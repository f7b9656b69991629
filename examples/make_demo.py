"""Make the bundled demo: a short grey reel and an artist's refs folder, from DAVIS 2016.

    python examples/make_demo.py [--davis ../shared/data/davis] [--out examples/demo] [--force]

DAVIS is CC BY 4.0, so derived material may be redistributed with attribution (written to
``ATTRIBUTION.md`` beside the reel). The reel stands in for a telecine transfer of an archive
reel: three shots back to back, grey, H.264 in QuickTime at 24000/1001 fps with a start timecode
of 01:00:00:00 and a stereo AAC track (a quiet tone: DAVIS has no sound). The refs folder has
one of each kind of reference the pipeline reads:

- ``frame-0.png``: the true colour first frame of shot 0 (an artist-coloured keyframe);
- ``shot-1.png``: a colour frame of shot 1's sequence that is not in the reel (an exemplar);
- ``shot-2.png`` with ``shot-2.animal.mask.png`` / ``shot-2.animal.refmask.png``: an exemplar
  for shot 2 with the object's mask on the shot's first frame and on the reference.
"""

from __future__ import annotations

import argparse
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.media.synth import write_grey_reel

# (sequence, first frame, frames in the reel, frame used as exemplar when not a keyframe)
SHOTS = (("blackswan", 0, 24, None), ("car-shadow", 0, 24, 36), ("camel", 0, 24, 60))
SIZE = (428, 240)  # width, height: DAVIS 854x480 halved, even for 4:2:0
FPS = Fraction(24000, 1001)
TIMECODE = "01:00:00:00"
ATTRIBUTION = """# Demo material

Derived from DAVIS 2016 (Perazzi et al., "A Benchmark Dataset and Evaluation Methodology for
Video Object Segmentation", CVPR 2016), sequences blackswan, car-shadow and camel: frames resized
to 428x240, turned grey for the reel; colour frames and object masks resized for the refs.
Licence: Creative Commons Attribution 4.0 International (CC BY 4.0),
https://creativecommons.org/licenses/by/4.0/. Made by `examples/make_demo.py`.
"""


def load(davis: Path, seq: str, kind: str, index: int) -> Image.Image:
    suffix = "jpg" if kind == "frames" else "png"
    img = Image.open(davis / seq / kind / f"{index:05d}.{suffix}")
    return img.resize(SIZE, Image.Resampling.LANCZOS if kind == "frames" else Image.Resampling.NEAREST)


def write_reel(path: Path, greys: list[np.ndarray]) -> None:
    """Grey (H, W) uint8 frames -> H.264 .mov (BT.601 SD tags) with timecode and an AAC tone covering the video."""
    write_grey_reel(
        path,
        greys,
        FPS,
        crf=16,
        options={"preset": "slow", "g": "24"},
        timecode=TIMECODE,
        audio=True,
        colour_tags="bt601",  # SD: BT.601 (SMPTE 170M), limited range
    )


def make_demo(davis: Path, out: Path) -> None:
    """Write ``out/reel.mov``, ``out/refs/`` and ``out/ATTRIBUTION.md``."""
    refs = out / "refs"
    refs.mkdir(parents=True)
    greys: list[np.ndarray] = []
    for k, (seq, first, count, exemplar) in enumerate(SHOTS):
        start = len(greys)
        greys += [np.asarray(load(davis, seq, "frames", first + i).convert("L")) for i in range(count)]
        if exemplar is None:
            load(davis, seq, "frames", first).save(refs / f"frame-{start}.png")
        else:
            load(davis, seq, "frames", exemplar).save(refs / f"shot-{k}.png")
        if k == 2:
            assert exemplar is not None  # shot 2 has an exemplar, and the masks go with it
            load(davis, seq, "masks", first).save(refs / f"shot-{k}.animal.mask.png")
            load(davis, seq, "masks", exemplar).save(refs / f"shot-{k}.animal.refmask.png")
    write_reel(out / "reel.mov", greys)
    (out / "ATTRIBUTION.md").write_text(ATTRIBUTION)


def main() -> None:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--davis", type=Path, default=here.parents[1] / "shared" / "data" / "davis")
    parser.add_argument("--out", type=Path, default=here / "demo")
    parser.add_argument("--force", action="store_true", help="replace an existing demo folder")
    args = parser.parse_args()
    if not args.davis.is_dir():
        raise SystemExit(f"{args.davis}: DAVIS folder not found (pass --davis)")
    if args.out.exists():
        if not args.force:
            raise SystemExit(f"{args.out}: already exists (use --force to replace it)")
        shutil.rmtree(args.out)
    make_demo(args.davis, args.out)
    print(f"{args.out}: demo reel and refs written")


if __name__ == "__main__":
    main()
