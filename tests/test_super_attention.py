"""Super-features encoding / matching / unpooling, masked attention, batching and linear cost."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from model.super_attention import (
    SuperAttention,
    attention,
    correlation,
    encode_superfeatures,
    mask_labels,
    normalise_superfeatures,
    pair_mask,
    super_attention,
    superpixel_membership,
    unpool,
)
from model.superpixels import superpixels


@pytest.fixture
def tiny() -> tuple[torch.Tensor, torch.Tensor]:
    """Features (2, 3, 4, 5) and labels (2, 4, 5): image 0 has 4 superpixels, image 1 has 3 and
    some ignored (-1) pixels."""
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 4, 5, generator=gen)
    labels = torch.tensor(
        [
            [[0, 0, 1, 1, 1], [0, 2, 2, 1, 1], [3, 2, 2, 2, 1], [3, 3, 3, 2, 1]],
            [[0, 0, 0, -1, -1], [1, 1, 0, -1, 2], [1, 1, 2, 2, 2], [-1, 1, 2, 2, 2]],
        ]
    )
    return features, labels


@pytest.mark.parametrize("reduce", ["amax", "mean"])
def test_encoding_matches_brute_force(tiny: tuple[torch.Tensor, torch.Tensor], reduce: str) -> None:
    features, labels = tiny
    pooled, valid = encode_superfeatures(features, labels, reduce)  # type: ignore[arg-type]
    assert pooled.shape == (2, 3, 4) and pooled.dtype == features.dtype
    assert valid.tolist() == [[True] * 4, [True, True, True, False]]
    for b in range(2):
        for i in range(int(labels[b].max()) + 1):
            pixels = features[b][:, labels[b] == i]  # (C, P_i)
            expected = pixels.amax(dim=1) if reduce == "amax" else pixels.mean(dim=1)
            torch.testing.assert_close(pooled[b, :, i], expected)
    assert (pooled[1, :, 3] == 0).all(), "padding must be zero"


def test_masked_encoding_drops_out_of_mask_superpixels(tiny: tuple[torch.Tensor, torch.Tensor]) -> None:
    features, labels = tiny
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[:, :, :2] = True  # left two columns
    masked = mask_labels(labels, mask)
    pooled, valid = encode_superfeatures(features, masked, "mean", n_segments=4)
    # image 0: superpixel 1 lies entirely in columns 2-4, superpixel 2 straddles
    assert valid[0].tolist() == [True, False, True, True]
    straddling = features[0][:, (labels[0] == 2) & mask[0]].mean(dim=1)
    torch.testing.assert_close(pooled[0, :, 2], straddling)
    assert valid[1].tolist() == [True, True, False, False]


def test_membership_and_pair_mask() -> None:
    labels = torch.tensor([[[0, 0, 1, 1], [2, 2, 3, 3]]])
    masks = torch.zeros(1, 2, 2, 4, dtype=torch.bool)
    masks[0, 0, :, :2] = True  # left half
    masks[0, 1, 0, 2:] = True  # superpixel 1 only
    member = superpixel_membership(labels, masks)
    assert member.tolist() == [[[True, False], [False, True], [True, False], [False, False]]]
    member_r = torch.tensor([[[True, False], [False, False], [False, True]]])
    allowed = pair_mask(member, member_r, torch.ones(1, 3, dtype=torch.bool))
    assert allowed[0].tolist() == [
        [True, False, False],  # in target mask 0 -> reference superpixels of reference mask 0
        [False, False, True],  # in target mask 1 -> reference mask 1
        [True, False, False],
        [True, True, True],  # in no mask -> unmasked matching
    ]
    # a target mask whose reference mask is empty falls back to the unmasked matching
    allowed = pair_mask(member, torch.zeros(1, 3, 2, dtype=torch.bool), torch.ones(1, 3, dtype=torch.bool))
    assert allowed.all()


def test_correlation_is_centred_cosine() -> None:
    gen = torch.Generator().manual_seed(1)
    query, key = torch.randn(1, 8, 5, generator=gen), torch.randn(1, 8, 6, generator=gen)
    corr = correlation(query, key)
    assert corr.shape == (1, 5, 6)
    for i in range(5):
        for j in range(6):
            q = query[0, :, i] - query[0, :, i].mean()
            k = key[0, :, j] - key[0, :, j].mean()
            torch.testing.assert_close(corr[0, i, j], q @ k / (q.norm() * k.norm()))
    # invariant to an offset and a positive scale of each super-feature (centred over channels)
    torch.testing.assert_close(correlation(3 * query + 2, key - 5), corr)
    assert normalise_superfeatures(torch.ones(1, 4, 2)).abs().max() == 0


def test_attention_rows_and_temperature() -> None:
    gen = torch.Generator().manual_seed(2)
    scores = correlation(torch.randn(2, 16, 7, generator=gen), torch.randn(2, 16, 9, generator=gen))
    weights = attention(scores, 0.015)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 7))
    hard = attention(scores, 1e-5)
    assert torch.equal(hard.argmax(-1), scores.argmax(-1))
    assert (hard.amax(-1) > 0.999).all(), "tau -> 0 must give one-hot rows"
    soft = attention(scores, 100.0)
    assert (soft - 1 / 9).abs().max() < 0.01, "large tau must give uniform rows"
    allowed = torch.zeros(2, 7, 9, dtype=torch.bool)
    allowed[:, :, 3:5] = True
    allowed[0, 0] = False
    masked = attention(scores, 0.015, allowed)
    assert (masked[~allowed] == 0).all()
    assert (masked[0, 0] == 0).all() and not masked.isnan().any()
    torch.testing.assert_close(masked[1].sum(-1), torch.ones(7))
    with pytest.raises(ValueError):
        attention(scores, 0.0)


def test_attention_per_row_temperature_and_log_prior() -> None:
    gen = torch.Generator().manual_seed(6)
    scores = correlation(torch.randn(1, 16, 4, generator=gen), torch.randn(1, 16, 6, generator=gen))
    # one temperature per row: each row equals the scalar-tau softmax with its own tau
    taus = torch.tensor([0.01, 0.05, 0.2, 1.0]).view(1, 4, 1)
    rows = attention(scores, taus)
    for i, tau in enumerate(taus.flatten().tolist()):
        torch.testing.assert_close(rows[:, i], attention(scores[:, i : i + 1], tau)[:, 0])
    # a prior multiplies the rows by exp(prior) before renormalising
    prior = torch.randn(1, 4, 6, generator=gen)
    expected = attention(scores, 0.05) * prior.exp()
    torch.testing.assert_close(attention(scores, 0.05, log_prior=prior), expected / expected.sum(-1, keepdim=True))
    # a very negative prior removes a column; allowed still wins over the prior
    veto = torch.zeros(1, 4, 6)
    veto[..., 2] = -1e4
    assert (attention(scores, 0.05, log_prior=veto)[..., 2] < 1e-6).all()
    allowed = torch.zeros(1, 4, 6, dtype=torch.bool)
    allowed[..., 2] = True
    torch.testing.assert_close(attention(scores, 0.05, allowed, veto)[..., 2], torch.ones(1, 4))
    with pytest.raises(ValueError):
        attention(scores, torch.tensor([0.01, 0.0, 0.1, 0.1]).view(1, 4, 1))


def test_unpool_inverts_constant_pooling(tiny: tuple[torch.Tensor, torch.Tensor]) -> None:
    _, labels = tiny
    values = torch.arange(2 * 2 * 4, dtype=torch.float32).reshape(2, 2, 4)
    out = unpool(values, labels)
    assert out.shape == (2, 2, 4, 5)
    for b in range(2):
        for c in range(2):
            expected = torch.where(labels[b] >= 0, values[b, c][labels[b].clamp(min=0)], 0.0)
            torch.testing.assert_close(out[b, c], expected)
    pooled, _ = encode_superfeatures(out, labels, "mean", n_segments=4)
    torch.testing.assert_close(pooled[0], values[0])


def blocks(h: int, w: int, colours: list[float]) -> torch.Tensor:
    """(1, 1, h, w): vertical bands with the given values."""
    band = torch.tensor(colours).repeat_interleave(-(-w // len(colours)))[:w]
    return band.expand(h, w)[None, None].clone()


def test_super_attention_identity_and_masks() -> None:
    # four bands of distinct "texture" features; reference = target
    gen = torch.Generator().manual_seed(3)
    h, w = 8, 16
    codes = torch.randn(4, 6, generator=gen)
    band = torch.arange(w) // 4
    f = codes[band].T[None, :, None, :].expand(1, 6, h, w).contiguous()
    labels = band.expand(h, w)[None].clone()
    phi = blocks(h, w, [10.0, 20.0, 30.0, 40.0])
    out = super_attention(f, f, phi, labels, labels, tau=1e-4, reduce="mean")
    torch.testing.assert_close(out, phi)
    # masks: target bands 0-1 may only use reference band 3, bands 2-3 only band 0
    masks_t = torch.zeros(1, 2, h, w, dtype=torch.bool)
    masks_t[0, 0, :, :8], masks_t[0, 1, :, 8:] = True, True
    masks_r = torch.zeros(1, 2, h, w, dtype=torch.bool)
    masks_r[0, 0, :, 12:], masks_r[0, 1, :, :4] = True, True
    out = super_attention(f, f, phi, labels, labels, tau=1e-4, masks_t=masks_t, masks_r=masks_r)
    assert (out[..., :8] == 40).all() and (out[..., 8:] == 10).all()
    with pytest.raises(ValueError):
        super_attention(f, f, phi, labels, labels, masks_t=masks_t)


def test_batches_with_different_counts_match_single_runs() -> None:
    gen = torch.Generator().manual_seed(4)
    f_t, f_r = torch.randn(2, 5, 12, 12, generator=gen), torch.randn(2, 5, 10, 14, generator=gen)
    phi = torch.randn(2, 3, 10, 14, generator=gen)
    labels_t = torch.stack(
        [superpixels(torch.rand(12, 12, generator=gen), n_segments=n, method="grid") for n in (9, 16)]
    )
    labels_r = torch.stack(
        [superpixels(torch.rand(10, 14, generator=gen), n_segments=n, method="grid") for n in (20, 6)]
    )
    batched = super_attention(f_t, f_r, phi, labels_t, labels_r)
    for b in range(2):
        single = super_attention(
            f_t[b : b + 1], f_r[b : b + 1], phi[b : b + 1], labels_t[b : b + 1], labels_r[b : b + 1]
        )
        torch.testing.assert_close(batched[b : b + 1], single)


def test_module_learned_projections_train() -> None:
    gen = torch.Generator().manual_seed(5)
    module = SuperAttention(channels=4, colour_channels=3)
    f_t, f_r = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 4, 8, 8, generator=gen)
    phi = torch.randn(1, 3, 8, 8, generator=gen)
    labels = superpixels(torch.rand(8, 8, generator=gen), n_segments=16, method="grid")[None]
    out = module(f_t, f_r, phi, labels, labels)
    assert out.shape == (1, 3, 8, 8)
    out.square().mean().backward()
    assert module.query is not None and module.query.weight.grad is not None
    assert module.query.weight.grad.abs().sum() > 0
    assert len(list(SuperAttention().parameters())) == 0


def attention_work(side: int) -> tuple[int, float]:
    """(attention-map entries, matmul FLOPs) of one super-attention call on a side x side image."""
    gen = torch.Generator().manual_seed(side)
    ys, xs = torch.meshgrid(torch.linspace(0, 6, side), torch.linspace(0, 6, side), indexing="ij")
    grey = 0.5 + 0.25 * torch.sin(ys) * torch.cos(xs)
    labels = superpixels(grey)[None]
    n = int(labels.max()) + 1
    f = torch.randn(1, 16, side, side, generator=gen)
    phi = torch.randn(1, 2, side, side, generator=gen)
    with FlopCounterMode(display=False) as counter:
        super_attention(f, f, phi, labels, labels)
    return n * n, counter.get_total_flops()


def test_cost_grows_linearly_with_pixels() -> None:
    small_entries, small_flops = attention_work(48)
    large_entries, large_flops = attention_work(96)  # 4x the pixels
    assert small_flops > 0
    # growth exponent in the pixel count: 1 = linear, 2 = pixel-level attention. SLIC returns
    # ~10% fewer superpixels than asked at 96 x 96 (measured exponent 0.83 for both)
    for small, large in ((small_entries, large_entries), (small_flops, large_flops)):
        exponent = math.log(large / small) / math.log(4)
        assert 0.7 <= exponent <= 1.3
