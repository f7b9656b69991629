"""Shot-detection benchmark: postprod's luma detector against PySceneDetect, see bench/README.md.

    python -m bench.bench_shots [--out bench/results/shots.json] [--repeat 3] [--work DIR] [--shared-pass]

Reels (made in a temporary folder unless ``--work`` is given, where they are kept):
- ``davis-grey-{0,1,2}``: 8 DAVIS sequences each, in three seeded orders, turned grey and encoded
  back to back (H.264, 854x480, 24 fps): hard cuts known exactly.
- ``film-grey``: the three black-and-white film excerpts of ../shared/data/film back to back
  (1280x720, 24 fps): grain, flicker, two hard cuts.
- ``testvideo`` / ``fades``: ../shared/data/reels/*.mp4 as they are (colour), and ``-grey`` copies.
- ``film-grey-prores``, ``testvideo-grey-prores``, ``davis-grey-0-prores``: the same reels as
  ProRes 422 HQ, an intra-only archive master (every frame a keyframe), where postprod reads
  coarse-to-fine (``postprod-dense`` times it decoding every frame).

For each reel: our ``detect_shots`` and PySceneDetect's ContentDetector and AdaptiveDetector with
their defaults (ThresholdDetector too on the reels with fades), and ContentDetector(luma_only=True),
its setting for footage without colour; each through its own decoder,
interleaved ``--repeat`` times; wall time includes opening and decoding, and so does CPU time
(all threads of the process: the work done, which a loaded machine does not inflate as it does
wall time). A detected boundary
(first frame of a new shot) matches a true one when it lies within 1 frame of the true cut, or
of the true transition's frame range for fades and dissolves; each true transition matches once.

``--shared-pass``: instead, on the same reels, the one decode pass ``postprod run`` makes in
prepare (``pipeline.run.analyse_reel``: every frame decoded exactly, shot detection and the
working-resolution grey stored), the same pass without the grey (detection alone), a bare
decode (PyAV, every frame, nothing else) and postprod's own decoding (``iter_frames``: the luma
as arrays), best of ``--repeat``, wall and CPU time (all threads).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from bench.toolkit import SHARED_DATA, davis_grey_reel, list_sequences, markdown_table, write_json
from pipeline.media.decode import configure_decoder, is_intra_only
from pipeline.media.probe import scan_packets
from pipeline.media.synth import write_grey_reel

DAVIS_FPS = Fraction(24)
DAVIS_SEQS_PER_REEL = 8
DAVIS_SEEDS = (0, 1, 2)
TOLERANCE = 1  # frames
Truth = tuple[tuple[int, int], ...]

# Ground truth as (first, last) frame ranges within which the new shot may start.
# testvideo.mp4 (1280x720, 30000/1001, 720 frames), established by printing each frame's mean luma
# and mean absolute difference to the previous frame (all shots are still pictures, so every
# change is a transition) and viewing frames around each change; PySceneDetect's own tests
# (Breakthrough/PySceneDetect tests/test_detectors.py, "threshold_testvideo_default") expect scene
# starts [0, 15, 198, 376] over frames 0-500 with ThresholdDetector, which fall in the first three.
TESTVIDEO_TRUTH: Truth = (
    (1, 30),  # black leader 0-29, hard cut into picture A (leaf on a rock) at 30
    (180, 241),  # hard cut to black at 180, black to 210, fade-in 211-240 of B (deer), full at 241
    (331, 424),  # B fades out 331-360, black 361-393, C (leaf on rock) fades in 394-423
    (529, 559),  # dissolve C -> D (texture) over 529-558, D alone from 559
    (664, 719),  # D fades out 664-693 into a black trailer 694-719 that ends the reel
)
# fades.mp4 (480x320, 25 fps, 250 frames): every frame is uniform grey, ramping black -> white ->
# black ... (per-frame means printed and frames viewed). Each black or white extreme is a fade out
# and in; the range is where the mean lies within 10 code values of black (white). PySceneDetect's
# tests expect 84, 167 (ThresholdDetector floor) and 42, 125, 209 (ceiling): all inside. The 2-4
# dark frames at either end of the file are not counted (no shot is that short).
FADES_TRUTH: Truth = ((36, 47), (78, 89), (120, 130), (161, 172), (203, 214))

# Real black-and-white film excerpts (internal testing only), each a single shot (checked by viewing
# every 8th frame): joined back to back they make a grainy archive reel with two known hard cuts.
FILM_EXCERPTS = ("v07", "v32", "v39")

# Reels also benchmarked as ProRes 422 HQ (intra-only, as archive masters are): a film reel, one
# made mostly of gradual transitions, one of constant fast motion.
INTRA_COPIES = ("film-grey", "testvideo-grey", "davis-grey-0")


def davis_reel(davis: Path, sequences: Sequence[str], dest: Path) -> Truth:
    """Grey H.264 reel of ``sequences`` back to back; returns the hard cuts as (frame, frame) ranges."""
    shots = davis_grey_reel(davis, sequences, dest, DAVIS_FPS)
    return tuple((s.start, s.start) for s in shots[1:])


def grey_video_reel(sources: Sequence[Path], dest: Path, *, codec: str = "libx264") -> Truth:
    """``sources`` back to back with their chroma dropped, at the first one's size and frame rate.

    Returns the joins as (frame, frame) ranges (none for a single source): a grey copy of one
    video, or a reel of several with hard cuts known exactly. ``codec``: see
    :data:`pipeline.media.synth.ENCODINGS`.
    """
    from pipeline.media.decode import iter_frames
    from pipeline.media.probe import probe
    from pipeline.shots.features import to_full_range_uint8

    infos = [probe(src) for src in sources]
    size = (infos[0].width, infos[0].height)

    def frames() -> Iterable[np.ndarray]:
        for src, info in zip(sources, infos):
            for f in iter_frames(src):
                grey = to_full_range_uint8(f.luma, f.bit_depth, info.luma_range == "tv")
                yield grey if grey.shape[::-1] == size else cv2.resize(grey, size, interpolation=cv2.INTER_AREA)

    write_grey_reel(dest, frames(), infos[0].fps, codec=codec)
    return tuple((int(c), int(c)) for c in np.cumsum([i.frames for i in infos])[:-1])


def score(found: Sequence[int], truth: Truth, tolerance: int = TOLERANCE) -> dict[str, float]:
    """Precision, recall, F1 of detected boundaries against true ranges (one match per range).

    Ranges are taken by their last frame, each matched to the earliest unused detection inside
    it (+- tolerance): for points against intervals that greedy matching is maximal.
    """
    free = sorted(found)
    tp = 0
    for first, last in sorted(truth, key=lambda r: r[1]):
        hit = next((d for d in free if first - tolerance <= d <= last + tolerance), None)
        if hit is not None:
            free.remove(hit)
            tp += 1
    fp, fn = len(found) - tp, len(truth) - tp
    precision = tp / len(found) if found else float(not truth)
    recall = tp / len(truth) if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1}


def ours(path: Path) -> list[int]:
    """Boundaries found by :func:`pipeline.shots.detect_shots` (defaults)."""
    from pipeline.shots import detect_shots

    return [s.start for s in detect_shots(path).shots[1:]]


def ours_dense(path: Path) -> list[int]:
    """:func:`pipeline.shots.detect_shots` decoding every frame (no coarse-to-fine pass)."""
    from pipeline.shots import ShotSettings, detect_shots

    return [s.start for s in detect_shots(path, settings=ShotSettings(coarse_step=1)).shots[1:]]


def scenedetect_method(name: str, **options: object) -> Callable[[Path], list[int]]:
    """PySceneDetect's detector ``name`` (defaults unless ``options``), on its own OpenCV video backend."""

    def run(path: Path) -> list[int]:
        import scenedetect
        from scenedetect import SceneManager, open_video

        video = open_video(str(path), backend="opencv")
        manager = SceneManager()
        manager.add_detector(getattr(scenedetect, name)(**options))
        manager.detect_scenes(video)
        return [start.frame_num for start, _ in manager.get_scene_list()[1:]]

    return run


def decode_only_pyav(path: Path) -> list[int]:
    """Decode every frame with PyAV (threaded) and do nothing else: the floor for a PyAV-based detector."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for _ in container.decode(stream):
            pass
    return []


def decode_refs_pyav(path: Path) -> list[int]:
    """Decode only the reference frames (``skip_frame=NONREF``), in analysis mode as postprod decodes.

    The floor for any detector that can see a boundary anywhere in a long-GOP stream: a frame late
    in a GOP cannot be decoded without every reference frame before it, so looking at a frame
    every few frames through a GOP already costs this. (Intra-only streams: every frame is a
    reference, but none is needed to decode another, which is what coarse-to-fine reading uses.)
    """
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        configure_decoder(stream, analysis=True)
        stream.codec_context.skip_frame = "NONREF"
        for _ in container.decode(stream):
            pass
    return []


def decode_only_opencv(path: Path) -> list[int]:
    """Read every frame with OpenCV (what PySceneDetect's default backend does before any detection)."""
    capture = cv2.VideoCapture(str(path))
    try:
        while capture.grab():
            capture.retrieve()
    finally:
        capture.release()
    return []


DECODE_ONLY: dict[str, Callable[[Path], list[int]]] = {
    "pyav": decode_only_pyav,
    "pyav-refs": decode_refs_pyav,
    "opencv": decode_only_opencv,
}


def scenedetect_version() -> str | None:
    try:
        import scenedetect
    except ImportError:
        return None
    return scenedetect.__version__


def build_reels(work: Path) -> list[tuple[str, Path, Truth, bool]]:
    """(name, path, truth, has_fades) of every reel whose source data is present."""
    reels: list[tuple[str, Path, Truth, bool]] = []
    davis = SHARED_DATA / "davis"
    if davis.is_dir():
        names = list_sequences(davis, masks=False)
        for seed in DAVIS_SEEDS:
            order = [str(s) for s in np.random.default_rng(seed).permutation(names)[:DAVIS_SEQS_PER_REEL]]
            dest = work / f"davis-grey-{seed}.mp4"
            print(f"encoding {dest.name}: {' '.join(order)}", file=sys.stderr)
            reels.append((dest.stem, dest, davis_reel(davis, order, dest), False))
    else:
        print(f"DAVIS not found at {davis}: skipping the DAVIS reels", file=sys.stderr)
    film = [SHARED_DATA / "film" / f"{name}.mp4" for name in FILM_EXCERPTS]
    if all(p.is_file() for p in film):
        dest = work / "film-grey.mp4"
        print(f"encoding {dest.name}: {' '.join(FILM_EXCERPTS)}", file=sys.stderr)
        reels.append((dest.stem, dest, grey_video_reel(film, dest), False))
    else:
        print(f"film excerpts {FILM_EXCERPTS} not found under {SHARED_DATA / 'film'}: skipping them", file=sys.stderr)
    for name, truth in (("testvideo", TESTVIDEO_TRUTH), ("fades", FADES_TRUTH)):
        src = SHARED_DATA / "reels" / f"{name}.mp4"
        if not src.is_file():
            print(f"{src} not found: skipping it", file=sys.stderr)
            continue
        grey = work / f"{name}-grey.mp4"
        grey_video_reel([src], grey)
        reels += [(name, src, truth, True), (f"{name}-grey", grey, truth, True)]
    for name, src, truth, has_fades in list(reels):
        if name in INTRA_COPIES:
            dest = work / f"{name}-prores.mov"
            print(f"encoding {dest.name}", file=sys.stderr)
            grey_video_reel([src], dest, codec="prores")
            reels.append((dest.stem, dest, truth, has_fades))
    return reels


def run(work: Path, repeat: int) -> dict:
    """Run every method on every reel; the JSON-ready results."""
    methods: dict[str, Callable[[Path], list[int]]] = {"postprod": ours}
    if scenedetect_version():
        methods |= {
            f"pyscenedetect-{n.removesuffix('Detector').lower()}": scenedetect_method(n)
            for n in ("ContentDetector", "AdaptiveDetector", "ThresholdDetector")
        }
        # not a default, but the setting PySceneDetect offers for footage without colour
        methods["pyscenedetect-content-luma"] = scenedetect_method("ContentDetector", luma_only=True)
    else:
        print("PySceneDetect is not installed (see bench/README.md): running postprod only", file=sys.stderr)
    results: dict[str, dict] = {}
    for name, path, truth, has_fades in build_reels(work):
        chosen = {m: f for m, f in methods.items() if has_fades or not m.endswith("threshold")}
        intra = is_intra_only(scan_packets(path))
        if intra:  # where postprod reads coarse-to-fine: the dense path too
            chosen = {"postprod": ours, "postprod-dense": ours_dense} | chosen
        timed = chosen | {f"decode-only-{k}": f for k, f in DECODE_ONLY.items()}
        found: dict[str, list[int]] = {}
        times: dict[str, list[float]] = {m: [] for m in timed}
        cpu: dict[str, list[float]] = {m: [] for m in timed}  # CPU time of all threads: the work, whatever the load
        for _ in range(repeat):  # interleaved, so a busy machine slows every method alike
            for m, detect in timed.items():
                t0, c0 = time.perf_counter(), time.process_time()
                found[m] = detect(path)
                times[m].append(time.perf_counter() - t0)
                cpu[m].append(time.process_time() - c0)
        results[name] = {
            "path": str(path),
            "intra_only": intra,
            "truth": [list(r) for r in truth],
            "methods": {
                m: {
                    "found": found[m],
                    **score(found[m], truth),
                    "seconds_min": min(times[m]),
                    "seconds_median": statistics.median(times[m]),
                    "seconds_all": times[m],
                    "cpu_seconds_min": min(cpu[m]),
                }
                for m in chosen
            },
            "decode_only_seconds_min": {k: min(times[f"decode-only-{k}"]) for k in DECODE_ONLY},
        }
        print(
            f"{name}: "
            + ", ".join(f"{m} F1 {r['f1']:.2f} {r['seconds_min']:.2f}s" for m, r in results[name]["methods"].items()),
            file=sys.stderr,
        )
    return {
        "environment": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "pyav": av.__version__,
            "opencv": cv2.__version__,
            "scenedetect": scenedetect_version(),
            "repeat": repeat,
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "tolerance_frames": TOLERANCE,
        "reels": results,
        "davis_total": davis_total(results),
    }


def shared_pass(path: Path, dest: Path) -> list[int]:
    """``pipeline.run.analyse_reel`` at the default working size: shots and stored grey in one pass."""
    from pipeline.media.probe import probe
    from pipeline.run import analyse_reel, work_size_of
    from pipeline.settings import RunSettings

    info = probe(path)
    dest.unlink(missing_ok=True)
    return [s.start for s in analyse_reel(path, info, dest, work_size_of(info, RunSettings())).shots[1:]]


def detection_in_the_pass(path: Path) -> list[int]:
    """The shared pass without the lightness: every frame decoded exactly, dense detection."""
    from pipeline.shots import detect_shots

    return [s.start for s in detect_shots(path, on_frame=lambda _: None).shots[1:]]


def decode_postprod(path: Path) -> list[int]:
    """Every frame through postprod's decoder (``iter_frames``: luma planes as arrays), nothing else."""
    from pipeline.media.decode import iter_frames

    for _ in iter_frames(path):
        pass
    return []


def run_shared_pass(work: Path, repeat: int) -> dict:
    """The shared decode pass against bare decoding on every reel; JSON-ready."""
    methods: dict[str, Callable[[Path], list[int]]] = {
        "shared pass": lambda p: shared_pass(p, work / f"{p.stem}-grey.npy"),
        "detection in the pass": detection_in_the_pass,
        "decode (PyAV)": decode_only_pyav,
        "decode (iter_frames)": decode_postprod,
    }
    results: dict[str, dict] = {}
    for name, path, truth, _ in build_reels(work):
        times: dict[str, list[float]] = {m: [] for m in methods}
        cpu: dict[str, list[float]] = {m: [] for m in methods}  # all threads: the work, whatever the load
        found: list[int] = []
        for _ in range(repeat):
            for m, f in methods.items():
                t0, c0 = time.perf_counter(), time.process_time()
                got = f(path)
                times[m].append(time.perf_counter() - t0)
                cpu[m].append(time.process_time() - c0)
                found = got or found
        best = {m: min(t) for m, t in times.items()}
        best_cpu = {m: min(t) for m, t in cpu.items()}
        results[name] = {
            "seconds_min": best,
            "cpu_seconds_min": best_cpu,
            "ratio_to_pyav": best["shared pass"] / best["decode (PyAV)"],
            "detection_ratio_to_pyav": best["detection in the pass"] / best["decode (PyAV)"],
            "detection_cpu_ratio_to_pyav": best_cpu["detection in the pass"] / best_cpu["decode (PyAV)"],
            "ratio_to_iter_frames": best["shared pass"] / best["decode (iter_frames)"],
            "cpu_ratio_to_pyav": best_cpu["shared pass"] / best_cpu["decode (PyAV)"],
            "f1": score(found, truth)["f1"],
        }
        print(f"{name}: " + ", ".join(f"{m} {t:.2f}s" for m, t in best.items()), file=sys.stderr)
    return {"environment": {"cpus": os.cpu_count(), "pyav": av.__version__, "repeat": repeat}, "reels": results}


def shared_pass_markdown(report: dict) -> str:
    rows = []
    for name, r in report["reels"].items():
        ratios = [f"{r['ratio_to_pyav']:.2f}x", f"{r['cpu_ratio_to_pyav']:.2f}x"]
        ratios += [f"{r['detection_ratio_to_pyav']:.2f}x", f"{r['detection_cpu_ratio_to_pyav']:.2f}x"]
        rows.append([name, *(f"{t:.2f}" for t in r["seconds_min"].values()), *ratios, f"{r['f1']:.2f}"])
    head = ["reel", "shared pass s", "detection s", "decode PyAV s", "decode iter_frames s"]
    head += ["pass / PyAV", "CPU", "detection / PyAV", "CPU", "F1"]
    return markdown_table(head, rows)


def davis_total(results: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Per method, the scores pooled over the DAVIS reels (counts summed) and the summed times."""
    total: dict[str, dict[str, float]] = {}
    for name, reel in results.items():
        if name not in {f"davis-grey-{seed}" for seed in DAVIS_SEEDS}:  # the H.264 reels, not the ProRes copy
            continue
        for m, r in reel["methods"].items():
            t = total.setdefault(m, {"tp": 0, "fp": 0, "fn": 0, "seconds_min": 0.0, "cpu_seconds_min": 0.0})
            for k in ("tp", "fp", "fn", "seconds_min", "cpu_seconds_min"):
                t[k] += r[k]
    for t in total.values():
        p = t["tp"] / (t["tp"] + t["fp"]) if t["tp"] + t["fp"] else 0.0
        r = t["tp"] / (t["tp"] + t["fn"]) if t["tp"] + t["fn"] else 0.0
        t.update(precision=p, recall=r, f1=2 * p * r / (p + r) if p + r else 0.0)
    return total


def markdown(report: dict) -> str:
    """Scores, best wall and CPU times per reel and method (speed-ups over ContentDetector), then decode floors."""
    pooled = (
        [(f"DAVIS, {len(DAVIS_SEEDS)} reels pooled", {"methods": report["davis_total"]})]
        if report["davis_total"]
        else []
    )
    scores = []
    for name, reel in [*report["reels"].items(), *pooled]:
        content = reel["methods"].get("pyscenedetect-content", {})
        for m, r in reel["methods"].items():
            speed = [f"{content[k] / r[k]:.2f}x" if content else "-" for k in ("seconds_min", "cpu_seconds_min")]
            scores.append(
                [
                    name,
                    m,
                    f"{r['precision']:.2f}",
                    f"{r['recall']:.2f}",
                    f"{r['f1']:.2f}",
                    f"{r['tp']}/{r['fp']}/{r['fn']}",
                    f"{r['seconds_min']:.2f}",
                    speed[0],
                    f"{r['cpu_seconds_min']:.2f}",
                    speed[1],
                ]
            )
    floors = []
    for name, reel in report["reels"].items():
        dec, m = reel["decode_only_seconds_min"], reel["methods"]
        content = m.get("pyscenedetect-content", {}).get("seconds_min")
        floors.append(
            [
                name,
                f"{dec['pyav']:.2f}",
                f"{dec['pyav-refs']:.2f}",
                f"{dec['opencv']:.2f}",
                f"{m['postprod']['seconds_min']:.2f}",
                f"{content:.2f}" if content else "-",
                # intra-only: no frame is needed to decode another, so this is no floor
                f"{content / dec['pyav-refs']:.2f}x" if content and not reel.get("intra_only") else "-",
            ]
        )
    score_header = ["reel", "method", "precision", "recall", "F1", "TP/FP/FN", "time (s)"]
    score_header += ["ContentDetector time / this", "CPU (s)", "ContentDetector CPU / this"]
    floor_header = ["reel", "PyAV decode only (s)", "PyAV reference frames only (s)", "OpenCV decode only (s)"]
    floor_header += ["postprod (s)", "ContentDetector (s)", "ContentDetector / reference frames only"]
    return "\n".join([markdown_table(score_header, scores), "", markdown_table(floor_header, floors)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_shots", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/shots.json"), help="JSON results")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per method and reel (best is kept)")
    parser.add_argument("--work", type=Path, help="keep the generated reels in this folder")
    parser.add_argument("--shared-pass", action="store_true", help="time prepare's shared decode pass instead")
    args = parser.parse_args(argv)
    if args.shared_pass:
        if args.work:
            args.work.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="bench_shots_") as tmp:
            report = run_shared_pass(args.work or Path(tmp), args.repeat)
        table = shared_pass_markdown(report)
        report["table_markdown"] = table
        write_json(args.out, report)
        print(table)
        print(f"\nwritten {args.out}")
        return 0
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        report = run(args.work, args.repeat)
    else:
        with tempfile.TemporaryDirectory(prefix="bench_shots_") as tmp:
            report = run(Path(tmp), args.repeat)
    table = markdown(report)
    report["table_markdown"] = table
    write_json(args.out, report)
    print(table)
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
