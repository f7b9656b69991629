"""Colorization evaluation harness on DAVIS (protocols A and B), see bench/README.md.

    python -m bench.harness [--protocol A|B|both] [--sequences blackswan dog ...]
        [--max-pairs-per-seq K] [--size S] [--methods ...] [--out bench/results/harness.json]

Pairs: target = frame k + 10 shown grey (its Lab L), reference = colour frame k of the same
sequence. (A) same scene, scored on the whole image against the true colours: PSNR, SSIM,
LPIPS (an approximation of LPIPS-VGG, see model/lpips.py), ΔHIS, colourfulness. (B) object
level: the DAVIS masks of the target and reference frames are given as one (target mask,
reference mask) pair; scored inside the target mask (ab error, PSNR) for mask-capable methods
run with and without the masks. DAVIS is for evaluation only, never training.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from bench.baselines import BASELINES
from bench.toolkit import (
    DEFAULT_DAVIS,
    FRAME_GAP,
    NET,
    SUPER_ATTENTION,
    Method,
    Pair,
    available_methods,
    compose_rgb,
    list_sequences,
    load_pairs,
    markdown_table,
    rgb_to_lab_np,
    write_json,
)
from pipeline.errors import PostprodError
from pipeline.metrics import colourfulness, delta_his, masked_ab_error, psnr, ssim

DEFAULT_OUT = Path("bench") / "results" / "harness.json"
MASK_TARGET = 0.30  # target: masks cut the in-mask ab error by at least 30 %


def score_a(pred: np.ndarray, pair: Pair, lpips_model: torch.nn.Module) -> dict[str, float]:
    """Protocol A scores of ``pred`` (H, W, 3) float RGB against the pair's ground truth."""

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, np.float32)).permute(2, 0, 1)[None]

    with torch.inference_mode():
        lp = float(lpips_model(t(pred), t(pair.target_rgb))[0])
    return {
        "psnr": psnr(pred, pair.target_rgb),
        "ssim": ssim(pred, pair.target_rgb),
        "lpips_approx": lp,
        "delta_his": delta_his(pred, pair.target_rgb, pair.reference_rgb),
        "colourfulness": colourfulness(pred),
    }


def score_b(pred: np.ndarray, pair: Pair) -> dict[str, float]:
    """Protocol B scores inside the target mask (NaN if the mask is empty at this size)."""
    if not pair.target_mask.any():
        return {"ab_error_in_mask": float("nan"), "psnr_in_mask": float("nan")}
    return {
        "ab_error_in_mask": masked_ab_error(pred, pair.target_rgb, pair.target_mask),
        "psnr_in_mask": psnr(pred, pair.target_rgb, mask=pair.target_mask),
    }


def run(
    pairs: Sequence[Pair],
    methods: Sequence[Method],
    protocols: Sequence[str],
    lpips_model: torch.nn.Module | None = None,
) -> dict:
    """Colorize every pair with every method (and with masks for mask-capable ones under B) and score.

    Returns a JSON-able dict: ``pairs``, ``A``/``B`` (means per variant), ``per_pair`` scores,
    ``seconds`` (total colorization time per variant, not counting scoring).
    """
    variants: list[tuple[str, Method, bool]] = [(m.name, m, False) for m in methods]
    if "B" in protocols:
        variants += [(f"{m.name} +masks", m, True) for m in methods if m.uses_masks]
    per_pair: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in variants}
    seconds = dict.fromkeys(per_pair, 0.0)
    for pair in pairs:
        target_l = rgb_to_lab_np(pair.target_rgb)[..., 0]
        refs = [rgb_to_lab_np(pair.reference_rgb)]
        for name, method, with_masks in variants:
            masks = [[(pair.target_mask, pair.reference_mask)]] if with_masks else None
            start = time.perf_counter()
            ab = method.colorize(target_l, refs, masks)
            seconds[name] += time.perf_counter() - start
            pred = compose_rgb(target_l, ab)
            scores: dict[str, float] = {}
            if "A" in protocols and not with_masks:
                assert lpips_model is not None, "protocol A needs an LPIPS model"
                scores |= score_a(pred, pair, lpips_model)
            if "B" in protocols:
                scores |= score_b(pred, pair)
            per_pair[name].append(scores)

    def means(names: Sequence[str], keys: Sequence[str]) -> dict[str, dict[str, float]]:
        return {n: {k: float(np.nanmean([s[k] for s in per_pair[n]])) for k in keys} for n in names}

    result: dict = {
        "pairs": [
            {
                "sequence": p.sequence,
                "target_frame": p.target_frame,
                "reference_frame": p.reference_frame,
                "size": list(p.target_rgb.shape[:2]),
                "target_mask_pixels": int(p.target_mask.sum()),
            }
            for p in pairs
        ],
        "per_pair": per_pair,
        "seconds": seconds,
    }
    if "A" in protocols:
        result["A"] = means([m.name for m in methods], ["psnr", "ssim", "lpips_approx", "delta_his", "colourfulness"])
        result["ground_truth_colourfulness"] = float(np.mean([colourfulness(p.target_rgb) for p in pairs]))
    if "B" in protocols:
        result["B"] = means(list(per_pair), ["ab_error_in_mask", "psnr_in_mask"])
    return result


def markdown_tables(result: dict) -> str:
    """Markdown tables of the means for A and B, plus the targets checked."""
    lines: list[str] = []
    n = len(result["pairs"])
    if "A" in result:
        rows = [
            [
                name,
                f"{s['psnr']:.2f}",
                f"{s['ssim']:.4f}",
                f"{s['lpips_approx']:.4f}",
                f"{s['delta_his']:.4f}",
                f"{s['colourfulness']:.1f}",
                f"{result['seconds'][name] / n:.2f}",
            ]
            for name, s in result["A"].items()
        ]
        rows.append(["(ground truth)", "", "", "", "", f"{result['ground_truth_colourfulness']:.1f}", ""])
        header = ["method", "PSNR dB ↑", "SSIM ↑", "LPIPS≈ ↓", "ΔHIS ↓", "colourfulness", "s/pair"]
        lines += [
            f"Protocol A: whole image, {n} pairs (LPIPS is an approximation of LPIPS-VGG)",
            "",
            markdown_table(header, rows),
        ]
        a = result["A"]
        if SUPER_ATTENTION in a:
            others = {k: a[k]["psnr"] for k in ("reinhard", "copy-chroma") if k in a}
            verdict = all(a[SUPER_ATTENTION]["psnr"] > v for v in others.values())
            lines += [
                "",
                f"Target A (super-attention PSNR > {', '.join(others)}): "
                f"{'met' if verdict else 'NOT met'} ({a[SUPER_ATTENTION]['psnr']:.2f} dB vs "
                + ", ".join(f"{k} {v:.2f} dB" for k, v in others.items())
                + ")",
            ]
        if NET in a and SUPER_ATTENTION in a:
            net, sa = a[NET], a[SUPER_ATTENTION]  # not ``n``: the pair count, still needed by table B
            verdict = net["psnr"] > sa["psnr"] and net["lpips_approx"] < sa["lpips_approx"]
            lines.append(
                f"Target net (PSNR and LPIPS≈ better than {SUPER_ATTENTION}): {'met' if verdict else 'NOT met'} "
                f"({net['psnr']:.2f} vs {sa['psnr']:.2f} dB, {net['lpips_approx']:.4f} vs {sa['lpips_approx']:.4f})"
            )
        lines.append("")
    if "B" in result:
        rows = [
            [name, f"{s['ab_error_in_mask']:.2f}", f"{s['psnr_in_mask']:.2f}", f"{result['seconds'][name] / n:.2f}"]
            for name, s in result["B"].items()
        ]
        lines += [
            f"Protocol B: inside the target object mask, {n} pairs",
            "",
            markdown_table(["method", "ab error ↓", "PSNR in mask dB ↑", "s/pair"], rows),
        ]
        b = result["B"]
        if f"{SUPER_ATTENTION} +masks" in b:
            without, with_ = b[SUPER_ATTENTION]["ab_error_in_mask"], b[f"{SUPER_ATTENTION} +masks"]["ab_error_in_mask"]
            cut = 1.0 - with_ / without
            lines += [
                "",
                f"Target B (masks cut the in-mask ab error by >= {MASK_TARGET:.0%}): "
                f"{'met' if cut >= MASK_TARGET else 'NOT met'} ({without:.2f} -> {with_:.2f}, {cut:.1%} lower)",
            ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Colorization harness on DAVIS (protocols A and B).")
    parser.add_argument("--protocol", choices=("A", "B", "both"), default="both")
    parser.add_argument("--davis", type=Path, default=DEFAULT_DAVIS, help="DAVIS folder (default: %(default)s)")
    parser.add_argument("--sequences", nargs="+", help="sequence names (default: all)")
    parser.add_argument("--max-pairs-per-seq", type=int, default=2, help="pairs per sequence (default: %(default)s)")
    parser.add_argument(
        "--size", type=int, default=320, help="long side of the images in pixels (default: %(default)s)"
    )
    parser.add_argument("--methods", nargs="+", help=f"default: {SUPER_ATTENTION} (if available) and {list(BASELINES)}")
    parser.add_argument("--device", default="cpu", help="torch device for super-attention (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results, replaced (default: %(default)s)")
    args = parser.parse_args(argv)

    from model.lpips import load_lpips

    try:
        protocols = ("A", "B") if args.protocol == "both" else (args.protocol,)
        sequences = args.sequences or list_sequences(args.davis)
        pairs = load_pairs(args.davis, sequences, args.max_pairs_per_seq, args.size)
        methods = available_methods(args.methods, args.device)
        result = run(pairs, methods, protocols, load_lpips() if "A" in protocols else None)
        result["config"] = {
            "protocols": list(protocols),
            "sequences": sequences,
            "gap": FRAME_GAP,
            "max_pairs_per_seq": args.max_pairs_per_seq,
            "size": args.size,
            "methods": [m.name for m in methods],
            "torch_threads": torch.get_num_threads(),
        }
        print(markdown_tables(result))
        write_json(args.out, result)
        print(f"\nwrote {args.out}")
    except PostprodError as err:
        print(f"harness: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
