"""The trained exemplar network (``model.net``): no-reference check and CPU/GPU inference time.

    python -m bench.bench_net [--methods net super-attention reinhard] [--max-pairs-per-seq 1]
        [--size 320] [--timing-runs 3] [--out bench/results/net.json]

No-reference check: for every DAVIS pair of the harness (target frame k + 10, grey) colorize once
with the related reference (frame k of the same sequence) and once with an unrelated one (frame k
of the next sequence, in name order). Colour flooding shows as ΔHIS growing against the unrelated
reference (the result takes the reference's colour histogram instead of keeping the truth's
distance to it) and as colourfulness moving away from the ground truth's.

Timing: ``model.net.colorize_net`` on a 480 x 854 frame (working resolution 256 px on the short
side, i.e. 256 x 455), end to end (resizes, SLIC, VGG matching, network, guided upsampling) and
the network's forward alone at the working resolution; median of ``--timing-runs``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.toolkit import (
    DEFAULT_DAVIS,
    available_methods,
    compose_rgb,
    list_sequences,
    load_pairs,
    markdown_table,
    rgb_to_lab_np,
    write_json,
)
from pipeline.metrics import colourfulness, delta_his, psnr

DEFAULT_OUT = Path("bench") / "results" / "net.json"


def no_reference_check(davis: Path, methods: list[str], max_pairs_per_seq: int, size: int, device: str) -> dict:
    """Mean colourfulness, ΔHIS and PSNR per method, with related and with unrelated references."""
    sequences = list_sequences(davis)
    pairs = load_pairs(davis, sequences, max_pairs_per_seq, size)
    others = {seq: sequences[(i + 1) % len(sequences)] for i, seq in enumerate(sequences)}
    unrelated = {p.sequence: p.reference_rgb for p in reversed(pairs)}  # first pair of each sequence
    scores: dict[str, dict[str, list[float]]] = {}
    for method in available_methods(methods, device):
        rows = scores.setdefault(method.name, {})
        for pair in pairs:
            target_l = rgb_to_lab_np(pair.target_rgb)[..., 0]
            for kind, ref in (("related", pair.reference_rgb), ("unrelated", unrelated[others[pair.sequence]])):
                pred = compose_rgb(target_l, method.colorize(target_l, [rgb_to_lab_np(ref)], None))
                rows.setdefault(f"{kind}_colourfulness", []).append(colourfulness(pred))
                rows.setdefault(f"{kind}_delta_his", []).append(delta_his(pred, pair.target_rgb, ref))
                rows.setdefault(f"{kind}_psnr", []).append(psnr(pred, pair.target_rgb))
    return {
        "pairs": len(pairs),
        "ground_truth_colourfulness": float(np.mean([colourfulness(p.target_rgb) for p in pairs])),
        "means": {m: {k: float(np.mean(v)) for k, v in rows.items()} for m, rows in scores.items()},
    }


def timing(device: str, runs: int) -> dict:
    """Median seconds of colorize_net end to end on 480 x 854 and of the network alone at 256 x 455."""
    from model.features import load_vgg16
    from model.net import colorize_net, load_colornet, match_references
    from model.superpixels import superpixels

    dev = torch.device(device)
    features, net = load_vgg16(device=dev), load_colornet(device=dev)
    gen = torch.Generator().manual_seed(0)

    # a smooth random scene (SLIC time depends on content; noise would be unrepresentative)
    def scene(h: int, w: int) -> torch.Tensor:
        coarse = torch.rand(1, 3, 6, 10, generator=gen)
        rgb = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
        from model.color import rgb_to_lab

        return rgb_to_lab(rgb).to(dev)

    target, ref = scene(480, 854)[:, :1], scene(480, 854)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def clock(fn: Callable[[], object]) -> float:
        out = []
        for _ in range(runs):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - start)
        return statistics.median(out)

    end_to_end = clock(lambda: colorize_net(net, features, target, [ref]))
    small_t, small_r = scene(256, 455)[:, :1], scene(256, 455)
    labels_t = superpixels(small_t[0, 0] / 100)[None]
    labels_r = superpixels(small_r[0, 0] / 100)[None]
    with torch.inference_mode():
        matched = match_references(features, small_t, labels_t, [small_r], [labels_r])
        matching = clock(lambda: match_references(features, small_t, labels_t, [small_r], [labels_r]))
        network = clock(lambda: net(small_t, matched))
    return {
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "runs": runs,
        "end_to_end_480x854_s": end_to_end,
        "matching_256x455_s": matching,
        "network_256x455_s": network,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="No-reference check and inference time of the trained network.")
    parser.add_argument("--davis", type=Path, default=DEFAULT_DAVIS)
    parser.add_argument("--methods", nargs="+", default=["net", "super-attention", "reinhard"])
    parser.add_argument("--max-pairs-per-seq", type=int, default=1)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--timing-runs", type=int, default=3, help="0: no timing")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    result: dict[str, Any] = {
        "no_reference": no_reference_check(args.davis, args.methods, args.max_pairs_per_seq, args.size, args.device),
        "timing": timing(args.device, args.timing_runs) if args.timing_runs else None,
    }
    nr = result["no_reference"]
    print(
        f"No-reference check, {nr['pairs']} DAVIS pairs (ground-truth colourfulness "
        f"{nr['ground_truth_colourfulness']:.1f})\n"
    )
    header = [
        "method",
        "colourfulness related",
        "unrelated",
        "ΔHIS related ↓",
        "unrelated ↓",
        "PSNR related",
        "unrelated",
    ]
    rows = [
        [
            name,
            f"{s['related_colourfulness']:.1f}",
            f"{s['unrelated_colourfulness']:.1f}",
            f"{s['related_delta_his']:.3f}",
            f"{s['unrelated_delta_his']:.3f}",
            f"{s['related_psnr']:.2f}",
            f"{s['unrelated_psnr']:.2f}",
        ]
        for name, s in nr["means"].items()
    ]
    print(markdown_table(header, rows))
    print(f"\ntiming: {json.dumps(result['timing'])}")
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
