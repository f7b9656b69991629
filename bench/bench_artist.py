"""The artist loop on DAVIS: suggested keyframes against evenly spaced ones, see bench/README.md.

    python -m bench.bench_artist [--sequences blackswan camel ...] [--max-frames N] [--rows ROW ...]
        [--work-size 256] [--work DIR] [--out bench/results/artist.json]

A grey reel of the DAVIS sequences back to back (as ``bench.bench_run``: 854x480, 24000/1001 fps,
FFV1 luma from the true frames' BT.601 luma, timecode 10:00:00:00) is coloured by ``postprod run
--codec ffv1 --engine local`` in a fresh process per row, every row into the same work folder
(so a row reuses the shots whose references did not change). An *oracle artist* colours a frame
by writing the true frame as ``frame-<N>.png`` into the row's refs folder. Rows (per shot):

- ``first``: the first frame only; ``first+last``: and the last;
- ``first+1even``: and the middle frame; ``first+2even``: and frames n/3, 2n/3 (n frames);
- ``first+1suggested`` / ``first+2suggested``: and the frames ``postprod suggest --per-shot 1|2``
  picks from the ``first`` row's work folder.

Scored (``bench.toolkit.score_reel``): mean RGB PSNR over the frames not given as references,
warp error beside the truth's, and the artist's cost (keyframes given). Targets: 1 suggested
>= 35 dB and >= 1 even + 0.3 dB; 2 suggested >= 37 dB. Results are written after every row.
DAVIS is for evaluation only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.toolkit import (
    DEFAULT_DAVIS,
    REEL_FPS,
    REEL_TIMECODE,
    ReelShot,
    davis_grey_reel,
    list_sequences,
    markdown_table,
    run_postprod,
    score_reel,
    write_json,
)
from pipeline.images import read_rgb, write_rgb

DEFAULT_OUT = Path("bench") / "results" / "artist.json"
ROWS = ("first", "first+1suggested", "first+1even", "first+2suggested", "first+2even", "first+last")
"""In the order they run (the most telling first)."""
TARGET_ONE, TARGET_ONE_OVER_EVEN, TARGET_TWO = 35.0, 0.3, 37.0


def even_frames(n: int, k: int) -> list[int]:
    """Shot-local frames 0 and k more evenly spaced in a shot of n frames: round(j n / (k + 1))."""
    return sorted({0, *(round(j * n / (k + 1)) for j in range(1, k + 1))})


def suggested(workdir: Path, per_shot: int, dest: Path) -> set[int]:
    """``postprod suggest --per-shot K`` on ``workdir`` (a fresh process): the reel frames it picks."""
    cmd = [sys.executable, "-m", "cli", "suggest", "--workdir", str(workdir), "--per-shot", str(per_shot)]
    proc = subprocess.run([*cmd, "--out", str(dest)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return {int(p.stem.split("-")[1]) for p in dest.glob("frame-*.png")}


def keyframes_for(row: str, shots: list[ReelShot], picks: dict[int, set[int]]) -> set[int]:
    """Reel frames given as true colour frames in ``row``."""
    keys: set[int] = set()
    for shot in shots:
        n = len(shot.frames)
        local = {0, n - 1} if row == "first+last" else {0}
        if row.endswith("even"):
            local = set(even_frames(n, int(row[len("first+")])))
        keys |= {shot.start + f for f in local}
    if row.endswith("suggested"):
        keys |= picks[int(row[len("first+")])]
    return keys


def oracle_refs(shots: list[ReelShot], keys: set[int], dest: Path) -> Path:
    """A refs folder holding the true frame of every reel frame of ``keys`` as ``frame-<N>.png``."""
    dest.mkdir(parents=True)
    for shot in shots:
        for i, path in enumerate(shot.frames):
            if shot.start + i in keys:
                write_rgb(dest / f"frame-{shot.start + i}.png", read_rgb(path))
    return dest


def run_row(
    row: str, reel: Path, shots: list[ReelShot], picks: dict[int, set[int]], work: Path, work_size: int
) -> dict[str, Any]:
    """Colour the reel with ``row``'s oracle refs into the shared work folder and score it."""
    keys = keyframes_for(row, shots, picks)
    refs = oracle_refs(shots, keys, work / f"refs-{row}")
    out, workdir = work / f"out-{row}.mkv", work / "work"
    result: dict[str, Any] = {"keyframes": len(keys), **run_postprod(reel, refs, out, workdir, "local", work_size)}
    last = json.loads((workdir / "last-run.json").read_text())
    result["redone"], result["reused"] = len(last["redone"]), len(last["reused"])
    result |= score_reel(out, shots, keys)
    result["frames_given"] = sorted(keys)
    return result


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    lines = [
        f"{result['frames']} frames, {len(result['sequences'])} DAVIS sequences (one shot each), "
        f"work size {result['work_size']}",
        "",
        markdown_table(
            ["row", "keyframes given", "PSNR non-key dB", "warp err x1e3", "shots redone / reused", "seconds"],
            [
                [
                    name,
                    r["keyframes"],
                    f"{r['psnr_nonkey']:.2f}",
                    f"{r['warp_error'] * 1e3:.3f} ({r['warp_error_truth'] * 1e3:.3f})",
                    f"{r['redone']} / {r['reused']}",
                    f"{r['seconds']:.0f}",
                ]
                for name, r in rows.items()
            ],
        ),
    ]
    verdicts = []
    if "first+1suggested" in rows:
        one = rows["first+1suggested"]["psnr_nonkey"]
        verdicts.append(f"1 suggested {one:.2f} dB (target >= {TARGET_ONE})")
        if "first+1even" in rows:
            gap = one - rows["first+1even"]["psnr_nonkey"]
            verdicts.append(f"over 1 even {gap:+.2f} dB (target >= +{TARGET_ONE_OVER_EVEN})")
    if "first+2suggested" in rows:
        verdicts.append(f"2 suggested {rows['first+2suggested']['psnr_nonkey']:.2f} dB (target >= {TARGET_TWO})")
    if verdicts:
        lines += ["", "; ".join(verdicts)]
    per_seq = [
        [seq, *(f"{rows[n]['per_sequence'][seq]['psnr_nonkey']:.2f}" for n in rows)] for seq in result["sequences"]
    ]
    lines += ["", markdown_table(["sequence", *rows], per_seq)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--davis", type=Path, default=DEFAULT_DAVIS, help="DAVIS folder (default: %(default)s)")
    parser.add_argument("--sequences", nargs="+", help="sequence names (default: all)")
    parser.add_argument("--max-frames", type=int, help="first N frames of each sequence (default: all)")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="rows to run (first always)")
    parser.add_argument("--work-size", type=int, default=256, help="postprod run --work-size (default: %(default)s)")
    parser.add_argument("--work", type=Path, help="keep the reel, refs and outputs in this (new) folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results, replaced (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.davis.is_dir():
        print(f"{args.davis}: no DAVIS folder", file=sys.stderr)
        return 2
    sequences = args.sequences or list_sequences(args.davis)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-artist-"))
    work.mkdir(parents=True, exist_ok=True)
    reel = work / "reel.mkv"
    shots = davis_grey_reel(
        args.davis, sequences, reel, REEL_FPS, max_frames=args.max_frames, codec="ffv1", timecode=REEL_TIMECODE
    )
    result: dict[str, Any] = {
        "sequences": sequences,
        "frames": shots[-1].end,
        "max_frames": args.max_frames,
        "work_size": args.work_size,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "rows": {},
        "suggested": {},
    }
    picks: dict[int, set[int]] = {}
    for row in ["first", *(r for r in ROWS if r in args.rows and r != "first")]:
        result["rows"][row] = run_row(row, reel, shots, picks, work, args.work_size)
        if row == "first":  # the artist's suggestions come from the first-frame run's work folder
            for k in (1, 2):
                picks[k] = suggested(work / "work", k, work / f"suggested-{k}")
                result["suggested"][k] = sorted(picks[k])
        write_json(args.out, result)
        print(f"{row}: {result['rows'][row]['psnr_nonkey']:.2f} dB", flush=True)
    print(markdown(result))
    print(f"wrote {args.out}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
