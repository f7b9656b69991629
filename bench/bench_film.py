"""Real black-and-white film through ``postprod run``, see bench/README.md ("Real film").

    python -m bench.bench_film [--film DIR] [--names v32 v07 v39] [--all-refs] [--work DIR]
        [--out bench/results/film.json]

Each film ``<name>.mp4`` of ``../shared/data/film``, with one of the artist's photos in
``<name>-refs/`` as the exemplar of its first shot (``shot-0.<ext>``; the first photo by name, or
each in turn with ``--all-refs``; other shots take ``--missing-refs nearest``), goes through
``postprod run --codec ffv1`` in a fresh process. There is no ground truth, so:

- media are checked as in ``bench_run`` (``bench.toolkit.check_media``: frame count, frame rate,
  timecode, audio packets, luma bit for bit);
- colour is measured: colourfulness (Hasler and Suesstrunk, ``pipeline.metrics.colourfulness``)
  of the reference and of the output, mean over the first and over the last quarter of the
  frames (colour that fades along the film shows as a drop);
- flicker: warp error of the output (``bench.toolkit.warp_error``: previous frame warped onto the
  current one by DIS flow of the luma, over pixels that pass the forward-backward check) beside
  the same for the grey input: what the colour adds;
- a contact sheet per run, ``<results>/film-<name>-<ref>.png``: the reference, then the input and
  the output at 4 moments. The films are copyrighted: the sheets stay out of the repository
  (``bench/results`` is git-ignored).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from bench.toolkit import SHARED_DATA, check_media, markdown_table, run_postprod, warp_error, warp_masks, write_json
from pipeline.color import rgb_from_luma_chroma
from pipeline.errors import PostprodError
from pipeline.images import read_rgb, write_rgb
from pipeline.media.decode import iter_frames
from pipeline.media.probe import probe
from pipeline.metrics import colourfulness
from pipeline.refs import REF_SUFFIXES

DEFAULT_FILM = SHARED_DATA / "film"
DEFAULT_OUT = Path("bench") / "results" / "film.json"
MOMENTS = 4
SHEET_HEIGHT = 180  # px, each picture of the contact sheet


def film_refs(film: Path, name: str) -> list[Path]:
    """The artist's photos for ``<film>/<name>.mp4``: ``<film>/<name>-refs/*`` images a refs folder
    takes (``pipeline.refs.REF_SUFFIXES``), by name."""
    folder = film / f"{name}-refs"
    refs = sorted(p for p in folder.iterdir() if p.suffix.lower() in REF_SUFFIXES) if folder.is_dir() else []
    if not refs:
        raise PostprodError(folder, "no reference images")
    return refs


def moments(n: int) -> list[int]:
    """``MOMENTS`` frame indices spread over n frames, first and last included."""
    return sorted({round(x) for x in np.linspace(0, n - 1, MOMENTS)})


def _thumb(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) float RGB -> the same, ``SHEET_HEIGHT`` px high (area filter)."""
    h, w = rgb.shape[:2]
    return cv2.resize(rgb, (round(w * SHEET_HEIGHT / h), SHEET_HEIGHT), interpolation=cv2.INTER_AREA)


def contact_sheet(reference: np.ndarray, inputs: list[np.ndarray], outputs: list[np.ndarray]) -> np.ndarray:
    """Reference (left, top) beside rows of input and output frames: (H, W, 3) float32 RGB [0, 1]."""
    ref = _thumb(reference)
    rows = [np.hstack([_thumb(f) for f in frames]) for frames in (inputs, outputs)]
    left = np.vstack([ref, np.zeros((SHEET_HEIGHT, ref.shape[1], 3), np.float32)])
    return np.hstack([left, np.vstack(rows)])


def measure(out: Path) -> tuple[dict, list[np.ndarray], list[np.ndarray]]:
    """Colourfulness and warp errors of ``out`` and of its luma alone (the grey input's, which
    ``check_media`` finds bit-identical), streamed frame by frame; also the input and output
    frames (RGB [0, 1]) at :func:`moments`."""
    info = probe(out)
    n = info.frames
    picks = set(moments(n))
    colour, err_out, err_in, inputs, outputs = [], [], [], [], []
    previous: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    for f in iter_frames(out, chroma=True):
        rgb = rgb_from_luma_chroma(f.luma, f.chroma, f.bit_depth, info.luma_range, info.matrix)
        grey = rgb_from_luma_chroma(f.luma, None, f.bit_depth, info.luma_range, info.matrix)
        l = grey[..., 0] * 100.0
        colour.append(colourfulness(rgb))
        if previous is not None:
            ((flow, mask),) = warp_masks(np.stack([previous[0], l]))
            err_out.append(warp_error(previous[1], rgb, flow, mask))
            err_in.append(warp_error(previous[2], grey, flow, mask))
        previous = (l, rgb, grey)
        if f.index in picks:
            inputs.append(grey)
            outputs.append(rgb)
    quarter = max(1, n // 4)
    return (
        {
            "frames": n,
            "colourfulness_first_quarter": float(np.mean(colour[:quarter])),
            "colourfulness_last_quarter": float(np.mean(colour[-quarter:])),
            "warp_error": float(np.mean(err_out)),
            "warp_error_input": float(np.mean(err_in)),
        },
        inputs,
        outputs,
    )


def bench_one(reel: Path, ref: Path, work: Path, results: Path) -> dict:
    """One film with one reference: run, check, measure, write the contact sheet."""
    folder = work / f"{reel.stem}-{ref.stem}"
    refs = folder / "refs"
    refs.mkdir(parents=True)
    shutil.copyfile(ref, refs / f"shot-0{ref.suffix.lower()}")
    out, workdir = folder / "out.mkv", folder / "work"
    workdir.mkdir()
    reference = read_rgb(ref)  # an unreadable photo is named before the run
    run = run_postprod(reel, refs, out, workdir, "local", 256)
    scores, inputs, outputs = measure(out)
    sheet = results / f"film-{reel.stem}-{ref.stem}.png"
    sheet.parent.mkdir(parents=True, exist_ok=True)
    write_rgb(sheet, contact_sheet(reference, inputs, outputs), force=True)
    return {
        "film": reel.stem,
        "reference": ref.name,
        "reference_colourfulness": colourfulness(reference),
        "fps": scores["frames"] / run["seconds"],
        **run,
        "media": check_media(reel, out),
        **scores,
        "contact_sheet": str(sheet),
    }


def markdown(rows: list[dict]) -> str:
    header = [
        "film",
        "reference",
        "frames",
        "media ok",
        "colourfulness ref / first quarter / last quarter",
        "warp error x1e3 output / grey input",
        "frames/s",
    ]
    cells = [
        [
            r["film"],
            r["reference"],
            r["frames"],
            r["media"]["ok"],
            f"{r['reference_colourfulness']:.1f} / {r['colourfulness_first_quarter']:.1f} / "
            f"{r['colourfulness_last_quarter']:.1f}",
            f"{r['warp_error'] * 1e3:.3f} / {r['warp_error_input'] * 1e3:.3f}",
            f"{r['fps']:.2f}",
        ]
        for r in rows
    ]
    return markdown_table(header, cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--film", type=Path, default=DEFAULT_FILM, help="film folder (default: %(default)s)")
    parser.add_argument("--names", nargs="+", help="films by name, e.g. v32 (default: every <name>.mp4)")
    parser.add_argument("--all-refs", action="store_true", help="each reference photo in turn (default: the first)")
    parser.add_argument("--work", type=Path, help="keep the refs folders and outputs in this folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results, replaced (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.film.is_dir():
        print(f"{args.film}: no film folder", file=sys.stderr)
        return 2
    reels = [args.film / f"{n}.mp4" for n in args.names] if args.names else sorted(args.film.glob("*.mp4"))
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-film-"))
    try:
        for reel in reels:
            if not reel.is_file():
                raise PostprodError(reel, "no such film")
        jobs = [
            (reel, ref) for reel in reels for ref in film_refs(args.film, reel.stem)[: None if args.all_refs else 1]
        ]
        rows = []
        for reel, ref in jobs:
            rows.append(bench_one(reel, ref, work, args.out.parent))
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    except (PostprodError, RuntimeError) as exc:  # RuntimeError: a postprod run failed (run_postprod names its log)
        print(exc, file=sys.stderr)
        return 2
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(markdown(rows))
    write_json(args.out, rows)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
