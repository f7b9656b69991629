"""Training of :class:`model.net.ColorNet` (``postprod train``): data, augmentation, losses, loop, checkpoints.

Data (:func:`build_bank`): colour photos and optionally frame sequences, as a :class:`TrainingImages`
that the caller fills (``postprod train`` lists the ``--data`` / ``--frames`` folders and reads the
files through ``pipeline.images``): this module opens no image file itself, only its checkpoints.
Each photo is resized so its short side is ``1.375 * size`` and cut into ``CROPS_PER_PHOTO``
overlapping ``size x size`` windows; a frame sequence gives windows at one position in frames t
and t + k (k <= ``FRAME_GAP``). SLIC superpixels are computed once per
window and cached (``bank.pt`` in the output folder): SLIC costs ~70 ms per 128 x 128 window on
this CPU, ~1.1 s per batch of 8 pairs if recomputed every step, more than the network's step.

Pairs (:func:`sample_batch`, augmented self-reference, seed 004): target = one window shown grey
(its L), reference = another window of the same photo (or the other frame), colour-perturbed
(kornia ``ColorJitter``), warped by a random affine map and a thin-plate spline (kornia.geometry:
the warp moves the reference's cached labels too, by nearest-neighbour sampling, so no SLIC at
training time), randomly flipped. Pixels warped in from outside are black and belong to no
superpixel.

Losses (paper eq. 6): ``10 * smooth-L1(ab / 110) + 0.1 * LPIPS(RGB)``, with LPIPS truncated to
its first three layers (relu1_2, relu2_2, relu3_3 of ``model.lpips``' approximation, the same
frozen VGG-16 the matching uses): the two deepest layers cost about as much as the rest of a
training step on CPU and see 8 x 8 / 16 x 16 maps of a 128 px window. Adam, linear warm-up then
cosine decay. Every step's sampling
is seeded by ``(seed, step)``, so a resumed run draws the same batches as an uninterrupted one.

Checkpoints (``--out`` folder): ``last.pt`` (model, optimiser, step, RNG states, config, best
validation) written every ``eval_every`` steps and at the end, ``best.pt`` and ``colornet.pt``
(the best model's float tensors in float16, the file :func:`model.net.load_colornet` reads) when
the validation ab error improves. Validation: ``VAL_PAIRS`` fixed pairs from held-out photos
(never trained on), mean |ab| error and RGB PSNR.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from kornia.augmentation import ColorJitter
from kornia.geometry.transform import get_tps_transform, warp_points_tps
from torch import Tensor

from model.color import lab_to_rgb, rgb_to_lab
from model.net import ColorNet, Matched, colornet_shapes, match_references
from model.superpixels import superpixels
from model.weights import save_state

if TYPE_CHECKING:
    from model.features import VGG16Features

CROPS_PER_PHOTO = 4
CROP_SPREAD = 0.25  # windows' centres within +-25 % of the free range around the photo's centre
FRAME_GAP = 10
VAL_PAIRS = 16
LAMBDA_AB, LAMBDA_LPIPS = 10.0, 0.1  # paper §4 (eq. 6)
SMOOTH_L1_BETA = 2.0 / 110.0  # quadratic below 2 ab units
Log = Callable[[str], None]


ImageReader = Callable[[Path], np.ndarray]
"""``read(path) -> (H, W, 3) float32 RGB in [0, 1]`` (``pipeline.images.read_rgb``)."""


@dataclass(frozen=True)
class TrainingImages:
    """The training material: colour photos, frame sequences (each in display order) for cross-frame
    pairs, held-out photos for validation (none: validation pairs come from the training photos),
    and the reader that turns a path into pixels."""

    photos: tuple[Path, ...]
    read: ImageReader
    sequences: tuple[tuple[Path, ...], ...] = ()
    val_photos: tuple[Path, ...] = ()

    def describe(self) -> str:
        """One line for logs and the exported weights' metadata."""
        folders = sorted({str(p.parent) for p in self.photos})
        return (
            f"{len(self.photos)} photos in {', '.join(folders) or '-'}; {len(self.sequences)} frame sequences; "
            f"{len(self.val_photos)} validation photos"
        )


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; ``size`` = training window side (px), ``steps`` total optimiser steps."""

    steps: int = 1000
    batch: int = 8
    size: int = 128
    seed: int = 0
    lr: float = 3e-4
    warmup: int = 50
    eval_every: int = 100
    max_photos: int = 0  # 0 = all
    jitter: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.03)  # brightness, contrast, saturation, hue
    affine: tuple[float, float, float] = (10.0, 0.06, 0.1)  # degrees, translation (fraction), scale +-
    tps_scale: float = 0.08


@dataclass
class Bank:
    """Cached training windows: ``groups[g]`` = indices into ``rgb``/``labels`` of windows of one
    photo or frame pair (a pair is drawn inside a group). rgb (M, 3, S, S) uint8; labels (M, S, S) int16."""

    rgb: Tensor
    labels: Tensor
    groups: list[list[int]] = field(default_factory=list)


def _read_rgb(read: ImageReader, path: Path) -> Tensor:
    """(3, H, W) float32 RGB [0, 1] of ``path`` through the injected reader."""
    return torch.from_numpy(np.ascontiguousarray(read(path), dtype=np.float32)).permute(2, 0, 1).contiguous()


def _fit(rgb: Tensor, short: int) -> Tensor:
    h, w = rgb.shape[-2:]
    s = short / min(h, w)
    size = (max(short, round(h * s)), max(short, round(w * s)))
    return F.interpolate(rgb[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)


def _windows(h: int, w: int, size: int, count: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``count`` (y, x) top-left corners of ``size`` windows near the centre of an (h, w) image."""

    def pick(extent: int) -> int:
        free = extent - size
        return int(np.clip(round(free / 2 + rng.uniform(-CROP_SPREAD, CROP_SPREAD) * free), 0, free))

    return [(pick(h), pick(w)) for _ in range(count)]


def _window_labels(rgb: Tensor) -> Tensor:
    """SLIC labels (S, S) int16 of a (3, S, S) RGB window's L."""
    l = rgb_to_lab(rgb[None])[0, 0] / 100.0
    return superpixels(l).to(torch.int16)


def build_bank(
    photos: Sequence[Path],
    sequences: Sequence[Sequence[Path]],
    read: ImageReader,
    size: int,
    seed: int,
    max_photos: int = 0,
    log: Log = print,
) -> Bank:
    """Cut photos / frame sequences into windows and segment them (see the module notes);
    ``max_photos`` > 0 draws that many photos at random (seeded)."""
    rng = np.random.default_rng(seed)
    rgbs: list[Tensor] = []
    labels: list[Tensor] = []
    groups: list[list[int]] = []
    photos = list(photos)
    if max_photos:
        photos = [photos[i] for i in sorted(rng.choice(len(photos), min(max_photos, len(photos)), replace=False))]
    start = time.perf_counter()

    def add(windows: list[Tensor]) -> None:
        groups.append(list(range(len(rgbs), len(rgbs) + len(windows))))
        for win in windows:
            rgbs.append((win * 255).round().to(torch.uint8))
            labels.append(_window_labels(win))

    for path in photos:
        rgb = _fit(_read_rgb(read, path), round(size * 1.375))
        rgb_h, rgb_w = rgb.shape[-2:]
        add([rgb[:, y : y + size, x : x + size] for y, x in _windows(rgb_h, rgb_w, size, CROPS_PER_PHOTO, rng)])
    for frames in sequences:
        for i in range(0, max(0, len(frames) - 1), FRAME_GAP):
            j = min(len(frames) - 1, i + int(rng.integers(1, FRAME_GAP + 1)))
            a, b = (_fit(_read_rgb(read, frames[k]), round(size * 1.375)) for k in (i, j))
            a_h, a_w = a.shape[-2:]
            ((y, x),) = _windows(a_h, a_w, size, 1, rng)
            add([a[:, y : y + size, x : x + size], b[:, y : y + size, x : x + size]])
    if not groups:
        raise ValueError("no training images found")
    log(
        f"bank: {len(rgbs)} windows of {size}px from {len(photos)} photos and {len(sequences)} sequences "
        f"({time.perf_counter() - start:.0f} s)"
    )
    return Bank(torch.stack(rgbs), torch.stack(labels), groups)


def random_warp_grid(
    batch: int, size: int, affine: tuple[float, float, float], tps_scale: float, generator: torch.Generator
) -> Tensor:
    """Sampling grids (B, S, S, 2) in [-1, 1] (x, y): random rotation/scale/translation composed with a
    thin-plate spline moving a 3x3 lattice of control points by up to ``tps_scale`` (grid units)."""

    def u(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator) * 2 - 1

    deg, shift, scale = affine
    angle = u(batch) * math.radians(deg)
    s = 1 + u(batch) * scale
    theta = torch.stack(
        [
            torch.stack([s * angle.cos(), -s * angle.sin(), u(batch) * shift * 2], 1),
            torch.stack([s * angle.sin(), s * angle.cos(), u(batch) * shift * 2], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, [batch, 1, size, size], align_corners=False)
    lattice = torch.stack(torch.meshgrid(torch.linspace(-1, 1, 3), torch.linspace(-1, 1, 3), indexing="xy"), -1)
    src = lattice.reshape(1, 9, 2).expand(batch, 9, 2)
    dst = src + u(batch, 9, 2) * tps_scale
    kernel, affine_w = get_tps_transform(dst, src)  # maps output lattice -> source lattice
    return warp_points_tps(grid.reshape(batch, -1, 2), dst, kernel, affine_w).reshape(batch, size, size, 2)


def sample_batch(
    bank: Bank, config: TrainConfig, generator: torch.Generator, groups: Sequence[int] | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One batch of (target, reference) pairs (augmented self-reference): ``config.batch`` random
    groups, or the given ``groups`` (indices into ``bank.groups``).

    Returns:
        target_lab (B, 3, S, S) (ground truth; the network sees its L only), labels_t (B, S, S)
        int64, reference_lab (B, 3, S, S), labels_r (B, S, S) int64 (-1 outside the warped window).
    """
    s = config.size
    if groups is None:
        groups = torch.randint(len(bank.groups), (config.batch,), generator=generator).tolist()
    b = len(groups)
    picks = [bank.groups[g] for g in groups]
    ti = [p[int(torch.randint(len(p), (1,), generator=generator))] for p in picks]
    ri = [p[int(torch.randint(len(p), (1,), generator=generator))] for p in picks]
    target = bank.rgb[ti].float() / 255.0
    labels_t = bank.labels[ti].long()
    flip = torch.rand(b, generator=generator) < 0.5
    target = torch.where(flip[:, None, None, None], target.flip(-1), target)
    labels_t = torch.where(flip[:, None, None], labels_t.flip(-1), labels_t)
    ref = bank.rgb[ri].float() / 255.0
    grid = random_warp_grid(len(ri), s, config.affine, config.tps_scale, generator)
    ref = F.grid_sample(ref, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    labels_r = (
        F.grid_sample(
            bank.labels[ri].float()[:, None] + 1, grid, mode="nearest", padding_mode="zeros", align_corners=False
        )[:, 0].long()
        - 1
    )
    # ColorJitter draws from torch's global RNG: seed it from the step's generator
    torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
    ref = ColorJitter(*config.jitter, p=0.8)(ref).clamp(0, 1)
    return rgb_to_lab(target), labels_t, rgb_to_lab(ref), labels_r


class PerceptualLoss(torch.nn.Module):
    """LPIPS (``model.lpips`` approximation) on the layers of ``features`` only (see the module notes).

    Forward: ``(pred (B, 3, H, W), target (B, 3, H, W))`` RGB [0, 1] -> (B,); gradients flow to
    ``pred`` only.
    """

    def __init__(self, features: VGG16Features) -> None:
        super().__init__()
        from model.lpips import LPIPS_WEIGHTS, lpips_weight_shapes
        from model.weights import read_state

        self.features = features
        state = read_state(LPIPS_WEIGHTS, lpips_weight_shapes())
        self.lin = {layer: state[f"{layer}.weight"].float() for layer in features.layers}

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        from model.lpips import lpips_from_features

        with torch.no_grad():
            target_feats = self.features(target)
        lin = {k: v.to(pred.device) for k, v in self.lin.items()}
        return lpips_from_features(self.features(pred), target_feats, lin)


def losses(pred_ab: Tensor, target_lab: Tensor, lpips: Callable[[Tensor, Tensor], Tensor]) -> dict[str, Tensor]:
    """Paper eq. 6 on a batch: ``{"ab": smooth-L1, "lpips": LPIPS, "total": 10 ab + 0.1 lpips}`` (scalars).

    pred_ab: (B, 2, S, S) ab; target_lab: (B, 3, S, S) Lab ground truth; lpips: (pred, target) RGB -> (B,).
    """
    ab = F.smooth_l1_loss(pred_ab / 110.0, target_lab[:, 1:] / 110.0, beta=SMOOTH_L1_BETA)
    pred_rgb = lab_to_rgb(torch.cat([target_lab[:, :1], pred_ab], 1), clip=False).clamp(0, 1)
    perceptual = lpips(pred_rgb, lab_to_rgb(target_lab)).mean()
    return {"ab": ab, "lpips": perceptual, "total": LAMBDA_AB * ab + LAMBDA_LPIPS * perceptual}


def forward(
    net: ColorNet, features: Callable, target_lab: Tensor, labels_t: Tensor, ref_lab: Tensor, labels_r: Tensor
) -> tuple[Tensor, Matched]:
    """Matching (no gradient) then the network: predicted ab (B, 2, S, S) and the matching."""
    matched = match_references(features, target_lab[:, :1], labels_t, [ref_lab], [labels_r])
    return net(target_lab[:, :1], matched), matched


def psnr_rgb(pred_ab: Tensor, target_lab: Tensor) -> Tensor:
    """(B,) RGB PSNR (dB, peak 1) of the target's L with ``pred_ab`` against the ground truth."""
    pred = lab_to_rgb(torch.cat([target_lab[:, :1], pred_ab], 1))
    mse = (pred - lab_to_rgb(target_lab)).pow(2).mean(dim=(1, 2, 3)).clamp(min=1e-10)
    return -10 * torch.log10(mse)


@torch.no_grad()
def evaluate(net: ColorNet, features: Callable, batches: Sequence[tuple[Tensor, ...]]) -> dict[str, float]:
    """Validation: mean |ab| error (CIE units) and RGB PSNR of the network and of its input, the
    attended superpixel-level ab (what the untrained network returns)."""
    was_training = net.training
    net.eval()
    err, psnr, err0, psnr0 = [], [], [], []
    for target, labels_t, ref, labels_r in batches:
        pred, matched = forward(net, features, target, labels_t, ref, labels_r)
        err.append((pred - target[:, 1:]).abs().mean(dim=(1, 2, 3)))
        err0.append((matched.ab - target[:, 1:]).abs().mean(dim=(1, 2, 3)))
        psnr.append(psnr_rgb(pred, target))
        psnr0.append(psnr_rgb(matched.ab, target))
    net.train(was_training)
    return {
        "ab_error": float(torch.cat(err).mean()),
        "psnr": float(torch.cat(psnr).mean()),
        "attention_ab_error": float(torch.cat(err0).mean()),
        "attention_psnr": float(torch.cat(psnr0).mean()),
    }


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def export_weights(net: ColorNet, dest: Path, meta: dict) -> None:
    """Write the network's float tensors in float16 (plus ``meta`` strings/numbers) to ``dest``, atomically."""
    shapes = colornet_shapes(net)
    state = {k: v.detach().to("cpu", torch.float16) for k, v in net.state_dict().items() if k in shapes}
    _save({**state, "meta": meta}, dest)


def _save(obj: dict, dest: Path) -> None:
    """``torch.save`` to ``dest`` atomically (never a half-written checkpoint)."""
    save_state(obj, dest)


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 10 % at ``steps``."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(
    config: TrainConfig,
    images: TrainingImages,
    out: Path,
    *,
    resume: bool = False,
    device: torch.device | str = "cpu",
    log: Log = print,
) -> dict:
    """Train (or resume) on ``images`` into ``out``; returns the last validation scores and the step reached.

    Raises ``ValueError`` for an unusable configuration (no images, a resume without checkpoint).
    """
    from model.features import load_vgg16

    device = torch.device(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    last_path = out / "last.pt"
    if resume and not last_path.is_file():
        raise ValueError(f"{last_path}: no checkpoint to resume from")
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)

    bank_path = out / "bank.pt"
    key = {
        "photos": list(map(str, images.photos)),
        "sequences": [list(map(str, q)) for q in images.sequences],
        "size": config.size,
        "seed": config.seed,
        "max_photos": config.max_photos,
    }
    cached = torch.load(bank_path, weights_only=False) if bank_path.is_file() else None
    if cached is not None and cached["key"] == key:
        bank = Bank(cached["rgb"], cached["labels"], cached["groups"])
        log(f"bank: {len(bank.rgb)} cached windows ({bank_path})")
    else:
        bank = build_bank(
            images.photos, images.sequences, images.read, config.size, config.seed, config.max_photos, log
        )
        _save({"key": key, "rgb": bank.rgb, "labels": bank.labels, "groups": bank.groups}, bank_path)
    val_bank = (
        build_bank(images.val_photos, (), images.read, config.size, config.seed + 1, 0, log)
        if images.val_photos
        else bank
    )
    val_gen = torch.Generator().manual_seed(config.seed + 12345)
    n_val = min(VAL_PAIRS, len(val_bank.groups))
    val_groups = torch.randperm(len(val_bank.groups), generator=val_gen)[:n_val].tolist()
    val_cfg = TrainConfig(**{**asdict(config), "batch": min(config.batch, n_val)})
    val = [
        tuple(t.to(device) for t in sample_batch(val_bank, val_cfg, val_gen, val_groups[i : i + val_cfg.batch]))
        for i in range(0, n_val, val_cfg.batch)
    ]

    features = load_vgg16(device=device)
    lpips = PerceptualLoss(features)
    net = ColorNet().to(device)
    optimiser = torch.optim.Adam(net.parameters(), lr=config.lr, betas=(0.9, 0.99))
    step, best = 0, {"ab_error": float("inf")}
    if resume:
        ckpt = torch.load(last_path, map_location=device, weights_only=False)
        net.load_state_dict(ckpt["model"])
        optimiser.load_state_dict(ckpt["optimizer"])
        step, best = ckpt["step"], ckpt["best"]
        _set_rng_state(ckpt["rng"])
        log(f"resumed from {last_path} at step {step}")
    amp = device.type == "cuda"
    scores = evaluate(net, features, val) if step == 0 else dict(best)
    if step == 0:
        log(f"step 0 validation: {_fmt(scores)}")
    net.train()
    seen, t0 = 0, time.perf_counter()
    while step < config.steps:
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        batch = [t.to(device) for t in sample_batch(bank, config, gen)]
        for group in optimiser.param_groups:
            group["lr"] = lr_at(step, config)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            pred, _ = forward(net, features, *batch)
            parts = losses(pred.float(), batch[0], lpips)
        optimiser.zero_grad(set_to_none=True)
        parts["total"].backward()
        optimiser.step()
        step += 1
        seen += config.batch
        if step % 10 == 0 or step == config.steps:
            rate = seen / (time.perf_counter() - t0)
            log(
                f"step {step}/{config.steps} loss {parts['total'].item():.4f} (ab {parts['ab'].item():.4f} "
                f"lpips {parts['lpips'].item():.4f}) lr {lr_at(step - 1, config):.2e} {rate:.1f} img/s"
            )
        if step % config.eval_every == 0 or step == config.steps:
            scores = evaluate(net, features, val)
            improved = scores["ab_error"] < best["ab_error"]
            if improved:
                best = {**scores, "step": step}
                meta = {
                    "step": step,
                    "val_ab_error": scores["ab_error"],
                    "val_psnr": scores["psnr"],
                    "config": repr(asdict(config)),
                    "data": images.describe(),
                }
                _save({"model": net.state_dict(), "step": step, "scores": scores}, out / "best.pt")
                export_weights(net, out / "colornet.pt", meta)
            log(f"step {step} validation: {_fmt(scores)}{' (best)' if improved else ''}")
            _save(
                {
                    "model": net.state_dict(),
                    "optimizer": optimiser.state_dict(),
                    "step": step,
                    "best": best,
                    "rng": _rng_state(),
                    "config": asdict(config),
                },
                last_path,
            )
    return {"step": step, "last": scores, "best": best}


def _fmt(scores: dict[str, float]) -> str:
    return (
        f"ab error {scores['ab_error']:.2f} (attention only {scores['attention_ab_error']:.2f}), "
        f"PSNR {scores['psnr']:.2f} dB (attention only {scores['attention_psnr']:.2f} dB)"
    )
