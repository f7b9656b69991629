"""The exemplar colorization network (model/net.py): shapes, masked super-attention, weights files.

Most tests use a tiny random stand-in for the VGG-16 extractor (same level names and channels),
so they run in seconds; one test loads the bundled weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.color import lab_to_rgb
from model.net import (
    COLORNET_WEIGHTS,
    PHI_CHANNELS,
    ColorNet,
    colorize_net,
    colornet_shapes,
    load_colornet,
    match_references,
)
from model.weights import WeightsError


class StandInVGG(nn.Module):
    """Random convs with VGG-16's relu1_2 / relu2_2 / relu3_3 channels and strides (1, 2, 4)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.weights = [
            torch.randn(c, c_in, 3, 3, generator=gen) * 0.3 for c_in, c in zip((3, *PHI_CHANNELS[:-1]), PHI_CHANNELS)
        ]
        self.biases = [torch.randn(c, generator=gen) * 0.3 for c in PHI_CHANNELS]

    def forward(self, rgb: Tensor) -> dict[str, Tensor]:
        out, x = {}, rgb
        for level, (w, b) in enumerate(zip(self.weights, self.biases)):
            if level:
                x = F.max_pool2d(x, 2, ceil_mode=True)
            x = F.relu(F.conv2d(x, w, b, padding=1))
            out[("relu1_2", "relu2_2", "relu3_3")[level]] = x
        return out


def _grid_labels(b: int, h: int, w: int, cell: int) -> Tensor:
    ys = torch.arange(h)[:, None] // cell
    xs = torch.arange(w)[None, :] // cell
    return (ys * -(-w // cell) + xs).expand(b, h, w).contiguous()


def _random_net(seed: int = 0) -> ColorNet:
    """A ColorNet whose head is not zero (the untrained one returns its input ab unchanged)."""
    torch.manual_seed(seed)
    net = ColorNet()
    nn.init.normal_(net.head.weight, std=0.05)
    return net.eval()


@pytest.mark.parametrize("size", [(37, 53), (64, 64), (19, 90)])
def test_colornet_any_size(size: tuple[int, int]) -> None:
    h, w = size
    gen = torch.Generator().manual_seed(1)
    l = torch.rand(2, 1, h, w, generator=gen) * 100
    ref = torch.cat([torch.rand(2, 1, 30, 41, generator=gen) * 100, torch.randn(2, 2, 30, 41, generator=gen) * 30], 1)
    matched = match_references(StandInVGG(), l, _grid_labels(2, h, w, 6), [ref], [_grid_labels(2, 30, 41, 5)])
    assert matched.ab.shape == (2, 2, h, w) and matched.confidence.shape == (2, 2, h, w)
    assert [p.shape[1] for p in matched.phi] == list(PHI_CHANNELS)
    ab = _random_net()(l, matched)
    assert ab.shape == (2, 2, h, w) and torch.isfinite(ab).all()
    assert not torch.allclose(ab, matched.ab)  # the head contributes


def test_untrained_net_returns_attended_ab() -> None:
    l = torch.rand(1, 1, 24, 24) * 100
    ref = torch.cat([torch.rand(1, 1, 24, 24) * 100, torch.randn(1, 2, 24, 24) * 20], 1)
    matched = match_references(StandInVGG(), l, _grid_labels(1, 24, 24, 4), [ref], [_grid_labels(1, 24, 24, 4)])
    assert torch.allclose(ColorNet().eval()(l, matched), matched.ab)


def test_colorize_net_full_size_and_several_references() -> None:
    gen = torch.Generator().manual_seed(2)
    target = torch.rand(1, 1, 45, 70, generator=gen) * 100
    refs = [
        torch.cat([torch.rand(1, 1, h, w, generator=gen) * 100, torch.randn(1, 2, h, w, generator=gen) * 20], 1)
        for h, w in ((33, 50), (60, 40))
    ]
    ab = colorize_net(_random_net(), StandInVGG(), target, refs, work_size=32)
    assert ab.shape == (1, 2, 45, 70) and torch.isfinite(ab).all()


def _two_colour_reference(h: int, w: int) -> tuple[Tensor, Tensor, Tensor]:
    """Lab reference (1, 3, h, w) of equal lightness: left half red, right half blue; and the two ab."""
    red, blue = torch.tensor([60.0, 20.0]), torch.tensor([-10.0, -40.0])
    ab = torch.where(torch.arange(w)[None, :] < w // 2, red[:, None, None], blue[:, None, None])
    return torch.cat([torch.full((1, 1, h, w), 50.0), ab[None].expand(1, 2, h, w)], 1), red, blue


def test_masked_attention_takes_colour_from_paired_region_only() -> None:
    h = w = 32
    ref, red, blue = _two_colour_reference(h, w)
    target = torch.full((1, 1, h, w), 50.0)  # flat grey: every reference superpixel matches equally well
    labels = _grid_labels(1, h, w, 4)
    target_mask = torch.zeros(1, 1, h, w, dtype=torch.bool)
    target_mask[..., :, :16] = True  # left half of the target ...
    ref_mask = torch.zeros(1, 1, h, w, dtype=torch.bool)
    ref_mask[..., :, 16:] = True  # ... must take the blue right half of the reference
    features = StandInVGG()
    plain = match_references(features, target, labels, [ref], [labels])
    masked = match_references(features, target, labels, [ref], [labels], [(target_mask, ref_mask)])
    inside = target_mask[0, 0]
    assert torch.allclose(masked.ab[0][:, inside], blue[:, None].expand(2, int(inside.sum())), atol=1e-3)
    # without the mask the same pixels mix red and blue (so the check above is not vacuous)
    assert (plain.ab[0][:, inside] - blue[:, None]).abs().max() > 10
    # outside the target mask the matching is unrestricted: as without masks
    assert torch.allclose(masked.ab[0][:, ~inside], plain.ab[0][:, ~inside], atol=1e-4)


def test_masked_attention_with_several_references() -> None:
    h = w = 24
    red_ref, red, blue = _two_colour_reference(h, w)
    blue_ref = red_ref.clone()
    blue_ref[:, 1:] = blue[None, :, None, None]
    red_ref[:, 1:] = red[None, :, None, None]
    target = torch.full((1, 1, h, w), 50.0)
    labels = _grid_labels(1, h, w, 4)
    target_mask = torch.zeros(1, 1, h, w, dtype=torch.bool)
    target_mask[..., 8:16, 8:16] = True
    everything = torch.ones(1, 1, h, w, dtype=torch.bool)
    none = torch.zeros(1, 0, h, w, dtype=torch.bool)
    # the mask pair belongs to the red reference: the masked region must be red, not a red/blue mix
    masked = match_references(
        StandInVGG(), target, labels, [red_ref, blue_ref], [labels, labels], [(target_mask, everything), (none, none)]
    )
    inside = target_mask[0, 0]
    assert torch.allclose(masked.ab[0][:, inside], red[:, None].expand(2, int(inside.sum())), atol=1e-3)
    assert (masked.ab[0][:, ~inside] - red[:, None]).abs().max() > 10


def test_colorize_net_masks_keep_paired_colour() -> None:
    h = w = 48
    ref, _, blue = _two_colour_reference(h, w)
    target = torch.full((1, 1, h, w), 50.0) + torch.rand(1, 1, h, w, generator=torch.Generator().manual_seed(3))
    target_mask = torch.zeros(h, w, dtype=torch.bool)
    target_mask[2:46, 2:30] = True
    ref_mask = torch.zeros(h, w, dtype=torch.bool)
    ref_mask[:, 24:] = True
    ab = colorize_net(ColorNet().eval(), StandInVGG(), target, [ref], [[(target_mask, ref_mask)]])
    interior = torch.zeros(h, w, dtype=torch.bool)
    interior[12:36, 12:20] = True  # 10 px from the border: the guided upsampling blends over ~8 px
    assert (ab[0][:, interior] - blue[:, None]).abs().max() < 2.0


def test_missing_and_corrupt_weights_raise_weights_error(tmp_path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        load_colornet(tmp_path / "absent.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a torch file" * 10)
    with pytest.raises(WeightsError, match="not a readable"):
        load_colornet(garbage)
    wrong = tmp_path / "wrong.pt"
    state = {k: torch.zeros(shape) for k, shape in colornet_shapes().items()}
    state["head.weight"] = torch.zeros(3, 3)
    torch.save(state, wrong)
    with pytest.raises(WeightsError, match="head.weight"):
        load_colornet(wrong)


def test_weights_round_trip_in_float16(tmp_path) -> None:
    net = _random_net(5)
    path = tmp_path / "net.pt"
    torch.save({k: v.half() for k, v in net.state_dict().items() if v.is_floating_point()}, path)
    loaded = load_colornet(path)
    for name, value in net.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(loaded.state_dict()[name], value.half().float())


def test_bundled_weights_load_and_colorize() -> None:
    if not COLORNET_WEIGHTS.is_file():
        pytest.skip(f"{COLORNET_WEIGHTS} not present")
    assert COLORNET_WEIGHTS.stat().st_size <= 30 * 2**20
    net = load_colornet()
    assert not net.training and not torch.equal(net.head.weight, torch.zeros_like(net.head.weight))
    ref, _, _ = _two_colour_reference(40, 40)
    ab = colorize_net(net, StandInVGG(), torch.full((1, 1, 40, 56), 50.0), [ref])
    rgb = lab_to_rgb(torch.cat([torch.full((1, 1, 40, 56), 50.0), ab], 1))
    assert ab.shape == (1, 2, 40, 56) and np.isfinite(rgb.numpy()).all()


def test_colorize_still_dispatches_to_the_network() -> None:
    from pipeline.colorize import Exemplar, colorize_still

    gen = np.random.default_rng(0)
    grey = gen.uniform(0, 1, (30, 44)).astype(np.float32)
    ref = gen.uniform(0, 1, (26, 34, 3)).astype(np.float32)
    mask_t, mask_r = np.zeros((30, 44), bool), np.zeros((26, 34), bool)
    mask_t[5:20, 5:20], mask_r[:, 17:] = True, True
    ab = colorize_still(
        grey, [Exemplar(ref, ((mask_t, mask_r),))], method="net", device="cpu", features=StandInVGG(), net=_random_net()
    )
    assert ab.shape == (2, 30, 44) and ab.dtype == np.float32 and np.isfinite(ab).all()


def test_cli_colorize_image_with_the_network(tmp_path) -> None:
    if not COLORNET_WEIGHTS.is_file():
        pytest.skip(f"{COLORNET_WEIGHTS} not present")
    from click.testing import CliRunner
    from PIL import Image

    from cli.main import cli

    gen = np.random.default_rng(1)
    Image.fromarray(gen.integers(0, 255, (24, 32), dtype=np.uint8)).save(tmp_path / "grey.png")
    Image.fromarray(gen.integers(0, 255, (20, 28, 3), dtype=np.uint8)).save(tmp_path / "ref.png")
    result = CliRunner().invoke(
        cli,
        [
            "colorize-image",
            "--target",
            str(tmp_path / "grey.png"),
            "--ref",
            str(tmp_path / "ref.png"),
            "--method",
            "net",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "out.png"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out.png").size == (32, 24)
