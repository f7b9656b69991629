"""An approximation of LPIPS-VGG (Zhang et al. 2018, ``lpips`` v0.1) on our converted VGG-16.

What is the same as ``lpips.LPIPS(net='vgg', version='0.1')``: the five layers (relu1_2, relu2_2,
relu3_3, relu4_3, relu5_3), unit-normalising each feature vector over channels, squared
differences, the learnt non-negative 1x1 "lin" weights of ``lpips/weights/v0.1/vgg.pth``
(``model/weights/lpips_vgg_lin.pt``), the spatial mean per layer and the sum over layers.

What differs, so that this is an approximation and must be reported as such:

* The backbone is the HED-fine-tuned Caffe/Keras ImageNet VGG-16 (``model.features``), not
  torchvision's VGG-16. torchvision's weights were trained separately, so channel ``c`` here
  is not channel ``c`` there: the lin weights act as a fixed non-negative channel weighting,
  not the calibrated one. Values are on LPIPS's scale but do not equal published LPIPS.
* Preprocessing: ``lpips`` maps [0, 1] to [-1, 1] and applies its ScalingLayer
  ``(x - shift) / scale``, which equals torchvision's ImageNet normalisation
  ``(rgb - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]``, i.e. what torchvision's VGG was
  trained on. Our backbone was trained on Caffe input (BGR, 0-255, minus the HED mean), so
  the ScalingLayer is replaced by :func:`model.features.vgg16_preprocess`: each backbone gets
  the input it was trained with. (Unit normalisation makes the distance blind to the
  overall feature scale, which differs between the two conventions.)
"""

from __future__ import annotations

from os import PathLike

import torch
from torch import Tensor, nn

from model.features import VGG16_WEIGHTS, VGG16Features, load_vgg16
from model.weights import WEIGHTS_DIR, read_state

LPIPS_WEIGHTS = WEIGHTS_DIR / "lpips_vgg_lin.pt"
LPIPS_LAYERS: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
LPIPS_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)


def lpips_weight_shapes() -> dict[str, tuple[int, ...]]:
    """Expected tensors of the lin weights file: ``{layer}.weight`` (1, C, 1, 1) per LPIPS layer."""
    return {f"{layer}.weight": (1, c, 1, 1) for layer, c in zip(LPIPS_LAYERS, LPIPS_CHANNELS, strict=True)}


def unit_normalize(feat: Tensor, eps: float = 1e-10) -> Tensor:
    """Divide each feature vector by its L2 norm over channels: (B, C, H, W) -> (B, C, H, W)."""
    return feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def lpips_from_features(feats_a: dict[str, Tensor], feats_b: dict[str, Tensor], lin: dict[str, Tensor]) -> Tensor:
    """The LPIPS sum over layers from precomputed features.

    Args:
        feats_a, feats_b: ``{layer: (B, C, H_l, W_l)}`` for each layer in ``lin``.
        lin: ``{layer: (1, C, 1, 1)}`` non-negative channel weights.

    Returns:
        (B,) distances, >= 0, 0 for identical features.
    """
    total: Tensor | float = 0.0
    for layer, weight in lin.items():
        diff = (unit_normalize(feats_a[layer]) - unit_normalize(feats_b[layer])).pow(2)
        total = total + (diff * weight).sum(dim=1).mean(dim=(1, 2))
    if not isinstance(total, Tensor):
        raise ValueError("LPIPS needs at least one layer in lin")
    return total


class LPIPS(nn.Module):
    """LPIPS-VGG approximation (see the module docstring): ``forward(a, b) -> (B,)``.

    Args:
        features: a :class:`VGG16Features` providing at least ``LPIPS_LAYERS``.
        lin: ``{layer: (1, C, 1, 1)}`` lin weights, e.g. from :func:`load_lpips`.
    """

    def __init__(self, features: VGG16Features, lin: dict[str, Tensor]) -> None:
        super().__init__()
        missing = [layer for layer in LPIPS_LAYERS if layer not in features.layers]
        if missing:
            raise ValueError(f"features lack LPIPS layers {missing}")
        self.features = features
        self.lin = nn.ParameterDict({layer: nn.Parameter(w.clone(), requires_grad=False) for layer, w in lin.items()})
        self.eval()

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """Distance between ``a`` and ``b``, both (B, 3, H, W) RGB in [0, 1]: (B,) >= 0."""
        if a.shape != b.shape:
            raise ValueError(f"LPIPS needs images of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        feats = self.features(torch.cat([a, b]))  # one pass for both: same size, twice the batch
        n = a.shape[0]
        return lpips_from_features(
            {k: v[:n] for k, v in feats.items()}, {k: v[n:] for k, v in feats.items()}, dict(self.lin.items())
        )


def load_lpips(
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    path: str | PathLike[str] = LPIPS_WEIGHTS,
    vgg_path: str | PathLike[str] = VGG16_WEIGHTS,
) -> LPIPS:
    """:class:`LPIPS` with the bundled weights. Raises ``model.weights.WeightsError`` if one is missing or corrupt."""
    state = read_state(path, lpips_weight_shapes())
    lin = {layer: state[f"{layer}.weight"].float() for layer in LPIPS_LAYERS}
    return LPIPS(load_vgg16(LPIPS_LAYERS, path=vgg_path), lin).to(device=device, dtype=dtype)


def lpips_distance(a: Tensor, b: Tensor, *, model: LPIPS | None = None) -> Tensor:
    """LPIPS-VGG approximation between RGB images (B, 3, H, W) in [0, 1]: (B,) >= 0.

    Pass ``model`` (from :func:`load_lpips`) when calling repeatedly; without it the weights are
    loaded on each call. Gradients flow to ``a`` and ``b``.
    """
    model = model if model is not None else load_lpips(device=a.device, dtype=a.dtype)
    return model(a, b)
