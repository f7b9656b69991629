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
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from bench.baselines import BASELINES, Colorizer, MaskPairs
from pipeline.errors import PostprodError
from pipeline.files import atomic_output
from pipeline.images import read_colour, read_image
from pipeline.metrics import colourfulness, delta_his, masked_ab_error, psnr, ssim

DEFAULT_DAVIS = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis"
DEFAULT_OUT = Path("bench") / "results" / "harness.json"
FRAME_GAP = 10
SUPER_ATTENTION = "super-attention"
NET = "net"
MASK_TARGET = 0.30  # issue target: masks cut the in-mask ab error by at least 30 %


@dataclass(frozen=True)
class Pair:
    """One evaluation item; images float32 RGB in [0, 1], masks bool.

    target_rgb (H, W, 3) is the ground truth of the grey target; reference_rgb (Hr, Wr, 3);
    target_mask (H, W) and reference_mask (Hr, Wr) are the DAVIS object masks of the two frames.
    """

    sequence: str
    target_frame: int
    reference_frame: int
    target_rgb: np.ndarray
    reference_rgb: np.ndarray
    target_mask: np.ndarray
    reference_mask: np.ndarray


@dataclass(frozen=True)
class Method:
    """A named colorizer; ``uses_masks``: also run with the masks in protocol B."""

    name: str
    colorize: Colorizer
    uses_masks: bool = False


def list_sequences(davis: Path) -> list[str]:
    """Sequence folders of ``davis`` that have ``frames/`` and ``masks/``, sorted."""
    if not davis.is_dir():
        raise PostprodError(davis, "DAVIS folder not found (expected <seq>/frames/00000.jpg, <seq>/masks/00000.png)")
    return sorted(p.name for p in davis.iterdir() if (p / "frames").is_dir() and (p / "masks").is_dir())


def _resize(image: np.ndarray, size: int, *, mask: bool = False) -> np.ndarray:
    """Scale so the long side is ``size`` pixels (area filter for images, nearest for masks)."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    dsize = (max(1, round(w * scale)), max(1, round(h * scale)))
    if mask:
        return cv2.resize(image.astype(np.uint8), dsize, interpolation=cv2.INTER_NEAREST).astype(bool)
    return cv2.resize(image, dsize, interpolation=cv2.INTER_AREA)


def load_pairs(
    davis: Path, sequences: Sequence[str], max_pairs_per_seq: int, size: int, gap: int = FRAME_GAP
) -> list[Pair]:
    """``max_pairs_per_seq`` (reference k, target k + gap) pairs per sequence, k evenly spread."""
    pairs = []
    for seq in sequences:
        frames = sorted((davis / seq / "frames").glob("*.jpg"))
        if len(frames) <= gap:
            raise PostprodError(davis / seq, f"needs more than {gap} frames, has {len(frames)}")
        starts = np.unique(np.linspace(0, len(frames) - 1 - gap, max_pairs_per_seq).round().astype(int))
        for k in starts:
            t_path, r_path = frames[k + gap], frames[k]
            masks = [read_image(davis / seq / "masks" / f"{p.stem}.png").pixels > 0 for p in (t_path, r_path)]
            pairs.append(
                Pair(
                    seq,
                    int(k + gap),
                    int(k),
                    _resize(read_colour(t_path).pixels, size),
                    _resize(read_colour(r_path).pixels, size),
                    _resize(masks[0], size, mask=True),
                    _resize(masks[1], size, mask=True),
                )
            )
    return pairs


def rgb_to_lab_np(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) float RGB [0, 1] -> (H, W, 3) float32 Lab, with the project's Lab (model.color)."""
    from model.color import rgb_to_lab

    with torch.inference_mode():
        lab = rgb_to_lab(torch.from_numpy(np.ascontiguousarray(rgb, np.float32)).permute(2, 0, 1)[None])
    return lab[0].permute(1, 2, 0).numpy()


def compose_rgb(target_l: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """L (H, W) + ab (H, W, 2) -> RGB (H, W, 3) float32 in [0, 1] (out-of-gamut colours clipped)."""
    from model.color import lab_to_rgb

    lab = np.concatenate([target_l[..., None], ab], -1).astype(np.float32)
    with torch.inference_mode():
        rgb = lab_to_rgb(torch.from_numpy(lab).permute(2, 0, 1)[None])
    return rgb[0].permute(1, 2, 0).clamp(0, 1).numpy()


def _torch_method(name: str, device: torch.device, colour: Callable[..., torch.Tensor]) -> Method:
    """Wrap ``colour(target_l (1, 1, H, W), refs [(1, 3, Hr, Wr)], masks)`` -> (1, 2, H, W) ab as a
    numpy :data:`Colorizer` (the harness's arrays in, (H, W, 2) float32 ab out)."""

    def colorize(
        target_l: np.ndarray, reference_labs: Sequence[np.ndarray], masks: Sequence[MaskPairs] | None
    ) -> np.ndarray:
        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(device)

        with torch.inference_mode():
            refs = [t(lab.astype(np.float32)).permute(2, 0, 1)[None] for lab in reference_labs]
            tmasks = None if masks is None else [[(t(m_t), t(m_r)) for m_t, m_r in pairs] for pairs in masks]
            ab = colour(t(target_l.astype(np.float32))[None, None], refs, tmasks)
        return ab[0].permute(1, 2, 0).float().cpu().numpy()

    return Method(name, colorize, uses_masks=True)


def super_attention_method(device: str = "cpu") -> Method:
    """Training-free super-attention colour transfer (``model.transfer.transfer_colour``) as a :data:`Colorizer`."""
    from model.features import load_vgg16
    from model.transfer import transfer_colour

    dev = torch.device(device)
    features = load_vgg16(device=dev)  # loaded once, reused for every pair
    return _torch_method(
        SUPER_ATTENTION, dev, lambda l, refs, masks: transfer_colour(l, refs, masks, features=features)
    )


def net_method(device: str = "cpu", weights: Path | None = None) -> Method:
    """The trained network (``model.net.colorize_net``, bundled weights unless ``weights``) as a :data:`Colorizer`."""
    from model.features import load_vgg16
    from model.net import colorize_net, load_colornet

    dev = torch.device(device)
    features = load_vgg16(device=dev)
    net = load_colornet(device=dev) if weights is None else load_colornet(weights, device=dev)
    return _torch_method(NET, dev, lambda l, refs, masks: colorize_net(net, features, l, refs, masks))


def available_methods(names: Sequence[str] | None = None, device: str = "cpu") -> list[Method]:
    """Methods by name (default: super-attention if importable, then all baselines)."""
    masked = {"reinhard", "welsh"}
    methods = {name: Method(name, fn, uses_masks=name in masked) for name, fn in BASELINES.items()}
    wanted = list(names) if names else [SUPER_ATTENTION, *BASELINES]
    out = []
    for name in wanted:
        if name == SUPER_ATTENTION:
            try:
                out.append(super_attention_method(device))
            except ImportError as err:
                if names:  # asked for explicitly: an error, not a silent omission
                    raise
                print(f"skipping {SUPER_ATTENTION}: {err}", file=sys.stderr)
        elif name == NET:  # only when asked for: needs the trained weights
            out.append(net_method(device))
        elif name in methods:
            out.append(methods[name])
        else:
            raise ValueError(f"unknown method {name!r}; choose from {[SUPER_ATTENTION, NET, *BASELINES]}")
    return out


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
    """Markdown tables of the means for A and B, plus the issue's targets checked."""
    lines: list[str] = []
    n = len(result["pairs"])
    if "A" in result:
        lines += [
            f"Protocol A: whole image, {n} pairs (LPIPS is an approximation of LPIPS-VGG)",
            "",
            "| method | PSNR dB ↑ | SSIM ↑ | LPIPS≈ ↓ | ΔHIS ↓ | colourfulness | s/pair |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, s in result["A"].items():
            lines.append(
                f"| {name} | {s['psnr']:.2f} | {s['ssim']:.4f} | {s['lpips_approx']:.4f} | "
                f"{s['delta_his']:.4f} | {s['colourfulness']:.1f} | {result['seconds'][name] / n:.2f} |"
            )
        lines.append(f"| (ground truth) | | | | | {result['ground_truth_colourfulness']:.1f} | |")
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
            n, t = a[NET], a[SUPER_ATTENTION]
            verdict = n["psnr"] > t["psnr"] and n["lpips_approx"] < t["lpips_approx"]
            lines.append(
                f"Target net (PSNR and LPIPS≈ better than {SUPER_ATTENTION}): {'met' if verdict else 'NOT met'} "
                f"({n['psnr']:.2f} vs {t['psnr']:.2f} dB, {n['lpips_approx']:.4f} vs {t['lpips_approx']:.4f})"
            )
        lines.append("")
    if "B" in result:
        lines += [
            f"Protocol B: inside the target object mask, {n} pairs",
            "",
            "| method | ab error ↓ | PSNR in mask dB ↑ | s/pair |",
            "|---|---|---|---|",
        ]
        for name, s in result["B"].items():
            lines.append(
                f"| {name} | {s['ab_error_in_mask']:.2f} | {s['psnr_in_mask']:.2f} | "
                f"{result['seconds'][name] / n:.2f} |"
            )
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


def _json_safe(value: object) -> object:
    """NaN / inf (an empty mask, identical images) -> None, so the file is strict JSON."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


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
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(args.out, force=True) as tmp:  # results are regenerated on every run
            tmp.write_text(json.dumps(_json_safe(result), indent=1, allow_nan=False))
        print(f"\nwrote {args.out}")
    except PostprodError as err:
        print(f"harness: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
