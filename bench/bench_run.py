"""End-to-end benchmark of ``postprod run`` on DAVIS, see bench/README.md ("Reels end to end").

    python -m bench.bench_run [--sequences blackswan camel ...] [--max-frames N] [--variant first|first+last]
        [--engine local|prefect] [--memory-check] [--work DIR] [--out bench/results/run.json]

A grey reel is made of the DAVIS sequences back to back (854x480, 24000/1001 fps, FFV1 lossless
luma from the true frames' BT.601 luma, start timecode 10:00:00:00, a stereo AAC track), with a
refs folder holding the true colour frame of each shot's first frame as ``frame-<N>.png``
(variant ``first+last``: and of its last frame). ``postprod run --codec ffv1`` colours it in a
fresh process (its peak resident memory: ``ru_maxrss`` from ``wait4``, through a small launcher
process, see ``bench.toolkit.run_postprod``). Then:

- media: frame count, exact frame rate, timecode and the audio packets (bytes) equal the input's;
  the output luma equals the input luma bit for bit (FFV1);
- quality over the non-keyframes (the keyframes are the given colours): mean RGB PSNR of the
  output (decoded, YCbCr -> R'G'B' with the reel's own matrix) against the true frames, per
  sequence and over all frames; the same for the keyframes (the ceiling set by carrying the
  keyframes' colour into the reel);
- stability: warp error (``bench.toolkit.warp_error``: previous output frame warped onto
  the current one by DIS flow of the true luma, over pixels passing the forward-backward check),
  output against the ground truth's own, within shots.

``--memory-check`` also runs the same reel 4 times longer (sequences repeated, refs for every
shot) and reports both peak memories. DAVIS is for evaluation only.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

from bench.toolkit import (
    DEFAULT_DAVIS,
    TARGET_PSNR,
    ReelShot,
    check_media,
    davis_grey_reel,
    list_sequences,
    markdown_table,
    run_postprod,
    score_reel,
    write_json,
)
from pipeline.images import read_rgb, write_rgb
from pipeline.media.probe import probe

FPS = Fraction(24000, 1001)
TIMECODE = "10:00:00:00"
DEFAULT_OUT = Path("bench") / "results" / "run.json"


def build_reel(
    davis: Path, sequences: list[str], max_frames: int | None, variant: str, dest: Path
) -> tuple[Path, Path, list[ReelShot]]:
    """Write ``dest/reel.mkv`` and ``dest/refs/``; returns them and the shots' truth."""
    refs = dest / "refs"
    refs.mkdir(parents=True)
    reel = dest / "reel.mkv"
    shots = davis_grey_reel(
        davis, sequences, reel, FPS, max_frames=max_frames, codec="ffv1", timecode=TIMECODE, audio=True
    )
    for shot in shots:
        keys = [0] if variant == "first" else [0, len(shot.frames) - 1]
        for k in keys:
            # PNG: the decoded true frame, pixel for pixel what is scored
            write_rgb(refs / f"frame-{shot.start + k}.png", read_rgb(shot.frames[k]))
    return reel, refs, shots


def bench(
    davis: Path,
    sequences: list[str],
    max_frames: int | None,
    variant: str,
    engine: str,
    work_size: int,
    work: Path,
    repeat: int = 1,
    scored: bool = True,
) -> dict:
    """Build the reel (sequences repeated ``repeat`` times), run postprod on it, check and score it."""
    folder = work / f"{variant}-x{repeat}"
    reel, refs, shots = build_reel(davis, sequences * repeat, max_frames, variant, folder)
    out, workdir = folder / "out.mkv", folder / "work"
    workdir.mkdir()
    result: dict[str, Any] = {
        "reel_frames": probe(reel).frames,
        **run_postprod(reel, refs, out, workdir, engine, work_size),
    }
    result["fps"] = result["reel_frames"] / result["seconds"]
    result["media"] = check_media(reel, out)
    if scored:
        keyframes = {int(p.stem.split("-")[1]) for p in refs.iterdir()}
        result |= score_reel(out, shots, keyframes)
    return result


def markdown(result: dict) -> str:
    r = result["run"]
    lines = [
        f"`postprod run` on {r['reel_frames']} frames ({len(result['sequences'])} DAVIS sequences, "
        f"variant {result['variant']}, engine {result['engine']}): {r['seconds']:.0f} s, {r['fps']:.2f} frames/s, "
        f"peak memory {r['peak_rss_mib']:.0f} MiB",
        "",
        f"media: {r['media']}",
        "",
        f"non-keyframes ({r['nonkeyframes']}): PSNR {r['psnr_nonkey']:.2f} dB (target {TARGET_PSNR}); "
        f"keyframes {r['psnr_key']:.2f} dB; warp error x1e3 {r['warp_error'] * 1e3:.3f} "
        f"(ground truth {r['warp_error_truth'] * 1e3:.3f})",
        "",
        markdown_table(
            ["sequence", "PSNR non-key dB", "warp err x1e3", "truth warp err x1e3"],
            [
                [k, f"{v['psnr_nonkey']:.2f}", f"{v['warp_error'] * 1e3:.3f}", f"{v['warp_error_truth'] * 1e3:.3f}"]
                for k, v in r["per_sequence"].items()
            ],
        ),
    ]
    if "memory_x4" in result:
        m1, m4 = r["peak_rss_mib"], result["memory_x4"]["peak_rss_mib"]
        lines += [
            "",
            f"peak memory: {m1:.0f} MiB ({r['reel_frames']} frames) vs {m4:.0f} MiB "
            f"({result['memory_x4']['reel_frames']} frames): {100 * (m4 - m1) / m1:+.1f} %",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--davis", type=Path, default=DEFAULT_DAVIS, help="DAVIS folder (default: %(default)s)")
    parser.add_argument("--sequences", nargs="+", help="sequence names (default: all)")
    parser.add_argument("--max-frames", type=int, help="first N frames of each sequence (default: all)")
    parser.add_argument("--variant", choices=("first", "first+last"), default="first")
    parser.add_argument("--engine", choices=("local", "prefect"), default="local")
    parser.add_argument("--work-size", type=int, default=256, help="postprod run --work-size (default: %(default)s)")
    parser.add_argument("--memory-check", action="store_true", help="also run the reel 4x longer (peak memory)")
    parser.add_argument("--work", type=Path, help="keep the reels and outputs in this folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results, replaced (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.davis.is_dir():
        print(f"{args.davis}: no DAVIS folder", file=sys.stderr)
        return 2
    sequences = args.sequences or list_sequences(args.davis)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-run-"))
    result = {
        "sequences": sequences,
        "variant": args.variant,
        "engine": args.engine,
        "work_size": args.work_size,
        "max_frames": args.max_frames,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "run": bench(args.davis, sequences, args.max_frames, args.variant, args.engine, args.work_size, work),
    }
    if args.memory_check:
        result["memory_x4"] = bench(
            args.davis,
            sequences,
            args.max_frames,
            args.variant,
            args.engine,
            args.work_size,
            work,
            repeat=4,
            scored=False,
        )
    print(markdown(result))
    write_json(args.out, result)
    print(f"wrote {args.out}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
