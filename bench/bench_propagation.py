"""Colour propagation benchmark on DAVIS, see bench/README.md ("Propagation").

    python -m bench.bench_propagation [--sequences blackswan camel ...] [--max-frames N]
        [--variants first first+last] [--methods copy flow image full] [--image-stride K]
        [--flows auto dis torch] [--base WORKTREE] [--profile] [--lpips-every K] [--out bench/results/propagation.json]

Protocol: each DAVIS sequence is one shot shown grey (its Lab L at 854x480); the true colour
frames at the keyframe positions are the references: variant ``first`` (frame 0 only) or
``first+last``. Every method produces ab at the working resolution (short side 256); ab is
brought to 854x480 by ``pipeline.propagate.upsample_chroma`` guided by the true L and composed
with it (luma passthrough), then scored against the true frames over the non-keyframes: PSNR
(RGB), SSIM, LPIPS (an approximation of LPIPS-VGG, ``model.lpips``, on every ``--lpips-every``-th
non-keyframe), temporal warp error (previous output warped onto the current one by DIS flow of
the true L, mean squared RGB error over pixels that pass the forward-backward check, same for
the ground truth) and CDC (ColorMNet's ``evaluation_matrics/cdc.py``: Jensen-Shannon divergence of
per-channel 256-bin RGB histograms between frames 1, 2 and 4 apart, averaged; over all frames).

Methods: ``copy`` (nearest keyframe's ab), ``flow`` (DIS flow chained frame to frame from each
keyframe; with two keyframes the two chains are averaged linearly by temporal distance),
``image`` (``model.transfer.transfer_colour`` on every frame from the keyframes, no temporal
handling; ``--image-stride K`` runs it on every K-th non-keyframe only, and then its temporal
metrics are not computed), ``full`` (``pipeline.propagate.propagate_shot``; one row per ``--flows`` backend, see
``pipeline.flow``). ``--base WORKTREE``: a worktree of another commit (e.g. the one before a
change) runs its own ``full`` on each sequence in a subprocess, between this run's sequences,
so both see the same machine load (row ``full (base)``). DAVIS is for evaluation only.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import platform
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from scipy import stats

from bench.toolkit import (
    DEFAULT_DAVIS,
    TARGET_PSNR,
    Shot,
    compose,
    davis_frames,
    list_sequences,
    markdown_table,
    warp_error,
    warp_masks,
    working_ab,
    write_json,
)
from pipeline.errors import PostprodError
from pipeline.flow import FLOW_METHODS, DISFlow, warp
from pipeline.metrics import psnr, ssim
from pipeline.propagate import MemoryStore, PropagationSettings, propagate_shot, to_working, upsample_chroma

DEFAULT_OUT = Path("bench") / "results" / "propagation.json"
METHODS = ("copy", "flow", "image", "full")
VARIANTS = ("first", "first+last")
CDC_DILATIONS = (1, 2, 4)


def load_shot(davis: Path, name: str, max_frames: int | None) -> Shot:
    """Frames of ``davis/name/frames/*.jpg`` (at most ``max_frames``) with their Lab."""
    paths = davis_frames(davis, name, max_frames)
    if len(paths) < 3:
        raise PostprodError(davis / name, f"needs at least 3 frames, has {len(paths)}")
    rgb = np.stack([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]).astype(np.float32) / 255
    return Shot.from_rgb(name, rgb)


# --- methods: each yields (t, ab (2, h, w)) for the frames it colours, in order --------------

Method = Callable[[np.ndarray, dict[int, np.ndarray]], Iterator[tuple[int, np.ndarray]]]


def copy_method(luma: np.ndarray, keys: dict[int, np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
    """The nearest keyframe's ab (ties: the earlier)."""
    for t in range(len(luma)):
        yield t, keys[min(keys, key=lambda k: (abs(k - t), k))]


def flow_method(luma: np.ndarray, keys: dict[int, np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
    """DIS (medium) flow chained frame to frame from each keyframe, forward and backward, the
    chains averaged linearly by temporal distance between two keyframes."""
    dis = DISFlow(finest_scale=1)  # the medium preset's own finest level
    n, order = len(luma), sorted(keys)
    frames_l = torch.from_numpy(np.ascontiguousarray(luma, dtype=np.float32))[:, None]

    def chain(frames: range) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        ab: np.ndarray | None = None
        for t in frames:
            if t in keys:
                ab = keys[t]
            elif ab is not None:
                s = t - 1 if frames.step > 0 else t + 1
                flow = dis.flow(frames_l[t : t + 1], frames_l[s : s + 1])
                ab = warp(torch.from_numpy(np.ascontiguousarray(ab, dtype=np.float32))[None], flow)[0].numpy()
            if ab is not None:
                out[t] = ab
        return out

    fwd, back = chain(range(n)), chain(range(n - 1, -1, -1))
    for t in range(n):
        before = max((k for k in order if k <= t), default=None)
        after = min((k for k in order if k >= t), default=None)
        if before is None or after is None or before == after:
            yield t, fwd[t] if before is not None else back[t]
        else:
            w = (after - t) / (after - before)
            yield t, w * fwd[t] + (1 - w) * back[t]


def image_method(stride: int) -> Method:
    """``transfer_colour`` per frame from all keyframes (VGG-16 loaded once), every ``stride``-th
    non-keyframe (and the keyframes, as given)."""
    from model.features import load_vgg16
    from model.transfer import transfer_colour

    features = load_vgg16()

    def run(luma: np.ndarray, keys: dict[int, np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
        refs = [torch.from_numpy(np.concatenate([luma[k][None], ab]))[None] for k, ab in sorted(keys.items())]
        others = [t for t in range(len(luma)) if t not in keys]
        chosen = set(others[::stride])
        for t in range(len(luma)):
            if t in keys:
                yield t, keys[t]
            elif t in chosen:
                with torch.inference_mode():
                    ab = transfer_colour(torch.from_numpy(luma[t])[None, None], refs, features=features)
                yield t, ab[0].numpy()

    return run


def full_method(settings: PropagationSettings) -> Method:
    """:func:`pipeline.propagate.propagate_shot` (VGG-16 of its colorizer loaded once)."""
    from pipeline.propagate import attention_colorizer

    colorizer = (
        attention_colorizer(work_size=settings.attention_size, position_sigma=settings.attention_position_sigma)
        if settings.attention_every > 0
        else None
    )

    def run(luma: np.ndarray, keys: dict[int, np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
        frames = propagate_shot(
            iter(luma), keys, length=len(luma), colorizer=colorizer, store=MemoryStore(), settings=settings
        )
        yield from ((t, f.ab) for t, f in enumerate(frames))

    return run


def run_base(args: argparse.Namespace, name: str, variant: str) -> dict[str, Any]:
    """The full method of the worktree ``args.base`` (another commit) on one sequence: this
    bench as that worktree has it, in a subprocess (its own modules), same options."""
    with tempfile.TemporaryDirectory(prefix="bench-propagation-base-") as tmp:
        out = Path(tmp) / "base.json"
        command = [sys.executable, "-m", "bench.bench_propagation", "--davis", str(args.davis.resolve())]
        command += ["--sequences", name, "--variants", variant, "--methods", "full", "--out", str(out)]
        command += ["--work-size", str(args.work_size), "--lpips-every", str(args.lpips_every)]
        if args.max_frames is not None:
            command += ["--max-frames", str(args.max_frames)]
        done = subprocess.run(command, cwd=args.base, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise PostprodError(args.base, f"the base bench failed: {done.stderr.strip().splitlines()[-1:]}")
        return json.loads(out.read_text())["variants"][variant]["shots"][name]["full"]


# --- where the time goes -----------------------------------------------------------------

# (label, file suffix, function name, "tottime" or "cumtime"): parts of the full method's time
PROFILE_PARTS = (
    ("optical flow, all", "pipeline/flow.py", "flow", "cumtime"),
    ("  of which OpenCV DIS", "~", "<method 'calc' of 'cv2.DenseOpticalFlow' objects>", "tottime"),
    ("refine_chroma", "pipeline/propagate.py", "refine_chroma", "cumtime"),
    ("attention term, all", "pipeline/propagate.py", "colorize", "cumtime"),
    ("  of which VGG-16", "model/features.py", "forward", "cumtime"),
    ("  of which SLIC", "skimage/segmentation/slic_superpixels.py", "slic", "cumtime"),
    ("warps (grid_sample)", "~", "<built-in method torch.grid_sampler>", "tottime"),
)


def profile_shares(profile: cProfile.Profile, seconds: float) -> dict[str, float]:
    """Share of ``seconds`` spent in each of :data:`PROFILE_PARTS` (0 when absent; "of which"
    rows are inside the row above, and the torch flow's warps are in both its row and the warps')."""
    table = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    shares = {}
    for label, suffix, name, column in PROFILE_PARTS:
        total = 0.0
        for (path, _line, func), (_cc, _nc, tottime, cumtime, _callers) in table.items():
            if func == name and path.endswith(suffix):
                total += tottime if column == "tottime" else cumtime
        shares[label] = total / seconds
    return shares


# --- temporal metrics (warp error: bench.toolkit) -----------------------------------------


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (natural log) of two histograms, as cdc.py's ``JS_divergence``."""
    m = (p + q) / 2
    return float(0.5 * stats.entropy(p, m) + 0.5 * stats.entropy(q, m))


def cdc(frames: Sequence[np.ndarray]) -> float:
    """Colour distribution consistency (ColorMNet cdc.py): per channel of the 8-bit RGB frames,
    256-bin histograms; JS divergence between frames ``d`` apart, averaged over pairs, for
    d = 1, 2, 4 weighted 1/3 each; the mean over the channels. Lower is steadier."""
    hists = [
        [
            np.bincount(np.clip(np.rint(f[..., c] * 255), 0, 255).astype(np.int64).ravel(), minlength=256)
            / f[..., c].size
            for c in range(3)
        ]
        for f in frames
    ]
    per_channel = []
    for c in range(3):
        total = 0.0
        for d in CDC_DILATIONS:
            total += np.mean([js_divergence(hists[i][c], hists[i + d][c]) for i in range(len(frames) - d)]) / len(
                CDC_DILATIONS
            )
        per_channel.append(total)
    return float(np.mean(per_channel))


# --- the run ------------------------------------------------------------------------------


def keyframes_of(variant: str, n: int) -> list[int]:
    return [0] if variant == "first" else [0, n - 1]


def evaluate(
    shot: Shot,
    variant: str,
    methods: dict[str, Method],
    work_size: int,
    lpips_model: torch.nn.Module,
    lpips_every: int,
    profile: bool = False,
) -> dict[str, dict]:
    """Run every method on one shot and score it; returns {method: scores} with per-frame lists
    (``profile``: and the full methods' time shares, :func:`profile_shares`)."""
    l_full = np.ascontiguousarray(shot.lab[:, 0])
    luma = np.stack([to_working(l, work_size) for l in l_full])
    size = luma.shape[1:]
    keys = {k: working_ab(shot.lab[k], size) for k in keyframes_of(variant, shot.n)}
    flows = warp_masks(l_full)
    truth_warp = [warp_error(shot.rgb[t - 1], shot.rgb[t], *flows[t - 1]) for t in range(1, shot.n)]
    out: dict[str, dict] = {}
    for name, method in methods.items():
        profiler = cProfile.Profile() if profile and name.startswith("full") else None
        start = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        produced = list(method(luma, keys))  # (t, ab) at working resolution, O(n) small frames
        seconds = time.perf_counter() - start
        if profiler is not None:
            profiler.disable()
        scores: dict[str, list] = {"psnr": [], "ssim": [], "lpips_approx": []}
        rgbs: dict[int, np.ndarray] = {}
        up_seconds = 0.0
        for t, ab in produced:
            tic = time.perf_counter()
            rgb = compose(l_full[t], upsample_chroma(ab, l_full[t]))
            up_seconds += time.perf_counter() - tic
            rgbs[t] = rgb
            if t in keys:
                continue
            scores["psnr"].append(psnr(rgb, shot.rgb[t]))
            scores["ssim"].append(ssim(rgb, shot.rgb[t]))
            if (len(scores["psnr"]) - 1) % lpips_every == 0:
                pair = [torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None] for x in (rgb, shot.rgb[t])]
                with torch.inference_mode():
                    scores["lpips_approx"].append(float(lpips_model(*pair)[0]))
        complete = len(rgbs) == shot.n
        result: dict[str, Any] = {k: float(np.mean(v)) for k, v in scores.items()}
        result |= {
            "frames_scored": len(scores["psnr"]),
            "seconds": seconds,
            "fps": len(produced) / seconds,
            "upsample_seconds_per_frame": up_seconds / len(produced),
            "per_frame_psnr": scores["psnr"],
        }
        if profiler is not None:
            result["profile"] = profile_shares(profiler, seconds)
        if complete:
            warp_errs = [warp_error(rgbs[t - 1], rgbs[t], *flows[t - 1]) for t in range(1, shot.n)]
            result |= {"warp_error": float(np.mean(warp_errs)), "cdc": cdc([rgbs[t] for t in range(shot.n)])}
        out[name] = result
    out["truth"] = {"warp_error": float(np.mean(truth_warp)), "cdc": cdc(list(shot.rgb))}
    return out


def summarise(per_shot: dict[str, dict[str, dict]]) -> dict[str, dict[str, float]]:
    """Means over shots (per-shot means, so every sequence counts once) and frames/s overall."""
    methods = next(iter(per_shot.values())).keys()
    table: dict[str, dict[str, float]] = {}
    for m in methods:
        rows = [s[m] for s in per_shot.values()]
        entry = {
            k: float(np.mean([r[k] for r in rows]))
            for k in ("psnr", "ssim", "lpips_approx", "warp_error", "cdc")
            if all(k in r for r in rows)
        }
        if m != "truth":
            frames = sum(r["fps"] * r["seconds"] for r in rows)
            entry["fps"] = frames / sum(r["seconds"] for r in rows)
            entry["upsample_seconds_per_frame"] = float(np.mean([r["upsample_seconds_per_frame"] for r in rows]))
        table[m] = entry
    return table


def markdown(result: dict) -> str:
    lines = []
    for variant, block in result["variants"].items():
        summary = block["summary"]

        def cell(s: dict, k: str, fmt: str, scale: float = 1.0) -> str:
            return format(s[k] * scale, fmt) if k in s else "-"

        rows = [
            [
                m,
                cell(s, "psnr", ".2f"),
                cell(s, "ssim", ".4f"),
                cell(s, "lpips_approx", ".4f"),
                cell(s, "warp_error", ".3f", 1e3),
                cell(s, "cdc", ".5f"),
                cell(s, "fps", ".2f"),
            ]
            for m, s in summary.items()
            if m != "truth"
        ]
        t = summary["truth"]
        rows.append(["(ground truth)", "", "", "", f"{t['warp_error'] * 1e3:.3f}", f"{t['cdc']:.5f}", ""])
        header = ["method", "PSNR dB ↑", "SSIM ↑", "LPIPS≈ ↓", "warp err ↓", "CDC ↓", "frames/s"]
        lines += [
            f"Variant {variant}: {len(block['shots'])} sequences, mean over sequences "
            f"(LPIPS is an approximation of LPIPS-VGG; warp error x1e3)",
            "",
            markdown_table(header, rows),
        ]
        if "full" in summary:
            # the target is for the first frame alone over whole sequences, end to end (bench.bench_run);
            # shorter runs or a second keyframe are easier, so they get no verdict
            if variant == "first" and result.get("config", {}).get("max_frames") is None:
                verdict = "met" if summary["full"]["psnr"] >= TARGET_PSNR else "NOT met"
                lines += [
                    "",
                    f"Target (full >= {TARGET_PSNR} dB, module alone; the target is judged by "
                    f"bench.bench_run): {verdict} ({summary['full']['psnr']:.2f} dB)",
                ]
            else:
                lines += [
                    "",
                    f"(no verdict: the {TARGET_PSNR} dB target is for the first frame alone over whole "
                    "sequences, judged by bench.bench_run)",
                ]
        profiled = [m for m in summary if "profile" in next(iter(block["shots"].values())).get(m, {})]
        if profiled:
            shares = {
                m: {k: np.mean([shot[m]["profile"][k] for shot in block["shots"].values()]) for k, *_ in PROFILE_PARTS}
                for m in profiled
            }
            rows = [[label, *(f"{100 * shares[m][label]:.0f} %" for m in profiled)] for label, *_ in PROFILE_PARTS]
            lines += ["", "Share of the method's time (cProfile):", "", markdown_table(["part", *profiled], rows)]
        methods = [m for m in summary if m != "truth"]
        per_sequence = [[name, *(f"{shot[m]['psnr']:.2f}" for m in methods)] for name, shot in block["shots"].items()]
        lines += ["", markdown_table(["sequence", *methods], per_sequence), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Colour propagation benchmark on DAVIS.")
    parser.add_argument("--davis", type=Path, default=DEFAULT_DAVIS, help="DAVIS folder (default: %(default)s)")
    parser.add_argument("--sequences", nargs="+", help="sequence names (default: all)")
    parser.add_argument("--max-frames", type=int, help="first N frames of each sequence (default: all)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--work-size",
        type=int,
        default=PropagationSettings().work_size,
        help="short side of the working resolution, px (default: %(default)s)",
    )
    parser.add_argument(
        "--image-stride",
        type=int,
        default=1,
        help="run the per-frame image model on every K-th non-keyframe (default: %(default)s)",
    )
    parser.add_argument(
        "--lpips-every", type=int, default=5, help="LPIPS on every K-th scored frame (default: %(default)s)"
    )
    parser.add_argument(
        "--flows",
        nargs="+",
        choices=FLOW_METHODS,
        default=["auto"],
        help="flow backends of the full method, one row each (default: %(default)s)",
    )
    parser.add_argument(
        "--base",
        type=Path,
        help="a worktree of another commit: its full method runs on each sequence too, in a subprocess "
        "(row 'full (base)')",
    )
    parser.add_argument("--profile", action="store_true", help="time shares of the full method's parts (cProfile)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results, replaced (default: %(default)s)")
    args = parser.parse_args(argv)

    from model.lpips import load_lpips

    try:
        sequences = args.sequences or list_sequences(args.davis)
        settings = PropagationSettings(work_size=args.work_size)
        builders: dict[str, Callable[[], Method]] = {
            "copy": lambda: copy_method,
            "flow": lambda: flow_method,
            "image": lambda: image_method(args.image_stride),
        }
        methods = {m: builders[m]() for m in args.methods if m != "full"}
        if "full" in args.methods:
            for flow in args.flows:
                name = "full" if len(args.flows) == 1 else f"full ({flow})"
                methods[name] = full_method(dataclasses.replace(settings, flow=flow))
        lpips_model = load_lpips()
        result: dict = {
            "variants": {},
            "config": {
                "sequences": sequences,
                "max_frames": args.max_frames,
                "work_size": args.work_size,
                "image_stride": args.image_stride,
                "lpips_every": args.lpips_every,
                "settings": vars(settings),
                "torch_threads": torch.get_num_threads(),
                "machine": platform.machine(),
                "processor": platform.processor(),
            },
        }
        for variant in args.variants:
            shots = {}
            for name in sequences:
                shot = load_shot(args.davis, name, args.max_frames)
                shots[name] = evaluate(
                    shot, variant, methods, args.work_size, lpips_model, args.lpips_every, args.profile
                )
                if args.base is not None:
                    shots[name] = {"full (base)": run_base(args, name, variant)} | shots[name]
                print(
                    f"{variant} {name}: "
                    + ", ".join(f"{m} {s['psnr']:.2f} dB" for m, s in shots[name].items() if "psnr" in s),
                    file=sys.stderr,
                    flush=True,
                )
            result["variants"][variant] = {"shots": shots, "summary": summarise(shots)}
        print(markdown(result))
        write_json(args.out, result)
        print(f"\nwrote {args.out}")
    except PostprodError as err:
        print(f"bench_propagation: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
