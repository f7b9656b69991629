"""End-to-end benchmark of ``postprod run`` on DAVIS, see bench/README.md ("Reels end to end").

    python -m bench.bench_run [--sequences blackswan camel ...] [--max-frames N] [--variant first|first+last]
        [--engine local|prefect] [--size WxH] [--device cpu|cuda] [--base CHECKOUT] [--profile]
        [--in-process] [--synthetic] [--memory-check] [--work DIR] [--out bench/results/run.json]

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

``--size 1920x1080``: the frames (grey reel, refs and the truth scored against) upscaled
(bicubic) to that size. ``--base CHECKOUT``: the same reel also through another checkout's
``postprod`` (a ``git worktree`` of an earlier commit), in the same run, side by side.
``--profile``: this checkout's run once more, under cProfile with ``--jobs 1``, and a table of
the time per stage (decode, shot features, lightness, keyframes, flow, refine, attention,
full-resolution chroma, encode, remux) as a share of the wall time; cProfile slows Python-heavy
code, so the shares, not the seconds, are the figure. ``--in-process``:
``pipeline.run.run_reel`` in this process instead of ``postprod`` (no CLI, no Prefect: what
``bench/gpu_check.sh`` runs on a bare GPU machine); with ``--device cuda`` also the GPU's busy
time (torch.profiler: the CUDA kernels' time over the wall time) and the peak GPU memory
(``torch.cuda.max_memory_allocated``). ``--synthetic``: a generated reel of two 12-frame shots
(``pipeline.media.synth.write_cut_reel``, at ``--size``, default 192x128; one shot above a
megapixel) with exemplars, checked but not scored, for when there is no DAVIS folder.
``--memory-check`` also runs the same reel 4 times longer (sequences repeated, refs for every
shot) and reports both peak memories. DAVIS is for evaluation only.
"""

from __future__ import annotations

import argparse
import os
import platform
import pstats
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench.toolkit import (
    DEFAULT_DAVIS,
    REEL_FPS,
    REEL_TIMECODE,
    TARGET_PSNR,
    ReelShot,
    check_media,
    davis_frames,
    davis_grey_reel,
    list_sequences,
    markdown_table,
    read_grey,
    run_postprod,
    score_reel,
    write_json,
)
from pipeline.images import read_rgb, write_rgb
from pipeline.media.probe import probe
from pipeline.media.synth import write_cut_reel, write_grey_reel, write_shot_refs

DEFAULT_OUT = Path("bench") / "results" / "run.json"


Size = tuple[int, int] | None
"""(width, height) the DAVIS frames are upscaled to, None for their own 854x480."""


def _sized(image: np.ndarray, size: Size) -> np.ndarray:
    return image if size is None else cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)


def truth(path: Path, size: Size) -> np.ndarray:
    """A DAVIS frame's RGB (H, W, 3) float32 in [0, 1] at ``size``: what is scored and given as a ref."""
    return np.clip(_sized(read_rgb(path), size), 0.0, 1.0)


def build_reel(
    davis: Path, sequences: list[str], max_frames: int | None, variant: str, dest: Path, size: Size = None
) -> tuple[Path, Path, list[ReelShot]]:
    """Write ``dest/reel.mkv`` and ``dest/refs/`` (frames at ``size``); returns them and the shots' truth."""
    refs = dest / "refs"
    refs.mkdir(parents=True)
    reel = dest / "reel.mkv"
    if size is None:
        shots = davis_grey_reel(
            davis, sequences, reel, REEL_FPS, max_frames=max_frames, codec="ffv1", timecode=REEL_TIMECODE, audio=True
        )
    else:
        shots, start = [], 0
        for name in sequences:
            files = davis_frames(davis, name, max_frames)
            shots.append(ReelShot(name, start, files))
            start += len(files)
        greys = (_sized(read_grey(f), size) for s in shots for f in s.frames)
        write_grey_reel(reel, greys, REEL_FPS, codec="ffv1", timecode=REEL_TIMECODE, audio=True)
    for shot in shots:
        keys = [0] if variant == "first" else [0, len(shot.frames) - 1]
        for k in keys:
            # PNG: the decoded true frame, pixel for pixel what is scored
            ref = truth(shot.frames[k], size)
            write_rgb(refs / f"frame-{shot.start + k}.png", ref, bit_depth=8 if size is None else 16)
    return reel, refs, shots


STAGES: dict[str, list[tuple[str, str]]] = {
    # stage -> (file suffix, function) whose cumulative times are added up
    "decode": [("pipeline/media/decode.py", "_decode")],
    "shot features": [("pipeline/shots/features.py", "compute_features")],
    "lightness": [("pipeline/color.py", "work_grey")],
    "keyframes": [("pipeline/engine.py", "keyframe_ab")],
    "propagation (all)": [("pipeline/propagate.py", "propagate_shot")],
    "  flow": [("pipeline/flow.py", "flow")],
    "  refine": [("pipeline/propagate.py", "refine_chroma")],
    "  attention": [("pipeline/propagate.py", "colorize")],
    "full-res chroma": [("pipeline/engine.py", "full_chroma")],
    "encode": [("pipeline/media/encode.py", "_encode")],
    "remux": [("pipeline/media/encode.py", "append")],
}


def stage_profile(stats_file: Path, wall: float) -> dict[str, float | None]:
    """Seconds per :data:`STAGES` entry from a cProfile statistics file (None: not called)."""
    stats = pstats.Stats(str(stats_file)).stats  # type: ignore[attr-defined]
    out: dict[str, float | None] = {}
    for stage, funcs in STAGES.items():
        found = [v[3] for (file, _, name), v in stats.items() if any(file.endswith(f) and name == n for f, n in funcs)]
        out[stage] = float(sum(found)) if found else None
    out["wall"] = wall
    return out


def run_here(reel: Path, refs: Path, out: Path, workdir: Path, work_size: int, device: str) -> dict[str, Any]:
    """``pipeline.run.run_reel`` into FFV1 in this process: wall time, peak resident memory and,
    on CUDA, the kernels' total time (torch.profiler), its share of the wall time and the peak
    GPU memory."""
    import torch

    from pipeline.run import RunSettings, run_reel

    settings = RunSettings(codec="ffv1", device=device, work_size=work_size)  # type: ignore[arg-type]
    cuda = device == "cuda"
    started = time.perf_counter()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            run_reel(reel, refs, out, workdir=workdir, settings=settings)
            torch.cuda.synchronize()
    else:
        run_reel(reel, refs, out, workdir=workdir, settings=settings)
    seconds = time.perf_counter() - started
    result: dict[str, Any] = {
        "seconds": seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if cuda:
        busy_us = sum(
            getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
            for e in prof.key_averages()
        )
        result |= {
            "gpu": torch.cuda.get_device_name(),
            "gpu_seconds": busy_us / 1e6,
            "gpu_share": busy_us / 1e6 / seconds,
            "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20,
        }
    return result


def synthetic_reel(dest: Path, size: Size) -> tuple[Path, Path]:
    """Two 12-frame hard-cut shots at ``size`` (default 192x128), one above a megapixel (a smoke
    test's time), and an exemplar for each."""
    w, h = size or (192, 128)
    shots = 1 if w * h > 1_000_000 else 2
    dest.mkdir(parents=True)
    reel = write_cut_reel(dest / "reel.mkv", shots, 12, width=w, height=h)
    return reel, write_shot_refs(dest / "refs", range(shots))


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
    *,
    size: Size = None,
    device: str = "cpu",
    base: Path | None = None,
    profile: bool = False,
    in_process: bool = False,
    synthetic: bool = False,
) -> dict:
    """Build the reel (sequences repeated ``repeat`` times), run postprod on it, check and score
    it; with ``base``, also through that checkout (key ``base``)."""
    folder = work / f"{variant}-x{repeat}"
    if synthetic:
        reel, refs = synthetic_reel(folder, size)
        shots: list[ReelShot] = []
        scored = False
    else:
        reel, refs, shots = build_reel(davis, sequences * repeat, max_frames, variant, folder, size)
    keyframes = {int(p.stem.split("-")[1]) for p in refs.iterdir() if p.stem.startswith("frame-")}
    runs: dict[str, dict[str, Any]] = {}
    todo = [*([("base", base)] if base is not None else []), ("this", None), *([("profiled", None)] if profile else [])]
    for name, checkout in todo:
        out, workdir = folder / f"out-{name}.mkv", folder / f"work-{name}"
        workdir.mkdir()
        stats = folder / f"{name}.prof" if name == "profiled" else None
        if in_process and checkout is None and stats is None:
            ran = run_here(reel, refs, out, workdir, work_size, device)
        else:
            ran = run_postprod(
                reel, refs, out, workdir, engine, work_size, device=device, checkout=checkout, profile=stats
            )
        result: dict[str, Any] = {"reel_frames": probe(reel).frames, **ran}
        result["fps"] = result["reel_frames"] / result["seconds"]
        result["media"] = check_media(reel, out)
        if stats is not None:
            result["profile"] = stage_profile(stats, result["seconds"])
        if scored and name != "profiled":  # the same pixels as "this"
            result |= score_reel(out, shots, keyframes, lambda p: truth(p, size))
        runs[name] = result
    this = runs["this"]
    if base is not None:
        this["base"] = runs["base"]
    if profile:
        this["profile"] = runs["profiled"]["profile"]  # a run of its own: cProfile slows it
    return this


def _timed(run: dict) -> list[str]:
    cpu = run.get("cpu_seconds", 0)
    return [f"{run['seconds']:.1f}", f"{run['fps']:.3f}", f"{cpu:.1f}", f"{run['peak_rss_mib']:.0f}"]


def _scored(run: dict) -> list[str]:
    return [f"{run['psnr_nonkey']:.2f}" if "psnr_nonkey" in run else "-", str(run["media"])]


def markdown(result: dict) -> str:
    r = result["run"]
    size = result.get("size") or "854x480"
    what = "a synthetic reel" if result.get("synthetic") else f"{len(result['sequences'])} DAVIS sequences"
    lines = [
        f"size {size if not result.get('synthetic') else result.get('size') or '192x128'}, "
        f"device {result.get('device', 'cpu')}",
        "",
        f"`postprod run` on {r['reel_frames']} frames ({what}, "
        f"variant {result['variant']}, engine {result['engine']}): {r['seconds']:.0f} s, {r['fps']:.2f} frames/s, "
        f"peak memory {r['peak_rss_mib']:.0f} MiB",
        "",
        f"media: {r['media']}",
    ]
    if "gpu_share" in r:
        lines += [
            "",
            f"GPU {r['gpu']}: kernels busy {r['gpu_seconds']:.1f} s of {r['seconds']:.1f} s "
            f"({100 * r['gpu_share']:.1f} %), peak GPU memory {r['peak_gpu_mib']:.0f} MiB",
        ]
    if "psnr_nonkey" in r:
        lines += [
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
    if "base" in r:
        b = r["base"]
        lines += [
            "",
            markdown_table(
                ["checkout", "seconds", "frames/s", "CPU s", "peak memory MiB", "PSNR non-key dB", "media"],
                [[name, *_timed(x), *_scored(x)] for name, x in ((result["base"], b), ("this", r))],
            ),
            "",
            f"speed-up: {r['fps'] / b['fps']:.2f}x in frames/s, "
            f"{b.get('cpu_seconds', 0) / max(r.get('cpu_seconds', 0), 1e-9):.2f}x in CPU time",
        ]
    if "profile" in r:
        p = r["profile"]
        lines += [
            "",
            markdown_table(
                ["stage (cProfile, cumulative)", "seconds", "share of wall"],
                [
                    [k, "-" if v is None else f"{v:.1f}", "-" if v is None else f"{100 * v / p['wall']:.1f} %"]
                    for k, v in p.items()
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
    parser.add_argument("--size", help="upscale the frames to WxH, e.g. 1920x1080 (default: DAVIS' 854x480)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="postprod run --device")
    parser.add_argument("--base", type=Path, help="also run this checkout's postprod on the same reel")
    parser.add_argument("--profile", action="store_true", help="profile this checkout's run per stage")
    parser.add_argument("--in-process", action="store_true", help="run_reel in this process (GPU statistics)")
    parser.add_argument("--synthetic", action="store_true", help="a generated reel instead of DAVIS (not scored)")
    parser.add_argument("--memory-check", action="store_true", help="also run the reel 4x longer (peak memory)")
    parser.add_argument("--work", type=Path, help="keep the reels and outputs in this folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results, replaced (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.synthetic and not args.davis.is_dir():
        print(f"{args.davis}: no DAVIS folder", file=sys.stderr)
        return 2
    sequences = [] if args.synthetic else args.sequences or list_sequences(args.davis)
    work = (args.work or Path(tempfile.mkdtemp(prefix="bench-run-"))).resolve()
    size: Size = None
    if args.size:
        w, h = (int(x) for x in args.size.lower().split("x"))
        size = (w, h)
    base = args.base.resolve() if args.base else None
    result = {
        "sequences": sequences,
        "variant": args.variant,
        "engine": args.engine,
        "work_size": args.work_size,
        "max_frames": args.max_frames,
        "size": args.size,
        "device": args.device,
        "base": str(base) if base else None,
        "synthetic": args.synthetic,
        "in_process": args.in_process,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "run": bench(
            args.davis,
            sequences,
            args.max_frames,
            args.variant,
            args.engine,
            args.work_size,
            work,
            size=size,
            device=args.device,
            base=base,
            profile=args.profile,
            in_process=args.in_process,
            synthetic=args.synthetic,
        ),
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
            size=size,
            device=args.device,
        )
    print(markdown(result))
    write_json(args.out, result)
    print(f"wrote {args.out}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
