"""What the benchmarks share: data paths, JSON results, Markdown tables, DAVIS, Lab, temporal
metrics, the colorizers as numpy methods, and ``postprod run`` in a fresh process.

Each benchmark (``bench/harness.py``, ``bench/bench_*.py``) is a script, ``python -m bench.<name>``,
that imports this module, ``bench.baselines``, ``pipeline`` and ``model``, never another benchmark.
Synthetic media (grey reels, a tone) are in :mod:`pipeline.media.synth`, shared with the tests.

Images are float32 sRGB in [0, 1], channels last ((H, W, 3)) unless said otherwise; Lab is the
project's CIE L*a*b* (``model.color``): L in [0, 100], a and b roughly in [-110, 110].
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import cv2
import numpy as np

from pipeline.color import rgb_from_luma_chroma
from pipeline.errors import PostprodError
from pipeline.files import atomic_output
from pipeline.flow import DISFlow, warp
from pipeline.images import read_colour, read_image, read_rgb
from pipeline.media.decode import iter_frames
from pipeline.media.probe import probe
from pipeline.media.synth import write_grey_reel
from pipeline.metrics import psnr
from pipeline.propagate import flow_confidence

if TYPE_CHECKING:  # torch and the baselines (scipy) are imported where used: bench_shots needs neither
    import torch

    from bench.baselines import Colorizer, MaskPairs

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"  # footage and photos beside the repository
DEFAULT_DAVIS = SHARED_DATA / "davis"  # <seq>/frames/00000.jpg, <seq>/masks/00000.png
TARGET_PSNR = 33.0  # dB target: non-keyframes of whole DAVIS sequences from their first frame (bench_run)


# --- results ----------------------------------------------------------------------------------


def json_safe(value: object) -> object:
    """``value`` made strict JSON: NaN / inf (an empty mask, identical images) -> None, numpy
    scalars and arrays -> Python numbers and lists, tuples -> lists, Path and Fraction -> str."""
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, Path | Fraction):
        return str(value)
    return value


def write_json(path: Path, result: object) -> None:
    """Write ``json_safe(result)`` to ``path`` (indent 1, final newline), replacing the file
    atomically (results are regenerated on every run); its folder is created if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, force=True) as tmp:
        tmp.write_text(json.dumps(json_safe(result), indent=1, allow_nan=False) + "\n")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table: the ``header`` line, a ``|---|`` rule, one line per row (cells as ``str``,
    already formatted; an empty cell stays blank). No final newline."""

    def line(cells: Sequence[object]) -> str:
        return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)])


# --- DAVIS ------------------------------------------------------------------------------------

FRAME_GAP = 10  # harness pairs: target = frame k + FRAME_GAP, reference = frame k


def list_sequences(davis: Path, *, masks: bool = True) -> list[str]:
    """Sequence folders of ``davis`` that have ``frames/`` (and ``masks/``, unless ``masks=False``), sorted."""
    if not davis.is_dir():
        raise PostprodError(davis, "DAVIS folder not found (expected <seq>/frames/00000.jpg, <seq>/masks/00000.png)")
    return sorted(p.name for p in davis.iterdir() if (p / "frames").is_dir() and (not masks or (p / "masks").is_dir()))


def davis_frames(davis: Path, sequence: str, max_frames: int | None = None) -> tuple[Path, ...]:
    """The JPEG frames of ``davis/sequence/frames`` in order: the first ``max_frames`` (default all)."""
    return tuple(sorted((davis / sequence / "frames").glob("*.jpg"))[:max_frames])


def read_grey(path: Path) -> np.ndarray:
    """An image file's BT.601 luma as OpenCV decodes it (``IMREAD_GRAYSCALE``): (H, W) uint8."""
    grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if grey is None:
        raise PostprodError(path, "not a readable image")
    return np.asarray(grey)


@dataclass(frozen=True)
class ReelShot:
    """One DAVIS sequence in a reel: its name, first frame in the reel and true frame files."""

    name: str
    start: int
    frames: tuple[Path, ...]

    @property
    def end(self) -> int:
        return self.start + len(self.frames)


REEL_FPS = Fraction(24000, 1001)
REEL_TIMECODE = "10:00:00:00"
"""Rate and start timecode of the DAVIS reel that ``bench_run`` and ``bench_artist`` colour."""


def davis_grey_reel(
    davis: Path,
    sequences: Sequence[str],
    dest: Path,
    fps: Fraction,
    *,
    max_frames: int | None = None,
    codec: str = "libx264",
    timecode: str | None = None,
    audio: bool = False,
) -> list[ReelShot]:
    """Write the ``sequences`` back to back (at most ``max_frames`` each) as a grey reel ``dest``.

    The grey is each JPEG frame's BT.601 luma (:func:`read_grey`), at
    DAVIS' size (854x480), encoded by :func:`pipeline.media.synth.write_grey_reel` (``codec``,
    ``timecode``, ``audio`` as there). Returns the shots in reel order: their hard cuts are known
    exactly.
    """
    shots, start = [], 0
    for name in sequences:
        files = davis_frames(davis, name, max_frames)
        shots.append(ReelShot(name, start, files))
        start += len(files)
    greys = (read_grey(f) for s in shots for f in s.frames)
    write_grey_reel(dest, greys, fps, codec=codec, timecode=timecode, audio=audio)
    return shots


def score_reel(
    out: Path, shots: Sequence[ReelShot], keyframes: set[int], truth: Callable[[Path], np.ndarray] = read_rgb
) -> dict:
    """Score a coloured DAVIS reel ``out`` (:func:`davis_grey_reel`'s shots) against the true frames
    (``truth``: a frame file's RGB (H, W, 3) float32 in [0, 1] at the reel's size): mean RGB PSNR
    over the non-keyframes and over the ``keyframes`` (reel frame numbers), warp error of the
    output and of the truth (:func:`warp_error`), per sequence and pooled."""
    info = probe(out)
    frames = iter_frames(out, chroma=True)
    per_seq: dict[str, dict] = {}
    for shot in shots:
        rgbs, truths = [], []
        for path in shot.frames:
            f = next(frames)
            rgbs.append(rgb_from_luma_chroma(f.luma, f.chroma, f.bit_depth, info.luma_range, info.matrix))
            truths.append(truth(path))
        psnrs = [psnr(rgbs[i], truths[i]) for i in range(len(rgbs))]
        grey_l = np.stack([cv2.cvtColor(t, cv2.COLOR_RGB2GRAY) * 100 for t in truths])
        flows = warp_masks(grey_l)
        per_seq[shot.name] = {
            "frames": len(rgbs),
            "psnr_nonkey": [p for i, p in enumerate(psnrs) if shot.start + i not in keyframes],
            "psnr_key": [p for i, p in enumerate(psnrs) if shot.start + i in keyframes],
            "warp_error": float(
                np.mean([warp_error(rgbs[t - 1], rgbs[t], *flows[t - 1]) for t in range(1, len(rgbs))])
            ),
            "warp_error_truth": float(
                np.mean([warp_error(truths[t - 1], truths[t], *flows[t - 1]) for t in range(1, len(rgbs))])
            ),
        }
    nonkey = [p for s in per_seq.values() for p in s["psnr_nonkey"]]
    key = [p for s in per_seq.values() for p in s["psnr_key"]]
    weights = [s["frames"] for s in per_seq.values()]
    return {
        "psnr_nonkey": float(np.mean(nonkey)),
        "psnr_key": float(np.mean(key)),
        "nonkeyframes": len(nonkey),
        "warp_error": float(np.average([s["warp_error"] for s in per_seq.values()], weights=weights)),
        "warp_error_truth": float(np.average([s["warp_error_truth"] for s in per_seq.values()], weights=weights)),
        "per_sequence": {
            k: {
                "psnr_nonkey": float(np.mean(v["psnr_nonkey"])),
                "warp_error": v["warp_error"],
                "warp_error_truth": v["warp_error_truth"],
            }
            for k, v in per_seq.items()
        },
    }


@dataclass(frozen=True)
class Pair:
    """One harness item; images float32 RGB in [0, 1], masks bool.

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
    """``max_pairs_per_seq`` (reference k, target k + gap) pairs per sequence, k evenly spread,
    images and masks scaled to ``size`` px on the long side."""
    pairs = []
    for seq in sequences:
        frames = davis_frames(davis, seq)
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


# --- Lab --------------------------------------------------------------------------------------


def rgb_to_lab_np(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) float RGB [0, 1] -> (H, W, 3) float32 Lab."""
    import torch

    from model.color import rgb_to_lab

    with torch.inference_mode():
        lab = rgb_to_lab(torch.from_numpy(np.ascontiguousarray(rgb, np.float32)).permute(2, 0, 1)[None])
    return lab[0].permute(1, 2, 0).numpy()


def compose_rgb(target_l: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """L (H, W) + ab (H, W, 2), channels last -> RGB (H, W, 3) float32 in [0, 1] (out-of-gamut
    colours clipped). :func:`compose` takes ab channels first."""
    import torch

    from model.color import lab_to_rgb

    lab = np.concatenate([target_l[..., None], ab], -1).astype(np.float32)
    with torch.inference_mode():
        rgb = lab_to_rgb(torch.from_numpy(lab).permute(2, 0, 1)[None])
    return rgb[0].permute(1, 2, 0).clamp(0, 1).numpy()


def compose(l: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """L (H, W) + ab (2, H, W), channels first -> RGB (H, W, 3) float32 in [0, 1] (clipped).
    :func:`compose_rgb` takes ab channels last."""
    import torch

    from model.color import lab_to_rgb

    with torch.inference_mode():
        lab = torch.from_numpy(np.concatenate([l[None], ab]).astype(np.float32))[None]
        return lab_to_rgb(lab)[0].permute(1, 2, 0).clamp(0, 1).numpy()


def working_ab(lab: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(3, H, W) Lab -> its (2, h, w) ab at the working ``size`` (h, w) (area filter)."""
    h, w = size
    return np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_AREA) for c in lab[1:]])


@dataclass(frozen=True)
class Shot:
    """A shot with its true colours: Lab frames (n, 3, H, W) float32 and their sRGB (n, H, W, 3)."""

    name: str
    lab: np.ndarray
    rgb: np.ndarray  # (n, H, W, 3) float32 in [0, 1]

    @property
    def n(self) -> int:
        return int(self.lab.shape[0])

    @classmethod
    def from_rgb(cls, name: str, rgb: np.ndarray) -> Shot:
        """Frames (n, H, W, 3) float32 sRGB in [0, 1] with their Lab (``model.color``)."""
        import torch

        from model.color import rgb_to_lab

        with torch.inference_mode():
            lab = np.stack([rgb_to_lab(torch.from_numpy(f).permute(2, 0, 1)[None])[0].numpy() for f in rgb])
        return cls(name, lab, rgb)


# --- temporal metrics -------------------------------------------------------------------------


def warp_masks(l_full: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """For t = 1 .. n-1: (flow t -> t-1 (H, W, 2) px, non-occluded mask (H, W) bool) from the true
    L (n, H, W) in [0, 100]: DIS medium, Sundaram et al.'s forward-backward test (confidence 1)."""
    import torch

    dis = DISFlow(finest_scale=1)  # the medium preset's own finest level
    out = []
    for t in range(1, len(l_full)):
        now, before = (
            torch.from_numpy(np.ascontiguousarray(l_full[i], dtype=np.float32))[None, None] for i in (t, t - 1)
        )
        back, fwd = dis.flow(now, before), dis.flow(before, now)
        out.append((back[0].permute(1, 2, 0).numpy(), flow_confidence(back, fwd)[0, 0].numpy() >= 1.0))
    return out


def warp_error(rgb_prev: np.ndarray, rgb: np.ndarray, flow: np.ndarray, mask: np.ndarray) -> float:
    """Mean squared RGB difference (values in [0, 1], mean over the 3 channels) between ``rgb`` and
    ``rgb_prev`` warped onto it by ``flow`` (t -> t-1, from :func:`warp_masks`), over ``mask`` pixels."""
    import torch

    image = torch.from_numpy(np.ascontiguousarray(rgb_prev.transpose(2, 0, 1), dtype=np.float32))[None]
    motion = torch.from_numpy(np.ascontiguousarray(flow.transpose(2, 0, 1), dtype=np.float32))[None]
    warped = warp(image, motion)[0].numpy().transpose(1, 2, 0)
    return float(((warped - rgb) ** 2).sum(-1)[mask].mean() / 3.0)


# --- colorizers as numpy methods (harness, bench_net) ----------------------------------------

SUPER_ATTENTION = "super-attention"
NET = "net"


@dataclass(frozen=True)
class Method:
    """A named :data:`bench.baselines.Colorizer`; ``uses_masks``: also run with the masks in protocol B."""

    name: str
    colorize: Colorizer
    uses_masks: bool = False


def _torch_method(name: str, device: torch.device, colour: Callable[..., torch.Tensor]) -> Method:
    """Wrap ``colour(target_l (1, 1, H, W), refs [(1, 3, Hr, Wr)], masks)`` -> (1, 2, H, W) ab as a
    numpy :data:`Colorizer` (the harness's arrays in, (H, W, 2) float32 ab out)."""
    import torch

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
    import torch

    from model.features import load_vgg16
    from model.transfer import transfer_colour

    dev = torch.device(device)
    features = load_vgg16(device=dev)  # loaded once, reused for every pair
    return _torch_method(
        SUPER_ATTENTION, dev, lambda l, refs, masks: transfer_colour(l, refs, masks, features=features)
    )


def net_method(device: str = "cpu", weights: Path | None = None) -> Method:
    """The trained network (``model.net.colorize_net``, bundled weights unless ``weights``) as a :data:`Colorizer`."""
    import torch

    from model.features import load_vgg16
    from model.net import colorize_net, load_colornet

    dev = torch.device(device)
    features = load_vgg16(device=dev)
    net = load_colornet(device=dev) if weights is None else load_colornet(weights, device=dev)
    return _torch_method(NET, dev, lambda l, refs, masks: colorize_net(net, features, l, refs, masks))


def available_methods(names: Sequence[str] | None = None, device: str = "cpu") -> list[Method]:
    """Methods by name (default: super-attention if importable, then all baselines)."""
    from bench.baselines import BASELINES

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


# --- postprod run in a fresh process (bench_run, bench_film) ---------------------------------

# Linux carries the forking process's high-water RSS into a child's ru_maxrss at exec (and
# Python's subprocess forks with vfork, which lends the parent's whole address space), so a
# child spawned from this process, which holds decoded frames and torch after scoring, reports
# at least this process's own peak. A launcher started fresh (small) spawns the real command and
# reports that grandchild's ru_maxrss (KiB) on its stdout's last line.
_LAUNCHER = (
    "import os, subprocess, sys; p = subprocess.Popen(sys.argv[2:], stdout=open(sys.argv[1], 'w'), "
    "stderr=subprocess.STDOUT); _, s, u = os.wait4(p.pid, 0); print(u.ru_maxrss, u.ru_utime + u.ru_stime); "
    "sys.exit(os.waitstatus_to_exitcode(s))"
)


def run_postprod(
    reel: Path,
    refs: Path,
    out: Path,
    workdir: Path,
    engine: str,
    work_size: int,
    *,
    device: str = "cpu",
    checkout: Path | None = None,
    profile: Path | None = None,
) -> dict[str, float]:
    """``postprod run --codec ffv1 --device cpu`` in a fresh process, its output (stdout and
    stderr) logged to ``<workdir's parent>/<out's stem>.log``; raises RuntimeError naming the log
    if it fails. Returns its wall time (``seconds``), CPU time (``cpu_seconds``, user + system, of
    the process and the children it waited for) and peak resident memory (``peak_rss_mib``).

    ``device``: ``--device``; ``checkout``: run that checkout's code (its root becomes the current
    folder, so ``-m cli`` imports it; paths must be absolute), default this one; ``profile``:
    run under cProfile, its statistics written there (one shot at a time: cProfile sees only the
    thread that started it)."""
    cmd = [
        sys.executable,
        *(["-m", "cProfile", "-o", str(profile)] if profile is not None else []),
        "-m",
        "cli",
        "run",
        "--reel",
        str(reel),
        "--refs",
        str(refs),
        "--out",
        str(out),
        "--codec",
        "ffv1",
        "--workdir",
        str(workdir),
        "--device",
        device,
        "--work-size",
        str(work_size),
        "--engine",
        engine,
        *(["--jobs", "1"] if profile is not None else []),  # cProfile sees only the main thread
    ]
    log = workdir.parent / f"{out.stem}.log"
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, str(log), *cmd], capture_output=True, text=True, cwd=checkout
    )
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed, see {log}")
    maxrss, cpu = proc.stdout.split()[-2:]
    # ru_maxrss: KiB on Linux; CPU time of all its threads, which a loaded machine does not inflate
    return {"seconds": seconds, "peak_rss_mib": int(maxrss) / 1024, "cpu_seconds": float(cpu)}


def audio_packets(path: Path) -> list[bytes]:
    """The first audio stream's packets (none without audio)."""
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(audio=0) if p.size] if c.streams.audio else []


def check_media(reel: Path, out: Path) -> dict[str, Any]:
    """The output's frame count, rate, timecode and audio packets against the input's, and its
    luma bit for bit; ``ok``: all equal."""
    src, dst = probe(reel), probe(out)
    luma_equal = all(np.array_equal(a.luma, b.luma) for a, b in zip(iter_frames(reel), iter_frames(out), strict=True))
    return {
        "frames": [src.frames, dst.frames],
        "fps": [str(src.fps), str(dst.fps)],
        "timecode": [src.timecode, dst.timecode],
        "audio_packets_equal": audio_packets(reel) == audio_packets(out),
        "audio_packets": len(audio_packets(reel)),
        "luma_equal": luma_equal,
        "ok": (
            src.frames == dst.frames
            and src.fps == dst.fps
            and src.timecode == dst.timecode
            and audio_packets(reel) == audio_packets(out)
            and luma_equal
        ),
    }
