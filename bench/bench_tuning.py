"""Propagation settings scored on colour footage that is not DAVIS, see bench/README.md ("Tuning set").

    python -m bench.bench_tuning [--reels R ...] [--set FIELD=VALUE ...] [--max-frames N]
        [--out bench/results/tuning.json]

DAVIS is the evaluation set: settings chosen on it would be fitted to it. This bench is where
``PropagationSettings`` are chosen and checked. Each shot of the given colour reels (default:
PySceneDetect's testvideo, goldeneye and issue-195 reels in ``../shared/data/reels``; shots from
``pipeline.shots.detect_shots``, frames from the project's decoder, R'G'B' by the reel's own
matrix) is scaled to 480 px high and cut to at most ``--max-frames`` frames; shots under 10
frames or with a colourless first frame are skipped. Its grey L goes through
``pipeline.propagate.propagate_shot`` with the true first frame's ab as the keyframe and the
default settings changed by ``--set`` (e.g. ``--set confidence_power=1 restore=false``; values
are JSON: numbers, true/false, null), and is scored like ``bench.bench_propagation``: RGB PSNR after
``upsample_chroma``, over the non-keyframes; frame mean and mean of shots.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from bench.toolkit import SHARED_DATA, Shot, compose, working_ab, write_json
from pipeline.color import rgb_from_luma_chroma
from pipeline.errors import PostprodError
from pipeline.media.decode import iter_frames
from pipeline.media.probe import probe
from pipeline.metrics import psnr
from pipeline.propagate import (
    Colorizer,
    MemoryStore,
    PropagationSettings,
    attention_colorizer,
    propagate_shot,
    to_working,
    upsample_chroma,
)

REELS = SHARED_DATA / "reels"
DEFAULT_REELS = tuple(REELS / n for n in ("testvideo.mp4", "goldeneye-vfr-drop3.mp4", "issue-195-aspect-ratio.mp4"))
DEFAULT_OUT = Path("bench") / "results" / "tuning.json"
HEIGHT = 480  # px, as DAVIS
MIN_FRAMES = 10
MIN_CHROMA_STD = 1.0  # ab units: a first frame with less colour than this teaches nothing


def parse_settings(assignments: list[str]) -> PropagationSettings:
    """``["field=value", ...]`` (JSON values) -> the default settings with those fields changed."""
    names = {f.name for f in dataclasses.fields(PropagationSettings)}
    changes = {}
    for item in assignments:
        field, sep, value = item.partition("=")
        if not sep or field not in names:
            raise PostprodError(f"--set {item}", f"expected FIELD=VALUE with FIELD one of {', '.join(sorted(names))}")
        try:
            changes[field] = json.loads(value)
        except json.JSONDecodeError:
            raise PostprodError(f"--set {item}", "the value is not JSON (a number, true, false or null)") from None
    return dataclasses.replace(PropagationSettings(), **changes)


def load_tuning_shots(reels: list[Path], max_frames: int) -> list[Shot]:
    """The usable shots of ``reels``: Lab (n, 3, 480, W) float32 and sRGB (n, 480, W, 3) in [0, 1].

    Frames come from the project's frame-exact decoder (``pipeline.media.decode.iter_frames``,
    as ``detect_shots`` numbers them) and are turned into R'G'B' with the reel's own matrix."""
    from pipeline.shots import detect_shots

    shots = []
    for reel in reels:
        info = probe(reel)  # a PostprodError naming the file if it is not a readable video
        for i, cut in enumerate(detect_shots(reel).shots):
            stop = min(cut.end, cut.start + max_frames)
            if stop - cut.start < MIN_FRAMES:
                continue
            rgb = []
            for f in iter_frames(reel, cut.start, stop, chroma=True):
                frame = rgb_from_luma_chroma(f.luma, f.chroma, f.bit_depth, info.luma_range, info.matrix)
                width = round(frame.shape[1] * HEIGHT / frame.shape[0])
                rgb.append(np.clip(cv2.resize(frame, (width, HEIGHT), interpolation=cv2.INTER_AREA), 0, 1))
            shot = Shot.from_rgb(f"{reel.stem}#{i}", np.stack(rgb).astype(np.float32))
            if float(np.std(shot.lab[0, 1:])) >= MIN_CHROMA_STD:
                shots.append(shot)
    return shots


def score(shot: Shot, settings: PropagationSettings, colorizer: Colorizer | None) -> list[float]:
    """RGB PSNR of each non-keyframe, the first frame's true ab as the only keyframe."""
    luma = [to_working(l, settings.work_size) for l in shot.lab[:, 0]]
    keys = {0: working_ab(shot.lab[0], luma[0].shape)}
    out = propagate_shot(iter(luma), keys, length=shot.n, colorizer=colorizer, store=MemoryStore(), settings=settings)
    return [
        psnr(compose(shot.lab[t, 0], upsample_chroma(f.ab, shot.lab[t, 0])), shot.rgb[t])
        for t, f in enumerate(out)
        if t not in keys
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reels",
        type=Path,
        nargs="+",
        default=list(DEFAULT_REELS),
        help="colour reels (default: PySceneDetect's testvideo, goldeneye and issue-195)",
    )
    parser.add_argument(
        "--set",
        dest="assignments",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="PropagationSettings fields to change, JSON values",
    )
    parser.add_argument("--max-frames", type=int, default=90, help="frames per shot at most (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results, replaced (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        settings = parse_settings(args.assignments)
        shots = load_tuning_shots(args.reels, args.max_frames)
    except PostprodError as error:
        print(error, file=sys.stderr)
        return 2
    if not shots:
        print(f"no usable shot (each needs {MIN_FRAMES} frames and a coloured first frame)", file=sys.stderr)
        return 2
    colorizer = None
    if settings.attention_every > 0:
        colorizer = attention_colorizer(
            work_size=settings.attention_size, position_sigma=settings.attention_position_sigma
        )
    start, per_shot, frames = time.perf_counter(), {}, []
    for shot in shots:
        values = score(shot, settings, colorizer)
        per_shot[shot.name] = float(np.mean(values))
        frames += values
        print(f"{shot.name}: {per_shot[shot.name]:.2f} dB ({len(values)} frames)", file=sys.stderr, flush=True)
    result = {
        "settings": dataclasses.asdict(settings),
        "changed": args.assignments,
        "reels": [str(r) for r in args.reels],
        "max_frames": args.max_frames,
        "psnr_frames": float(np.mean(frames)),
        "psnr_shots": float(np.mean(list(per_shot.values()))),
        "frames": len(frames),
        "shots": per_shot,
        "seconds": time.perf_counter() - start,
    }
    print(
        f"{' '.join(args.assignments) or 'defaults'}: {result['psnr_frames']:.3f} dB over {len(frames)} frames "
        f"({result['psnr_shots']:.3f} dB mean of {len(per_shot)} shots)"
    )
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
